//! The fused attention kernel against an f64 reference: outputs, row
//! log-sum-exps and all three input gradients, over awkward sequence lengths
//! (1, 2, 17, 33, 65, 197, 1025), head dims (4, 16, 64, 96) and batch·heads (1, 4, 7);
//! and against the composed path that materialises the probabilities.

mod common;

use cmae_engine::Tensor;
use cmae_engine::kernels::attention::{
    AttentionPath, FusedLayout, attention, fused_attention, fused_attention_backward_in, fused_attention_in,
    training_path,
};
use common::reference::to64;
use common::{assert_close, dev, download, rand_vec, untuned_dev, upload};

/// f32 sums of up to T·hd products: a few ulps of the largest terms.
const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

struct Shape {
    b: usize,
    heads: usize,
    t: usize,
    hd: usize,
}

impl Shape {
    fn d(&self) -> usize {
        self.heads * self.hd
    }

    fn name(&self) -> String {
        format!("b{} h{} t{} hd{}", self.b, self.heads, self.t, self.hd)
    }
}

const SHAPES: [Shape; 8] = [
    Shape { b: 1, heads: 1, t: 1, hd: 16 },
    Shape { b: 2, heads: 2, t: 33, hd: 4 },
    Shape { b: 1, heads: 1, t: 2, hd: 64 },
    Shape { b: 1, heads: 7, t: 17, hd: 16 },
    Shape { b: 2, heads: 1, t: 65, hd: 96 },
    Shape { b: 1, heads: 7, t: 197, hd: 64 },
    Shape { b: 1, heads: 1, t: 1025, hd: 16 },
    Shape { b: 1, heads: 1, t: 1025, hd: 64 },
];

/// Per (sample, head): the probabilities P [t, t] in f64.
fn probs(qkv: &[f64], s: &Shape, bi: usize, h: usize) -> Vec<f64> {
    let (t, d, hd) = (s.t, s.d(), s.hd);
    let scale = (hd as f64).powf(-0.5);
    let at = |r: usize, part: usize, c: usize| qkv[(bi * t + r) * 3 * d + part * d + h * hd + c];
    let mut p = vec![0.0; t * t];
    for i in 0..t {
        let row: Vec<f64> = (0..t).map(|j| (0..hd).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale).collect();
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for j in 0..t {
            p[i * t + j] = (row[j] - mx).exp() / sum;
        }
    }
    p
}

/// `(out [b, t, d], lse [b·h, t])` in f64.
fn forward_ref(qkv: &[f64], s: &Shape) -> (Vec<f64>, Vec<f64>) {
    let (t, d, hd) = (s.t, s.d(), s.hd);
    let scale = (hd as f64).powf(-0.5);
    let mut out = vec![0.0; s.b * t * d];
    let mut lse = vec![0.0; s.b * s.heads * t];
    for bi in 0..s.b {
        for h in 0..s.heads {
            let at = |r: usize, part: usize, c: usize| qkv[(bi * t + r) * 3 * d + part * d + h * hd + c];
            let p = probs(qkv, s, bi, h);
            for i in 0..t {
                for c in 0..hd {
                    out[(bi * t + i) * d + h * hd + c] = (0..t).map(|j| p[i * t + j] * at(j, 2, c)).sum();
                }
                let row: Vec<f64> =
                    (0..t).map(|j| (0..hd).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() * scale).collect();
                let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse[(bi * s.heads + h) * t + i] = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            }
        }
    }
    (out, lse)
}

/// dqkv in f64: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP − rowsum(dP∘P)), dQ = scale·dS·K, dK = scale·dSᵀ·Q.
fn backward_ref(qkv: &[f64], dout: &[f64], s: &Shape) -> Vec<f64> {
    let (t, d, hd) = (s.t, s.d(), s.hd);
    let scale = (hd as f64).powf(-0.5);
    let mut dqkv = vec![0.0; qkv.len()];
    for bi in 0..s.b {
        for h in 0..s.heads {
            let at = |r: usize, part: usize, c: usize| qkv[(bi * t + r) * 3 * d + part * d + h * hd + c];
            let go = |r: usize, c: usize| dout[(bi * t + r) * d + h * hd + c];
            let p = probs(qkv, s, bi, h);
            let mut ds = vec![0.0; t * t];
            for i in 0..t {
                let dp: Vec<f64> = (0..t).map(|j| (0..hd).map(|c| go(i, c) * at(j, 2, c)).sum()).collect();
                let dot: f64 = (0..t).map(|j| dp[j] * p[i * t + j]).sum();
                for j in 0..t {
                    ds[i * t + j] = p[i * t + j] * (dp[j] - dot);
                }
            }
            for r in 0..t {
                for c in 0..hd {
                    let base = (bi * t + r) * 3 * d + h * hd + c;
                    dqkv[base] = scale * (0..t).map(|j| ds[r * t + j] * at(j, 1, c)).sum::<f64>();
                    dqkv[base + d] = scale * (0..t).map(|i| ds[i * t + r] * at(i, 0, c)).sum::<f64>();
                    dqkv[base + 2 * d] = (0..t).map(|i| p[i * t + r] * go(i, c)).sum::<f64>();
                }
            }
        }
    }
    dqkv
}

