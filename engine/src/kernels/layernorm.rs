//! LayerNorm over the last axis (`shaders/layernorm.wgsl`).

use super::reduce::{RowView, sum_rows};
use super::{grid, rows_cols, same_shape, u32_of};
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
    chunk: u32,
}

const PARAM_CHUNK: usize = 64;

fn spec(entry: &'static str, label: &'static str) -> KernelSpec<'static> {
    KernelSpec::new(&shaders::LAYERNORM, entry, label, 64)
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
    let y = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let stats = TensorMut::uninit(dev, &[rows, 2], DType::F32)?;
    let spec = spec("forward", "layernorm");
    let bindings = [x.bind(1), gamma.bind(2), beta.bind(3), y.bind_mut(4), stats.bind_mut(5)];
    dev.dispatch(spec, &p, &bindings, grid(rows, spec.workgroup))?;
    Ok((y.freeze(), stats.freeze()))
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
    let dx = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let input_spec = spec("backward_input", "layernorm_backward");
    let bindings = [x.bind(1), gamma.bind(2), dy.bind(6), stats.bind(7), dx.bind_mut(8)];
    dev.dispatch(input_spec, &p, &bindings, grid(rows, input_spec.workgroup))?;
    let chunks = rows.div_ceil(PARAM_CHUNK);
    // Rows of the partial sums are padded to whole vec4s.
    let d_pad = d.next_multiple_of(4);
    let partial = TensorMut::uninit(dev, &[chunks, 2, d_pad], DType::F32)?;
    let params_spec = spec("backward_params", "layernorm_backward_params");
    let bindings = [x.bind(1), dy.bind(6), stats.bind(7), partial.bind_mut(8)];
    dev.dispatch(params_spec, &p, &bindings, grid(chunks * d_pad / 4, params_spec.workgroup))?;
    let partial = partial.freeze();
    let dgamma = sum_rows(dev, RowView { t: &partial, rows: chunks, cols: d, stride: 2 * d_pad, offset: 0 }, None)?;
    let dbeta = sum_rows(dev, RowView { t: &partial, rows: chunks, cols: d, stride: 2 * d_pad, offset: d_pad }, None)?;
    Ok((dx.freeze(), dgamma, dbeta))
}
