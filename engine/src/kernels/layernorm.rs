//! LayerNorm over the last axis (`shaders/layernorm_common.wgsl` with
//! `shaders/layernorm.wgsl` and `shaders/layernorm_backward.wgsl`), in f32
//! or, for mixed precision, with an f16 output and an f16 centred input kept
//! for the backward pass (`shaders/layernorm_centered.wgsl`,
//! [`layer_norm_centered`]).

use super::{expect_f32, grid, rows_cols, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders::{self, Shader};
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    /// The parameter gradients are added to what their tensors hold.
    accumulate_params: u32,
    /// The input gradient is added to what its tensor holds.
    accumulate_input: u32,
    _pad: [u32; 3],
}

/// Rows per workgroup of the backward pass (its workgroup size).
const CHUNK: usize = 64;

fn spec(shader: &'static Shader, entry: &'static str, label: &'static str) -> KernelSpec<'static> {
    KernelSpec::new(shader, entry, label, 64)
}

fn params(op: &'static str, x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Params, usize)> {
    let (rows, d) = rows_cols(op, x)?;
    if gamma.numel() != d {
        return Err(shape_err(op, format!("weight {:?} for input {:?}", gamma.shape(), x.shape())));
    }
    Ok((
        Params {
            rows: u32_of(op, rows)?,
            d: u32_of(op, d)?,
            eps,
            accumulate_params: 0,
            accumulate_input: 0,
            _pad: [0; 3],
        },
        rows,
    ))
}

/// Returns `(y, stats)`; `stats` `[rows, 2]` holds (mean, 1/σ) for the backward.
pub fn layer_norm(dev: &Device, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let op = "layer_norm";
    let (p, rows) = params(op, x, gamma, eps)?;
    same_shape(op, gamma, beta)?;
    expect_f32(op, "input", x)?;
    let y = TensorMut::uninit(dev, x.shape(), DType::F32)?;
    let stats = TensorMut::uninit(dev, &[rows, 2], DType::F32)?;
    let spec = spec(&shaders::LAYERNORM, "forward", "layernorm");
    let bindings = [x.bind(1), gamma.bind(2), beta.bind(3), y.bind_mut(4), stats.bind_mut(5)];
    dev.dispatch(spec, &p, &bindings, grid(rows, spec.workgroup))?;
    Ok((y.freeze(), stats.freeze()))
}

/// Mixed precision's LayerNorm of an f32 `x`: `(y, centered, stats)` with
/// y and the centred input x − μ stored f16, and stats (0, 1/σ). The
/// backward pass takes `centered` as its input: half the bytes of keeping
/// x, and, centred, rounded relative to the row's spread rather than its mean.
pub fn layer_norm_centered(
    dev: &Device,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = "layer_norm_centered";
    let (p, rows) = params(op, x, gamma, eps)?;
    same_shape(op, gamma, beta)?;
    expect_f32(op, "input", x)?;
    let y = TensorMut::uninit(dev, x.shape(), DType::F16)?;
    let centered = TensorMut::uninit(dev, x.shape(), DType::F16)?;
    let stats = TensorMut::uninit(dev, &[rows, 2], DType::F32)?;
    let spec = spec(&shaders::LAYERNORM_CENTERED, "forward_centered", "layernorm_centered");
    let bindings = [x.bind(1), gamma.bind(2), beta.bind(3), y.bind_mut(4), stats.bind_mut(5), centered.bind_mut(13)];
    dev.dispatch(spec, &p, &bindings, grid(rows, spec.workgroup))?;
    Ok((y.freeze(), centered.freeze(), stats.freeze()))
}

/// The f16 output of [`layer_norm_centered`] again, exactly, from what it
/// kept (`centered`, `stats`): the backward pass recomputes it rather than
/// keep it.
pub fn layer_norm_from_centered(
    dev: &Device,
    centered: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: &Tensor,
) -> Result<Tensor> {
    let op = "layer_norm_from_centered";
    let (p, rows) = params(op, centered, gamma, 0.0)?;
    same_shape(op, gamma, beta)?;
    if centered.dtype() != DType::F16 || stats.numel() != rows * 2 {
        let detail =
            format!("centred input {:?} ({:?}) with stats {:?}", centered.shape(), centered.dtype(), stats.shape());
        return Err(shape_err(op, detail));
    }
    let y = TensorMut::uninit(dev, centered.shape(), DType::F16)?;
    let spec = spec(&shaders::LAYERNORM_CENTERED, "forward_from_centered", "layernorm_from_centered");
    let bindings = [gamma.bind(2), beta.bind(3), y.bind_mut(4), stats.bind(5), centered.bind(13)];
    dev.dispatch(spec, &p, &bindings, grid(rows, spec.workgroup))?;
    Ok(y.freeze())
}

/// Where the backward pass puts dγ and dβ.
pub enum ParamGrads<'a> {
    /// New tensors, returned.
    New,
    /// Added into these (gradients accumulated in place, e.g. packed parameter gradients).
    AddTo(&'a mut TensorMut, &'a mut TensorMut),
}

