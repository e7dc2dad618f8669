//! Elementwise kernels (`shaders/elementwise.wgsl`).

use super::{expect_f32, grid, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    period: u32,
    alpha: f32,
    beta: f32,
}

fn spec(entry: &'static str) -> KernelSpec<'static> {
    KernelSpec { shader: &shaders::ELEMENTWISE, entry, constants: &[], label: entry }
}

/// The kernels work on vec4s: `n.div_ceil(4)` items.
fn run(dev: &Device, entry: &'static str, p: Params, bindings: &[(u32, &Tensor)]) -> Result<()> {
    dev.dispatch(spec(entry), &p, bindings, grid((p.n as usize).div_ceil(4), 256))
}

/// `alpha·x + beta·y`.
pub fn axpby(dev: &Device, alpha: f32, x: &Tensor, beta: f32, y: &Tensor) -> Result<Tensor> {
    same_shape("axpby", x, y)?;
    expect_f32("axpby", "x", x)?;
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("axpby", x.numel())?, period: 1, alpha, beta };
    run(dev, "axpby", p, &[(1, x), (2, y), (3, &out)])?;
    Ok(out)
}

pub fn add(dev: &Device, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    axpby(dev, 1.0, x, 1.0, y)
}

pub fn scale(dev: &Device, x: &Tensor, alpha: f32) -> Result<Tensor> {
    axpby(dev, alpha, x, 0.0, x)
}

/// `x + alpha·v` with `v` repeated along the leading axes: `v`'s shape must be
/// a suffix of `x`'s (a bias row `[d]`, position embeddings `[t, d]`).
pub fn add_broadcast(dev: &Device, x: &Tensor, v: &Tensor, alpha: f32) -> Result<Tensor> {
    let op = "add_broadcast";
    if !x.shape().ends_with(v.shape()) || v.numel() == 0 {
        return Err(shape_err(op, format!("{:?} is not a suffix of {:?}", v.shape(), x.shape())));
    }
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of(op, x.numel())?, period: u32_of(op, v.numel())?, alpha, beta: 0.0 };
    run(dev, "add_bcast", p, &[(1, x), (2, v), (3, &out)])?;
    Ok(out)
}

pub fn mul(dev: &Device, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("mul", x, y)?;
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let p = Params { n: u32_of("mul", x.numel())?, period: 1, alpha: 0.0, beta: 0.0 };
    run(dev, "mul", p, &[(1, x), (2, y), (3, &out)])?;
    Ok(out)
}

/// Multiplies each leading-axis slice `x[b, ..]` by `s[b]`.
pub fn scale_rows(dev: &Device, x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let op = "scale_rows";
    if x.shape().first() != Some(&s.numel()) {
        return Err(shape_err(op, format!("scales {:?} for {:?}", s.shape(), x.shape())));
    }
    let out = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let period = x.numel() / s.numel().max(1);
    let p = Params { n: u32_of(op, x.numel())?, period: u32_of(op, period)?, alpha: 0.0, beta: 0.0 };
    run(dev, "scale_rows", p, &[(1, x), (2, s), (3, &out)])?;
    Ok(out)
}

/// A tensor of `shape` whose trailing elements repeat `v` (e.g. a mask token in every row).
pub fn broadcast(dev: &Device, v: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let op = "broadcast";
    if !shape.ends_with(v.shape()) || v.numel() == 0 {
        return Err(shape_err(op, format!("{:?} is not a suffix of {shape:?}", v.shape())));
    }
    let out = Tensor::uninit(dev, shape, DType::F32)?;
    let p = Params { n: u32_of(op, out.numel())?, period: u32_of(op, v.numel())?, alpha: 0.0, beta: 0.0 };
    run(dev, "broadcast", p, &[(1, v), (3, &out)])?;
    Ok(out)
}

pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
    let out = Tensor::uninit(dev, shape, DType::F32)?;
    let p = Params { n: u32_of("full", out.numel())?, period: 1, alpha: value, beta: 0.0 };
    run(dev, "fill", p, &[(3, &out)])?;
    Ok(out)
}

/// `acc += alpha·inc`, in place (gradient accumulation).
pub fn accumulate(dev: &Device, acc: &Tensor, inc: &Tensor, alpha: f32) -> Result<()> {
    same_shape("accumulate", acc, inc)?;
    if acc.same_storage(inc) {
        return Err(shape_err("accumulate", "a tensor cannot be accumulated into itself"));
    }
    let p = Params { n: u32_of("accumulate", acc.numel())?, period: 1, alpha, beta: 0.0 };
    run(dev, "accumulate", p, &[(2, inc), (3, acc)])
}
