//! Multi-head softmax attention, `softmax(Q·Kᵀ·scale)·V` per (batch, head).
//!
//! Q, K and V are read in place from the packed qkv projection `[B, T, 3·D]`
//! (timm layout: q|k|v, heads contiguous inside each), and the output is
//! written straight into `[B, T, D]`, so no head transposes are materialised.
//!
//! Two paths. The fused kernel (`shaders/attention.wgsl`, [`fused_attention`])
//! keeps only the output and each row's log-sum-exp and recomputes the
//! probabilities in the backward: no `[B·H, T, T]` tensor, so memory grows
//! with T, not T². The composed path ([`attention`]: strided matmuls and the
//! row softmax) materialises the probabilities: it serves the attention maps
//! (analyses, viewer) and head dims the fused kernel does not take.

use super::matmul::{Epilogue, MatView, Matmul};
use super::softmax::{softmax_backward_in_place, softmax_in_place};
use super::{KernelVariant, expect_f32, u32_of};
use crate::device::{Device, KernelSpec};
use std::sync::OnceLock;

use crate::error::{Error, Result, shape_err};
use crate::shaders::{self, Shader};
use crate::tensor::{DType, Tensor, TensorMut};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    hd: usize,
}

fn dims(qkv: &Tensor, heads: usize) -> Result<Dims> {
    let op = "attention";
    let [b, t, d3] = qkv.shape() else {
        return Err(shape_err(op, format!("qkv {:?} must be [batch, tokens, 3·dim]", qkv.shape())));
    };
    if heads == 0 || d3 % (3 * heads) != 0 {
        return Err(shape_err(op, format!("qkv {:?} does not split into q, k, v of {heads} heads", qkv.shape())));
    }
    let d = d3 / 3;
    Ok(Dims { b: *b, t: *t, d, heads, hd: d / heads })
}

impl Dims {
    /// Head h of part `part` (0 q, 1 k, 2 v) of the packed qkv tensor.
    fn qkv_view<'a, T>(&self, qkv: &'a T, part: usize) -> MatView<'a, T> {
        MatView { t: qkv, off: part * self.d, row: 3 * self.d, b0: self.t * 3 * self.d, b1: self.hd }
    }

    /// Head h of a `[B, T, D]` tensor.
    fn head_view<'a, T>(&self, x: &'a T) -> MatView<'a, T> {
        MatView { t: x, off: 0, row: self.d, b0: self.t * self.d, b1: self.hd }
    }

    /// One `[T, T]` matrix per (batch, head) of a `[B·H, T, T]` tensor.
    fn scores_view<'a, T>(&self, s: &'a T) -> MatView<'a, T> {
        MatView { t: s, off: 0, row: self.t, b0: self.heads * self.t * self.t, b1: self.t * self.t }
    }

    /// FLOPs of `n` `[T, T]`-by-head-dim products over every (batch, head):
    /// what the fused kernel counts for the products it replaces (its
    /// recomputation in the backward is not counted, as it adds no math).
    fn products_flops(&self, n: u64) -> u64 {
        n * 2 * (self.b * self.heads * self.t * self.t * self.hd) as u64
    }

    fn scale(&self) -> f32 {
        (self.hd as f32).powf(-0.5)
    }

    /// One batched product over every (batch, head): `c = alpha·op(a)·op(b)`.
    fn matmul<'a>(
        &self,
        label: &'static str,
        (a, b, c): (MatView<'a>, MatView<'a>, MatView<'a, TensorMut>),
        (m, n, k): (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        alpha: f32,
    ) -> Matmul<'a> {
        let (outer, heads) = (self.b, self.heads);
        Matmul {
            a,
            b,
            c,
            m,
            n,
            k,
            outer,
            heads,
            trans_a,
            trans_b,
            alpha,
            beta: 0.0,
            bias: None,
            row_sums: None,
            epilogue: Epilogue::None,
            label: Some(label),
        }
    }
}

