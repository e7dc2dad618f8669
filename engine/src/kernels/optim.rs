//! Optimizer update kernels (`shaders/optim.wgsl`).

use super::scaler::LossScaler;
use super::{grid, same_shape, u32_of};
use crate::device::{Access, Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{Span, Tensor, TensorMut};

/// AdamW hyper-parameters for one update of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for the bias corrections.
    pub step: u64,
    /// Multiplies the gradient first (e.g. 1/accumulation steps).
    pub grad_scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_c1: f32,
    bias_c2_sqrt: f32,
    grad_scale: f32,
}

/// Both updates handle a vec4 per invocation, 256 invocations per workgroup.
fn spec(entry: &'static str) -> KernelSpec<'static> {
    KernelSpec::new(&shaders::OPTIM, entry, entry, 256)
}

/// AdamW's bias corrections `1 − β1ᵗ` and `sqrt(1 − β2ᵗ)`, in f64 so late steps keep full precision.
fn bias_corrections(s: &AdamWStep) -> (f32, f32) {
    let step = s.step.max(1) as f64;
    ((1.0 - f64::from(s.beta1).powf(step)) as f32, (1.0 - f64::from(s.beta2).powf(step)).sqrt() as f32)
}

/// Updates `param`, `m` and `v` in place.
pub fn adamw(
    dev: &Device,
    param: &mut TensorMut,
    grad: &Tensor,
    m: &mut TensorMut,
    v: &mut TensorMut,
    s: AdamWStep,
) -> Result<()> {
    for t in [grad, m.as_tensor(), v.as_tensor()] {
        same_shape("adamw", param, t)?;
    }
    let (bias_c1, bias_c2_sqrt) = bias_corrections(&s);
    let p = Params {
        n: u32_of("adamw", param.numel())?,
        _pad: [0; 3],
        lr: s.lr,
        beta1: s.beta1,
        beta2: s.beta2,
        eps: s.eps,
        weight_decay: s.weight_decay,
        bias_c1,
        bias_c2_sqrt,
        grad_scale: s.grad_scale,
    };
    let spec = spec("adamw");
    let bindings = [grad.bind(1), param.bind_mut(2), m.bind_mut(3), v.bind_mut(4)];
    dev.dispatch(spec, &p, &bindings, grid(param.numel().div_ceil(4), spec.workgroup))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackedParams {
    segments: u32,
    n4: u32,
    _pad: [u32; 2],
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
    bias_c1: f32,
    bias_c2_sqrt: f32,
    _pad2: [f32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Segment {
    start: u32,
    end: u32,
    lr: f32,
    weight_decay: f32,
}

/// [`adamw`] over every tensor of a model in one dispatch: `params`, `grads`,
/// `m` and `v` are each all the members of one pack
/// ([`super::elementwise::packed_zeros`]), in the same order and shapes, and
/// `steps[i]` is tensor i's update (its own lr and weight decay; β, eps, step
/// and grad scale shared). Same arithmetic as one [`adamw`] per tensor.
/// With a loss `scaler` the gradients are also divided by its scale, and the
/// step is skipped (nothing written) when it found a non-finite gradient;
/// the scale never leaves the device.
pub fn adamw_packed(
    dev: &Device,
    params: &mut [&mut TensorMut],
    grads: &[&Tensor],
    m: &mut [&mut TensorMut],
    v: &mut [&mut TensorMut],
    steps: &[AdamWStep],
    scaler: Option<&LossScaler>,
) -> Result<()> {
    // The entry point, and the operation errors name.
    let op = if scaler.is_some() { "adamw_packed_unscale" } else { "adamw_packed" };
    let n = params.len();
    if [grads.len(), m.len(), v.len(), steps.len()] != [n; 4] {
        return Err(shape_err(
            op,
            format!("{n} parameters, {} gradients, {}+{} states, {} steps", grads.len(), m.len(), v.len(), steps.len()),
        ));
    }
    let Some(first) = steps.first() else { return Ok(()) };
    let shared = |s: &AdamWStep| (s.beta1, s.beta2, s.eps, s.step, s.grad_scale);
    if steps.iter().any(|s| shared(s) != shared(first)) {
        return Err(shape_err(op, "the tensors' steps differ in beta, eps, step or grad scale"));
    }
    for i in 0..n {
        for t in [grads[i], m[i].as_tensor(), v[i].as_tensor()] {
            same_shape(op, params[i], t)?;
        }
    }
    let params_span = Span::of(op, &params.iter().map(|t| t.as_tensor()).collect::<Vec<_>>())?;
    let spans = [
        Span::of(op, grads)?,
        Span::of(op, &m.iter().map(|t| t.as_tensor()).collect::<Vec<_>>())?,
        Span::of(op, &v.iter().map(|t| t.as_tensor()).collect::<Vec<_>>())?,
    ];
    if spans.iter().any(|s| s.starts != params_span.starts || s.len() != params_span.len()) {
        return Err(shape_err(op, "the gradient and state packs are laid out unlike the parameter pack"));
    }
    let segments = params
        .iter()
        .zip(&params_span.starts)
        .zip(steps)
        .map(|((p, &start), s)| {
            Ok(Segment {
                start: u32_of(op, start / 4)?,
                end: u32_of(op, (start + p.numel()).div_ceil(4))?,
                lr: s.lr,
                weight_decay: s.weight_decay,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let segments = Tensor::from_u32(dev, bytemuck::cast_slice(&segments), &[segments.len() * 4])?;
    let (bias_c1, bias_c2_sqrt) = bias_corrections(first);
    let n4 = params_span.len().div_ceil(4);
    let p = PackedParams {
        segments: u32_of(op, n)?,
        n4: u32_of(op, n4)?,
        _pad: [0; 2],
        beta1: first.beta1,
        beta2: first.beta2,
        eps: first.eps,
        grad_scale: first.grad_scale,
        bias_c1,
        bias_c2_sqrt,
        _pad2: [0.0; 2],
    };
    let spec = spec(op);
    let [g, m, v] = &spans;
    let mut bindings = vec![
        g.bind(1, Access::Read),
        params_span.bind(2, Access::Write),
        m.bind(3, Access::Write),
        v.bind(4, Access::Write),
        segments.bind(5),
    ];
    bindings.extend(scaler.map(|s| s.state().bind(6)));
    dev.dispatch(spec, &p, &bindings, grid(n4, spec.workgroup))
}

/// LARS hyper-parameters for one update of one tensor (MAE's `util/lars.py`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LarsStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub trust: f32,
    /// Weight decay and the trust ratio apply to weights only, not to 1-D
    /// parameters (biases, norms).
    pub scaled: bool,
    pub grad_scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LarsParams {
    n: u32,
    scaled: u32,
    _pad: [u32; 2],
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    trust: f32,
    grad_scale: f32,
    _pad2: [f32; 3],
}

/// Updates `param` and its momentum `mu` in place.
pub fn lars(dev: &Device, param: &mut TensorMut, grad: &Tensor, mu: &mut TensorMut, s: LarsStep) -> Result<()> {
    use super::elementwise::axpby;
    use super::reduce::weighted_sums;
    for t in [grad, mu.as_tensor()] {
        same_shape("lars", param, t)?;
    }
    let n = param.numel();
    let flat = |t: &Tensor| t.reshape(&[n]);
    let row = |t: &Tensor| t.reshape(&[1, n]);
    // ‖p‖² and ‖g·scale + wd·p‖², computed on the GPU in this batch.
    let dp = axpby(dev, s.grad_scale, grad, s.weight_decay, param)?;
    let norm_p = weighted_sums(dev, &flat(param)?, &row(param)?)?;
    let norm_dp = weighted_sums(dev, &flat(&dp)?, &row(&dp)?)?;
    let p = LarsParams {
        n: u32_of("lars", n)?,
        scaled: u32::from(s.scaled),
        _pad: [0; 2],
        lr: s.lr,
        momentum: s.momentum,
        weight_decay: s.weight_decay,
        trust: s.trust,
        grad_scale: s.grad_scale,
        _pad2: [0.0; 3],
    };
    let spec = spec("lars");
    let bindings = [grad.bind(1), param.bind_mut(2), mu.bind_mut(3), norm_p.bind(5), norm_dp.bind(6)];
    dev.dispatch(spec, &p, &bindings, grid(n.div_ceil(4), spec.workgroup))
}
