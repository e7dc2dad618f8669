//! `cmae bench pretrain`: ms per training step for several masking settings,
//! measured on the same model, batch and adapter in one run. Under `mpirun`
//! each rank steps on its shard of the batch and sums the gradients over
//! the ranks, and rank 0 reports what the sums cost.

use std::time::Instant;

use anyhow::Result;
use cmae_engine::{Device, Precision, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::config::{ModelConfig, PretrainConfig, Shot, parse_shots, shots_to_string};
use crate::distributed::buckets::{GradientSync, SyncStats};
use crate::distributed::world;
use crate::masking::MaskPlan;
use crate::model::Mae;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::precision::Amp;
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
    /// Each setting runs in each of these precisions (interleaved, so f16
    /// and f32 compare within one run).
    pub precisions: Vec<Precision>,
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

/// Matmul FLOPs of one training step, counted from the shapes: a
/// deterministic measure of what a masking setting saves, unlike wall time on
/// a noisy machine. Every product costs 3× its forward (forward, dX, dW; the
/// attention backward's four products are twice its two forward ones) except
/// the patch embedding, whose input (the images) needs no gradient.
pub fn step_gflop(m: &ModelConfig, shots: &[Shot], batch: usize) -> f64 {
    let (d, dd, l) = (m.embed_dim as f64, m.decoder_embed_dim as f64, m.num_patches());
    let block = |t: f64, dim: f64, hidden: f64| 2.0 * t * (4.0 * dim * dim + 2.0 * dim * hidden) + 4.0 * t * t * dim;
    let mut visible = l;
    let mut tokens = vec![0usize; m.depth + 1];
    let mut next = shots.iter().peekable();
    for (i, t) in tokens.iter_mut().enumerate() {
        while let Some(s) = next.next_if(|s| s.layer == i) {
            visible = crate::config::keep_count(visible, s.ratio);
        }
        *t = 1 + visible;
    }
    let b = batch as f64;
    let encoder: f64 = tokens[..m.depth].iter().map(|&t| block(t as f64, d, m.mlp_hidden() as f64)).sum();
    let decoder = m.decoder_depth as f64 * block((1 + l) as f64, dd, m.decoder_mlp_hidden() as f64);
    let heads = 2.0 * tokens[m.depth] as f64 * d * dd + 2.0 * (1 + l) as f64 * dd * m.patch_dim() as f64;
    let patch_embed = 2.0 * l as f64 * m.patch_dim() as f64 * d;
    b * (3.0 * (encoder + decoder + heads) + 2.0 * patch_embed) / 1e9
}

/// A preset's model and optimizer at `batch` (default the preset's), and a
/// fixed batch of random images (this rank's shard of it), and the whole
/// batch's size.
pub(crate) fn setup(dev: &Device, preset: &str, batch: Option<usize>) -> Result<(Mae, AdamW, Tensor, usize)> {
    let mut cfg = PretrainConfig::preset(preset)?;
    if let Some(b) = batch {
        cfg.train.batch = b;
    }
    cfg.validate()?;
    world().check_batch(cfg.train.batch)?;
    let (m, global, batch) = (&cfg.model, cfg.train.batch, world().shard(cfg.train.batch).len());
    let mae = Mae::new(dev, m, &mut init_rng(0))?;
    let opt = AdamW::new(
        dev,
        &mae.params,
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05, decays: crate::model::decays },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let pixels: Vec<f32> =
        (0..batch * m.in_chans * m.img_size * m.img_size).map(|_| rng.random_range(-1.0..1.0)).collect();
    let imgs = Tensor::from_f32(dev, &pixels, &[batch, m.in_chans, m.img_size, m.img_size])?;
    Ok((mae, opt, imgs, global))
}

/// One full training step (forward, backward, AdamW, in `amp`'s precision)
/// on a fixed batch; over several ranks the gradients are summed through
/// `sync` (made on the first step), and what that cost is returned.
pub(crate) fn step(
    dev: &Device,
    (mae, opt, amp): (&mut Mae, &mut AdamW, &mut Amp),
    imgs: &Tensor,
    shots: &[Shot],
    rng: &mut ChaCha8Rng,
    sync: &mut Option<GradientSync>,
) -> Result<Option<SyncStats>> {
    let b = imgs.shape()[0];
    let plan = MaskPlan::random(shots, b, mae.cfg.num_patches(), rng).upload(dev, shots)?;
    let tape = amp.tape(dev, &mae.params)?;
    let out = mae.forward(&tape, imgs, &plan, false)?;
    let mut grads = opt.new_gradients(dev, &mae.params)?;
    if world().size() > 1 {
        sync.get_or_insert_with(|| GradientSync::new(&grads)).arm(&mut grads);
    }
    amp.backward(dev, &tape, &out.loss, &mut grads)?;
    let stats = sync.as_ref().map(|s| s.finish(dev, &mut grads)).transpose()?;
    opt.update(dev, &mut mae.params, &grads, (1e-4, 1.0), |_| 1.0, amp.scaler_mut())?;
    Ok(stats)
}

/// One timed case: a masking setting in one of the run's precisions.
struct Case {
    shots: Vec<Shot>,
    /// Index of its precision (and of that precision's `Amp`).
    precision: usize,
}

/// Runs every setting in every precision, calling `emit` with each JSON
/// line; `started` is when the process began, for the time to the end of
/// the first step.
pub fn run(dev: &Device, opts: &Options, started: Instant, mut emit: impl FnMut(Value)) -> Result<()> {
    let (mut mae, mut opt, imgs, batch) = setup(dev, &opts.preset, opts.batch)?;
    let mut sync = None;
    let precisions = if opts.precisions.is_empty() { vec![Precision::F32] } else { opts.precisions.clone() };
    let mut amps = precisions.iter().map(|&p| Amp::new(dev, p, true)).collect::<Result<Vec<_>>>()?;
    let m = mae.cfg.clone();
    let settings = if opts.settings.is_empty() { default_settings(m.depth) } else { opts.settings.clone() };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut cases = Vec::new();
    for s in &settings {
        let shots = parse_shots(s)?;
        crate::config::validate_shots(&shots, &m)?;
        cases.extend((0..precisions.len()).map(|precision| Case { shots: shots.clone(), precision }));
    }
    let mut first_step_s = None;
    // Per case, from its last untimed step: dispatches and peak MiB in use.
    let mut costs = Vec::new();
    for case in &cases {
        let amp = &mut amps[case.precision];
        let mut last = (0, 0.0);
        for _ in 0..opts.warmup.max(1) {
            let dispatches = dev.dispatches();
            dev.reset_peak_memory();
            step(dev, (&mut mae, &mut opt, amp), &imgs, &case.shots, &mut rng, &mut sync)?;
            dev.sync()?;
            first_step_s.get_or_insert(started.elapsed().as_secs_f64());
            last = (dev.dispatches() - dispatches, dev.peak_memory_bytes() as f64 / f64::from(1 << 20));
        }
        costs.push(last);
    }
    // Cases take turns, round after round, so drifts in machine speed hit
    // them alike and the per-case medians compare fairly.
    let mut times = vec![Vec::new(); cases.len()];
    let mut syncs = vec![Vec::new(); cases.len()];
    for _ in 0..opts.steps.max(1) {
        for ((case, t), s) in cases.iter().zip(&mut times).zip(&mut syncs) {
            let amp = &mut amps[case.precision];
            let start = Instant::now();
            let stats = step(dev, (&mut mae, &mut opt, amp), &imgs, &case.shots, &mut rng, &mut sync)?;
            dev.sync()?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
            s.extend(stats);
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    // The minimum is reported too: on a shared machine noise only ever adds
    // time, so the fastest of many interleaved rounds is the steadiest figure.
    let medians: Vec<f64> = times.iter().map(|t| t[t.len() / 2]).collect();
    let mins: Vec<f64> = times.iter().map(|t| t[0]).collect();
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    let gflop0 = step_gflop(&m, &cases[0].shots, batch);
    // The same setting's f32 case, for the vs_f32 ratios.
    let f32_case =
        |case: &Case| cases.iter().position(|c| c.shots == case.shots && precisions[c.precision] == Precision::F32);
    let peaks: Vec<f64> = costs.iter().map(|c| c.1).collect();
    for (i, case) in cases.iter().enumerate() {
        let (ms, min, (dispatches, peak_mb)) = (medians[i], mins[i], costs[i]);
        let gflop = step_gflop(&m, &case.shots, batch);
        let vs_f32 = |v: &[f64]| f32_case(case).map(|j| round3(v[i] / v[j]));
        emit(json!({
            "preset": opts.preset,
            "shots": shots_to_string(&case.shots),
            "precision": precisions[case.precision].name(),
            "batch": batch,
            "ms_per_step": (ms * 10.0).round() / 10.0,
            "images_per_s": (batch as f64 / ms * 1e4).round() / 10.0,
            "ms_per_step_min": (min * 10.0).round() / 10.0,
            "vs_first": round3(ms / medians[0]),
            "vs_first_min": round3(min / mins[0]),
            "vs_f32": vs_f32(&medians),
            "vs_f32_min": vs_f32(&mins),
            "gflop_per_step": (gflop * 100.0).round() / 100.0,
            "vs_first_gflop": (gflop / gflop0 * 10000.0).round() / 10000.0,
            "adapter": dev.info().name,
            "first_step_s": first_step_s.map(|s| (s * 100.0).round() / 100.0),
            "dispatches_per_step": dispatches,
            "gpu_peak_mb": (peak_mb * 10.0).round() / 10.0,
            "gpu_peak_vs_f32": vs_f32(&peaks),
            "ranks": world().size(),
            "allreduce": allreduce_summary(&syncs[i], ms),
        }));
    }
    if opts.profile {
        for case in &cases {
            let amp = &mut amps[case.precision];
            dev.set_profiling(true)?;
            step(dev, (&mut mae, &mut opt, amp), &imgs, &case.shots, &mut rng, &mut sync)?;
            let profile = dev.take_profile()?;
            dev.set_profiling(false)?;
            let total: f64 = profile.iter().map(|k| k.total_ms).sum();
            for k in profile {
                emit(json!({
                    "profile": shots_to_string(&case.shots),
                    "precision": precisions[case.precision].name(),
                    "kernel": k.label,
                    "dispatches": k.dispatches,
                    "gpu_ms": (k.total_ms * 100.0).round() / 100.0,
                    "share": (k.total_ms / total * 1000.0).round() / 1000.0,
                    "read_mb": mib(k.bytes_read),
                    "written_mb": mib(k.bytes_written),
                    "gb_per_s": ((k.bytes_read + k.bytes_written) as f64 / 1e6 / k.total_ms.max(1e-9) * 100.0).round() / 100.0,
                }));
            }
        }
    }
    Ok(())
}

/// Bytes in MiB, two decimals.
fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1 << 20) as f64 * 100.0).round() / 100.0
}

