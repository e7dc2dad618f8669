//! A small composite graph (linear → GELU → LayerNorm → attention → gather →
//! MSE) with its full backward checked by finite differences, plus the tape's
//! bookkeeping: no-grad mode, gradient accumulation and errors.

mod common;

use cmae_engine::{Gradients, Tape, Tensor};
use common::gradcheck::{Input, check};
use common::reference::{self as refr, to64};
use common::{dev, rand_vec};

const B: usize = 2;
const T: usize = 5;
const IN: usize = 6;
const D: usize = 8;
const HEADS: usize = 2;
const KEEP: usize = 3;
const IDX: [u32; B * KEEP] = [4, 1, 2, 0, 3, 1];

fn inputs() -> Vec<Input> {
    vec![
        Input::random("x", &[B, T, IN], 1),
        Input::random("w1", &[3 * D, IN], 2),
        Input::random("b1", &[3 * D], 3),
        Input::random("g", &[3 * D], 4),
        Input::random("beta", &[3 * D], 5),
    ]
}

fn cpu_forward(x: &[Vec<f64>], target: &[f64], w: &[f64]) -> f64 {
    let h = refr::linear(&x[0], &x[1], Some(&x[2]), B * T, IN, 3 * D);
    let h = refr::gelu(&h);
    let h = refr::layer_norm(&h, &x[3], &x[4], 3 * D, 1e-6);
    let a = refr::attention(&h, B, T, D, HEADS);
    let kept = refr::gather_rows(&a, &IDX, B, T, KEEP, D);
    refr::weighted_mse(&kept, target, w, D)
}

#[test]
fn composite_graph_backward_matches_finite_differences() {
    let target = rand_vec(B * KEEP * D, 6);
    let w = rand_vec(B * KEEP, 7);
    let d = dev();
    let (tt, wt) =
        (Tensor::from_f32(d, &target, &[B, KEEP, D]).unwrap(), Tensor::from_f32(d, &w, &[B * KEEP]).unwrap());
    let it = Tensor::from_u32(d, &IDX, &[B, KEEP]).unwrap();
    check(
        "composite",
        &inputs(),
        |t, v| {
            let h = t.linear(&v[0], &v[1], Some(&v[2])).unwrap();
            let h = t.gelu(&h).unwrap();
            let h = t.layer_norm(&h, &v[3], &v[4], 1e-6).unwrap();
            let a = t.attention(&h, HEADS).unwrap();
            let kept = t.gather_rows(&a, &it).unwrap();
            t.weighted_mse(&kept, &tt, &wt).unwrap().0
        },
        |x| vec![cpu_forward(x, &to64(&target), &to64(&w))],
    );
}

#[test]
fn no_grad_records_nothing_and_backward_refuses() {
    let d = dev();
    let tape = Tape::no_grad(d);
    let x = tape.param("x", &Tensor::from_f32(d, &[1.0, 2.0], &[2]).unwrap());
    let y = tape.mean(&tape.mul(&x, &x).unwrap()).unwrap();
    assert!(!y.requires_grad());
    assert_eq!(y.value().wait_f32(d).unwrap(), vec![2.5]);
    let err = tape.backward(&y, &mut Gradients::default()).unwrap_err().to_string();
    assert!(err.contains("does not depend"), "{err}");
}

#[test]
fn gradients_accumulate_across_backward_calls() {
    let d = dev();
    let xt = Tensor::from_f32(d, &[1.0, -2.0, 3.0], &[3]).unwrap();
    let mut grads = Gradients::default();
    for _ in 0..3 {
        let tape = Tape::new(d);
        let x = tape.param("x", &xt);
        let loss = tape.mean(&tape.mul(&x, &x).unwrap()).unwrap();
        tape.backward(&loss, &mut grads).unwrap();
    }
    // d mean(x²)/dx = 2x/3, three times.
    assert_eq!(grads.get("x").unwrap().wait_f32(d).unwrap(), vec![2.0, -4.0, 6.0]);
    // A parameter used twice gets both contributions.
    let tape = Tape::new(d);
    let (a, b) = (tape.param("p", &xt), tape.param("p", &xt));
    let loss = tape.mean(&tape.add(&a, &b).unwrap()).unwrap();
    let mut g2 = Gradients::default();
    tape.backward(&loss, &mut g2).unwrap();
    assert_eq!(g2.get("p").unwrap().wait_f32(d).unwrap(), vec![2.0 / 3.0; 3]);
}

#[test]
fn backward_needs_a_scalar() {
    let d = dev();
    let tape = Tape::new(d);
    let x = tape.param("x", &Tensor::from_f32(d, &[1.0, 2.0], &[2]).unwrap());
    let y = tape.gelu(&x).unwrap();
    let err = tape.backward(&y, &mut Gradients::default()).unwrap_err().to_string();
    assert!(err.contains("scalar") && err.contains("[2]"), "{err}");
}
