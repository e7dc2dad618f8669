//! Forward kernels against f64 CPU references on awkward shapes.

mod common;

use cmae_engine::Tensor;
use cmae_engine::kernels::attention::attention;
use cmae_engine::kernels::patch::{PatchOrder, norm_pix_in_place, patchify};
use cmae_engine::kernels::reduce::{RowView, sum_rows, weighted_sums};
use cmae_engine::kernels::{batchnorm, elementwise, gather, gelu, layernorm, loss, optim, softmax};
use common::reference::{self as refr, to64};
use common::{assert_close, dev, download, rand_vec, upload, upload_mut};

/// Elementwise results differ from f64 only by one f32 rounding (2⁻²⁴ ≈ 6e-8
/// relative); 1e-6 relative plus 1e-6 absolute covers that with margin.
const ELEM: (f64, f64) = (1e-6, 1e-6);
/// Row reductions (means, variances, softmax sums) over ≤ 200 terms add up to
/// ~200 roundings: 2e-5 absolute/relative bounds them.
const ROWS: (f64, f64) = (2e-5, 2e-5);

#[test]
fn elementwise_ops_match() {
    let d = dev();
    for n in [1usize, 3, 17, 65, 1031] {
        let x = rand_vec(n, 1);
        let y = rand_vec(n, 2);
        let (xt, yt) = (upload(&x, &[n]), upload(&y, &[n]));
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| 0.5 * f64::from(*a) - 2.0 * f64::from(*b)).collect();
        assert_close("axpby", &download(&elementwise::axpby(d, 0.5, &xt, -2.0, &yt).unwrap()), &want, ELEM.0, ELEM.1);
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| f64::from(*a) * f64::from(*b)).collect();
        assert_close("mul", &download(&elementwise::mul(d, &xt, &yt).unwrap()), &want, ELEM.0, ELEM.1);
        assert_close("fill", &download(&elementwise::full(d, &[n], 0.25).unwrap()), &vec![0.25; n], 0.0, 0.0);
        let mut acc = upload_mut(&x, &[n]);
        elementwise::accumulate(d, &mut acc, &yt, 3.0).unwrap();
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| f64::from(*a) + 3.0 * f64::from(*b)).collect();
        assert_close("accumulate", &download(&acc), &want, ELEM.0, ELEM.1);
    }
    // Broadcasts over leading axes, with periods that are and are not whole vec4s.
    for (b, t, c) in [(3, 5, 7), (2, 3, 8)] {
        broadcasts_match(b, t, c);
    }
}

fn broadcasts_match(b: usize, t: usize, c: usize) {
    let d = dev();
    let x = rand_vec(b * t * c, 3);
    let v = rand_vec(t * c, 4);
    let got = download(&elementwise::add_broadcast(d, &upload(&x, &[b, t, c]), &upload(&v, &[t, c]), 2.0).unwrap());
    let want: Vec<f64> = x.iter().enumerate().map(|(i, a)| f64::from(*a) + 2.0 * f64::from(v[i % (t * c)])).collect();
    assert_close("add_broadcast", &got, &want, ELEM.0, ELEM.1);
    let got = download(&elementwise::broadcast(d, &upload(&v[..c], &[c]), &[b, t, c]).unwrap());
    let want: Vec<f64> = (0..b * t * c).map(|i| f64::from(v[i % c])).collect();
    assert_close("broadcast", &got, &want, 0.0, 0.0);
    let s = rand_vec(b, 5);
    let got = download(&elementwise::scale_rows(d, &upload(&x, &[b, t, c]), &upload(&s, &[b])).unwrap());
    let want: Vec<f64> = x.iter().enumerate().map(|(i, a)| f64::from(*a) * f64::from(s[i / (t * c)])).collect();
    assert_close("scale_rows", &got, &want, ELEM.0, ELEM.1);
}

#[test]
fn gelu_is_exact_erf_gelu() {
    let n = 4001;
    // Spread over [-8, 8] to cover the tails where approximations drift.
    let x: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * i as f32 / (n - 1) as f32).collect();
    let got = download(&gelu::gelu(dev(), &upload(&x, &[n])).unwrap());
    // erfc's Chebyshev fit has fractional error < 1.2e-7, plus f32 rounding of
    // x·Φ(x): 1e-6 relative and 1e-7 absolute.
    assert_close("gelu", &got, &refr::gelu(&to64(&x)), 1e-7, 1e-6);
}

