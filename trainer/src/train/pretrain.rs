//! Pretraining: data → mask plan → Conditional MAE forward/backward → AdamW,
//! as a task of the shared training loop, plus reconstruction grids; and
//! the same run driven one step at a time by a caller ([`Session`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use cmae_engine::{Device, Gradients, Tensor};
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, Meta};
use super::lifecycle;
use super::metrics::MetricsLine;
use super::optimizer::{AdamW, AdamWConfig};
use super::precision::Amp;
use super::recon;
use super::runner::{self, Cadence, MicroStep, RunFlags, Schedule, Summary, Task};
use crate::config::PretrainConfig;
use crate::data::augment::Transform;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{self, DataSpec, Dataset, Split};
use crate::distributed::world;
use crate::masking::MaskPlan;
use crate::model::Mae;
use crate::rng::{Stream, stream_rng};
use crate::safetensors_io::{F32Map, NamedF32};

/// Seeds of the run's random streams, all derived from `train.seed`.
pub fn mask_rng(seed: u64, step: u64, micro: u64) -> ChaCha8Rng {
    stream_rng(Stream::Masks, &[seed, step, micro])
}

pub fn init_rng(seed: u64) -> ChaCha8Rng {
    stream_rng(Stream::PretrainInit, &[seed])
}

struct PretrainTask {
    cfg: PretrainConfig,
    mae: Mae,
    opt: AdamW,
    amp: Amp,
    loader: Loader,
    /// Patches each shot dropped in the last micro-batch (a shot that drops none reports null).
    dropped_counts: Vec<usize>,
    recon: (Vec<f32>, usize, Transform),
}

impl PretrainTask {
    /// The model (initialised from the seed), optimizer and data of `cfg`
    /// (`train_set`, from `spec`) in precision `amp`, its data starting at
    /// optimizer step `start`; and the run's schedule.
    fn new(
        dev: &Device,
        cfg: &PretrainConfig,
        (spec, train_set): (&DataSpec, Arc<dyn Dataset>),
        amp: Amp,
        start: u64,
    ) -> Result<(Self, Schedule)> {
        let (m, t) = (&cfg.model, &cfg.train);
        let mae = Mae::new(dev, m, &mut init_rng(t.seed))?;
        let opt = AdamW::new(
            dev,
            &mae.params,
            AdamWConfig {
                beta1: t.beta1,
                beta2: t.beta2,
                eps: 1e-8,
                weight_decay: t.weight_decay,
                decays: crate::model::decays,
            },
        )?;
        log::info!(
            "model: {} trainable parameters, {} patches, shots {}",
            mae.params.count_trainable(),
            m.num_patches(),
            crate::config::shots_to_string(&cfg.shots)
        );
        let transform = Transform::new(m.img_size, m.in_chans, train_set.mean_std(), true);
        let mut loader_cfg = LoaderConfig::training(t.batch, t.seed, &cfg.data);
        if world().size() > 1 {
            loader_cfg.positions = Some(world().shard(t.batch).collect());
        }
        let loader = Loader::new(train_set, transform, loader_cfg, start * t.accum_iter as u64)?;
        let per_epoch = loader.batches_per_epoch();
        let sched = Schedule::new(t.epochs, t.steps, t.warmup_epochs, t.accum_iter, per_epoch, (cfg.lr(), 0.0));
        // The fixed images every reconstruction grid shows.
        let recon = data::first_test_images(spec, cfg.data.synthetic_size, m, cfg.output.recon_images)?;
        let task = Self { cfg: cfg.clone(), mae, opt, amp, loader, dropped_counts: Vec::new(), recon };
        Ok((task, sched))
    }

    fn meta(&self) -> Meta {
        Meta { task: "pretrain".into(), config: self.cfg.to_ron(), precision: self.cfg.train.precision }
    }
}

impl Task for PretrainTask {
    fn params(&self) -> &crate::model::ParamStore {
        &self.mae.params
    }

    fn amp(&self) -> &Amp {
        &self.amp
    }

    fn load_params(&mut self, dev: &Device, weights: F32Map) -> Result<()> {
        self.mae.params.replace_from(dev, weights)
    }

