//! Mixed precision (f16 storage, f32 arithmetic) beyond the single kernels:
//! LayerNorm's f16 output and centred input, a transformer block recorded on
//! an f16 tape against the same block on an f32 tape, what loss scaling
//! rescues, and an overflowing step that the scaler skips.
//!
//! Tolerances. u = 2⁻¹⁰ is one f16 rounding (WGSL may round to either
//! neighbour). Every value of the block passes through at most about ten
//! f16 roundings on its way to a parameter gradient (norm output, qkv,
//! attention output, its gradient, the MLP's hidden activation and its
//! gradient, each product's f16 copy of dY), each relative to the size of
//! the tensor it rounds; 16u (1.6%) of the largest gradient element bounds
//! their sum with margin, while an f16 value that underflowed, overflowed or
//! took a wrong formula misses it by far (the underflow case below is
//! checked to miss it).

mod common;

use cmae_engine::kernels::cast::{to_f16, to_f32};
use cmae_engine::kernels::elementwise;
use cmae_engine::kernels::layernorm::{self, ParamGrads};
use cmae_engine::kernels::optim::{AdamWStep, adamw_packed};
use cmae_engine::kernels::scaler::{LossScaler, ScaleState};
use cmae_engine::{DType, Gradients, Precision, Tape, Tensor, TensorMut, Var};
use common::reference::{self as refr, to64};
use common::{dev, download, rand_vec, upload};

const U: f64 = 1.0 / 1024.0;

fn has_f16() -> bool {
    common::has_f16(dev())
}

fn widen(t: &Tensor) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F16);
    download(&to_f32(dev(), t).unwrap())
}

/// dx, dγ and dβ of LayerNorm in f64 from x, γ and dy.
fn layer_norm_backward_ref(x: &[f64], g: &[f64], dy: &[f64], d: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; d], vec![0.0; d]);
    for (r, row) in x.chunks(d).enumerate() {
        let mean = row.iter().sum::<f64>() / d as f64;
        let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + eps).sqrt();
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let gy: Vec<f64> = (0..d).map(|j| dy[r * d + j] * g[j]).collect();
        let g_mean = gy.iter().sum::<f64>() / d as f64;
        let gx_mean = gy.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for j in 0..d {
            dx[r * d + j] = rstd * (gy[j] - g_mean - xhat[j] * gx_mean);
            dg[j] += dy[r * d + j] * xhat[j];
            db[j] += dy[r * d + j];
        }
    }
    (dx, dg, db)
}

