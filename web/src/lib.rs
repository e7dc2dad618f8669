//! cmae in the browser, on WebGPU: the viewer's UI and model side
//! (`cmae-viewer`'s own code) in a page, on the page's GPU.
//!
//! `index.html` is the viewer: it opens a checkpoint and an image (bundled,
//! from `?checkpoint=URL&image=URL`, a file picker or a drop) and, once the
//! first reconstruction and attention map are on screen, logs one console
//! line `cmae-web result {json}` with the numbers drawn (or `cmae-web error
//! …`). `smoke.html` runs [`smoke`]: one product, checked against f64. The
//! headless browser tests read those lines; what does not need a browser
//! (the URL parameters, the smoke) is tested natively too.

#[cfg(target_arch = "wasm32")]
mod page;

use cmae::config::{PretrainConfig, Shot, parse_shots};
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
        "adapter": adapter_name(dev),
        "backend": format!("{:?}", info.backend),
        "kernels": dev.kernel_families().describe(),
        "matmul_shape": [m, k, n],
        "matmul_max_error": worst / largest,
        // What the adapter computed, to compare adapters by.
        "matmul_abs_sum": got.iter().map(|&v| f64::from(v.abs())).sum::<f64>(),
    }))
}

/// The adapter's name; browsers hide it.
pub fn adapter_name(dev: &Device) -> String {
    match dev.info().name.as_str() {
        "" => "WebGPU adapter (name hidden by the browser)".into(),
        name => name.into(),
    }
}

/// The bundled checkpoint: a small Conditional MAE pretrained on
/// Fashion-MNIST with two shots (`tools/make-web-assets`).
pub const BUNDLED_CHECKPOINT: &str = "assets/fmnist-small.safetensors";
/// The bundled test images: `assets/fmnist-test-K.png`.
pub const BUNDLED_IMAGES: usize = 6;

/// What the page's URL asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PageParams {
    /// The checkpoint's URL (default: the bundled one).
    pub checkpoint: String,
    /// The image's URL (default: the first bundled test image).
    pub image: String,
    /// The shots to mask with (default: the checkpoint's own).
    pub shots: Option<Vec<Shot>>,
    pub seed: u64,
    /// Pretrain this page preset first (see [`page_preset`]) and show the
    /// result instead of the checkpoint.
    pub train: Option<String>,
    /// Optimizer steps of that run (default: the preset's).
    pub steps: Option<usize>,
    /// Download the trained checkpoint when the run ends.
    pub download: bool,
}

impl PageParams {
    /// From the URL's query parameters (decoded). An unknown or malformed
    /// one is an error naming it and what is valid, as the CLI's are.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut p = Self {
            checkpoint: BUNDLED_CHECKPOINT.into(),
            image: bundled_image(0),
            shots: None,
            seed: 0,
            train: None,
            steps: None,
            download: false,
        };
        let whole = |key: &str, value: &str| {
            value.parse::<usize>().map_err(|_| anyhow::anyhow!("URL parameter {key}={value:?} is not a whole number"))
        };
        for (key, value) in pairs {
            match key.as_str() {
                "checkpoint" => p.checkpoint = value,
                "image" => p.image = value,
                "shots" => p.shots = Some(parse_shots(&value)?),
                "seed" => p.seed = whole("seed", &value)? as u64,
                "train" => {
                    page_preset(&value)?;
                    p.train = Some(value);
                }
                "steps" => p.steps = Some(whole("steps", &value)?.max(1)),
                "download" => p.download = value != "0",
                other => anyhow::bail!(
                    "URL parameter {other:?} is not one of checkpoint=URL, image=URL, shots=0:0.75,2:0.5, seed=N, train={}, steps=N, download=1",
                    PAGE_PRESETS.join("|")
                ),
            }
        }
        Ok(p)
    }
}

/// The models a page can pretrain: `micro`, and `fmnist-small` (the
/// bundled checkpoint's shape: Fashion-MNIST-sized, 28 px greyscale, two
/// shots). Both on synthetic images: a page has no dataset files.
pub const PAGE_PRESETS: [&str; 2] = ["micro", "fmnist-small"];