/// What [`layer_norm_backward`] returns: each gradient that was not added
/// into a tensor given to it.
pub struct LayerNormGrads {
    pub dx: Option<Tensor>,
    /// `(dγ, dβ)`.
    pub params: Option<(Tensor, Tensor)>,
}

/// The input gradient unless it was added into `dx_into`, and `(dγ, dβ)`
/// unless they were added into [`ParamGrads::AddTo`]: two dispatches, the
/// input gradient and partial parameter sums per chunk of rows in one, then
/// the chunks added up. `x` and `dy` are both f32, or both f16 (mixed
/// precision: the centred input and the gradient of the f16 output); the
/// gradients are f32.
pub fn layer_norm_backward(
    dev: &Device,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    dx_into: Option<&mut TensorMut>,
    param_grads: ParamGrads<'_>,
) -> Result<LayerNormGrads> {
    let op = "layer_norm_backward";
    let (mut p, rows) = params(op, x, gamma, 0.0)?;
    same_shape(op, x, dy)?;
    let shader = match (x.dtype(), dy.dtype()) {
        (DType::F32, DType::F32) => &shaders::LAYERNORM,
        (DType::F16, DType::F16) => &shaders::LAYERNORM_BACKWARD_F16,
        (a, b) => return Err(shape_err(op, format!("x is {a:?} and dy {b:?}: both f32, or both f16"))),
    };
    if stats.numel() != rows * 2 {
        return Err(shape_err(op, format!("stats {:?} for {rows} rows", stats.shape())));
    }
    let d = p.d as usize;
    let mut new_dx = None;
    let dx: &TensorMut = match dx_into {
        Some(acc) => {
            if acc.numel() != x.numel() {
                return Err(shape_err(op, format!("an input gradient {:?} for an input {:?}", acc.shape(), x.shape())));
            }
            p.accumulate_input = 1;
            acc
        }
        None => new_dx.insert(TensorMut::uninit(dev, x.shape(), DType::F32)?),
    };
    let chunks = rows.div_ceil(CHUNK);
    // Rows of the partial sums are padded to whole vec4s.
    let partial = TensorMut::uninit(dev, &[chunks, 2, d.next_multiple_of(4)], DType::F32)?;
    let spec = spec(shader, "backward", "layernorm_backward");
    let bindings = [x.bind(1), gamma.bind(2), dy.bind(6), stats.bind(7), dx.bind_mut(8), partial.bind_mut(9)];
    dev.dispatch(spec, &p, &bindings, grid(chunks * CHUNK, spec.workgroup))?;
    let partial = partial.freeze();
    match param_grads {
        ParamGrads::AddTo(dg, db) => {
            for t in [&*dg, &*db] {
                if t.numel() != d {
                    return Err(shape_err(op, format!("a gradient {:?} for a weight {:?}", t.shape(), gamma.shape())));
                }
            }
            p.accumulate_params = 1;
            finish(dev, shader, &p, &partial, (dg, db))?;
            Ok(LayerNormGrads { dx: new_dx.map(TensorMut::freeze), params: None })
        }
        ParamGrads::New => {
            let dg = TensorMut::uninit(dev, &[d], DType::F32)?;
            let db = TensorMut::uninit(dev, &[d], DType::F32)?;
            finish(dev, shader, &p, &partial, (&dg, &db))?;
            Ok(LayerNormGrads { dx: new_dx.map(TensorMut::freeze), params: Some((dg.freeze(), db.freeze())) })
        }
    }
}

/// Adds up the chunks' partial sums into dγ and dβ.
fn finish(
    dev: &Device,
    shader: &'static Shader,
    p: &Params,
    partial: &Tensor,
    (dgamma, dbeta): (&TensorMut, &TensorMut),
) -> Result<()> {
    let spec = spec(shader, "backward_params_finish", "layernorm_backward_params");
    let bindings = [partial.bind(10), dgamma.bind_mut(11), dbeta.bind_mut(12)];
    dev.dispatch(spec, p, &bindings, grid(p.d as usize, spec.workgroup))
}