/// Rows whose mean is 100 times their spread: x − μ kept in f16 still gives
/// x̂ to f16's relative precision, where x itself in f16 would lose 1/10 of
/// it. The forward stores x − μ rounded once and y made from it (recomputed
/// from it, bit for bit); the backward reads
/// them (and dy in f16) and its results are f32. Bounds: f32's (1e-5) plus
/// one rounding of each stored value, and for the gradients the rounding of
/// x̂ (u·|x̂|) carried through dx = σ⁻¹(g − mean g − x̂·mean(g·x̂)), i.e.
/// σ⁻¹·u·(|x̂|·|mean(g·x̂)| + |x̂|·mean|g·x̂|), and through dγ = Σ dy·x̂.
#[test]
fn layer_norm_keeps_the_centred_input_in_f16() {
    if !has_f16() {
        return;
    }
    let d = dev();
    for (rows, dim) in [(17usize, 64usize), (5, 30)] {
        let x: Vec<f32> =
            rand_vec(rows * dim, 70).iter().enumerate().map(|(i, v)| 100.0 + (i % 7) as f32 + v).collect();
        let (g, b) = (rand_vec(dim, 71), rand_vec(dim, 72));
        let (gt, bt) = (upload(&g, &[dim]), upload(&b, &[dim]));
        let (y, centered, stats) =
            layernorm::layer_norm_centered(d, &upload(&x, &[rows, dim]), &gt, &bt, 1e-6).unwrap();
        let x64 = to64(&x);
        let want_y = refr::layer_norm(&x64, &to64(&g), &to64(&b), dim, 1e-6);
        // y is made from the rounded x − μ (so the backward can remake it
        // exactly): one rounding of x̂·γ, then one of y.
        let xhat_gamma: Vec<f64> =
            refr::layer_norm(&x64, &to64(&g), &vec![0.0; dim], dim, 1e-6).iter().map(|v| v.abs()).collect();
        for (i, (got, want)) in widen(&y).iter().zip(&want_y).enumerate() {
            let bound = 1e-5 + (1e-5 + U) * want.abs() + U * xhat_gamma[i];
            assert!((f64::from(*got) - want).abs() <= bound, "y[{i}] {got} vs {want} (bound {bound})");
        }
        let c = widen(&centered);
        for (r, row) in x64.chunks(dim).enumerate() {
            let mean = row.iter().sum::<f64>() / dim as f64;
            let spread = row.iter().fold(0.0f64, |m, v| m.max((v - mean).abs()));
            assert!(mean > 10.0 * spread, "row {r}: the mean {mean} should dwarf the spread {spread}");
            for j in 0..dim {
                let want = row[j] - mean;
                let got = f64::from(c[r * dim + j]);
                assert!((got - want).abs() <= 1e-4 + U * want.abs(), "x − μ [{r}, {j}] {got} vs {want}");
            }
        }
        let again = layernorm::layer_norm_from_centered(d, &centered, &gt, &bt, &stats).unwrap();
        assert_eq!(widen(&again), widen(&y), "the output recomputed from x − μ is the forward's, bit for bit");
        let dy = to_f16(d, &upload(&rand_vec(rows * dim, 73), &[rows, dim])).unwrap();
        let dy64 = to64(&widen(&dy));
        let grads = layernorm::layer_norm_backward(d, &centered, &gt, &stats, &dy, None, ParamGrads::New).unwrap();
        let (want_dx, want_dg, want_db) = layer_norm_backward_ref(&x64, &to64(&g), &dy64, dim, 1e-6);
        let dx = download(&grads.dx.unwrap());
        for (r, row) in x64.chunks(dim).enumerate() {
            let mean = row.iter().sum::<f64>() / dim as f64;
            let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64 + 1e-6).sqrt();
            let gxhat: Vec<f64> = (0..dim).map(|j| dy64[r * dim + j] * g[j] as f64 * (row[j] - mean) * rstd).collect();
            let (gx_mean, gx_abs) =
                (gxhat.iter().sum::<f64>() / dim as f64, gxhat.iter().map(|v| v.abs()).sum::<f64>() / dim as f64);
            for j in 0..dim {
                let xhat = ((row[j] - mean) * rstd).abs();
                let want = want_dx[r * dim + j];
                let bound = 1e-5 + 1e-4 * want.abs() + rstd * U * xhat * (gx_mean.abs() + gx_abs);
                let got = f64::from(dx[r * dim + j]);
                assert!((got - want).abs() <= bound, "dx[{r}, {j}] {got} vs {want} (bound {bound})");
            }
        }
        let (dg, db) = grads.params.unwrap();
        for (j, (got, want)) in download(&dg).iter().zip(&want_dg).enumerate() {
            let magnitude: f64 = x64
                .chunks(dim)
                .enumerate()
                .map(|(r, row)| {
                    let mean = row.iter().sum::<f64>() / dim as f64;
                    let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64 + 1e-6).sqrt();
                    (dy64[r * dim + j] * (row[j] - mean) * rstd).abs()
                })
                .sum();
            let bound = 1e-5 + 1e-4 * want.abs() + U * magnitude;
            assert!((f64::from(*got) - want).abs() <= bound, "dγ[{j}] {got} vs {want} (bound {bound})");
        }
        for (j, (got, want)) in download(&db).iter().zip(&want_db).enumerate() {
            assert!((f64::from(*got) - want).abs() <= 1e-5 + 1e-5 * want.abs(), "dβ[{j}] {got} vs {want}");
        }
        let e =
            layernorm::layer_norm_backward(d, &centered, &gt, &stats, &to_f32(d, &dy).unwrap(), None, ParamGrads::New)
                .err()
                .expect("an f16 input with an f32 dy is refused");
        assert!(e.to_string().contains("both f32, or both f16"), "{e}");
    }
}

const B: usize = 2;
const T: usize = 9;
const D: usize = 32;
const HEADS: usize = 2;

/// The parameters of one pre-norm block, in pack order.
fn block_params() -> Vec<(&'static str, Vec<usize>, Vec<f32>)> {
    let near_one = |seed| rand_vec(D, seed).iter().map(|v| 1.0 + 0.2 * v).collect::<Vec<f32>>();
    let scaled = |n, seed, s: f32| rand_vec(n, seed).iter().map(|v| v * s).collect::<Vec<f32>>();
    vec![
        ("norm1.weight", vec![D], near_one(1)),
        ("norm1.bias", vec![D], scaled(D, 2, 0.1)),
        ("qkv.weight", vec![3 * D, D], scaled(3 * D * D, 3, 0.3)),
        ("qkv.bias", vec![3 * D], scaled(3 * D, 4, 0.1)),
        ("proj.weight", vec![D, D], scaled(D * D, 5, 0.3)),
        ("proj.bias", vec![D], scaled(D, 6, 0.1)),
        ("norm2.weight", vec![D], near_one(7)),
        ("norm2.bias", vec![D], scaled(D, 8, 0.1)),
        ("fc1.weight", vec![4 * D, D], scaled(4 * D * D, 9, 0.3)),
        ("fc1.bias", vec![4 * D], scaled(4 * D, 10, 0.1)),
        ("fc2.weight", vec![D, 4 * D], scaled(4 * D * D, 11, 0.15)),
        ("fc2.bias", vec![D], scaled(D, 12, 0.1)),
    ]
}

