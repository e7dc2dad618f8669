//! Exact-erf GELU (`shaders/gelu.wgsl`) on f32 tensors, or f16 ones under
//! mixed precision (an MLP's backward recomputes gelu(h) from its f16 h).

use super::{grid, same_shape, u32_of};
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

/// Both entry points handle a vec4 per invocation, 256 invocations per
/// workgroup, in the module for tensors stored as `dtype`.
fn spec(op: &'static str, entry: &'static str, dtype: DType) -> Result<KernelSpec<'static>> {
    let shader = match dtype {
        DType::F32 => &shaders::GELU,
        DType::F16 => &shaders::GELU_F16,
        other => return Err(shape_err(op, format!("tensors must be f32 or f16, got {other:?}"))),
    };
    Ok(KernelSpec::new(shader, entry, op, 256))
}

/// gelu(x), stored like x.
pub fn gelu(dev: &Device, x: &Tensor) -> Result<Tensor> {
    let out = TensorMut::uninit(dev, x.shape(), x.dtype())?;
    let p = Params { n: u32_of("gelu", x.numel())?, _pad: [0; 3] };
    let spec = spec("gelu", "forward", x.dtype())?;
    dev.dispatch(spec, &p, &[x.bind(1), out.bind_mut(3)], grid(x.numel().div_ceil(4), spec.workgroup))?;
    Ok(out.freeze())
}

/// dx given the forward input `x` and the output gradient `dy` (both
/// stored alike), stored like them.
pub fn gelu_backward(dev: &Device, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("gelu_backward", x, dy)?;
    if x.dtype() != dy.dtype() {
        return Err(shape_err("gelu_backward", format!("x is {:?} but dy is {:?}", x.dtype(), dy.dtype())));
    }
    let out = TensorMut::uninit(dev, x.shape(), x.dtype())?;
    let p = Params { n: u32_of("gelu_backward", x.numel())?, _pad: [0; 3] };
    let spec = spec("gelu_backward", "backward", x.dtype())?;
    dev.dispatch(spec, &p, &[x.bind(1), dy.bind(2), out.bind_mut(3)], grid(x.numel().div_ceil(4), spec.workgroup))?;
    Ok(out.freeze())
}
