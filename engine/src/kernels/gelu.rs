//! Exact-erf GELU (`shaders/gelu.wgsl`).

use super::{grid, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::Result;
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// Both entry points handle a vec4 per invocation, 256 invocations per workgroup.
fn spec(entry: &'static str, label: &'static str) -> KernelSpec<'static> {
    KernelSpec::new(&shaders::GELU, entry, label, 256)
}

pub fn gelu(dev: &Device, x: &Tensor) -> Result<Tensor> {
    let out = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("gelu", x.numel())?, _pad: [0; 3] };
    let spec = spec("forward", "gelu");
    dev.dispatch(spec, &p, &[x.bind(1), out.bind_mut(3)], grid(x.numel().div_ceil(4), spec.workgroup))?;
    Ok(out.freeze())
}

/// dx given the forward input `x` and the output gradient `dy`.
pub fn gelu_backward(dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("gelu_backward", x, dy)?;
    let out = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("gelu_backward", x.numel())?, _pad: [0; 3] };
    let spec = spec("backward", "gelu_backward");
    dev.dispatch(spec, &p, &[x.bind(1), dy.bind(2), out.bind_mut(3)], grid(x.numel().div_ceil(4), spec.workgroup))?;
    Ok(out.freeze())
}