/// The block's parameters in one pack (as the trainer keeps them).
fn packed_params() -> Vec<TensorMut> {
    let params = block_params();
    let shapes: Vec<Vec<usize>> = params.iter().map(|(_, s, _)| s.clone()).collect();
    let mut pack = elementwise::packed_zeros(dev(), &shapes).unwrap();
    for (t, (_, _, v)) in pack.iter_mut().zip(&params) {
        t.write(dev(), bytemuck::cast_slice(v)).unwrap();
    }
    pack
}

/// x + attn(norm1(x)), then + mlp(norm2(x)), as the trainer's blocks record
/// it, and `loss_weight`·mean((out − target)²) over rows.
fn block_loss(tape: &Tape, pack: &[TensorMut], x: &Tensor, loss_weight: f32) -> Var {
    let names = block_params();
    let p: Vec<Var> = names.iter().zip(pack).map(|((n, _, _), t)| tape.param(n, t.as_tensor())).collect();
    let x = tape.constant(x.clone());
    let h = tape.layer_norm_compute(&x, &p[0], &p[1], 1e-6).unwrap();
    let qkv = tape.linear_compute(&h, &p[2], Some(&p[3])).unwrap();
    let a = tape.attention(&qkv, HEADS).unwrap();
    let x = tape.linear_add(&a, &p[4], &p[5], &x).unwrap();
    let h = tape.layer_norm_compute(&x, &p[6], &p[7], 1e-6).unwrap();
    let out = tape.mlp(&h, (&p[8], &p[9]), (&p[10], &p[11]), Some(&x)).unwrap();
    let target = upload(&rand_vec(B * T * D, 99), &[B, T, D]);
    let w = elementwise::full(dev(), &[B * T], loss_weight / (B * T) as f32).unwrap();
    tape.weighted_mse(&out, &target, &w).unwrap().0
}

fn layout() -> Vec<(&'static str, Vec<usize>)> {
    block_params().into_iter().map(|(n, s, _)| (n, s)).collect()
}

/// The loss and every parameter gradient of the block recorded in
/// `precision`, backward seeded with `seed` (a loss scale) and the
/// gradients divided by it again.
fn gradients(precision: Precision, loss_weight: f32, seed: f32) -> (f32, Vec<Vec<f32>>) {
    let d = dev();
    let pack = packed_params();
    let x = upload(&rand_vec(B * T * D, 98).iter().map(|v| 2.0 * v).collect::<Vec<f32>>(), &[B, T, D]);
    let tape = Tape::with_precision(d, true, precision).unwrap();
    let loss = block_loss(&tape, &pack, &x, loss_weight);
    let layout = layout();
    let shapes: Vec<(&str, &[usize])> = layout.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    let mut grads = Gradients::packed(d, &shapes).unwrap();
    tape.backward_from(&loss, &elementwise::full(d, &[1], seed).unwrap(), &mut grads).unwrap();
    let g = layout.iter().map(|(n, _)| download(grads.get(n).unwrap()).iter().map(|v| v / seed).collect()).collect();
    (download(loss.value())[0], g)
}

/// The worst |a − b| over the largest |b|, over every tensor.
fn worst_relative(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((ga, gb), (name, _)) in a.iter().zip(b).zip(layout()) {
        let scale = gb.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let err = ga.iter().zip(gb).fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
        if err / scale > worst.0 {
            worst = (err / scale, name.to_string());
        }
    }
    worst
}

#[test]
fn a_block_on_an_f16_tape_tracks_the_f32_tape() {
    if !has_f16() {
        return;
    }
    let (loss32, g32) = gradients(Precision::F32, 1.0, 1.0);
    let (loss16, g16) = gradients(Precision::F16, 1.0, 1.0);
    assert!((f64::from(loss16 - loss32)).abs() <= 16.0 * U * f64::from(loss32.abs()), "loss {loss16} vs {loss32}");
    let (err, name) = worst_relative(&g16, &g32);
    assert!(err <= 16.0 * U, "{name}: f16 gradients off by {err:.2e} of the largest");
    assert!(err > 0.0, "the f16 tape rounded nothing");
}