/// Both layouts of the fused kernels run on every adapter.
const LAYOUTS: [FusedLayout; 2] = [FusedLayout::Tiles, FusedLayout::Rows];

#[test]
fn fused_forward_matches_the_f64_reference() {
    for layout in LAYOUTS {
        for s in &SHAPES {
            let qkv = rand_vec(s.b * s.t * 3 * s.d(), 5 + s.t as u64);
            let qkv_t = upload(&qkv, &[s.b, s.t, 3 * s.d()]);
            let (out, lse) = fused_attention_in(dev(), &qkv_t, s.heads, layout).unwrap();
            let (want_out, want_lse) = forward_ref(&to64(&qkv), s);
            assert_close(&format!("{layout:?} fused out {}", s.name()), &download(&out), &want_out, ATOL, RTOL);
            assert_close(&format!("{layout:?} fused lse {}", s.name()), &download(&lse), &want_lse, ATOL, RTOL);
        }
    }
}

#[test]
fn fused_backward_matches_the_f64_reference() {
    for layout in LAYOUTS {
        for s in SHAPES.iter().filter(|s| s.t <= 197) {
            let qkv = rand_vec(s.b * s.t * 3 * s.d(), 7 + s.t as u64);
            let dout = rand_vec(s.b * s.t * s.d(), 9 + s.t as u64);
            let qkv_t = upload(&qkv, &[s.b, s.t, 3 * s.d()]);
            let (out, lse) = fused_attention_in(dev(), &qkv_t, s.heads, layout).unwrap();
            let dout_t = upload(&dout, &[s.b, s.t, s.d()]);
            let dqkv = fused_attention_backward_in(dev(), &qkv_t, &out, &lse, &dout_t, s.heads, layout).unwrap();
            let want = backward_ref(&to64(&qkv), &to64(&dout), s);
            assert_close(&format!("{layout:?} fused dqkv {}", s.name()), &download(&dqkv), &want, ATOL, RTOL);
        }
    }
}

/// Where probabilities are asked for, the composed path gives them; its
/// output agrees with the fused kernel's.
#[test]
fn fused_and_composed_paths_agree() {
    let s = Shape { b: 2, heads: 3, t: 50, hd: 64 };
    let qkv = upload(&rand_vec(s.b * s.t * 3 * s.d(), 3), &[s.b, s.t, 3 * s.d()]);
    let (fused, _) = fused_attention(dev(), &qkv, s.heads).unwrap();
    let (composed, probs) = attention(dev(), &qkv, s.heads).unwrap();
    assert_eq!(probs.shape(), [s.b * s.heads, s.t, s.t]);
    let composed = to64(&download(&composed));
    assert_close("fused vs composed", &download(&fused), &composed, ATOL, RTOL);
}

#[test]
fn head_dims_outside_the_fused_kernel_are_refused_or_routed() {
    let qkv = upload(&rand_vec(2 * 5 * 3 * 18, 1), &[2, 5, 3 * 18]);
    assert_eq!(training_path(dev(), &qkv, 3).unwrap(), AttentionPath::Composed, "head dim 6");
    let err = fused_attention(dev(), &qkv, 3).unwrap_err().to_string();
    assert!(err.contains("head dim 6"), "{err}");
}

/// Without `CMAE_ATTENTION` and autotuning, a CPU adapter takes the fused
/// kernel for short sequences and where the probabilities would not fit one
/// binding (a micro model at 64 px with patch 2: T = 1025), a GPU always.
#[test]
fn training_path_follows_the_heuristic() {
    if std::env::var_os("CMAE_ATTENTION").is_some() {
        panic!("unset CMAE_ATTENTION to test the built-in choice");
    }
    let d = &untuned_dev();
    let zeros = |shape: &[usize]| Tensor::from_f32(d, &vec![0.0; shape.iter().product()], shape).unwrap();
    let shape = |b: usize, t: usize| zeros(&[b, t, 3 * 64]);
    let cpu = d.info().device_type == wgpu::DeviceType::Cpu;
    let path = |qkv: &Tensor| training_path(d, qkv, 1).unwrap();
    assert_eq!(path(&shape(2, 17)), AttentionPath::Fused);
    let long = if cpu { AttentionPath::Composed } else { AttentionPath::Fused };
    assert_eq!(path(&shape(2, 197)), long);
    let too_big = (d.limits().max_storage_buffer_binding_size / (1025 * 1025 * 4) + 1) as usize;
    assert_eq!(path(&shape(too_big, 1025)), AttentionPath::Fused);
    assert_eq!(path(&zeros(&[1, 17, 3 * 6])), AttentionPath::Composed);
}