    fn new_gradients(&self, dev: &Device) -> Result<Gradients> {
        self.opt.new_gradients(dev, &self.mae.params)
    }

    fn micro_step(&mut self, dev: &Device, step: u64, micro: u64, grads: &mut Gradients) -> Result<MicroStep> {
        let (m, global) = (&self.cfg.model, self.cfg.train.batch);
        let batch = self.loader.next_batch()?;
        let imgs = Tensor::from_f32(dev, &batch.images, &[batch.size, m.in_chans, m.img_size, m.img_size])?;
        // The whole batch's masks, of which a rank takes its rows.
        let plan =
            MaskPlan::random(&self.cfg.shots, global, m.num_patches(), &mut mask_rng(self.cfg.train.seed, step, micro));
        self.dropped_counts = plan.dropped_counts();
        let shard = world().shard(global);
        let gpu_plan = if shard.len() == global {
            plan.upload(dev, &self.cfg.shots)?
        } else {
            plan.upload_shard(dev, &self.cfg.shots, shard)?
        };
        let tape = self.amp.tape(dev, &self.mae.params)?;
        let fwd = self.mae.forward(&tape, &imgs, &gpu_plan, false)?;
        self.amp.backward(dev, &tape, &fwd.loss, grads)?;
        Ok(MicroStep {
            loss: fwd.loss.value().clone(),
            parts: Some(fwd.per_shot),
            images: global,
            skipped_images: batch.skipped,
        })
    }

    fn update(&mut self, dev: &Device, grads: &Gradients, lr: f64, grad_scale: f32) -> Result<()> {
        self.opt.update(dev, &mut self.mae.params, grads, (lr, grad_scale), |_| 1.0, self.amp.scaler_mut())
    }

    fn optimizer_state(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        let mut state = self.opt.state_to_host(dev, &self.mae.params)?;
        state.extend(self.amp.state_to_host(dev)?);
        Ok(state)
    }

    fn load_optimizer_state(&mut self, dev: &Device, step: u64, mut state: F32Map) -> Result<()> {
        self.amp.load_state(dev, &mut state)?;
        self.opt.load_state(dev, step, state)
    }

    fn report_parts(&self, parts: &[f64]) -> Vec<Option<f64>> {
        parts.iter().zip(&self.dropped_counts).map(|(&v, &n)| (n > 0).then_some(v)).collect()
    }

    fn after_step(&mut self, dev: &Device, out: &Path, step: u64, finishing: bool) -> Result<Option<PathBuf>> {
        let (images, n, t) = &self.recon;
        if *n == 0 || !(step.is_multiple_of(self.cfg.output.recon_every as u64) || finishing) {
            return Ok(None);
        }
        let m = &self.cfg.model;
        let plan = MaskPlan::random(
            &self.cfg.shots,
            *n,
            m.num_patches(),
            &mut stream_rng(Stream::ReconMasks, &[self.cfg.train.seed]),
        );
        let r = dev.block_on(recon::reconstruct(dev, &self.mae, images, *n, &self.cfg.shots, plan))?;
        let path = out.join("recon").join(format!("step-{step:08}.png"));
        recon::save_png(&recon::render(&r, &self.mae, t), &path)?;
        Ok(Some(path))
    }
}

pub fn pretrain(dev: &Device, cfg: &PretrainConfig, opts: &RunFlags, interrupt: &AtomicBool) -> Result<Summary> {
    cfg.validate()?;
    world().check_batch(cfg.train.batch)?;
    // The precision and data first: a run that cannot start leaves no run directory behind.
    let amp = Amp::new(dev, cfg.train.precision, true)?;
    let spec = DataSpec::parse(&cfg.data.spec)?;
    let train_set = data::open(&spec, Split::Train, cfg.data.synthetic_size, cfg.model.img_size)?;
    // A resumed run starts its data exactly where the checkpoint stopped.
    let start = lifecycle::prepare(opts, cfg, &cfg.to_ron(), PretrainConfig::from_ron)?;
    let (mut task, sched) = PretrainTask::new(dev, cfg, (&spec, train_set), amp, start)?;
    let cadence =
        Cadence { log_every: cfg.output.log_every as u64, checkpoint_every: cfg.output.checkpoint_every as u64 };
    let meta = task.meta();
    runner::run(dev, &mut task, &sched, &meta, (opts, cadence), interrupt)
}