/// Returns `(out [B, T, D], probs [B·H, T, T])`. Reads f32 qkv only (the
/// f16 path is the fused kernel's).
pub fn attention(dev: &Device, qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    expect_f32("attention", "qkv", qkv)?;
    let s = dims(qkv, heads)?;
    let mut probs = TensorMut::uninit(dev, &[s.b * s.heads, s.t, s.t], DType::F32)?;
    let views = (s.qkv_view(qkv, 0), s.qkv_view(qkv, 1), s.scores_view(&probs));
    s.matmul("attn_qk", views, (s.t, s.t, s.hd), (false, true), s.scale()).run(dev)?;
    softmax_in_place(dev, &mut probs)?;
    let probs = probs.freeze();
    let out = TensorMut::uninit(dev, &[s.b, s.t, s.d], DType::F32)?;
    let views = (s.scores_view(&probs), s.qkv_view(qkv, 2), s.head_view(&out));
    s.matmul("attn_pv", views, (s.t, s.hd, s.t), (false, false), 1.0).run(dev)?;
    Ok((out.freeze(), probs))
}

/// Gradient w.r.t. the packed qkv, given the forward's `probs` and `dout`.
///
/// dP = dO·Vᵀ,  dS = softmax′(P, dP),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Pᵀ·dO
pub fn attention_backward(dev: &Device, qkv: &Tensor, probs: &Tensor, dout: &Tensor, heads: usize) -> Result<Tensor> {
    expect_f32("attention_backward", "qkv", qkv)?;
    expect_f32("attention_backward", "dout", dout)?;
    let s = dims(qkv, heads)?;
    if dout.shape() != [s.b, s.t, s.d] || probs.shape() != [s.b * s.heads, s.t, s.t] {
        let detail = format!("dout {:?} / probs {:?} for qkv {:?}", dout.shape(), probs.shape(), qkv.shape());
        return Err(shape_err("attention_backward", detail));
    }
    let mut ds = TensorMut::uninit(dev, probs.shape(), DType::F32)?;
    let views = (s.head_view(dout), s.qkv_view(qkv, 2), s.scores_view(&ds));
    s.matmul("attn_dp", views, (s.t, s.t, s.hd), (false, true), 1.0).run(dev)?;
    softmax_backward_in_place(dev, probs, &mut ds)?;
    let ds = ds.freeze();
    let dqkv = TensorMut::uninit(dev, qkv.shape(), DType::F32)?;
    let scale = s.scale();
    let views = (s.scores_view(&ds), s.qkv_view(qkv, 1), s.qkv_view(&dqkv, 0));
    s.matmul("attn_dq", views, (s.t, s.hd, s.t), (false, false), scale).run(dev)?;
    let views = (s.scores_view(&ds), s.qkv_view(qkv, 0), s.qkv_view(&dqkv, 1));
    s.matmul("attn_dk", views, (s.t, s.hd, s.t), (true, false), scale).run(dev)?;
    let views = (s.scores_view(probs), s.head_view(dout), s.qkv_view(&dqkv, 2));
    s.matmul("attn_dv", views, (s.t, s.hd, s.t), (true, false), 1.0).run(dev)?;
    Ok(dqkv.freeze())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FusedParams {
    batch: u32,
    t: u32,
    d: u32,
    heads: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Which kernels a training step's attention runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    Fused,
    Composed,
}

/// The path for a training step (`CMAE_ATTENTION=fused|composed` forces
/// one where the fused kernel takes the head dim). Without it: fused wherever
/// the probabilities would not fit one storage binding, else the autotuner's
/// winner, whose fallback (and the only choice with `CMAE_AUTOTUNE=off`) is
/// this heuristic: fused on GPUs (no T² tensor, three dispatches instead of
/// eight); on CPU adapters the composed path's subgroup matmuls win from
/// about T = 50 (lavapipe, `cmae bench kernels --filter attention`: fused
/// 1.1–1.3× at T = 17, 0.3× at T = 197), so there fused for short sequences only.
/// An f16 qkv (mixed precision) always takes the fused path where the head
/// dim allows: the composed one would need an f32 copy of it.
pub fn training_path(dev: &Device, qkv: &Tensor, heads: usize) -> Result<AttentionPath> {
    let s = dims(qkv, heads)?;
    if !fused_head_dim(s.hd) {
        return Ok(AttentionPath::Composed);
    }
    if let Some(path) = forced_path()? {
        return Ok(path);
    }
    if qkv.dtype() == DType::F16 {
        return Ok(AttentionPath::Fused);
    }
    let probs_bytes = (s.b * s.heads * s.t * s.t * 4) as u64;
    if probs_bytes > dev.limits().max_storage_buffer_binding_size {
        return Ok(AttentionPath::Fused);
    }
    let cpu = dev.info().device_type == wgpu::DeviceType::Cpu;
    let heuristic = if !cpu || s.t <= 32 { AttentionPath::Fused } else { AttentionPath::Composed };
    crate::tune::attention::path(dev, [s.b, s.t, 3 * s.d], heads, heuristic)
}

/// `CMAE_ATTENTION`, read once per process (a step asks once per block).
fn forced_path() -> Result<Option<AttentionPath>> {
    static FORCED: OnceLock<std::result::Result<Option<AttentionPath>, String>> = OnceLock::new();
    let forced = FORCED.get_or_init(|| match std::env::var("CMAE_ATTENTION").as_deref() {
        Err(_) => Ok(None),
        Ok("fused") => Ok(Some(AttentionPath::Fused)),
        Ok("composed") => Ok(Some(AttentionPath::Composed)),
        Ok(other) => {
            Err(format!("CMAE_ATTENTION={other} is not an attention path; set fused or composed, or unset it"))
        }
    });
    forced.clone().map_err(Error::Env)
}

/// Head dims the fused kernel takes: whole vec4s up to 128 (its private row
/// buffers hold 32 vec4s).
fn fused_head_dim(hd: usize) -> bool {
    hd.is_multiple_of(4) && (4..=128).contains(&hd)
}

/// Every pipeline the fused kernels may build: each entry point at each head
/// dim they take, in both precisions.
pub(crate) fn variants() -> Result<Vec<KernelVariant>> {
    let mut all = Vec::new();
    for shader in [&shaders::ATTENTION, &shaders::ATTENTION_F16] {
        let entries = crate::device::reflect(shader)?;
        for hd in (4..=128).filter(|&hd| fused_head_dim(hd)) {
            all.extend(entries.iter().map(|e| KernelVariant {
                shader,
                entry: e.entry.clone(),
                constants: vec![("HD4", (hd / 4) as f64)],
            }));
        }
    }
    Ok(all)
}

/// The fused module for tensors stored as `dtype` (f32, or f16 under mixed precision).
fn fused_shader(op: &'static str, dtype: DType) -> Result<&'static Shader> {
    match dtype {
        DType::F32 => Ok(&shaders::ATTENTION),
        DType::F16 => Ok(&shaders::ATTENTION_F16),
        other => Err(shape_err(op, format!("qkv must be f32 or f16, got {other:?}"))),
    }
}

/// How the fused kernels spread rows over invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedLayout {
    /// A workgroup per 64 rows of one batch·head, staging the other side's
    /// rows in workgroup memory: for GPUs.
    Tiles,
    /// One invocation per row over all batch·heads, straight from storage:
    /// for CPU adapters, where workgroup memory is no faster and small T
    /// would leave most of a tile's invocations idle.
    Rows,
}

impl FusedLayout {
    /// The layout for this adapter.
    pub fn for_device(dev: &Device) -> Self {
        dev.kernel_families().attention_layout()
    }

    fn entry(self, tiles: &'static str, rows: &'static str) -> &'static str {
        match self {
            Self::Tiles => tiles,
            Self::Rows => rows,
        }
    }
}

