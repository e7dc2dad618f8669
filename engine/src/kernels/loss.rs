//! Per-row losses and their gradients (`shaders/loss.wgsl`).

use super::{grid, rows_cols, same_shape, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// Row kernels run one row per invocation, 64 per workgroup; the MSE
/// backward one element per invocation, 256 per workgroup.
fn spec(entry: &'static str, threads: u32) -> KernelSpec<'static> {
    KernelSpec::new(&shaders::LOSS, entry, entry, threads)
}

fn params(op: &'static str, pred: &Tensor, target: &Tensor) -> Result<(Params, usize, usize)> {
    same_shape(op, pred, target)?;
    let (rows, cols) = rows_cols(op, pred)?;
    Ok((Params { rows: u32_of(op, rows)?, cols: u32_of(op, cols)?, _pad: [0; 2] }, rows, cols))
}

fn check_weights(op: &'static str, w: &Tensor, rows: usize) -> Result<()> {
    if w.numel() != rows {
        return Err(shape_err(op, format!("{} row weights for {rows} rows", w.numel())));
    }
    Ok(())
}

/// Mean squared error of each row (last axis): shape `[rows]`.
pub fn mse_rows(dev: &Device, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (p, rows, _) = params("mse_rows", pred, target)?;
    let out = TensorMut::uninit(dev, &[rows], DType::F32)?;
    let spec = spec("mse_rows", 64);
    dev.dispatch(spec, &p, &[pred.bind(1), target.bind(2), out.bind_mut(3)], grid(rows, spec.workgroup))?;
    Ok(out.freeze())
}

/// Gradient of `g · Σ_r w_r · mse_rows(pred, target)_r` w.r.t. `pred`; `g` is a 1-element tensor.
pub fn mse_rows_backward(dev: &Device, pred: &Tensor, target: &Tensor, w: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (p, rows, cols) = params("mse_rows_backward", pred, target)?;
    check_weights("mse_rows_backward", w, rows)?;
    let out = TensorMut::uninit(dev, pred.shape(), DType::F32)?;
    let spec = spec("mse_rows_backward", 256);
    let bindings = [pred.bind(1), target.bind(2), out.bind_mut(3), w.bind(4), g.bind(5)];
    dev.dispatch(spec, &p, &bindings, grid(rows * cols, spec.workgroup))?;
    Ok(out.freeze())
}

/// Softmax cross-entropy of each row against soft targets: shape `[rows]`.
pub fn xent_rows(dev: &Device, logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let (p, rows, _) = params("xent_rows", logits, target)?;
    let out = TensorMut::uninit(dev, &[rows], DType::F32)?;
    let spec = spec("xent_rows", 64);
    dev.dispatch(spec, &p, &[logits.bind(1), target.bind(2), out.bind_mut(3)], grid(rows, spec.workgroup))?;
    Ok(out.freeze())
}

/// Gradient of `g · Σ_r w_r · xent_rows(logits, target)_r` w.r.t. `logits`.
pub fn xent_rows_backward(dev: &Device, logits: &Tensor, target: &Tensor, w: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (p, rows, _) = params("xent_rows_backward", logits, target)?;
    check_weights("xent_rows_backward", w, rows)?;
    let out = TensorMut::uninit(dev, logits.shape(), DType::F32)?;
    let spec = spec("xent_rows_backward", 64);
    let bindings = [logits.bind(1), target.bind(2), out.bind_mut(3), w.bind(4), g.bind(5)];
    dev.dispatch(spec, &p, &bindings, grid(rows, spec.workgroup))?;
    Ok(out.freeze())
}

/// Soft targets for hard labels with label smoothing ε: `1 − ε + ε/C` on the
/// label, `ε/C` elsewhere (PyTorch's `CrossEntropyLoss(label_smoothing=ε)`).
pub fn smoothed_targets(labels: &[u32], classes: usize, smoothing: f32) -> Result<Vec<f32>> {
    let off = smoothing / classes as f32;
    let mut t = vec![off; labels.len() * classes];
    for (r, &l) in labels.iter().enumerate() {
        let l = l as usize;
        if l >= classes {
            return Err(shape_err("smoothed_targets", format!("label {l} with {classes} classes")));
        }
        t[r * classes + l] += 1.0 - smoothing;
    }
    Ok(t)
}
