//! Every differentiable op's backward against central finite differences.

mod common;

use cmae_engine::Tensor;
use cmae_engine::kernels::loss::smoothed_targets;
use common::gradcheck::{Input, check};
use common::reference::{self as refr};
use common::{dev, rand_vec};

#[test]
fn linear_backward() {
    let (rows, inp, out) = (17, 12, 7);
    check(
        "linear",
        &[Input::random("x", &[rows, inp], 1), Input::random("w", &[out, inp], 2), Input::random("b", &[out], 3)],
        |t, v| t.linear(&v[0], &v[1], Some(&v[2])).unwrap(),
        |x| refr::linear(&x[0], &x[1], Some(&x[2]), rows, inp, out),
    );
}

#[test]
fn matmul_backward_all_transposes() {
    let (m, n, k) = (5, 6, 7);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let ash = if ta { [k, m] } else { [m, k] };
        let bsh = if tb { [n, k] } else { [k, n] };
        check(
            &format!("matmul ta={ta} tb={tb}"),
            &[Input::random("a", &ash, 4), Input::random("b", &bsh, 5)],
            |t, v| t.matmul(&v[0], &v[1], ta, tb).unwrap(),
            |x| {
                let mut c = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        c[i * n + j] = (0..k)
                            .map(|kk| {
                                let a = if ta { x[0][kk * m + i] } else { x[0][i * k + kk] };
                                let b = if tb { x[1][j * k + kk] } else { x[1][kk * n + j] };
                                a * b
                            })
                            .sum();
                    }
                }
                c
            },
        );
    }
}

#[test]
fn elementwise_backward() {
    let (b, t, c) = (3, 4, 5);
    check(
        "add_broadcast",
        &[Input::random("x", &[b, t, c], 6), Input::random("v", &[t, c], 7)],
        |tp, v| tp.add_broadcast(&v[0], &v[1]).unwrap(),
        |x| x[0].iter().enumerate().map(|(i, a)| a + x[1][i % (t * c)]).collect(),
    );
    check(
        "mul+add+scale",
        &[Input::random("x", &[b, c], 8), Input::random("y", &[b, c], 9)],
        |tp, v| tp.scale(&tp.add(&tp.mul(&v[0], &v[1]).unwrap(), &v[0]).unwrap(), -1.5).unwrap(),
        |x| x[0].iter().zip(&x[1]).map(|(a, b)| -1.5 * (a * b + a)).collect(),
    );
    let s = rand_vec(b, 10);
    let st = Tensor::from_f32(dev(), &s, &[b]).unwrap();
    check(
        "scale_rows",
        &[Input::random("x", &[b, t, c], 11)],
        |tp, v| tp.scale_rows(&v[0], &st).unwrap(),
        |x| x[0].iter().enumerate().map(|(i, a)| a * f64::from(s[i / (t * c)])).collect(),
    );
}

#[test]
fn gelu_backward() {
    let mut x = Input::random("x", &[9, 13], 12);
    x.data.iter_mut().for_each(|v| *v *= 4.0);
    check("gelu", &[x], |t, v| t.gelu(&v[0]).unwrap(), |x| refr::gelu(&x[0]));
}

#[test]
fn layer_norm_backward() {
    for (rows, d) in [(3, 5), (17, 65), (130, 7), (9, 12)] {
        check(
            &format!("layer_norm {rows}x{d}"),
            &[Input::random("x", &[rows, d], 13), Input::random("g", &[d], 14), Input::random("b", &[d], 15)],
            |t, v| t.layer_norm(&v[0], &v[1], &v[2], 1e-6).unwrap(),
            |x| refr::layer_norm(&x[0], &x[1], &x[2], d, 1e-6),
        );
    }
}

#[test]
fn attention_backward() {
    // Head dims that are whole vec4s take the fused kernel, others (3, 6) the composed path.
    for (b, t, d, heads) in [(2, 5, 12, 3), (1, 17, 8, 2), (2, 3, 4, 1), (1, 9, 32, 2), (2, 5, 9, 3), (1, 7, 12, 2)] {
        check(
            &format!("attention b{b} t{t} d{d} h{heads}"),
            &[Input::random("qkv", &[b, t, 3 * d], 16)],
            |tp, v| tp.attention(&v[0], heads).unwrap(),
            |x| refr::attention(&x[0], b, t, d, heads),
        );
    }
}

