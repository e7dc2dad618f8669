//! The training loop every task shares (pretraining, linear probing,
//! fine-tuning): micro-batches with gradient accumulation, the per-step
//! learning-rate schedule, the optimizer step, asynchronous loss reads with a
//! NaN/Inf stop, metrics, progress bar, crash-safe checkpoints, exact resume,
//! Ctrl-C and `--stop-at`. Under mixed precision a step whose gradients
//! overflow is skipped on the device and counted, and the run goes on; only
//! a non-finite loss stops it.
//!
//! Over several ranks ([`crate::distributed`]) each micro-batch is a shard
//! of the global one: the step's gradients are summed over the ranks while
//! its last backward runs, the losses when they are read, and the ranks agree
//! on every stop (Ctrl-C, `--stop-at`, a non-finite loss) at the same step.
//! Rank 0 alone writes and prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cmae_engine::kernels::scaler::ScaleState;
use cmae_engine::{Device, Gradients, PendingRead, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, Meta};
use super::metrics::{MetricsLine, MetricsLog, host_rss_mb};
use super::precision::Amp;
use super::schedule::{lr_at, schedule_steps};
use crate::distributed::buckets::{GradientSync, SyncStats};
use crate::distributed::{Agreed, world};
use crate::model::ParamStore;
use crate::safetensors_io::{self, F32Map, NamedF32};

/// What one micro-batch produced: the loss and, optionally, per-part losses
/// to report (the per-shot losses of pretraining). Over several ranks the
/// loss is this rank's share of the global batch's mean.
pub struct MicroStep {
    pub loss: Tensor,
    pub parts: Option<Tensor>,
    /// Images of the global micro-batch (all ranks).
    pub images: usize,
    /// Unreadable images this rank replaced.
    pub skipped_images: usize,
}

/// A kind of training, as the loop sees it.
pub trait Task {
    fn params(&self) -> &ParamStore;
    /// The run's precision and loss scale.
    fn amp(&self) -> &Amp;
    /// Replaces the parameters with a checkpoint's.
    fn load_params(&mut self, dev: &Device, weights: F32Map) -> Result<()>;
    /// Empty gradients for one optimizer step, laid out as its optimizer wants them.
    fn new_gradients(&self, dev: &Device) -> Result<Gradients>;
    /// Forward and backward of micro-batch `micro` of optimizer step `step`.
    fn micro_step(&mut self, dev: &Device, step: u64, micro: u64, grads: &mut Gradients) -> Result<MicroStep>;
    /// Applies the optimizer for step `step` (0-based) at learning rate `lr`.
    fn update(&mut self, dev: &Device, grads: &Gradients, lr: f64, grad_scale: f32) -> Result<()>;
    fn optimizer_state(&self, dev: &Device) -> Result<Vec<NamedF32>>;
    fn load_optimizer_state(&mut self, dev: &Device, step: u64, state: F32Map) -> Result<()>;
    /// Reported parts: None where a part has nothing to report (a shot that drops nothing).
    fn report_parts(&self, parts: &[f64]) -> Vec<Option<f64>> {
        parts.iter().map(|&v| Some(v)).collect()
    }
    /// Called after every step (and its checkpoint, if any), e.g. for
    /// reconstruction grids; returns a file to announce.
    fn after_step(&mut self, _dev: &Device, _out: &Path, _step: u64, _finishing: bool) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Whether every rank computes the whole global batch's loss and
    /// gradients itself (the linear probe's head, on features gathered from
    /// all ranks), so nothing is summed over ranks.
    fn replicated(&self) -> bool {
        false
    }
}

/// The schedule of a run.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub total_steps: u64,
    pub warmup_steps: f64,
    pub peak_lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub accum_iter: u64,
    /// Micro-batches per epoch (for the `epoch` metric).
    pub batches_per_epoch: u64,
}

impl Schedule {
    /// The schedule of a run of `epochs` (or `steps`) with `warmup_epochs` of
    /// warmup over `batches_per_epoch` micro-batches, `accum` a step.
    pub fn new(
        epochs: f64,
        steps: Option<usize>,
        warmup_epochs: f64,
        accum: usize,
        batches_per_epoch: u64,
        (peak_lr, min_lr): (f64, f64),
    ) -> Self {
        let (total_steps, warmup_steps) = schedule_steps(epochs, steps, warmup_epochs, accum, batches_per_epoch);
        Self { total_steps, warmup_steps, peak_lr, min_lr, accum_iter: accum as u64, batches_per_epoch }
    }
}