#[test]
fn layer_norm_matches() {
    for (rows, dim) in [(1usize, 3usize), (17, 65), (65, 192), (3, 197)] {
        let x = rand_vec(rows * dim, 7);
        let g = rand_vec(dim, 8);
        let b = rand_vec(dim, 9);
        let (y, stats) =
            layernorm::layer_norm(dev(), &upload(&x, &[rows, dim]), &upload(&g, &[dim]), &upload(&b, &[dim]), 1e-6)
                .unwrap();
        assert_eq!(stats.shape(), &[rows, 2]);
        let want = refr::layer_norm(&to64(&x), &to64(&g), &to64(&b), dim, 1e-6);
        assert_close(&format!("layernorm {rows}x{dim}"), &download(&y), &want, ROWS.0, ROWS.1);
    }
}

#[test]
fn softmax_rows_match() {
    for (rows, cols) in [(1usize, 1usize), (3, 17), (65, 65), (2, 197)] {
        let x: Vec<f32> = rand_vec(rows * cols, 11).iter().map(|v| v * 20.0).collect();
        let mut t = upload_mut(&x, &[rows, cols]);
        softmax::softmax_in_place(dev(), &mut t).unwrap();
        assert_close(
            &format!("softmax {rows}x{cols}"),
            &download(&t),
            &refr::softmax_rows(&to64(&x), cols),
            1e-7,
            1e-5,
        );
    }
}

#[test]
fn attention_forward_matches() {
    for (b, t, d, heads) in [(2usize, 17usize, 24usize, 3usize), (1, 65, 32, 4), (3, 5, 8, 1)] {
        let qkv = rand_vec(b * t * 3 * d, 13);
        let (out, probs) = attention(dev(), &upload(&qkv, &[b, t, 3 * d]), heads).unwrap();
        assert_eq!(probs.shape(), &[b * heads, t, t]);
        let want = refr::attention(&to64(&qkv), b, t, d, heads);
        assert_close(&format!("attention b{b} t{t} d{d} h{heads}"), &download(&out), &want, ROWS.0, ROWS.1);
    }
}

#[test]
fn gather_and_scatter_rows_match() {
    let (b, n, k, dim) = (3usize, 17usize, 5usize, 7usize);
    let x = rand_vec(b * n * dim, 17);
    // Distinct indices per sample, in a scrambled order.
    let idx: Vec<u32> = (0..b).flat_map(|bi| (0..k).map(move |ki| ((ki * 7 + bi * 3) % n) as u32)).collect();
    let xt = upload(&x, &[b, n, dim]);
    let it = Tensor::from_u32(dev(), &idx, &[b, k]).unwrap();
    let g = gather::gather_rows(dev(), &xt, &it).unwrap();
    let want = refr::gather_rows(&to64(&x), &idx, b, n, k, dim);
    assert_close("gather_rows", &download(&g), &want, 0.0, 0.0);
    // Scatter-add back: the gathered rows return to their places, zeros elsewhere.
    let back = download(&gather::scatter_add_rows(dev(), &g, &it, n).unwrap());
    let mut want = vec![0.0; b * n * dim];
    for bi in 0..b {
        for ki in 0..k {
            let r = idx[bi * k + ki] as usize;
            for j in 0..dim {
                want[(bi * n + r) * dim + j] = f64::from(x[(bi * n + r) * dim + j]);
            }
        }
    }
    assert_close("scatter_add_rows", &back, &want, 0.0, 0.0);
    // copy_rows with offsets.
    let mut out = elementwise::zeros(dev(), &[b, n + 2, dim]).unwrap();
    gather::copy_rows(dev(), &xt, 3, &mut out, 2, 4).unwrap();
    let got = download(&out);
    for bi in 0..b {
        for r in 0..4 {
            for j in 0..dim {
                assert_eq!(got[(bi * (n + 2) + 2 + r) * dim + j], x[(bi * n + 3 + r) * dim + j]);
            }
        }
    }
}

