//! `cmae bench kernels`: one JSON line per kernel case.

use anyhow::Result;
use cmae_engine::kernels::{attention, gather, matmul};
use cmae_engine::{Device, Tensor};
use serde_json::{Value, json};

use crate::stats::median_ms;

/// Which cases to run and how often.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only cases whose kernel name contains this.
    pub filter: Option<String>,
    pub warmup: usize,
    pub runs: usize,
}

fn filled(dev: &Device, shape: &[usize], seed: u32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // Cheap deterministic values in [-1, 1): speed does not depend on them.
    let data: Vec<f32> = (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0) - 1.0)
        .collect();
    Ok(Tensor::from_f32(dev, &data, shape)?)
}

fn matmul_case(
    dev: &Device,
    opts: &Options,
    (m, n, k): (usize, usize, usize),
    trans_b: bool,
    shape: &str,
) -> Result<Value> {
    let a = filled(dev, &[m, k], 1)?;
    let b = filled(dev, &if trans_b { [n, k] } else { [k, n] }, 2)?;
    let ms = median_ms(opts.warmup, opts.runs, || {
        matmul::matmul(dev, &a, &b, false, trans_b)?;
        Ok(dev.sync()?)
    })?;
    let flops = 2.0 * (m * n * k) as f64;
    Ok(json!({"kernel": "matmul", "shape": shape, "m": m, "n": n, "k": k, "trans": if trans_b { "nt" } else { "nn" },
        "ms": round(ms), "gflops": round(flops / ms / 1e6)}))
}

/// Forward and backward of one attention shape, composed (matmuls and the
/// softmax, `[B·H, T, T]` probabilities) or fused (`fused`).
fn attention_case(
    dev: &Device,
    opts: &Options,
    (batch, heads, t, hd): (usize, usize, usize, usize),
    fused: bool,
) -> Result<Value> {
    let d = heads * hd;
    let qkv = filled(dev, &[batch, t, 3 * d], 3)?;
    let dout = filled(dev, &[batch, t, d], 4)?;
    let ms = median_ms(opts.warmup, opts.runs, || {
        if fused {
            let (out, lse) = attention::fused_attention(dev, &qkv, heads)?;
            attention::fused_attention_backward(dev, &qkv, &out, &lse, &dout, heads)?;
        } else {
            let (_, probs) = attention::attention(dev, &qkv, heads)?;
            attention::attention_backward(dev, &qkv, &probs, &dout, heads)?;
        }
        Ok(dev.sync()?)
    })?;
    // Forward: Q·Kᵀ and P·V; backward: four more products of the same size.
    // The fused kernel's recomputation is not counted: same work, same FLOPs.
    let flops = 12.0 * (batch * heads * t * t * hd) as f64;
    let kernel = if fused { "attention_fused_fwd_bwd" } else { "attention_fwd_bwd" };
    Ok(json!({"kernel": kernel, "bh": batch * heads, "t": t, "hd": hd,
        "ms": round(ms), "gflops": round(flops / ms / 1e6)}))
}

fn gather_cases(dev: &Device, opts: &Options, (b, n, k, d): (usize, usize, usize, usize)) -> Result<Vec<Value>> {
    let src = filled(dev, &[b, n, d], 5)?;
    let idx: Vec<u32> = (0..b).flat_map(|s| (0..k).map(move |i| ((i * 7 + s) % n) as u32)).collect();
    let idx = Tensor::from_u32(dev, &idx, &[b, k])?;
    let rows = filled(dev, &[b, k, d], 6)?;
    let bytes = (2 * b * k * d * 4) as f64;
    let gather_ms = median_ms(opts.warmup, opts.runs, || {
        gather::gather_rows(dev, &src, &idx)?;
        Ok(dev.sync()?)
    })?;
    let scatter_ms = median_ms(opts.warmup, opts.runs, || {
        gather::scatter_add_rows(dev, &rows, &idx, n)?;
        Ok(dev.sync()?)
    })?;
    Ok(vec![
        json!({"kernel": "gather_rows", "b": b, "n": n, "k": k, "d": d, "ms": round(gather_ms), "gbps": round(bytes / gather_ms / 1e6)}),
        json!({"kernel": "scatter_add_rows", "b": b, "n": n, "k": k, "d": d, "ms": round(scatter_ms),
            "gbps": round((bytes + (b * n * d * 4) as f64) / scatter_ms / 1e6)}),
    ])
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Runs every case, calling `emit` with each JSON line as soon as it is measured.
pub fn run(dev: &Device, opts: &Options, mut emit: impl FnMut(Value)) -> Result<()> {
    let want = |name: &str| opts.filter.as_deref().is_none_or(|f| name.contains(f));
    let adapter = dev.info().name.clone();
    let mut out = |mut v: Value| {
        v["adapter"] = json!(adapter);
        emit(v);
    };
    if want("matmul") {
        for s in [256, 512, 1024, 2048] {
            out(matmul_case(dev, opts, (s, s, s), false, "square")?);
        }
        // A ViT MLP's first layer, x·Wᵀ: [B·T, D] × [D, 4D].
        for d in [192, 384] {
            for bt in [64 * 17, 256 * 50] {
                out(matmul_case(dev, opts, (bt, 4 * d, d), true, "vit_mlp")?);
            }
        }
    }
    if want("attention") {
        // (B·H, T, hd) = (192, 17, 64): tiny/ViT-S masked encoder; (96, 197, 64): ViT-B full.
        for fused in [false, true] {
            out(attention_case(dev, opts, (64, 3, 17, 64), fused)?);
            out(attention_case(dev, opts, (8, 12, 197, 64), fused)?);
        }
        // The fused kernel alone at the sequence lengths of the presets' encoders
        // (B·H = 64 each, head dim 64).
        for t in [17, 50, 65, 257] {
            out(attention_case(dev, opts, (16, 4, t, 64), true)?);
        }
    }
    if want("gather") || want("scatter") {
        for v in gather_cases(dev, opts, (64, 65, 16, 192))? {
            out(v);
        }
    }
    if want("dispatch") {
        let n = 1000;
        let o = super::overhead::measure(dev, n)?;
        out(
            json!({"kernel": "dispatch_overhead", "dispatches": n, "ms": round(o.engine_ms), "raw_ms": round(o.raw_ms),
            "ratio": round(o.engine_ms / o.raw_ms)}),
        );
    }
    Ok(())
}