/// Mixed precision: qkv, out and dout stored as f16 (the fused module for
/// f16), everything else f32. Against the f64 reference computed from the
/// same f16-rounded qkv and dout, each stored result may be off by the f32
/// tolerance plus one rounding to f16 (u = 2⁻¹⁰ of its value: WGSL may round
/// to either neighbour). The backward reads the f16-rounded output O for
/// D_i = dO_i·O_i, which moves D_i by at most u·Σ_c |dO_ic·O_ic|; that moves
/// dS_ij = P_ij(dP_ij − D_i) by P_ij·ΔD_i, hence dQ_ic by
/// scale·ΔD_i·Σ_j P_ij|K_jc| and dK_jc by scale·Σ_i P_ij·ΔD_i·|Q_ic| (dV
/// does not read D).
#[test]
fn fused_kernels_on_f16_tensors_round_only_where_they_store() {
    use cmae_engine::kernels::cast::{to_f16, to_f32};
    let d = dev();
    if !common::has_f16(d) {
        return;
    }
    let u = 2f64.powi(-10);
    let half = |v: &[f32], shape: &[usize]| {
        let h = to_f16(d, &upload(v, shape)).unwrap();
        (download(&to_f32(d, &h).unwrap()), h)
    };
    let check = |what: &str, got: &Tensor, want: &[f64], extra: &[f64]| {
        assert_eq!(got.dtype(), cmae_engine::DType::F16, "{what}");
        let got = download(&to_f32(d, got).unwrap());
        for (i, ((g, w), x)) in got.iter().zip(want).zip(extra).enumerate() {
            let bound = ATOL + (RTOL + u) * w.abs() + x;
            assert!(
                (f64::from(*g) - w).abs() <= bound,
                "{what}: element {i} is {g}, the f64 reference {w} (bound {bound})"
            );
        }
    };
    for layout in LAYOUTS {
        for s in SHAPES.iter().filter(|s| s.t <= 197) {
            let name = format!("{layout:?} f16 {}", s.name());
            let (qkv, qkv16) = half(&rand_vec(s.b * s.t * 3 * s.d(), 11 + s.t as u64), &[s.b, s.t, 3 * s.d()]);
            let (dout, dout16) = half(&rand_vec(s.b * s.t * s.d(), 13 + s.t as u64), &[s.b, s.t, s.d()]);
            let (q64, do64) = (to64(&qkv), to64(&dout));
            let (out16, lse) = fused_attention_in(d, &qkv16, s.heads, layout).unwrap();
            let (want_out, want_lse) = forward_ref(&q64, s);
            check(&format!("{name} out"), &out16, &want_out, &vec![0.0; want_out.len()]);
            assert_close(&format!("{name} lse"), &download(&lse), &want_lse, ATOL, RTOL);
            let dqkv16 = fused_attention_backward_in(d, &qkv16, &out16, &lse, &dout16, s.heads, layout).unwrap();
            let (t, dd, hd) = (s.t, s.d(), s.hd);
            let scale = (hd as f64).powf(-0.5);
            let mut extra = vec![0.0; q64.len()];
            for bi in 0..s.b {
                for h in 0..s.heads {
                    let p = probs(&q64, s, bi, h);
                    let at = |r: usize, part: usize, c: usize| q64[(bi * t + r) * 3 * dd + part * dd + h * hd + c];
                    let delta_d: Vec<f64> = (0..t)
                        .map(|i| {
                            let row = (bi * t + i) * dd + h * hd;
                            u * (0..hd).map(|c| (do64[row + c] * want_out[row + c]).abs()).sum::<f64>()
                        })
                        .collect();
                    for r in 0..t {
                        for c in 0..hd {
                            let base = (bi * t + r) * 3 * dd + h * hd + c;
                            extra[base] =
                                scale * delta_d[r] * (0..t).map(|j| p[r * t + j] * at(j, 1, c).abs()).sum::<f64>();
                            extra[base + dd] =
                                scale * (0..t).map(|i| p[i * t + r] * delta_d[i] * at(i, 0, c).abs()).sum::<f64>();
                        }
                    }
                }
            }
            check(&format!("{name} dqkv"), &dqkv16, &backward_ref(&q64, &do64, s), &extra);
        }
    }
}