#[test]
fn gather_prepend_unshuffle_backward() {
    let (b, n, k, d) = (2usize, 7usize, 4usize, 3usize);
    let idx: Vec<u32> = vec![6, 0, 3, 2, 1, 5, 4, 0];
    let it = Tensor::from_u32(dev(), &idx, &[b, k]).unwrap();
    check(
        "gather_rows",
        &[Input::random("x", &[b, n, d], 17)],
        |t, v| t.gather_rows(&v[0], &it).unwrap(),
        |x| refr::gather_rows(&x[0], &idx, b, n, k, d),
    );
    check(
        "prepend_token",
        &[Input::random("x", &[b, n, d], 18), Input::random("tok", &[1, 1, d], 19)],
        |t, v| t.prepend_token(&v[0], &v[1]).unwrap(),
        |x| {
            let mut out = Vec::new();
            for bi in 0..b {
                out.extend_from_slice(&x[1]);
                out.extend_from_slice(&x[0][bi * n * d..(bi + 1) * n * d]);
            }
            out
        },
    );
    check(
        "drop_first_token",
        &[Input::random("x", &[b, n, d], 26)],
        |t, v| t.drop_first_token(&v[0]).unwrap(),
        |x| (0..b).flat_map(|bi| x[0][(bi * n + 1) * d..(bi + 1) * n * d].to_vec()).collect(),
    );
    check(
        "mean_tokens",
        &[Input::random("x", &[b, n, d], 27)],
        |t, v| t.mean_tokens(&v[0], 1).unwrap(),
        |x| {
            let mut out = vec![0.0; b * d];
            for bi in 0..b {
                for r in 1..n {
                    for j in 0..d {
                        out[bi * d + j] += x[0][(bi * n + r) * d + j] / (n - 1) as f64;
                    }
                }
            }
            out
        },
    );
    // x [b, k, d] lands at rows idx of [b, n, d]; the rest is the fill token.
    let mut fill = vec![1.0f32; b * n];
    for bi in 0..b {
        for ki in 0..k {
            fill[bi * n + idx[bi * k + ki] as usize] = 0.0;
        }
    }
    let ft = Tensor::from_f32(dev(), &fill, &[b * n]).unwrap();
    check(
        "unshuffle",
        &[Input::random("x", &[b, k, d], 20), Input::random("mask", &[1, 1, d], 21)],
        |t, v| t.unshuffle(&v[0], &it, &v[1], n, &ft).unwrap(),
        |x| {
            let mut out = vec![0.0; b * n * d];
            for bi in 0..b {
                for r in 0..n {
                    out[(bi * n + r) * d..(bi * n + r + 1) * d].copy_from_slice(&x[1]);
                }
                for ki in 0..k {
                    let r = idx[bi * k + ki] as usize;
                    out[(bi * n + r) * d..(bi * n + r + 1) * d]
                        .copy_from_slice(&x[0][(bi * k + ki) * d..(bi * k + ki + 1) * d]);
                }
            }
            out
        },
    );
}

#[test]
fn loss_backward() {
    let (rows, cols) = (13, 6);
    let target = rand_vec(rows * cols, 22);
    let w = rand_vec(rows, 23);
    let (tt, wt) =
        (Tensor::from_f32(dev(), &target, &[rows, cols]).unwrap(), Tensor::from_f32(dev(), &w, &[rows]).unwrap());
    check(
        "weighted_mse",
        &[Input::random("pred", &[rows, cols], 24)],
        |t, v| t.weighted_mse(&v[0], &tt, &wt).unwrap().0,
        |x| vec![refr::weighted_mse(&x[0], &refr::to64(&target), &refr::to64(&w), cols)],
    );
    let classes = 5;
    let labels: Vec<u32> = (0..rows as u32).map(|r| r % classes as u32).collect();
    let soft = smoothed_targets(&labels, classes, 0.1).unwrap();
    let st = Tensor::from_f32(dev(), &soft, &[rows, classes]).unwrap();
    check(
        "weighted_cross_entropy",
        &[Input::random("logits", &[rows, classes], 25)],
        |t, v| t.weighted_cross_entropy(&v[0], &st, &wt).unwrap(),
        |x| vec![refr::weighted_xent(&x[0], &refr::to64(&soft), &refr::to64(&w), classes)],
    );
}

/// Activations used twice (a residual stream, one input feeding two linear
/// layers) get their gradient summed in place: LayerNorm's dx and a linear
/// layer's dX are added into the gradient already there instead of being
/// added by a separate kernel. Same gradients as finite differences.
#[test]
fn gradients_summed_in_place_for_activations_used_twice() {
    let (rows, d) = (6, 8);
    let x = Input::random("x", &[rows, d], 31);
    let (g, b) = (Input::random("g", &[d], 32), Input::random("b", &[d], 33));
    let (w, wb, w2) =
        (Input::random("w", &[d, d], 34), Input::random("wb", &[d], 35), Input::random("w2", &[d, d], 36));
    check(
        "residual and shared inputs",
        &[x, g, b, w, wb, w2],
        |t, v| {
            let h = t.scale(&v[0], 2.0).unwrap();
            let branch = t.linear(&t.layer_norm(&h, &v[1], &v[2], 1e-6).unwrap(), &v[3], Some(&v[4])).unwrap();
            let y = t.add(&h, &branch).unwrap();
            t.add(&t.linear(&y, &v[3], None).unwrap(), &t.linear(&y, &v[5], None).unwrap()).unwrap()
        },
        |v| {
            let h: Vec<f64> = v[0].iter().map(|x| 2.0 * x).collect();
            let ln = refr::layer_norm(&h, &v[1], &v[2], d, 1e-6);
            let branch = refr::linear(&ln, &v[3], Some(&v[4]), rows, d, d);
            let y: Vec<f64> = h.iter().zip(&branch).map(|(a, b)| a + b).collect();
            let (o1, o2) = (refr::linear(&y, &v[3], None, rows, d, d), refr::linear(&y, &v[5], None, rows, d, d));
            o1.iter().zip(&o2).map(|(a, b)| a + b).collect()
        },
    );
}