/// A loss 2⁻²⁴ as large: its activation gradients (~1e-9) are below f16's
/// smallest subnormal (6e-8) and vanish unscaled; seeded with GradScaler's
/// 2¹⁶ they are back in range and, divided by it again, the gradients
/// track the f32 tape as closely as at full size.
#[test]
fn loss_scaling_rescues_gradients_that_underflow_f16() {
    if !has_f16() {
        return;
    }
    let tiny = 2f32.powi(-24);
    let (_, g32) = gradients(Precision::F32, tiny, 1.0);
    let (_, unscaled) = gradients(Precision::F16, tiny, 1.0);
    let (_, scaled) = gradients(Precision::F16, tiny, LossScaler::INITIAL_SCALE);
    let (err, name) = worst_relative(&scaled, &g32);
    assert!(err <= 16.0 * U, "{name}: scaled f16 gradients off by {err:.2e} of the largest");
    let (lost, _) = worst_relative(&unscaled, &g32);
    assert!(lost > 0.5, "unscaled f16 gradients were expected to underflow (off by only {lost:.2e})");
}

/// One step whose loss is multiplied by 10³⁰ (an overflow, injected): the
/// scaler finds ∞ in the gradients, AdamW skips the step (parameters and
/// moments bit-identical), the scale halves and one skipped step is counted.
/// The next, normal step updates the parameters at the halved scale.
#[test]
fn an_overflowing_step_is_skipped_and_halves_the_scale() {
    if !has_f16() {
        return;
    }
    let d = dev();
    let mut pack = packed_params();
    let shapes: Vec<Vec<usize>> = layout().into_iter().map(|(_, s)| s).collect();
    let (mut m, mut v) =
        (elementwise::packed_zeros(d, &shapes).unwrap(), elementwise::packed_zeros(d, &shapes).unwrap());
    let mut scaler = LossScaler::new(d, ScaleState::initial(), LossScaler::GROWTH_INTERVAL).unwrap();
    let x = upload(&rand_vec(B * T * D, 98), &[B, T, D]);
    let snapshot =
        |ts: [&[TensorMut]; 3]| -> Vec<Vec<f32>> { ts.iter().flat_map(|p| p.iter().map(|t| download(t))).collect() };
    for (step, multiplier) in [(1u64, 1e30f32), (2, 1.0)] {
        let tape = Tape::with_precision(d, true, Precision::F16).unwrap();
        let loss = block_loss(&tape, &pack, &x, 1.0);
        let layout = layout();
        let named: Vec<(&str, &[usize])> = layout.iter().map(|(n, s)| (*n, s.as_slice())).collect();
        let mut grads = Gradients::packed(d, &named).unwrap();
        tape.backward_from(&loss, &scaler.seed(d, multiplier).unwrap(), &mut grads).unwrap();
        let members: Vec<&Tensor> = layout.iter().map(|(n, _)| grads.get(n).unwrap()).collect();
        scaler.find_nonfinite_in_pack(d, &members).unwrap();
        let before = snapshot([&pack, &m, &v]);
        let steps: Vec<AdamWStep> = layout
            .iter()
            .map(|_| AdamWStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.05,
                step,
                grad_scale: 1.0,
            })
            .collect();
        adamw_packed(
            d,
            &mut pack.iter_mut().collect::<Vec<_>>(),
            &members,
            &mut m.iter_mut().collect::<Vec<_>>(),
            &mut v.iter_mut().collect::<Vec<_>>(),
            &steps,
            Some(&scaler),
        )
        .unwrap();
        scaler.update(d).unwrap();
        let state = ScaleState::from_words(&scaler.read(d).unwrap().wait().unwrap()).unwrap();
        let after = snapshot([&pack, &m, &v]);
        assert_eq!(state.scale, LossScaler::INITIAL_SCALE / 2.0, "step {step}: {state:?}");
        assert_eq!(state.skipped_steps, 1, "step {step}: {state:?}");
        if step == 1 {
            assert!(members.iter().any(|g| download(g).iter().any(|v| !v.is_finite())), "no overflow was injected");
            assert_eq!(after, before, "the overflowing step changed the model");
        } else {
            assert_eq!(state.good_steps, 1, "{state:?}");
            assert!(members.iter().all(|g| download(g).iter().all(|v| v.is_finite())));
            assert_ne!(after[..pack.len()], before[..pack.len()], "the normal step changed nothing");
        }
    }
}