/// Where a run writes and how it starts and stops, the same for every task
/// (pretraining, linear probing, fine-tuning).
#[derive(Debug, Clone)]
pub struct RunFlags {
    pub out: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// Stop after this many optimizer steps as if interrupted (checkpoint, exit).
    pub stop_at: Option<u64>,
}

/// How often a run logs and checkpoints (from the task's config).
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub log_every: u64,
    pub checkpoint_every: u64,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub out: PathBuf,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub checkpoint: PathBuf,
    /// The last file `Task::after_step` announced.
    pub artifact: Option<PathBuf>,
    /// Stopped early by Ctrl-C or `--stop-at`.
    pub interrupted: bool,
}

struct StepReads {
    step: u64,
    loss: Vec<PendingRead<f32>>,
    parts: Vec<PendingRead<f32>>,
    /// The loss scaler after the step (mixed precision).
    scale: Option<PendingRead<u32>>,
    skipped_images: usize,
    /// Whether the losses are this rank's shares, to be summed over ranks.
    shared: bool,
    sync: Option<SyncStats>,
}

/// A finished step as read back.
pub struct Settled {
    /// The step's number, counting from 1.
    pub step: u64,
    pub loss: f64,
    pub parts: Vec<f64>,
    scale: Option<ScaleState>,
    /// Unreadable images replaced in this step, over all ranks.
    pub skipped_images: u64,
    sync: Option<SyncStats>,
    /// The step's learning rate.
    pub lr: f64,
}

/// One optimizer step recorded and submitted; its loss is read back later,
/// while the next step runs.
pub struct RecordedStep {
    reads: StepReads,
    lr: f64,
    /// Images of the global batch.
    pub images: usize,
}

/// Records optimizer step `step` (0-based) of `task`: forward and backward
/// of each micro-batch (the last one's gradients summed over the ranks while
/// it runs, when `sync` is given), the update at the schedule's learning
/// rate, and submits it.
pub fn record_step(
    dev: &Device,
    task: &mut dyn Task,
    sched: &Schedule,
    step: u64,
    mut sync: Option<&mut Option<GradientSync>>,
) -> Result<RecordedStep> {
    let mut grads = task.new_gradients(dev)?;
    let mut reads = StepReads {
        step: step + 1,
        loss: Vec::new(),
        parts: Vec::new(),
        scale: None,
        skipped_images: 0,
        shared: !task.replicated(),
        sync: None,
    };
    let mut images = 0;
    for micro in 0..sched.accum_iter {
        if let Some(sync) = sync.as_deref_mut()
            && micro + 1 == sched.accum_iter
        {
            sync.get_or_insert_with(|| GradientSync::new(&grads)).arm(&mut grads);
        }
        let m = task.micro_step(dev, step, micro, &mut grads)?;
        reads.skipped_images += m.skipped_images;
        images += m.images;
        reads.loss.push(m.loss.read_f32(dev)?);
        if let Some(parts) = &m.parts {
            reads.parts.push(parts.read_f32(dev)?);
        }
    }
    if let Some(Some(sync)) = sync {
        reads.sync = Some(sync.finish(dev, &mut grads)?);
    }
    let lr = lr_at(step, sched.total_steps, sched.warmup_steps, sched.peak_lr, sched.min_lr);
    task.update(dev, &grads, lr, 1.0 / sched.accum_iter as f32)?;
    reads.scale = task.amp().read(dev)?;
    drop(grads);
    dev.flush()?;
    Ok(RecordedStep { reads, lr, images })
}