struct Fused {
    shader: &'static Shader,
    params: FusedParams,
    constants: [(&'static str, f64); 1],
    groups: [u32; 3],
    layout: FusedLayout,
}

impl Fused {
    /// For tensors stored as `dtype`.
    fn new(dev: &Device, s: &Dims, layout: FusedLayout, dtype: DType) -> Result<Self> {
        let op = "fused_attention";
        let shader = fused_shader(op, dtype)?;
        if !fused_head_dim(s.hd) {
            return Err(shape_err(op, format!("head dim {} is not a multiple of 4 in 4..=128", s.hd)));
        }
        let params = FusedParams {
            batch: u32_of(op, s.b)?,
            t: u32_of(op, s.t)?,
            d: u32_of(op, s.d)?,
            heads: u32_of(op, s.heads)?,
            scale: s.scale(),
            _pad: [0; 3],
        };
        let groups = match layout {
            // One workgroup per (block of 64 rows, batch·head).
            FusedLayout::Tiles => [u32_of(op, s.t.div_ceil(64))?, u32_of(op, s.b * s.heads)?, 1],
            // 64 rows per workgroup over all batch·heads, spilling into y past the per-dimension limit.
            FusedLayout::Rows => {
                let groups = (s.b * s.heads * s.t).div_ceil(64) as u64;
                let max = u64::from(dev.limits().max_compute_workgroups_per_dimension);
                [u32_of(op, groups.min(max) as usize)?, u32_of(op, groups.div_ceil(max) as usize)?, 1]
            }
        };
        Ok(Self { shader, params, constants: [("HD4", (s.hd / 4) as f64)], groups, layout })
    }

    fn spec(&self, (tiles, rows): (&'static str, &'static str), label: &'static str) -> KernelSpec<'_> {
        let entry = self.layout.entry(tiles, rows);
        KernelSpec { shader: self.shader, entry, constants: &self.constants, label, workgroup: [64, 1, 1] }
    }
}

/// Fused attention: `(out [B, T, D], lse [B·H, T])`, the row log-sum-exps
/// that let the backward recompute the probabilities. `out` is stored like
/// qkv (f32, or f16 under mixed precision); `lse` is f32.
pub fn fused_attention(dev: &Device, qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
    fused_attention_in(dev, qkv, heads, FusedLayout::for_device(dev))
}

/// [`fused_attention`] in a given layout (tests run both on every adapter).
pub fn fused_attention_in(dev: &Device, qkv: &Tensor, heads: usize, layout: FusedLayout) -> Result<(Tensor, Tensor)> {
    let s = dims(qkv, heads)?;
    let f = Fused::new(dev, &s, layout, qkv.dtype())?;
    let out = TensorMut::uninit(dev, &[s.b, s.t, s.d], qkv.dtype())?;
    let lse = TensorMut::uninit(dev, &[s.b * s.heads, s.t], DType::F32)?;
    let bindings = [qkv.bind(1), lse.bind_mut(4), out.bind_mut(6)];
    dev.dispatch(f.spec(("forward", "forward_rows"), "attn_fused"), &f.params, &bindings, f.groups)?;
    dev.count_matmul_flops(s.products_flops(2));
    Ok((out.freeze(), lse.freeze()))
}

/// Gradient w.r.t. the packed qkv from the forward's `out` and `lse` and
/// `dout`, stored like qkv (out and dout must be stored like it too).
pub fn fused_attention_backward(
    dev: &Device,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    fused_attention_backward_in(dev, qkv, out, lse, dout, heads, FusedLayout::for_device(dev))
}

/// [`fused_attention_backward`] in a given layout.
pub fn fused_attention_backward_in(
    dev: &Device,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    dout: &Tensor,
    heads: usize,
    layout: FusedLayout,
) -> Result<Tensor> {
    let s = dims(qkv, heads)?;
    if out.shape() != [s.b, s.t, s.d] || dout.shape() != out.shape() || lse.shape() != [s.b * s.heads, s.t] {
        let detail = format!(
            "out {:?} / dout {:?} / lse {:?} for qkv {:?}",
            out.shape(),
            dout.shape(),
            lse.shape(),
            qkv.shape()
        );
        return Err(shape_err("fused_attention_backward", detail));
    }
    if out.dtype() != qkv.dtype() || dout.dtype() != qkv.dtype() {
        let detail = format!("out {:?} and dout {:?} for a {:?} qkv", out.dtype(), dout.dtype(), qkv.dtype());
        return Err(shape_err("fused_attention_backward", detail));
    }
    expect_f32("fused_attention_backward", "lse", lse)?;
    let f = Fused::new(dev, &s, layout, qkv.dtype())?;
    let dsum = TensorMut::uninit(dev, lse.shape(), DType::F32)?;
    let dqkv = TensorMut::uninit(dev, qkv.shape(), qkv.dtype())?;
    let bindings = [qkv.bind(1), out.bind(2), dout.bind(3), lse.bind(4), dsum.bind_mut(5), dqkv.bind_mut(6)];
    dev.dispatch(f.spec(("backward_q", "backward_q_rows"), "attn_fused_dq"), &f.params, &bindings, f.groups)?;
    let dsum = dsum.freeze();
    let bindings = [qkv.bind(1), dout.bind(3), lse.bind(4), dsum.bind(5), dqkv.bind_mut(6)];
    dev.dispatch(f.spec(("backward_kv", "backward_kv_rows"), "attn_fused_dkv"), &f.params, &bindings, f.groups)?;
    dev.count_matmul_flops(s.products_flops(4));
    Ok(dqkv.freeze())
}
