//! LayerNorm over the last axis (`shaders/layernorm.wgsl`).

use super::reduce::{RowView, sum_rows};
use super::{grid, rows_cols, same_shape, u32_of};
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
    chunk: u32,
}

const PARAM_CHUNK: usize = 64;

fn spec(entry: &'static str, label: &'static str) -> KernelSpec<'static> {
    KernelSpec { shader: &shaders::LAYERNORM, entry, constants: &[], label }
}

fn params(op: &'static str, x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Params, usize)> {
    let (rows, d) = rows_cols(op, x)?;
    if gamma.numel() != d {
        return Err(shape_err(op, format!("weight {:?} for input {:?}", gamma.shape(), x.shape())));
    }
    Ok((Params { rows: u32_of(op, rows)?, d: u32_of(op, d)?, eps, chunk: PARAM_CHUNK as u32 }, rows))
}

/// Returns `(y, stats)`; `stats` `[rows, 2]` holds (mean, 1/σ) for the backward.
pub fn layer_norm(dev: &Device, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let (p, rows) = params("layer_norm", x, gamma, eps)?;
    same_shape("layer_norm", gamma, beta)?;
    let y = Tensor::uninit(dev, x.shape(), DType::F32)?;
    let stats = Tensor::uninit(dev, &[rows, 2], DType::F32)?;
    dev.dispatch(
        spec("forward", "layernorm"),
        &p,
        &[(1, x), (2, gamma), (3, beta), (4, &y), (5, &stats)],
        grid(rows, 64),
    )?;
    Ok((y, stats))
}

/// Gradients `(dx, dγ, dβ)`.
pub fn layer_norm_backward(
    dev: &Device,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm_backward";
    let (p, rows) = params(op, x, gamma, 0.0)?;
    same_shape(op, x, dy)?;
    if stats.numel() != rows * 2 {
        return Err(shape_err(op, format!("stats {:?} for {rows} rows", stats.shape())));
    }
    let d = p.d as usize;
    let dx = Tensor::uninit(dev, x.shape(), DType::F32)?;
    dev.dispatch(
        spec("backward_input", "layernorm_backward"),
        &p,
        &[(1, x), (2, gamma), (6, dy), (7, stats), (8, &dx)],
        grid(rows, 64),
    )?;
    let chunks = rows.div_ceil(PARAM_CHUNK);
    // Rows of the partial sums are padded to whole vec4s.
    let d_pad = d.next_multiple_of(4);
    let partial = Tensor::uninit(dev, &[chunks, 2, d_pad], DType::F32)?;
    dev.dispatch(
        spec("backward_params", "layernorm_backward_params"),
        &p,
        &[(1, x), (6, dy), (7, stats), (8, &partial)],
        grid(chunks * d_pad / 4, 64),
    )?;
    let dgamma = sum_rows(dev, RowView { t: &partial, rows: chunks, cols: d, stride: 2 * d_pad, offset: 0 }, None)?;
    let dbeta = sum_rows(dev, RowView { t: &partial, rows: chunks, cols: d, stride: 2 * d_pad, offset: d_pad }, None)?;
    Ok((dx, dgamma, dbeta))
}