#[test]
fn transpose_swaps_the_last_two_axes() {
    let (b, r, c) = (3usize, 5usize, 7usize);
    let x = rand_vec(b * r * c, 41);
    let t = gather::transpose(dev(), &upload(&x, &[b, r, c])).unwrap();
    assert_eq!(t.shape(), &[b, c, r]);
    let got = download(&t);
    for bi in 0..b {
        for i in 0..r {
            for j in 0..c {
                assert_eq!(got[(bi * c + j) * r + i], x[(bi * r + i) * c + j]);
            }
        }
    }
    assert!(gather::transpose(dev(), &upload(&x[..3], &[3])).is_err());
}

#[test]
fn row_sums_match() {
    for (rows, cols) in [(1usize, 1usize), (3, 17), (1088, 65), (4160, 3), (130, 12), (1088, 192)] {
        let x = rand_vec(rows * cols, 19);
        let w = rand_vec(rows, 20);
        let got = download(
            &sum_rows(dev(), RowView::of(&upload(&x, &[rows, cols]), cols), Some(&upload(&w, &[rows]))).unwrap(),
        );
        let want: Vec<f64> =
            (0..cols).map(|j| (0..rows).map(|r| f64::from(x[r * cols + j]) * f64::from(w[r])).sum()).collect();
        // Up to 4160 terms: 1e-4 absolute is ~40 roundings of the largest partial sums.
        assert_close(&format!("sum_rows {rows}x{cols}"), &got, &want, 1e-4, 1e-5);
    }
    let n = 1000;
    let x = rand_vec(n, 21);
    let w = rand_vec(3 * n, 22);
    let got = download(&weighted_sums(dev(), &upload(&x, &[n]), &upload(&w, &[3, n])).unwrap());
    let want: Vec<f64> = (0..3).map(|s| (0..n).map(|i| f64::from(w[s * n + i]) * f64::from(x[i])).sum()).collect();
    assert_close("weighted_sums", &got, &want, 1e-5, 1e-5);
}

