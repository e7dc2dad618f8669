//! Shared helpers for the kernel tests: one device per test binary, seeded
//! random data and f64 comparisons.
#![allow(dead_code)]

pub mod gradcheck;
pub mod reference;

use std::sync::OnceLock;

use cmae_engine::device::AdapterRequest;
use cmae_engine::{Device, Tensor, TensorMut, TuneConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The device every test in this binary shares (lavapipe in CI).
pub fn dev() -> &'static Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| Device::from_env().expect("a GPU adapter (CI installs lavapipe)"))
}

/// Whether `dev` runs f16 kernels (SHADER_F16). Where it does not, says so
/// on stderr (past the harness's capture), or fails when CMAE_REQUIRE_F16
/// is set (CI's lavapipe has it).
pub fn has_f16(dev: &Device) -> bool {
    use std::io::Write;
    if dev.kernel_families().shader_f16 {
        return true;
    }
    assert!(
        std::env::var_os("CMAE_REQUIRE_F16").is_none(),
        "CMAE_REQUIRE_F16 is set but {} has no SHADER_F16",
        dev.info().name
    );
    let _ = writeln!(std::io::stderr(), "NOT RUN: {} has no SHADER_F16", dev.info().name);
    false
}

/// A device of its own that never tunes: the built-in heuristic's choices.
pub fn untuned_dev() -> Device {
    Device::open(&AdapterRequest::from_env().unwrap(), TuneConfig::off()).expect("a GPU adapter (CI installs lavapipe)")
}

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn upload(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(dev(), data, shape).unwrap()
}

/// A tensor the test then writes in place (in-place kernels, optimizer state).
pub fn upload_mut(data: &[f32], shape: &[usize]) -> TensorMut {
    TensorMut::from_f32(dev(), data, shape).unwrap()
}

pub fn download(t: &Tensor) -> Vec<f32> {
    t.wait_f32(dev()).unwrap()
}

/// Max |got − want| / (atol + rtol·|want|) ≤ 1 over all elements, else panics
/// with the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (f64::from(g) - w).abs();
        let err = if diff == 0.0 { 0.0 } else { diff / (atol + rtol * w.abs()) };
        if err.is_nan() || err > worst.0 {
            worst = (err, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} is {} but the f64 reference is {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
}
