//! cmae in the browser, on WebGPU. This first part runs the engine there:
//! it opens the page's adapter without blocking, runs a product on the GPU,
//! reads it back asynchronously, checks it against an f64 reference, and
//! logs the outcome as one console line (`cmae-web smoke {json}`, or
//! `cmae-web error …`) that the headless browser test reads. The same code
//! runs natively (`smoke` is tested on lavapipe too).

use cmae_engine::device::AdapterRequest;
use cmae_engine::kernels::matmul;
use cmae_engine::{Device, Result, Tensor, TuneConfig};
use serde_json::{Value, json};

/// The adapter the environment offers (the page's WebGPU adapter in a
/// browser), opened without blocking. The autotuner stays off: it times
/// kernels on the host clock, which wasm32 in a page does not have.
pub async fn open() -> Result<Device> {
    Device::open_async(&AdapterRequest::from_env()?, TuneConfig::off()).await
}

/// A product of awkward shape (no dimension a multiple of any tile) on
/// `dev`, read back asynchronously and compared with f64: the largest error
/// relative to the largest reference value, and what ran it.
pub async fn smoke(dev: &Device) -> Result<Value> {
    let (m, k, n) = (37usize, 29usize, 23usize);
    let value = |i: usize, salt: usize| ((i * 7919 + salt) % 97) as f32 / 97.0 - 0.5;
    let a: Vec<f32> = (0..m * k).map(|i| value(i, 3)).collect();
    let b: Vec<f32> = (0..k * n).map(|i| value(i, 41)).collect();
    let product =
        matmul::matmul(dev, &Tensor::from_f32(dev, &a, &[m, k])?, &Tensor::from_f32(dev, &b, &[k, n])?, false, false)?;
    let got = product.read_f32(dev)?.await?;
    let (mut worst, mut largest) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let reference: f64 = (0..k).map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j])).sum();
            worst = worst.max((f64::from(got[i * n + j]) - reference).abs());
            largest = largest.max(reference.abs());
        }
    }
    let info = dev.info();
    Ok(json!({
        // Browsers hide the adapter's name.
        "adapter": if info.name.is_empty() { "WebGPU adapter (name hidden by the browser)".to_string() } else { info.name.clone() },
        "backend": format!("{:?}", info.backend),
        "kernels": dev.kernel_families().describe(),
        "matmul_shape": [m, k, n],
        "matmul_max_error": worst / largest,
        // What the adapter computed, to compare adapters by.
        "matmul_abs_sum": got.iter().map(|&v| f64::from(v.abs())).sum::<f64>(),
    }))
}

#[cfg(target_arch = "wasm32")]
mod page {
    use wasm_bindgen::prelude::*;

    /// Opens the adapter, runs [`super::smoke`] and logs one line saying how it went.
    #[wasm_bindgen]
    pub async fn run_smoke() -> String {
        let outcome = async { super::smoke(&super::open().await?).await }.await;
        let line = match outcome {
            Ok(report) => format!("cmae-web smoke {report}"),
            Err(e) => format!("cmae-web error {e}"),
        };
        web_sys::console::log_1(&line.as_str().into());
        line
    }
}