#[test]
fn patchify_orders_and_norm_pix_match() {
    let (b, c, p, g) = (2usize, 3usize, 4usize, 3usize);
    let side = p * g;
    let imgs = rand_vec(b * c * side * side, 23);
    let it = upload(&imgs, &[b, c, side, side]);
    let px = |bi: usize, ch: usize, y: usize, x: usize| imgs[((bi * c + ch) * side + y) * side + x];
    for order in [PatchOrder::ChannelFirst, PatchOrder::ChannelLast] {
        let got = download(&patchify(dev(), &it, p, order).unwrap());
        let mut want = Vec::new();
        for bi in 0..b {
            for i in 0..g * g {
                let (gy, gx) = (i / g, i % g);
                match order {
                    PatchOrder::ChannelFirst => {
                        for ch in 0..c {
                            for py in 0..p {
                                for pxx in 0..p {
                                    want.push(f64::from(px(bi, ch, gy * p + py, gx * p + pxx)));
                                }
                            }
                        }
                    }
                    PatchOrder::ChannelLast => {
                        for py in 0..p {
                            for pxx in 0..p {
                                for ch in 0..c {
                                    want.push(f64::from(px(bi, ch, gy * p + py, gx * p + pxx)));
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_close(&format!("patchify {order:?}"), &got, &want, 0.0, 0.0);
    }
    let cols = p * p * c;
    let mut t = patchify(dev(), &it, p, PatchOrder::ChannelLast).unwrap().into_mut().unwrap();
    let raw = to64(&download(&t));
    norm_pix_in_place(dev(), &mut t).unwrap();
    let want: Vec<f64> = raw
        .chunks(cols)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (cols - 1) as f64;
            row.iter().map(move |v| (v - mean) / (var + 1e-6).sqrt()).collect::<Vec<_>>()
        })
        .collect();
    assert_close("norm_pix", &download(&t), &want, ROWS.0, ROWS.1);
}

#[test]
fn losses_match() {
    let (rows, cols) = (65usize, 48usize);
    let p = rand_vec(rows * cols, 29);
    let t = rand_vec(rows * cols, 30);
    let got = download(&loss::mse_rows(dev(), &upload(&p, &[rows, cols]), &upload(&t, &[rows, cols])).unwrap());
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            refr::weighted_mse(&to64(&p[r * cols..(r + 1) * cols]), &to64(&t[r * cols..(r + 1) * cols]), &[1.0], cols)
        })
        .collect();
    assert_close("mse_rows", &got, &want, ROWS.0, ROWS.1);

    let (rows, classes) = (17usize, 10usize);
    let z: Vec<f32> = rand_vec(rows * classes, 31).iter().map(|v| v * 5.0).collect();
    let labels: Vec<u32> = (0..rows as u32).map(|r| r % classes as u32).collect();
    let targets = loss::smoothed_targets(&labels, classes, 0.1).unwrap();
    let got =
        download(&loss::xent_rows(dev(), &upload(&z, &[rows, classes]), &upload(&targets, &[rows, classes])).unwrap());
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            let s = r * classes..(r + 1) * classes;
            refr::weighted_xent(&to64(&z[s.clone()]), &to64(&targets[s]), &[1.0], classes)
        })
        .collect();
    assert_close("xent_rows", &got, &want, ROWS.0, ROWS.1);
    // Smoothing puts 1 − ε + ε/C on the label and ε/C elsewhere, summing to 1.
    assert!((targets[..classes].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!((targets[0] - (0.9 + 0.01)).abs() < 1e-7 && (targets[1] - 0.01).abs() < 1e-7);
    assert!(loss::smoothed_targets(&[10], 10, 0.0).is_err());
}

#[test]
fn adamw_matches_pytorch_formula_over_several_steps() {
    let n = 1031;
    let mut p = to64(&rand_vec(n, 37));
    let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
    let (mut pt, mut mt, mut vt) = (
        upload_mut(&rand_vec(n, 37), &[n]),
        elementwise::zeros(dev(), &[n]).unwrap(),
        elementwise::zeros(dev(), &[n]).unwrap(),
    );
    let (lr, b1, b2, eps, wd) = (1e-2f64, 0.9f64, 0.95f64, 1e-8f64, 0.05f64);
    for step in 1..=5u64 {
        let g = rand_vec(n, 100 + step);
        let s = optim::AdamWStep {
            lr: lr as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: eps as f32,
            weight_decay: wd as f32,
            step,
            grad_scale: 0.5,
        };
        optim::adamw(dev(), &mut pt, &upload(&g, &[n]), &mut mt, &mut vt, s).unwrap();
        for i in 0..n {
            let gi = 0.5 * f64::from(g[i]);
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = (v[i] / (1.0 - b2.powi(step as i32))).sqrt() + eps;
            p[i] -= lr / (1.0 - b1.powi(step as i32)) * m[i] / denom;
        }
    }
    // Five f32 updates of size ≤ lr: 1e-6 absolute is well inside FIXTURES.md's 1e-5.
    assert_close("adamw param", &download(&pt), &p, 1e-6, 0.0);
    assert_close("adamw m", &download(&mt), &m, 1e-6, 1e-5);
    assert_close("adamw v", &download(&vt), &v, 1e-7, 1e-5);
}

#[test]
fn kernel_wrappers_reject_bad_shapes_with_both_shapes_named() {
    let d = dev();
    let a = elementwise::full(d, &[2, 3], 0.0).unwrap();
    let b = elementwise::full(d, &[3, 2], 0.0).unwrap();
    let msg = elementwise::add(d, &a, &b).unwrap_err().to_string();
    assert!(msg.contains("[2, 3]") && msg.contains("[3, 2]"), "{msg}");
    let g = elementwise::full(d, &[4], 0.0).unwrap();
    let msg = layernorm::layer_norm(d, &a, &g, &g, 1e-6).unwrap_err().to_string();
    assert!(msg.contains("[4]") && msg.contains("[2, 3]"), "{msg}");
    let x = elementwise::full(d, &[2, 5, 4], 0.0).unwrap();
    let idx = Tensor::from_u32(d, &[0, 1, 2], &[3, 1]).unwrap();
    let msg = gather::gather_rows(d, &x, &idx).unwrap_err().to_string();
    assert!(msg.contains("[3, 1]"), "{msg}");
    let f = Tensor::from_f32(d, &[0.0, 1.0], &[2, 1]).unwrap();
    assert!(gather::gather_rows(d, &x, &f).is_err(), "f32 indices are rejected");
    let msg = attention(d, &elementwise::full(d, &[2, 5, 10], 0.0).unwrap(), 3).unwrap_err().to_string();
    assert!(msg.contains("[2, 5, 10]"), "{msg}");
}

#[test]
fn batch_norm_train_and_eval_match() {
    let (rows, d) = (13usize, 5usize);
    let x = rand_vec(rows * d, 51);
    let (mut mean, mut var) =
        (upload_mut(&[0.5, -0.5, 0.0, 1.0, 2.0], &[d]), upload_mut(&[1.0, 1.0, 1.0, 0.5, 0.25], &[d]));
    let features = upload(&x, &[rows, d]);
    let y = download(&batchnorm::batch_norm_train(dev(), &features, (&mut mean, &mut var), 1e-6, 0.1).unwrap());
    let mut want = vec![0.0; rows * d];
    let mut want_running = vec![0.5, -0.5, 0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.25];
    for j in 0..d {
        let col: Vec<f64> = (0..rows).map(|r| f64::from(x[r * d + j])).collect();
        let mean = col.iter().sum::<f64>() / rows as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
        for r in 0..rows {
            want[r * d + j] = (col[r] - mean) / (var + 1e-6).sqrt();
        }
        want_running[j] = 0.9 * want_running[j] + 0.1 * mean;
        want_running[d + j] = 0.9 * want_running[d + j] + 0.1 * var * rows as f64 / (rows - 1) as f64;
    }
    assert_close("batch_norm train", &y, &want, ROWS.0, ROWS.1);
    let running = [download(&mean), download(&var)].concat();
    assert_close("running stats", &running, &want_running, ROWS.0, ROWS.1);
    let y = download(&batchnorm::batch_norm_eval(dev(), &features, (&mean, &var), 1e-6).unwrap());
    let want: Vec<f64> = (0..rows * d)
        .map(|e| (f64::from(x[e]) - want_running[e % d]) / (want_running[d + e % d] + 1e-6).sqrt())
        .collect();
    assert_close("batch_norm eval", &y, &want, ROWS.0, ROWS.1);
}

/// One LARS step against the formula of MAE's util/lars.py, by hand in f64.
#[test]
fn lars_matches_a_hand_computed_step() {
    for scaled in [true, false] {
        let n = 37;
        let p = rand_vec(n, 61);
        let g = rand_vec(n, 62);
        let mu0 = rand_vec(n, 63);
        let (mut pt, mut mt) = (upload_mut(&p, &[n]), upload_mut(&mu0, &[n]));
        let s = optim::LarsStep { lr: 0.1, momentum: 0.9, weight_decay: 0.05, trust: 0.001, scaled, grad_scale: 0.5 };
        optim::lars(dev(), &mut pt, &upload(&g, &[n]), &mut mt, s).unwrap();
        let dp: Vec<f64> =
            (0..n).map(|i| 0.5 * f64::from(g[i]) + if scaled { 0.05 * f64::from(p[i]) } else { 0.0 }).collect();
        let q = if scaled {
            let pn = p.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let un = dp.iter().map(|v| v * v).sum::<f64>().sqrt();
            0.001 * pn / un
        } else {
            1.0
        };
        let mu: Vec<f64> = (0..n).map(|i| 0.9 * f64::from(mu0[i]) + dp[i] * q).collect();
        let want: Vec<f64> = (0..n).map(|i| f64::from(p[i]) - 0.1 * mu[i]).collect();
        assert_close(&format!("lars mu scaled={scaled}"), &download(&mt), &mu, 1e-6, 1e-5);
        assert_close(&format!("lars param scaled={scaled}"), &download(&pt), &want, 1e-6, 1e-5);
    }
}

/// f32 → f16 → f32: values f16 holds come back exactly; others land on a
/// neighbouring f16 value, at most u = 2⁻¹⁰ relative away (WGSL lets the
/// conversion pick either neighbour, so not 2⁻¹¹); odd lengths keep their
/// last element.
#[test]
fn casts_round_to_a_neighbouring_f16_and_widen_exactly() {
    use cmae_engine::kernels::cast::{to_f16, to_f32};
    if !common::has_f16(dev()) {
        return;
    }
    let exact = [0.0f32, -0.0, 1.0, -2.5, 0.099975586, 65504.0, -65504.0, 6.1035156e-5, 5.9604645e-8];
    let x = upload(&exact, &[exact.len()]);
    let half = to_f16(dev(), &x).unwrap();
    assert_eq!(half.dtype(), cmae_engine::DType::F16);
    assert_eq!(half.byte_len(), 2 * exact.len() as u64);
    assert_eq!(download(&to_f32(dev(), &half).unwrap()), exact);

    let values: Vec<f32> = rand_vec(1001, 77).iter().map(|v| v * 300.0).collect();
    let back = download(&to_f32(dev(), &to_f16(dev(), &upload(&values, &[1001])).unwrap()).unwrap());
    let u = 2f64.powi(-10);
    for (v, b) in values.iter().zip(&back) {
        let err = (f64::from(*v) - f64::from(*b)).abs();
        assert!(err <= u * f64::from(v.abs()), "{v} became {b}");
    }
    assert!(values.iter().zip(&back).any(|(v, b)| v != b), "nothing was rounded");
    let e = to_f32(dev(), &x).unwrap_err().to_string();
    assert!(e.contains("F32") && e.contains("not F16"), "{e}");

    // Past f16's range: ±∞ (what the loss scaler looks for), never a clamp to
    // ±65504; NaN stays NaN. 65519 is the largest f32 that rounds to 65504.
    let edges = [65519.0f32, 65520.0, -65520.0, 1e30, -3.0e38, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 7.0];
    let back = download(&to_f32(dev(), &to_f16(dev(), &upload(&edges, &[edges.len()])).unwrap()).unwrap());
    assert_eq!(back[0], 65504.0);
    assert_eq!(
        &back[1..7],
        &[f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY, f32::NEG_INFINITY, f32::INFINITY, f32::NEG_INFINITY]
    );
    assert!(back[7].is_nan(), "NaN became {}", back[7]);
    assert_eq!(back[8], 7.0, "an odd lane after the special ones");
}

/// The GPU loss scaler against a host model of GradScaler's rules, over a
/// run of steps some of which have a non-finite gradient (∞, −∞ or NaN, in
/// the last element of an odd-length tensor, where the kernel's vec4 reads
/// run into padding).
#[test]
fn loss_scaler_follows_grad_scaler_rules() {
    use cmae_engine::kernels::scaler::{LossScaler, ScaleState};
    let fresh =
        ScaleState { scale: LossScaler::INITIAL_SCALE, good_steps: 0, skipped_steps: 0, found_nonfinite: false };
    let growth_interval = 3;
    let mut gpu = LossScaler::new(dev(), fresh, growth_interval).unwrap();
    let mut host = fresh;
    let clean = rand_vec(1001, 9);
    let bad_at = [2usize, 3, 9, 10, 11];
    for step in 0..16usize {
        let mut g = clean.clone();
        if let Some(i) = bad_at.iter().position(|&s| s == step) {
            g[1000] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][i % 3];
        }
        gpu.find_nonfinite(dev(), &upload(&g, &[1001])).unwrap();
        let seen = ScaleState::from_words(&gpu.read(dev()).unwrap().wait().unwrap()).unwrap();
        assert_eq!(seen.found_nonfinite, bad_at.contains(&step), "step {step}");
        gpu.update(dev()).unwrap();
        // GradScaler: back off and skip on a non-finite gradient, else grow
        // after `growth_interval` good steps in a row.
        if bad_at.contains(&step) {
            host = ScaleState { scale: host.scale * 0.5, good_steps: 0, skipped_steps: host.skipped_steps + 1, ..host };
        } else if host.good_steps + 1 == growth_interval {
            host = ScaleState { scale: host.scale * 2.0, good_steps: 0, ..host };
        } else {
            host.good_steps += 1;
        }
        let after = ScaleState::from_words(&gpu.read(dev()).unwrap().wait().unwrap()).unwrap();
        assert_eq!(after, host, "after step {step}");
    }
    assert_eq!(host.skipped_steps, 5);
    assert!(LossScaler::new(dev(), ScaleState { scale: 0.0, ..fresh }, 3).is_err());
}
