//! Exact-erf GELU (`shaders/gelu.wgsl`).

use super::{grid, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::Result;
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

pub fn gelu(dev: &Device, x: &Tensor) -> Result<Tensor> {
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("gelu", x.numel())?, _pad: [0; 3] };
    let spec = KernelSpec { shader: &shaders::GELU, entry: "forward", constants: &[], label: "gelu" };
    dev.dispatch(spec, &p, &[(1, x), (3, &out)], grid(x.numel().div_ceil(4), 256))?;
    Ok(out)
}

/// dx given the forward input `x` and the output gradient `dy`.
pub fn gelu_backward(dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("gelu_backward", x, dy)?;
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("gelu_backward", x.numel())?, _pad: [0; 3] };
    let spec = KernelSpec { shader: &shaders::GELU, entry: "backward", constants: &[], label: "gelu_backward" };
    dev.dispatch(spec, &p, &[(1, x), (2, dy), (3, &out)], grid(x.numel().div_ceil(4), 256))?;
    Ok(out)
}