/// Mean loss and parts of a recorded step once the GPU has run it, summed
/// over the ranks' shares. Async, so a page can await the GPU.
pub async fn settle(recorded: RecordedStep) -> Result<Settled> {
    let RecordedStep { reads, lr, .. } = recorded;
    let micro = reads.loss.len() as f64;
    let mut loss = 0.0;
    for r in reads.loss {
        loss += f64::from(r.await?[0]) / micro;
    }
    if world().nan_injected(reads.step) {
        loss = f64::NAN;
    }
    let mut parts: Vec<f64> = Vec::new();
    for r in reads.parts {
        let v = r.await?;
        parts.resize(v.len(), 0.0);
        for (acc, x) in parts.iter_mut().zip(v) {
            *acc += f64::from(x) / micro;
        }
    }
    let mut skipped_images = reads.skipped_images as f64;
    if world().size() > 1 {
        // Shares are summed; a replicated loss is the same everywhere, but a
        // non-finite one on any rank must stop every rank all the same.
        let non_finite = f64::from(u8::from(!loss.is_finite()));
        let mut all = vec![if reads.shared { loss } else { 0.0 }, skipped_images, non_finite];
        all.extend(parts.iter().map(|&p| if reads.shared { p } else { 0.0 }));
        let sums = world().sum_f64(all)?;
        if reads.shared {
            loss = sums[0];
            parts.copy_from_slice(&sums[3..]);
        }
        if sums[2] > 0.0 {
            loss = f64::NAN;
        }
        skipped_images = sums[1];
    }
    let scale = match reads.scale {
        Some(r) => Some(ScaleState::from_words(&r.await?)?),
        None => None,
    };
    Ok(Settled { step: reads.step, loss, parts, scale, skipped_images: skipped_images as u64, sync: reads.sync, lr })
}

/// The metrics line of a settled step.
pub fn metrics_line(
    dev: &Device,
    task: &dyn Task,
    sched: &Schedule,
    settled: &Settled,
    (images_per_s, elapsed_s): (f64, f64),
    skipped_images: u64,
) -> MetricsLine {
    let Settled { step, loss, parts, scale, sync, lr, .. } = settled;
    let mem = dev.memory();
    MetricsLine {
        step: *step,
        epoch: (*step * sched.accum_iter) as f64 / sched.batches_per_epoch as f64,
        loss: *loss,
        loss_per_shot: task.report_parts(parts),
        lr: *lr,
        images_per_s,
        host_rss_mb: host_rss_mb(),
        gpu_in_use_mb: mem.in_use_bytes as f64 / 1048576.0,
        gpu_pooled_mb: mem.pooled_bytes as f64 / 1048576.0,
        skipped_images,
        elapsed_s,
        loss_scale: scale.map(|s| f64::from(s.scale)),
        skipped_steps: scale.map_or(0, |s| u64::from(s.skipped_steps)),
        ranks: world().size() as u64,
        allreduce_ms: sync.map(|s| s.allreduce_ms),
        allreduce_overlap: sync.map(|s| s.overlap),
        allreduce_bytes: sync.map(|s| s.bytes),
    }
}

/// Makes every rank start from rank 0's state: its weights (fresh or
/// resumed), its optimizer state when resuming, and its step.
fn share_start(dev: &Device, task: &mut dyn Task, step: u64) -> Result<u64> {
    const OPTIMIZER: &str = "optimizer/";
    let w = world();
    let bytes = if w.is_root() {
        let mut tensors = task.params().to_host(dev)?;
        if step > 0 {
            let state = task.optimizer_state(dev)?;
            tensors.extend(state.into_iter().map(|(name, shape, v)| (format!("{OPTIMIZER}{name}"), shape, v)));
        }
        safetensors_io::f32_bytes(&tensors, HashMap::from([("step".to_string(), step.to_string())]))?
    } else {
        Vec::new()
    };
    let bytes = w.broadcast(bytes)?;
    if w.is_root() {
        return Ok(step);
    }
    let what = "rank 0's state";
    let file = safetensors_io::parse(&bytes, what)?;
    let step: u64 =
        file.metadata.get("step").and_then(|s| s.parse().ok()).with_context(|| format!("{what} has no step"))?;
    let (mut weights, mut state) = (F32Map::new(), F32Map::new());
    for (name, t) in checkpoint::f32_tensors(file, Path::new(what))? {
        match name.strip_prefix(OPTIMIZER) {
            Some(n) => state.insert(n.to_string(), t),
            None => weights.insert(name, t),
        };
    }
    task.load_params(dev, weights)?;
    if step > 0 {
        task.load_optimizer_state(dev, step, state)?;
    }
    Ok(step)
}

