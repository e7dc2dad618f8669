//! Gradient checks: the tape's GPU gradients against central finite
//! differences of an f64 CPU reference of the same function.
//!
//! Both sides reduce the op's output y to L = mean(r ∘ y) with a fixed random
//! r, so every output element matters. Finite differences run in f64 on the
//! reference (h = 1e-6, truncation error ~h² ≈ 1e-12), so they are the truth;
//! the GPU works in f32. The bound |g − fd| ≤ 1e-3·max|fd| + 1e-7 covers f32
//! rounding of backward reductions over a few hundred terms (~1e-5 relative)
//! with margin, while any wrong formula misses it by orders of magnitude.
#![allow(dead_code)]

use cmae_engine::{Gradients, Tape, Tensor, Var};

use super::{dev, rand_vec, reference::to64};

pub struct Input {
    pub name: &'static str,
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Input {
    pub fn random(name: &'static str, shape: &[usize], seed: u64) -> Self {
        Self { name, data: rand_vec(shape.iter().product(), seed), shape: shape.to_vec() }
    }
}

/// Checks d mean(r∘f(inputs)) / d input for every input.
/// `gpu` builds f on the tape; `cpu` evaluates f in f64.
pub fn check(what: &str, inputs: &[Input], gpu: impl Fn(&Tape, &[Var]) -> Var, cpu: impl Fn(&[Vec<f64>]) -> Vec<f64>) {
    let d = dev();
    let base: Vec<Vec<f64>> = inputs.iter().map(|i| to64(&i.data)).collect();
    let n_out = cpu(&base).len();
    let r = rand_vec(n_out, 4242);
    let loss64 =
        |xs: &[Vec<f64>]| -> f64 { cpu(xs).iter().zip(&r).map(|(y, r)| y * f64::from(*r)).sum::<f64>() / n_out as f64 };

    let tape = Tape::new(d);
    let tensors: Vec<Tensor> = inputs.iter().map(|i| Tensor::from_f32(d, &i.data, &i.shape).unwrap()).collect();
    let vars: Vec<Var> = inputs.iter().zip(&tensors).map(|(i, t)| tape.param(i.name, t)).collect();
    let y = gpu(&tape, &vars);
    assert_eq!(y.value().numel(), n_out, "{what}: GPU and CPU outputs differ in size");
    let rt = tape.constant(Tensor::from_f32(d, &r, y.shape()).unwrap());
    let loss = tape.mean(&tape.mul(&y, &rt).unwrap()).unwrap();
    let mut grads = Gradients::default();
    tape.backward(&loss, &mut grads).unwrap();

    // The forward loss itself must agree before gradients mean anything.
    let got_loss = f64::from(loss.value().wait_f32(d).unwrap()[0]);
    let want_loss = loss64(&base);
    assert!((got_loss - want_loss).abs() <= 1e-5 * want_loss.abs().max(1e-2), "{what}: loss {got_loss} vs {want_loss}");

    let h = 1e-6;
    for (k, input) in inputs.iter().enumerate() {
        let g = grads.get(input.name).unwrap_or_else(|| panic!("{what}: no gradient for {}", input.name));
        let got = g.wait_f32(d).unwrap();
        assert_eq!(got.len(), input.data.len(), "{what}: gradient size of {}", input.name);
        // Every element for small inputs, an even sample of 64 for large ones.
        let step = (input.data.len() / 64).max(1);
        let idx: Vec<usize> = (0..input.data.len()).step_by(step).collect();
        let fd: Vec<f64> = idx
            .iter()
            .map(|&i| {
                let mut plus = base.clone();
                plus[k][i] += h;
                let mut minus = base.clone();
                minus[k][i] -= h;
                (loss64(&plus) - loss64(&minus)) / (2.0 * h)
            })
            .collect();
        let scale = fd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (&i, want) in idx.iter().zip(&fd) {
            let err = (f64::from(got[i]) - want).abs();
            assert!(
                err <= 1e-3 * scale + 1e-7,
                "{what}: d/d{}[{i}] is {} but finite differences give {want} (max |fd| {scale})",
                input.name,
                got[i]
            );
        }
    }
}
