//! Row softmax and its backward, in place (`shaders/softmax.wgsl`).

use super::{grid, rows_cols, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::Result;
use crate::shaders;
use crate::tensor::{Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

fn params(op: &'static str, t: &Tensor) -> Result<(Params, usize)> {
    let (rows, cols) = rows_cols(op, t)?;
    Ok((Params { rows: u32_of(op, rows)?, cols: u32_of(op, cols)?, _pad: [0; 2] }, rows))
}

/// Replaces each row of `s` (last axis) by its softmax.
pub fn softmax_in_place(dev: &Device, s: &mut TensorMut) -> Result<()> {
    let (p, rows) = params("softmax", s)?;
    let spec = KernelSpec::new(&shaders::SOFTMAX, "forward", "softmax", 64);
    dev.dispatch(spec, &p, &[s.bind_mut(1)], grid(rows, spec.workgroup))
}

/// Turns `dp` (gradient w.r.t. the softmax output `probs`) into the gradient
/// w.r.t. the softmax input, in place.
pub fn softmax_backward_in_place(dev: &Device, probs: &Tensor, dp: &mut TensorMut) -> Result<()> {
    same_shape("softmax_backward", probs, dp)?;
    let (p, rows) = params("softmax_backward", dp)?;
    let spec = KernelSpec::new(&shaders::SOFTMAX, "backward", "softmax_backward", 64);
    dev.dispatch(spec, &p, &[dp.bind_mut(1), probs.bind(2)], grid(rows, spec.workgroup))
}