/// Runs `task` from its newest checkpoint (with `resume`) or from the start.
pub fn run(
    dev: &Device,
    task: &mut dyn Task,
    sched: &Schedule,
    meta: &Meta,
    (opts, cadence): (&RunFlags, Cadence),
    interrupt: &AtomicBool,
) -> Result<Summary> {
    let out = &opts.out;
    let w = world();
    let mut step = 0;
    if opts.resume && w.is_root() {
        let (at, weights, opt_state) = checkpoint::read_latest(out)?;
        task.load_params(dev, weights)?;
        task.load_optimizer_state(dev, at, opt_state)?;
        step = at;
    }
    if w.size() > 1 {
        step = share_start(dev, task, step)?;
    }
    let total = sched.total_steps;
    let end = opts.stop_at.map_or(total, |s| s.min(total));
    let metrics = if w.is_root() { Some(MetricsLog::open(out, step)?) } else { None };
    let bar = if opts.quiet || !w.is_root() { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (ETA {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(step);

    let started = Instant::now();
    let mut window = (Instant::now(), 0usize);
    let mut pending: Option<RecordedStep> = None;
    let mut last: Option<Settled> = None;
    let mut skipped_total = 0u64;
    let mut checkpoint_path = out.join("checkpoint.safetensors");
    let mut artifact = None;
    let mut interrupted = false;

    // The loss of step s is read while step s+1 runs; a non-finite value stops
    // the run before anything computed from it is saved. Every rank sees the
    // same summed loss, so all stop at the same step.
    let settle_pending = |pending: &mut Option<RecordedStep>,
                          last: &mut Option<Settled>,
                          skipped: &mut u64|
     -> Result<()> {
        if let Some(recorded) = pending.take() {
            let r = dev.block_on(settle(recorded))?;
            if !r.loss.is_finite() {
                let good = if w.is_root() {
                    checkpoint::latest(out)?.map_or_else(|| "none".to_string(), |(_, d)| d.display().to_string())
                } else {
                    "on rank 0".to_string()
                };
                return Err(Agreed(format!(
                    "the loss became {} at step {}; stopped without saving (the last good checkpoint is {good}). Lower train.blr or check the data",
                    r.loss, r.step
                ))
                .into());
            }
            *skipped += r.skipped_images;
            *last = Some(r);
        }
        Ok(())
    };

    let sum_gradients = w.size() > 1 && !task.replicated();
    let mut sync: Option<GradientSync> = None;
    while step < end {
        let recorded = record_step(dev, task, sched, step, sum_gradients.then_some(&mut sync))?;
        window.1 += recorded.images;
        settle_pending(&mut pending, &mut last, &mut skipped_total)?;
        pending = Some(recorded);
        step += 1;
        bar.set_position(step);

        // Any rank's Ctrl-C stops every rank after this step.
        interrupted = w.any(interrupt.load(Ordering::SeqCst))? || opts.stop_at == Some(step) && step < total;
        let finishing = step == end || interrupted;
        let log_now = step.is_multiple_of(cadence.log_every) || finishing;
        let ckpt_now = step.is_multiple_of(cadence.checkpoint_every) || finishing;
        if log_now || ckpt_now {
            settle_pending(&mut pending, &mut last, &mut skipped_total)?;
        }
        if let Some(metrics) = &metrics
            && log_now
            && let Some(settled) = &last
        {
            let ips = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), 0);
            let elapsed = started.elapsed().as_secs_f64();
            let line = metrics_line(dev, &*task, sched, settled, (ips, elapsed), skipped_total);
            metrics.append(&line)?;
            let (loss, lr) = (line.loss, line.lr);
            let parts: Vec<String> =
                line.loss_per_shot.iter().map(|v| v.map_or("-".into(), |v| format!("{v:.4}"))).collect();
            let parts = if parts.is_empty() { String::new() } else { format!(" [{}]", parts.join(" ")) };
            bar.set_message(format!("loss {loss:.4}{parts} lr {lr:.2e} {ips:.1} img/s"));
        }
        if ckpt_now && w.is_root() {
            checkpoint_path = checkpoint::save(dev, out, step, task.params(), &task.optimizer_state(dev)?, meta)?;
        }
        if w.is_root()
            && let Some(a) = task.after_step(dev, out, step, finishing)?
        {
            artifact = Some(a);
        }
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    if w.is_root() && skipped_total > 0 {
        log::warn!("{skipped_total} unreadable images were skipped");
    }
    if step == 0 || w.is_root() && checkpoint::latest(out)?.is_none() {
        bail!("the run made no step; nothing was saved");
    }
    Ok(Summary {
        out: out.clone(),
        step,
        total_steps: total,
        last_loss: last.map(|l| l.loss),
        checkpoint: checkpoint_path,
        artifact,
        interrupted,
    })
}