/// The config of page preset `name`.
pub fn page_preset(name: &str) -> anyhow::Result<PretrainConfig> {
    let mut cfg = match name {
        "micro" => {
            // The preset's rate is for a batch of 8 that learns nothing; this
            // one visibly learns within a hundred steps.
            let mut c = PretrainConfig::preset("micro")?;
            for s in ["train.batch=16", "train.blr=0.02", "train.steps=100"] {
                c.set(s)?;
            }
            c
        }
        "fmnist-small" => {
            let mut c = PretrainConfig::preset("fmnist")?;
            for s in [
                "model.embed_dim=96",
                "model.depth=6",
                "model.decoder_embed_dim=64",
                "model.decoder_depth=2",
                "train.batch=32",
                "train.steps=300",
            ] {
                c.set(s)?;
            }
            c.shots = parse_shots("0:0.75,4:0.1")?;
            c
        }
        other => anyhow::bail!("{other:?} is not a page preset: use {}", PAGE_PRESETS.join(" or ")),
    };
    cfg.data.spec = "synthetic".into();
    // Reconstructions refresh as the run goes.
    cfg.output.recon_every = cfg.output.recon_every.min(20);
    Ok(cfg)
}

/// The URL of bundled test image `k`.
pub fn bundled_image(k: usize) -> String {
    format!("assets/fmnist-test-{k}.png")
}

/// The page's `cmae-web result` JSON: the reconstruction's report (loss,
/// per-image and per-patch losses, shots, seed), the attention map on
/// screen and where it came from, and the adapter.
pub fn result_json(report: &Value, attention: &[f64], layer: usize, params: &PageParams, adapter: &str) -> Value {
    let mut out = report.clone();
    out["adapter"] = json!(adapter);
    out["cls_attention"] = json!(attention);
    out["attention_layer"] = json!(layer);
    out["checkpoint"] = json!(params.checkpoint);
    out["image"] = json!(params.image);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_presets_are_valid_runs_on_synthetic_images() {
        for name in super::PAGE_PRESETS {
            let cfg = super::page_preset(name).unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.data.spec, "synthetic");
        }
        let small = super::page_preset("fmnist-small").unwrap();
        assert_eq!((small.model.img_size, small.model.in_chans, small.model.depth), (28, 1, 6));
    }

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn url_parameters_default_to_the_bundled_model_and_reject_what_they_do_not_know() {
        let p = PageParams::from_pairs(Vec::new()).unwrap();
        assert_eq!(
            (p.checkpoint.as_str(), p.image.as_str(), p.shots, p.seed),
            (BUNDLED_CHECKPOINT, "assets/fmnist-test-0.png", None, 0)
        );
        let p =
            PageParams::from_pairs(pairs(&[("checkpoint", "a.safetensors"), ("shots", "0:0.75,2:0.5"), ("seed", "7")]))
                .unwrap();
        assert_eq!((p.checkpoint.as_str(), p.seed), ("a.safetensors", 7));
        assert_eq!(p.shots.unwrap().iter().map(|s| (s.layer, s.ratio)).collect::<Vec<_>>(), vec![(0, 0.75), (2, 0.5)]);
        let e = PageParams::from_pairs(pairs(&[("shot", "0:0.5")])).unwrap_err().to_string();
        assert!(e.contains("\"shot\"") && e.contains("shots=0:0.75,2:0.5"), "{e}");
        let e = PageParams::from_pairs(pairs(&[("seed", "x")])).unwrap_err().to_string();
        assert!(e.contains("seed"), "{e}");
        let p = PageParams::from_pairs(pairs(&[("train", "micro"), ("steps", "30"), ("download", "1")])).unwrap();
        assert_eq!((p.train.as_deref(), p.steps, p.download), (Some("micro"), Some(30), true));
        let e = PageParams::from_pairs(pairs(&[("train", "huge")])).unwrap_err().to_string();
        assert!(e.contains("micro or fmnist-small"), "{e}");
        let e = PageParams::from_pairs(pairs(&[("shots", "0-0.75")])).unwrap_err().to_string();
        assert!(e.contains("0-0.75"), "{e}");
    }
}
