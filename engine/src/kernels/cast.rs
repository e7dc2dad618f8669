//! f32 ↔ f16 (`shaders/cast.wgsl`): mixed precision's f16 copies of weights
//! and activations, and reading an f16 tensor back. Needs `SHADER_F16`; on
//! an adapter without it the device refuses the kernel, naming the feature.

use super::{grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

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

/// An f16 tensor widened to f32 (exact).
pub fn to_f32(dev: &Device, x: &Tensor) -> Result<Tensor> {
    cast(dev, x, (DType::F16, DType::F32), "to_f32")
}