/// What summing gradients over ranks cost in a case's timed steps (medians),
/// and its share of the step; null on one rank.
fn allreduce_summary(stats: &[SyncStats], step_ms: f64) -> Value {
    if stats.is_empty() {
        return Value::Null;
    }
    let median = |f: &dyn Fn(&SyncStats) -> f64| {
        let mut v: Vec<f64> = stats.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ms, exposed) = (median(&|s| s.allreduce_ms), median(&|s| s.exposed_ms));
    let round = |v: f64, by: f64| (v * by).round() / by;
    json!({
        "bytes_per_step": stats[0].bytes,
        "buckets": stats[0].buckets,
        "ms_per_step": round(ms, 100.0),
        "share_of_step": round(ms / step_ms, 1000.0),
        "overlap": round(median(&|s| s.overlap), 1000.0),
        "exposed_ms_per_step": round(exposed, 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_shots_cost_fewer_flops() {
        let m = PretrainConfig::preset("tiny").unwrap().model;
        let one = step_gflop(&m, &parse_shots("0:0.75").unwrap(), 64);
        let two = step_gflop(&m, &parse_shots("0:0.75,10:0.1").unwrap(), 64);
        let three = step_gflop(&m, &parse_shots("0:0.75,10:0.1,11:0.1").unwrap(), 64);
        assert!(three < two && two < one, "{one} {two} {three}");
        // By hand: an encoder block on 17 tokens of 192-d (MLP 768) is
        // 2·17·(4·192² + 2·192·768) + 4·17²·192 = 15,040,512 + 221,952 = 15,262,464 FLOPs per sample.
        let enc17 = 2.0 * 17.0 * (4.0 * 192.0f64.powi(2) + 2.0 * 192.0 * 768.0) + 4.0 * 289.0 * 192.0;
        assert_eq!(enc17, 15_262_464.0);
        assert!(one > 3.0 * 64.0 * 12.0 * enc17 / 1e9);
    }

    /// The estimate against what the engine counts from the shapes of the
    /// matmuls one real training step dispatches (`Device::matmul_flops`).
    #[test]
    fn flop_estimate_equals_the_matmuls_a_step_dispatches() {
        let dev = Device::from_env().unwrap();
        let mut m = PretrainConfig::preset("micro").unwrap().model;
        m.depth = 4;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut mae = Mae::new(&dev, &m, &mut rng).unwrap();
        let adamw =
            AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05, decays: crate::model::decays };
        let mut opt = AdamW::new(&dev, &mae.params, adamw).unwrap();
        let mut amp = Amp::new(&dev, Precision::F32, true).unwrap();
        let batch = 3;
        let imgs =
            cmae_engine::kernels::elementwise::full(&dev, &[batch, m.in_chans, m.img_size, m.img_size], 0.0).unwrap();
        for shots in ["0:0.75", "0:0.5,2:0.3", "0:0.25,1:0.5,4:0.5"] {
            let shots = parse_shots(shots).unwrap();
            let before = dev.matmul_flops();
            step(&dev, (&mut mae, &mut opt, &mut amp), &imgs, &shots, &mut rng, &mut None).unwrap();
            let counted = (dev.matmul_flops() - before) as f64 / 1e9;
            let estimate = step_gflop(&m, &shots, batch);
            assert!(
                (counted - estimate).abs() <= 1e-12 * estimate,
                "{shots:?}: counted {counted}, estimated {estimate}"
            );
        }
    }
}
