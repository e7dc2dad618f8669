//! `cmae bench pretrain`: ms per training step for several masking settings,
//! measured on the same model, batch and adapter in one run.

use std::time::Instant;

use anyhow::Result;
use cmae_engine::{Device, Gradients, Tape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::config::{PretrainConfig, Shot, parse_shots, shots_to_string};
use crate::masking::MaskPlan;
use crate::model::Mae;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::pretrain::init_rng;

#[derive(Debug, Clone)]
pub struct Options {
    pub preset: String,
    pub batch: Option<usize>,
    /// Shot settings to compare; the default is the study's three.
    pub settings: Vec<String>,
    pub warmup: usize,
    pub steps: usize,
    /// Also print a per-kernel GPU time breakdown (timestamp queries).
    pub profile: bool,
}

/// The study's comparison: MAE, two shots, three shots (layers clamped to the depth).
pub fn default_settings(depth: usize) -> Vec<String> {
    let j = depth.saturating_sub(2).max(1);
    let k = (j + 1).min(depth);
    let mut v = vec!["0:0.75".to_string(), format!("0:0.75,{j}:0.1")];
    if k > j {
        v.push(format!("0:0.75,{j}:0.1,{k}:0.1"));
    }
    v
}

/// One full training step (forward, backward, AdamW) on a fixed batch.
fn step(dev: &Device, mae: &Mae, opt: &mut AdamW, imgs: &Tensor, shots: &[Shot], rng: &mut ChaCha8Rng) -> Result<()> {
    let b = imgs.shape()[0];
    let plan = MaskPlan::random(shots, b, mae.cfg.num_patches(), rng).upload(dev, shots)?;
    let tape = Tape::new(dev);
    let out = mae.forward(&tape, imgs, &plan, false)?;
    let mut grads = Gradients::default();
    tape.backward(&out.loss, &mut grads)?;
    opt.update(dev, &mae.params, &grads, 1e-4, 1.0, |_| 1.0)?;
    Ok(())
}

/// Runs the settings, calling `emit` with each JSON line; `started` is when
/// the process began, for the time to the end of the first step.
pub fn run(dev: &Device, opts: &Options, started: Instant, mut emit: impl FnMut(Value)) -> Result<()> {
    let mut cfg = PretrainConfig::preset(&opts.preset)?;
    if let Some(b) = opts.batch {
        cfg.train.batch = b;
    }
    let m = cfg.model.clone();
    let batch = cfg.train.batch;
    let settings = if opts.settings.is_empty() { default_settings(m.depth) } else { opts.settings.clone() };
    let mae = Mae::new(dev, &m, &mut init_rng(0))?;
    let mut opt = AdamW::new(dev, &mae.params, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 })?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let pixels: Vec<f32> =
        (0..batch * m.in_chans * m.img_size * m.img_size).map(|_| rng.random_range(-1.0..1.0)).collect();
    let imgs = Tensor::from_f32(dev, &pixels, &[batch, m.in_chans, m.img_size, m.img_size])?;
    let mut first_step_s = None;
    for setting in settings {
        let shots = parse_shots(&setting)?;
        crate::config::validate_shots(&shots, &m)?;
        for _ in 0..opts.warmup.max(1) {
            step(dev, &mae, &mut opt, &imgs, &shots, &mut rng)?;
            dev.sync()?;
            first_step_s.get_or_insert(started.elapsed().as_secs_f64());
        }
        let mut times = Vec::new();
        for _ in 0..opts.steps.max(1) {
            let t = Instant::now();
            step(dev, &mae, &mut opt, &imgs, &shots, &mut rng)?;
            dev.sync()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        emit(json!({
            "preset": opts.preset,
            "shots": shots_to_string(&shots),
            "batch": batch,
            "ms_per_step": (ms * 10.0).round() / 10.0,
            "images_per_s": (batch as f64 / ms * 1e4).round() / 10.0,
            "adapter": dev.info().name,
            "first_step_s": first_step_s.map(|s| (s * 100.0).round() / 100.0),
        }));
        if opts.profile {
            dev.set_profiling(true)?;
            step(dev, &mae, &mut opt, &imgs, &shots, &mut rng)?;
            let profile = dev.take_profile()?;
            dev.set_profiling(false)?;
            let total: f64 = profile.iter().map(|k| k.total_ms).sum();
            for k in profile {
                emit(json!({
                    "profile": shots_to_string(&shots),
                    "kernel": k.label,
                    "dispatches": k.dispatches,
                    "gpu_ms": (k.total_ms * 100.0).round() / 100.0,
                    "share": (k.total_ms / total * 1000.0).round() / 1000.0,
                }));
            }
        }
    }
    Ok(())
}
