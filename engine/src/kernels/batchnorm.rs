//! BatchNorm1d without affine parameters (`shaders/batchnorm.wgsl`).

use super::{grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    momentum: f32,
}

fn check(x: &Tensor, mean: &Tensor, var: &Tensor) -> Result<(usize, usize)> {
    let [rows, d] = *x.shape() else {
        return Err(shape_err("batch_norm", format!("features {:?} must be [rows, d]", x.shape())));
    };
    if mean.numel() != d || var.numel() != d {
        let detail = format!("running stats {:?}, {:?} for features {:?}", mean.shape(), var.shape(), x.shape());
        return Err(shape_err("batch_norm", detail));
    }
    Ok((rows, d))
}

/// Training mode: normalises with the batch statistics and updates the
/// running mean and unbiased variance (`[d]` each) in place with `momentum`.
pub fn batch_norm_train(
    dev: &Device,
    x: &Tensor,
    (mean, var): (&mut TensorMut, &mut TensorMut),
    eps: f32,
    momentum: f32,
) -> Result<Tensor> {
    let (rows, d) = check(x, mean, var)?;
    let y = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { rows: u32_of("batch_norm", rows)?, d: u32_of("batch_norm", d)?, eps, momentum };
    let spec = KernelSpec::new(&shaders::BATCHNORM, "train", "batch_norm", 64);
    let bindings = [x.bind(1), y.bind_mut(2), mean.bind_mut(3), var.bind_mut(4)];
    dev.dispatch(spec, &p, &bindings, grid(d, spec.workgroup))?;
    Ok(y.freeze())
}

/// Evaluation mode: normalises with the running statistics.
pub fn batch_norm_eval(dev: &Device, x: &Tensor, (mean, var): (&Tensor, &Tensor), eps: f32) -> Result<Tensor> {
    let (rows, d) = check(x, mean, var)?;
    let y = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { rows: u32_of("batch_norm", rows)?, d: u32_of("batch_norm", d)?, eps, momentum: 0.0 };
    let spec = KernelSpec::new(&shaders::BATCHNORM, "eval", "batch_norm", 64);
    let bindings = [x.bind(1), y.bind_mut(2), mean.bind(3), var.bind(4)];
    dev.dispatch(spec, &p, &bindings, grid(rows * d, spec.workgroup))?;
    Ok(y.freeze())
}