/// The fused MLP (fc1 with GELU in its epilogue, fc2 plus a residual, the
/// activation recomputed in backward) and a projection plus a residual.
#[test]
fn fused_mlp_and_residual_projection_backward() {
    let (rows, d, hidden) = (7, 12, 20);
    let inputs = [
        Input::random("x", &[rows, d], 41),
        Input::random("w1", &[hidden, d], 42),
        Input::random("b1", &[hidden], 43),
        Input::random("w2", &[d, hidden], 44),
        Input::random("b2", &[d], 45),
        Input::random("r", &[rows, d], 46),
    ];
    let mlp64 = |v: &[Vec<f64>]| {
        let h = refr::gelu(&refr::linear(&v[0], &v[1], Some(&v[2]), rows, d, hidden));
        refr::linear(&h, &v[3], Some(&v[4]), rows, hidden, d)
    };
    check(
        "mlp + residual",
        &inputs,
        |t, v| t.mlp(&v[0], (&v[1], &v[2]), (&v[3], &v[4]), Some(&v[5])).unwrap(),
        |v| mlp64(v).iter().zip(&v[5]).map(|(a, b)| a + b).collect(),
    );
    check("mlp", &inputs[..5], |t, v| t.mlp(&v[0], (&v[1], &v[2]), (&v[3], &v[4]), None).unwrap(), |v| mlp64(v));
    let proj = [
        Input::random("x", &[rows, hidden], 47),
        Input::random("w", &[d, hidden], 48),
        Input::random("b", &[d], 49),
        Input::random("r", &[rows, d], 50),
    ];
    check(
        "linear + residual",
        &proj,
        |t, v| t.linear_add(&v[0], &v[1], &v[2], &v[3]).unwrap(),
        |v| refr::linear(&v[0], &v[1], Some(&v[2]), rows, hidden, d).iter().zip(&v[3]).map(|(a, b)| a + b).collect(),
    );
}

/// A norm whose output only products read (`layer_norm_compute`) is not
/// kept: the products' backward recomputes it. The gradients through it, into
/// a linear layer and into an MLP, match finite differences all the same.
#[test]
fn norm_outputs_recomputed_in_backward() {
    let (rows, d, out) = (6, 12, 9);
    let inputs = [
        Input::random("x", &[rows, d], 61),
        Input::random("g", &[d], 62),
        Input::random("beta", &[d], 63),
        Input::random("w", &[out, d], 64),
        Input::random("b", &[out], 65),
    ];
    check(
        "layer_norm_compute → linear",
        &inputs,
        |t, v| {
            let h = t.layer_norm_compute(&v[0], &v[1], &v[2], 1e-6).unwrap();
            t.linear(&h, &v[3], Some(&v[4])).unwrap()
        },
        |v| refr::linear(&refr::layer_norm(&v[0], &v[1], &v[2], d, 1e-6), &v[3], Some(&v[4]), rows, d, out),
    );
    let mlp = [
        Input::random("x", &[rows, d], 66),
        Input::random("g", &[d], 67),
        Input::random("beta", &[d], 68),
        Input::random("w1", &[out, d], 69),
        Input::random("b1", &[out], 70),
        Input::random("w2", &[d, out], 71),
        Input::random("b2", &[d], 72),
    ];
    check(
        "layer_norm_compute → mlp",
        &mlp,
        |t, v| {
            let h = t.layer_norm_compute(&v[0], &v[1], &v[2], 1e-6).unwrap();
            t.mlp(&h, (&v[3], &v[4]), (&v[5], &v[6]), None).unwrap()
        },
        |v| {
            let h = refr::gelu(&refr::linear(
                &refr::layer_norm(&v[0], &v[1], &v[2], d, 1e-6),
                &v[3],
                Some(&v[4]),
                rows,
                d,
                out,
            ));
            refr::linear(&h, &v[5], Some(&v[6]), rows, out, d)
        },
    );
}
