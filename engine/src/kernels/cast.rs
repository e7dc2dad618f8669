//! f32 ↔ f16 (`shaders/cast.wgsl`): mixed precision's f16 copies of weights
//! and activations, and reading an f16 tensor back. Needs `SHADER_F16`; on
//! an adapter without it the device refuses the kernel, naming the feature.

use super::{grid, u32_of};
use crate::device::{Access, Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Span, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// Converts `x` (of dtype `from`) to `to`, a vec4 per invocation.
fn cast(dev: &Device, x: &Tensor, (from, to): (DType, DType), entry: &'static str) -> Result<Tensor> {
    if x.dtype() != from {
        return Err(shape_err(entry, format!("tensor {:?} is {:?}, not {from:?}", x.shape(), x.dtype())));
    }
    let out = TensorMut::uninit(dev, x.shape(), to)?;
    let p = Params { n: u32_of(entry, x.numel())?, _pad: [0; 3] };
    let spec = KernelSpec::new(&shaders::CAST, entry, entry, 256);
    let (input, output) = if to == DType::F16 { (1, 2) } else { (3, 4) };
    dev.dispatch(spec, &p, &[x.bind(input), out.bind_mut(output)], grid(x.numel().div_ceil(4), spec.workgroup))?;
    Ok(out.freeze())
}

/// `x` rounded to f16: to a neighbouring f16 value (WGSL lets the adapter
/// pick which). Past f16's range (±65504) WGSL leaves the result to the
/// adapter; mixed precision's loss scaling is what keeps values inside it.
pub fn to_f16(dev: &Device, x: &Tensor) -> Result<Tensor> {
    cast(dev, x, (DType::F32, DType::F16), "to_f16")
}

/// `x` stored as `dtype`, f32 or f16 (itself when it already is).
pub fn to(dev: &Device, x: &Tensor, dtype: DType) -> Result<Tensor> {
    match (x.dtype(), dtype) {
        (from, to) if from == to => Ok(x.clone()),
        (DType::F32, DType::F16) => to_f16(dev, x),
        (DType::F16, DType::F32) => to_f32(dev, x),
        (from, to) => Err(shape_err("cast", format!("no cast from {from:?} to {to:?}"))),
    }
}

/// Every member of one f32 pack ([`super::elementwise::packed_zeros`], in
/// order) rounded to f16 in one dispatch: mixed precision's per-step copy of
/// the weights. The copies are members of an f16 pack laid out like the f32
/// one at half the bytes (the pack's padding, zeros, is cast with them).
pub fn to_f16_packed(dev: &Device, members: &[&Tensor]) -> Result<Vec<Tensor>> {
    let op = "to_f16_packed";
    let span = Span::of(op, members)?;
    let half = TensorMut::uninit(dev, &[span.len()], DType::F16)?;
    let p = Params { n: u32_of(op, span.len())?, _pad: [0; 3] };
    let spec = KernelSpec::new(&shaders::CAST, "to_f16", op, 256);
    dev.dispatch(
        spec,
        &p,
        &[span.bind(1, Access::Read), half.bind_mut(2)],
        grid(span.len().div_ceil(4), spec.workgroup),
    )?;
    let shapes: Vec<Vec<usize>> = members.iter().map(|t| t.shape().to_vec()).collect();
    let offsets: Vec<u64> = span.starts.iter().map(|&s| (s * DType::F16.size()) as u64).collect();
    Ok(half.into_pack(&shapes, &offsets).into_iter().map(TensorMut::freeze).collect())
}

/// An f16 tensor widened to f32 (exact).
pub fn to_f32(dev: &Device, x: &Tensor) -> Result<Tensor> {
    cast(dev, x, (DType::F16, DType::F32), "to_f32")
}
