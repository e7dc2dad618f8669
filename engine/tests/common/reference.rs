//! f64 CPU references of the kernels, written for clarity, not speed.
#![allow(dead_code)]

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// y[r, n] = Σ_k x[r, k]·w[n, k] + b[n]
pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, rows: usize, inp: usize, out: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        for n in 0..out {
            let mut acc = b.map_or(0.0, |b| b[n]);
            for k in 0..inp {
                acc += x[r * inp + k] * w[n * inp + k];
            }
            y[r * out + n] = acc;
        }
    }
    y
}

pub fn gelu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))).collect()
}

pub fn layer_norm(x: &[f64], g: &[f64], b: &[f64], d: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (row, out) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..d {
            out[j] = (row[j] - mean) * rstd * g[j] + b[j];
        }
    }
    y
}

pub fn softmax_rows(x: &[f64], cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (row, out) in x.chunks(cols).zip(y.chunks_mut(cols)) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for j in 0..cols {
            out[j] = (row[j] - mx).exp() / sum;
        }
    }
    y
}

/// Attention on packed qkv [b, t, 3d] (q|k|v, heads contiguous) → [b, t, d].
pub fn attention(qkv: &[f64], b: usize, t: usize, d: usize, heads: usize) -> Vec<f64> {
    let hd = d / heads;
    let scale = (hd as f64).powf(-0.5);
    let mut out = vec![0.0; b * t * d];
    let at = |bi: usize, ti: usize, part: usize, h: usize, c: usize| qkv[(bi * t + ti) * 3 * d + part * d + h * hd + c];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| (0..hd).map(|c| at(bi, i, 0, h, c) * at(bi, j, 1, h, c)).sum::<f64>() * scale)
                    .collect();
                let p = softmax_rows(&scores, t);
                for c in 0..hd {
                    out[(bi * t + i) * d + h * hd + c] = (0..t).map(|j| p[j] * at(bi, j, 2, h, c)).sum();
                }
            }
        }
    }
    out
}

/// out[b, k, :] = x[b, idx[b, k], :]
pub fn gather_rows(x: &[f64], idx: &[u32], b: usize, n: usize, k: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; b * k * d];
    for bi in 0..b {
        for ki in 0..k {
            let r = idx[bi * k + ki] as usize;
            assert!(r < n);
            out[(bi * k + ki) * d..(bi * k + ki + 1) * d].copy_from_slice(&x[(bi * n + r) * d..(bi * n + r + 1) * d]);
        }
    }
    out
}

/// Σ_r w_r · mean_j (p − t)²
pub fn weighted_mse(pred: &[f64], target: &[f64], w: &[f64], cols: usize) -> f64 {
    pred.chunks(cols)
        .zip(target.chunks(cols))
        .zip(w)
        .map(|((p, t), w)| w * p.iter().zip(t).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / cols as f64)
        .sum()
}

/// Σ_r w_r · (−Σ_j t_j log softmax(z)_j)
pub fn weighted_xent(logits: &[f64], target: &[f64], w: &[f64], cols: usize) -> f64 {
    logits
        .chunks(cols)
        .zip(target.chunks(cols))
        .zip(w)
        .map(|((z, t), w)| {
            let p = softmax_rows(z, cols);
            -w * t.iter().zip(&p).map(|(t, p)| t * p.ln()).sum::<f64>()
        })
        .sum()
}
