//! The pretraining loop: data → mask plan → forward/backward → AdamW, with
//! metrics, progress, reconstructions, crash-safe checkpoints, exact resume,
//! NaN detection and Ctrl-C handling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::{Device, Gradients, PendingRead, Tape, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint;
use super::metrics::{MetricsLine, MetricsLog, host_rss_mb};
use super::optimizer::{AdamW, AdamWConfig};
use super::recon;
use super::schedule::lr_at;
use crate::config::PretrainConfig;
use crate::data::augment::Transform;
use crate::data::loader::{Loader, LoaderConfig, mix_seed};
use crate::data::{self, DataSpec, Split};
use crate::masking::MaskPlan;
use crate::model::Mae;
use crate::safetensors_io::write_atomic;

#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// Stop after this many optimizer steps as if interrupted (checkpoint, exit).
    pub stop_at: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub out: PathBuf,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub checkpoint: PathBuf,
    pub recon: Option<PathBuf>,
    /// Stopped early by Ctrl-C or `--stop-at`.
    pub interrupted: bool,
}

/// Seeds of the run's random streams, all derived from `train.seed`.
pub fn mask_rng(seed: u64, step: u64, micro: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(&[seed, step, micro, 3]))
}

pub fn init_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(&[seed, 4]))
}

/// Total optimizer steps and warmup steps of a run over `batches_per_epoch`.
pub fn schedule_steps(cfg: &PretrainConfig, batches_per_epoch: u64) -> (u64, f64) {
    let per_epoch = batches_per_epoch as f64 / cfg.train.accum_iter as f64;
    let total = cfg.train.steps.map_or_else(|| (cfg.train.epochs * per_epoch).ceil().max(1.0) as u64, |s| s as u64);
    let warmup = total as f64 * (cfg.train.warmup_epochs / cfg.train.epochs).min(1.0);
    (total, warmup)
}

/// The fixed images every reconstruction grid shows: the first test images.
fn recon_batch(cfg: &PretrainConfig, spec: &DataSpec) -> Result<(Vec<f32>, usize, Transform)> {
    let test = data::open(spec, Split::Test, cfg.data.synthetic_size, cfg.model.img_size)?;
    let t = Transform::new(cfg.model.img_size, cfg.model.in_chans, test.mean_std(), false);
    let n = cfg.output.recon_images.min(test.len());
    let mut images = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for i in 0..n {
        let (img, _) = test.get(i).with_context(|| test.describe(i))?;
        images.extend(t.apply(&img, &mut rng));
    }
    Ok((images, n, t))
}

/// Config keys that may differ when resuming (they do not change the math).
fn check_resumable(saved: &PretrainConfig, now: &PretrainConfig) -> Result<()> {
    let strip = |c: &PretrainConfig| {
        let mut c = c.clone();
        c.output = saved.output.clone();
        c.data.workers = 0;
        c
    };
    if strip(saved) != strip(now) {
        let (a, b) = (serde_json::to_value(strip(saved))?, serde_json::to_value(strip(now))?);
        let mut diffs = Vec::new();
        for (section, fields) in a.as_object().into_iter().flatten() {
            for (k, v) in fields.as_object().into_iter().flatten() {
                if b[section][k] != *v {
                    diffs.push(format!("{section}.{k}: {v} in the run, {} now", b[section][k]));
                }
            }
            if !fields.is_object() && b[section] != *fields {
                diffs.push(format!("{section} differs"));
            }
        }
        bail!(
            "--resume with a different config ({}); resume with the run's settings or start a new --out",
            diffs.join("; ")
        );
    }
    Ok(())
}

struct StepReads {
    step: u64,
    loss: Vec<PendingRead>,
    per_shot: Vec<PendingRead>,
}

/// Mean loss and per-shot losses of a finished step (waits for the GPU).
fn resolve(reads: StepReads, counts: &[usize]) -> Result<(u64, f64, Vec<Option<f64>>)> {
    let micro = reads.loss.len() as f64;
    let mut loss = 0.0;
    for r in reads.loss {
        loss += f64::from(bytemuck::pod_read_unaligned::<f32>(&r.wait()?[..4])) / micro;
    }
    let mut per_shot = vec![0.0f64; counts.len()];
    for r in reads.per_shot {
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&r.wait()?);
        for (acc, x) in per_shot.iter_mut().zip(v) {
            *acc += f64::from(x) / micro;
        }
    }
    let per_shot = per_shot.into_iter().zip(counts).map(|(v, &n)| (n > 0).then_some(v)).collect();
    Ok((reads.step, loss, per_shot))
}