/// A pretraining run that its caller drives one step at a time: a page,
/// which cannot block and has no files or threads. The model, data order,
/// masks, optimizer and schedule are those of [`pretrain`] with the same
/// config, so its weights after N steps are `cmae pretrain`'s after N.
pub struct Session {
    task: PretrainTask,
    sched: Schedule,
    /// Optimizer steps whose loss has been read.
    step: u64,
    /// The next step, recorded and submitted ahead (see [`Self::advance`]).
    ahead: Option<runner::RecordedStep>,
    skipped_images: u64,
    /// The caller's clock when the first step began, and when the last one ended.
    clock: Option<(f64, f64)>,
}

impl Session {
    /// A fresh run of `cfg`.
    pub fn new(dev: &Device, cfg: &PretrainConfig) -> Result<Self> {
        cfg.validate()?;
        let spec = DataSpec::parse(&cfg.data.spec)?;
        let train_set = data::open(&spec, Split::Train, cfg.data.synthetic_size, cfg.model.img_size)?;
        let amp = Amp::new(dev, cfg.train.precision, true)?;
        let (task, sched) = PretrainTask::new(dev, cfg, (&spec, train_set), amp, 0)?;
        Ok(Self { task, sched, step: 0, ahead: None, skipped_images: 0, clock: None })
    }

    pub fn config(&self) -> &PretrainConfig {
        &self.task.cfg
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn total_steps(&self) -> u64 {
        self.sched.total_steps
    }

    /// Whether the next step is already on the GPU (the weights are then
    /// ahead of [`Self::step`]).
    pub fn is_ahead(&self) -> bool {
        self.ahead.is_some()
    }

    /// Runs the next optimizer step and reads its loss back; `clock` gives
    /// the caller's time in seconds (a page has no `Instant`). With
    /// `record_next`, the step after it is recorded and submitted before the
    /// loss is awaited, as `cmae pretrain` does, so the GPU does not wait
    /// for the host in between; the steps are the same either way. A
    /// non-finite loss is an error, and the step counts as not done.
    pub async fn advance(&mut self, dev: &Device, clock: impl Fn() -> f64, record_next: bool) -> Result<MetricsLine> {
        anyhow::ensure!(self.step < self.sched.total_steps, "the run has done all its {} steps", self.step);
        let now = clock();
        let (first, last_end) = *self.clock.get_or_insert((now, now));
        let current = match self.ahead.take() {
            Some(recorded) => recorded,
            None => runner::record_step(dev, &mut self.task, &self.sched, self.step, None)?,
        };
        if record_next && self.step + 1 < self.sched.total_steps {
            self.ahead = Some(runner::record_step(dev, &mut self.task, &self.sched, self.step + 1, None)?);
        }
        let images = current.images;
        let settled = runner::settle(current).await?;
        anyhow::ensure!(
            settled.loss.is_finite(),
            "the loss became {} at step {}; lower train.blr",
            settled.loss,
            settled.step
        );
        self.step += 1;
        self.skipped_images += settled.skipped_images;
        let end = clock();
        self.clock = Some((first, end));
        // Steps ahead overlap: a step's time runs from the previous one's end.
        let timing = (images as f64 / (end - last_end).max(1e-9), end - first);
        Ok(runner::metrics_line(dev, &self.task, &self.sched, &settled, timing, self.skipped_images))
    }

    /// The weights now, as the run's `checkpoint.safetensors` would hold
    /// them at this step; not while a step is ahead.
    pub async fn checkpoint(&self, dev: &Device) -> Result<Vec<u8>> {
        anyhow::ensure!(
            self.ahead.is_none(),
            "step {} is still running: advance without record_next first",
            self.step + 1
        );
        checkpoint::weights_bytes(dev, &self.task.mae.params, self.step, &self.task.meta()).await
    }
}
