//! BatchNorm1d without affine parameters (`shaders/batchnorm.wgsl`).

use super::{grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    momentum: f32,
}

fn check(x: &Tensor, running: &Tensor) -> Result<(usize, usize)> {
    let [rows, d] = *x.shape() else {
        return Err(shape_err("batch_norm", format!("features {:?} must be [rows, d]", x.shape())));
    };
    if running.numel() != 2 * d {
        return Err(shape_err(
            "batch_norm",
            format!("running stats {:?} for features {:?}", running.shape(), x.shape()),
        ));
    }
    Ok((rows, d))
}

/// Training mode: normalises with the batch statistics and updates `running`
/// (`[2, d]`: mean, unbiased variance) in place with `momentum`.
pub fn batch_norm_train(dev: &Device, x: &Tensor, running: &Tensor, eps: f32, momentum: f32) -> Result<Tensor> {
    let (rows, d) = check(x, running)?;
    let y = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { rows: u32_of("batch_norm", rows)?, d: u32_of("batch_norm", d)?, eps, momentum };
    let spec = KernelSpec { shader: &shaders::BATCHNORM, entry: "train", constants: &[], label: "batch_norm" };
    dev.dispatch(spec, &p, &[(1, x), (2, &y), (3, running)], grid(d, 64))?;
    Ok(y)
}

/// Evaluation mode: normalises with the running statistics.
pub fn batch_norm_eval(dev: &Device, x: &Tensor, running: &Tensor, eps: f32) -> Result<Tensor> {
    let (rows, d) = check(x, running)?;
    let y = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { rows: u32_of("batch_norm", rows)?, d: u32_of("batch_norm", d)?, eps, momentum: 0.0 };
    let spec = KernelSpec { shader: &shaders::BATCHNORM, entry: "eval", constants: &[], label: "batch_norm" };
    dev.dispatch(spec, &p, &[(1, x), (2, &y), (3, running)], grid(rows * d, 64))?;
    Ok(y)
}