pub fn pretrain(dev: &Device, cfg: &PretrainConfig, opts: &Options, interrupt: &AtomicBool) -> Result<Summary> {
    cfg.validate()?;
    let out = &opts.out;
    let saved_cfg_path = out.join("config.ron");
    let existing = checkpoint::latest(out)?;
    if opts.resume {
        if existing.is_none() {
            bail!(
                "--resume: {} holds no checkpoint to resume from; drop --resume to start a new run there",
                out.display()
            );
        }
        check_resumable(&PretrainConfig::load(&saved_cfg_path)?, cfg)?;
    } else if existing.is_some() {
        bail!("{} already holds a run; pass --resume to continue it or choose another --out", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&saved_cfg_path, cfg.to_ron().as_bytes())?;

    let spec = DataSpec::parse(&cfg.data.spec)?;
    let train_set = data::open(&spec, Split::Train, cfg.data.synthetic_size, cfg.model.img_size)?;
    let (m, t) = (&cfg.model, &cfg.train);

    let opt_cfg = AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: 1e-8, weight_decay: t.weight_decay };
    let mut mae = Mae::new(dev, m, &mut init_rng(t.seed))?;
    let mut opt = AdamW::new(dev, &mae.params, opt_cfg)?;
    let mut step = 0;
    if opts.resume {
        let (restored, at) = checkpoint::resume(dev, out, cfg, &mut opt)?;
        mae = restored;
        step = at;
    }
    log::info!(
        "model: {} trainable parameters, {} patches, shots {}",
        mae.params.count_trainable(),
        m.num_patches(),
        crate::config::shots_to_string(&cfg.shots)
    );

    let transform = Transform::new(m.img_size, m.in_chans, train_set.mean_std(), true);
    let loader_cfg = LoaderConfig {
        batch: t.batch,
        seed: t.seed,
        workers: cfg.data.workers,
        bad_images: cfg.data.bad_images,
        shuffle: true,
        drop_last: true,
        prefetch: 4,
    };
    let mut loader = Loader::new(train_set.clone(), transform, loader_cfg, step * t.accum_iter as u64)?;
    let (total, warmup) = schedule_steps(cfg, loader.batches_per_epoch());
    let end = opts.stop_at.map_or(total, |s| s.min(total));
    let peak_lr = cfg.lr();
    let (recon_images, recon_n, recon_t) = recon_batch(cfg, &spec)?;
    let metrics = MetricsLog::open(out, step)?;

    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(step);

    let started = Instant::now();
    let mut window = (Instant::now(), 0u64);
    let mut pending: Option<StepReads> = None;
    let mut last: Option<(u64, f64, Vec<Option<f64>>)> = None;
    let mut skipped_total = 0u64;
    let mut checkpoint_path = out.join("checkpoint.safetensors");
    let mut recon_path = None;
    let mut interrupted = false;
    let (l, chans, side) = (m.num_patches(), m.in_chans, m.img_size);

    // The loss of step s is read while step s+1 runs; a non-finite value stops
    // the run before anything computed from it is saved.
    let settle = |pending: &mut Option<StepReads>,
                  last: &mut Option<(u64, f64, Vec<Option<f64>>)>,
                  counts: &[usize]|
     -> Result<()> {
        if let Some(reads) = pending.take() {
            let r = resolve(reads, counts)?;
            if !r.1.is_finite() {
                bail!(
                    "the loss became {} at step {}; stopped without saving (the last good checkpoint is {}). Lower train.blr or check the data",
                    r.1,
                    r.0,
                    checkpoint::latest(out)?.map_or_else(|| "none".to_string(), |(_, d)| d.display().to_string())
                );
            }
            *last = Some(r);
        }
        Ok(())
    };

    let mut counts = Vec::new();
    while step < end {
        let mut grads = Gradients::default();
        let mut reads = StepReads { step: step + 1, loss: Vec::new(), per_shot: Vec::new() };
        for micro in 0..t.accum_iter as u64 {
            let batch = loader.next_batch()?;
            skipped_total += batch.skipped as u64;
            let imgs = Tensor::from_f32(dev, &batch.images, &[batch.size, chans, side, side])?;
            let plan = MaskPlan::random(&cfg.shots, batch.size, l, &mut mask_rng(t.seed, step, micro));
            counts = plan.dropped_counts();
            let gpu_plan = plan.upload(dev, &cfg.shots)?;
            let tape = Tape::new(dev);
            let fwd = mae.forward(&tape, &imgs, &gpu_plan, false)?;
            tape.backward(&fwd.loss, &mut grads)?;
            reads.loss.push(dev.read_later(fwd.loss.value())?);
            reads.per_shot.push(dev.read_later(&fwd.per_shot)?);
        }
        let lr = lr_at(step, total, warmup, peak_lr);
        opt.update(dev, &mae.params, &grads, lr, 1.0 / t.accum_iter as f32, |_| 1.0)?;
        drop(grads);
        dev.flush()?;
        settle(&mut pending, &mut last, &counts)?;
        pending = Some(reads);
        step += 1;
        window.1 += 1;
        bar.set_position(step);

        interrupted = interrupt.load(Ordering::SeqCst) || opts.stop_at == Some(step) && step < total;
        let finishing = step == end || interrupted;
        let log_now = step % cfg.output.log_every as u64 == 0 || finishing;
        let ckpt_now = step % cfg.output.checkpoint_every as u64 == 0 || finishing;
        let recon_now = step % cfg.output.recon_every as u64 == 0 || finishing;
        if log_now || ckpt_now {
            settle(&mut pending, &mut last, &counts)?;
        }
        if log_now && let Some((s, loss, per_shot)) = &last {
            let secs = window.0.elapsed().as_secs_f64();
            let ips = (window.1 * (t.batch * t.accum_iter) as u64) as f64 / secs.max(1e-9);
            window = (Instant::now(), 0);
            let mem = dev.memory();
            let line = MetricsLine {
                step: *s,
                epoch: (*s * t.accum_iter as u64) as f64 / loader.batches_per_epoch() as f64,
                loss: *loss,
                loss_per_shot: per_shot.clone(),
                lr,
                images_per_s: ips,
                host_rss_mb: host_rss_mb(),
                gpu_in_use_mb: mem.in_use_bytes as f64 / 1048576.0,
                gpu_pooled_mb: mem.pooled_bytes as f64 / 1048576.0,
                skipped_images: skipped_total,
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            metrics.append(&line)?;
            let shots: Vec<String> = per_shot.iter().map(|v| v.map_or("-".into(), |v| format!("{v:.4}"))).collect();
            bar.set_message(format!("loss {loss:.4} [{}] lr {lr:.2e} {ips:.1} img/s", shots.join(" ")));
        }
        if ckpt_now {
            checkpoint_path = checkpoint::save(dev, out, step, &mae, &opt, cfg)?;
        }
        if recon_now && recon_n > 0 {
            let plan = MaskPlan::random(&cfg.shots, recon_n, l, &mut ChaCha8Rng::seed_from_u64(mix_seed(&[t.seed, 5])));
            let r = recon::reconstruct(dev, &mae, &recon_images, recon_n, &cfg.shots, plan)?;
            let path = out.join("recon").join(format!("step-{step:08}.png"));
            recon::save_png(&recon::render(&r, &mae, &recon_t), &path)?;
            recon_path = Some(path);
        }
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    if skipped_total > 0 {
        log::warn!("{skipped_total} unreadable images were skipped");
    }
    if step == 0 || (checkpoint::latest(out)?.is_none()) {
        return Err(anyhow!("the run made no step; nothing was saved"));
    }
    Ok(Summary {
        out: out.clone(),
        step,
        total_steps: total,
        last_loss: last.map(|l| l.1),
        checkpoint: checkpoint_path,
        recon: recon_path,
        interrupted,
    })
}
