//! The linear-probe / fine-tuning task on the shared training loop: the
//! optimizers and their per-layer rules, mixup and stochastic depth, and the
//! run that ends with an evaluation on the test split.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use cmae_engine::{Device, Gradients, Precision, Tape, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::{Mixup, RandAugment};
use super::evaluation::evaluate;
use super::{Classifier, ClassifyConfig, Mode, Perturb, model};
use crate::config::ModelConfig;
use crate::data::augment::Transform;
use crate::data::loader::{Loader, LoaderConfig};
use crate::data::{self, DataSpec, Split};
use crate::distributed::{self, world};
use crate::model::vit::DropPath;
use crate::rng::{Stream, stream_rng};
use crate::safetensors_io::{F32Map, NamedF32, write_atomic};
use crate::train::checkpoint::{CheckpointFile, Meta};
use crate::train::lifecycle;
use crate::train::optimizer::{AdamW, AdamWConfig, Lars};
use crate::train::precision::{self, Amp};
use crate::train::runner::{self, Cadence, MicroStep, RunFlags, Schedule, Summary, Task};

/// MAE's layer id for layer-wise lr decay: embeddings 0, block i → i+1, the rest `depth + 1`.
pub fn layer_id(name: &str, depth: usize) -> usize {
    if name == "cls_token" || name == "pos_embed" || name.starts_with("patch_embed") {
        0
    } else if let Some(rest) = name.strip_prefix("blocks.") {
        rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).map_or(depth + 1, |i| i + 1)
    } else {
        depth + 1
    }
}

/// Fine-tuning's learning-rate multiplier for `name`: `decay^(depth + 1 − layer id)`,
/// so the head trains at the full rate and the embeddings at `decay^(depth + 1)`.
pub fn layer_decay_scale(name: &str, depth: usize, decay: f64) -> f64 {
    decay.powi((depth + 1 - layer_id(name, depth)) as i32)
}

/// Fine-tuning's weight-decay rule (timm/MAE): none for 1-D parameters, biases,
/// position embeddings and the cls token.
pub fn finetune_decays(name: &str, shape: &[usize]) -> bool {
    crate::model::decays(name, shape) && name != "pos_embed" && name != "cls_token"
}

enum Optimizer {
    AdamW(AdamW),
    Lars(Lars),
}

struct ClassifyTask<'a> {
    cfg: &'a ClassifyConfig,
    model: Classifier,
    opt: Optimizer,
    amp: Amp,
    loader: Loader,
}

impl ClassifyTask<'_> {
    /// Per-block drop-path scales for `rows` of one micro-batch (linearly
    /// rising rates, as timm), drawn for the whole batch.
    fn drop_path(&self, dev: &Device, rows: Range<usize>, rng: &mut impl Rng) -> Result<Vec<(Tensor, Tensor)>> {
        let (depth, rate, b) = (self.cfg.model.depth, self.cfg.train.drop_path, self.cfg.train.batch);
        if rate <= 0.0 || self.cfg.mode == Mode::Linprobe {
            return Ok(Vec::new());
        }
        let n = rows.len();
        (0..depth)
            .map(|i| {
                let p = rate * i as f64 / (depth.max(2) - 1) as f64;
                let attn = Tensor::from_f32(dev, &drop_path_scales(b, p, rng)[rows.clone()], &[n])?;
                Ok((attn, Tensor::from_f32(dev, &drop_path_scales(b, p, rng)[rows.clone()], &[n])?))
            })
            .collect()
    }

    /// The linear probe's head on the whole global batch: every rank gathers
    /// all ranks' frozen features and targets and computes the same head
    /// step (the probe's BatchNorm then normalises over the global batch, as
    /// PyTorch's SyncBatchNorm would), so nothing is summed afterwards.
    fn probe_on_global_batch(&mut self, tape: &Tape, imgs: &Tensor, targets: Vec<f32>) -> Result<(Var, Tensor)> {
        let dev = tape.device();
        let features = self.model.frozen_features(dev, imgs, &Perturb::default())?;
        let (n, dim, classes) = (features.dim(0)?, features.dim(1)?, self.cfg.classes);
        let mut rows = Vec::with_capacity(n * (dim + classes));
        for (f, t) in features.wait_f32(dev)?.chunks(dim).zip(targets.chunks(classes)) {
            rows.extend_from_slice(f);
            rows.extend_from_slice(t);
        }
        let w = world();
        let counts: Vec<usize> = (0..w.size())
            .map(|r| distributed::shard(self.cfg.train.batch, r, w.size()).len() * (dim + classes))
            .collect();
        let all = w.gather_f32(rows, counts)?;
        let b = all.len() / (dim + classes);
        let (mut features, mut targets) = (Vec::with_capacity(b * dim), Vec::with_capacity(b * classes));
        for row in all.chunks(dim + classes) {
            features.extend_from_slice(&row[..dim]);
            targets.extend_from_slice(&row[dim..]);
        }
        let features = Tensor::from_f32(dev, &features, &[b, dim])?;
        let logits = self.model.probe_head_train(tape, &features)?;
        Ok((logits, Tensor::from_f32(dev, &targets, &[b, classes])?))
    }
}

impl Task for ClassifyTask<'_> {
    fn params(&self) -> &crate::model::ParamStore {
        &self.model.params
    }

    fn amp(&self) -> &Amp {
        &self.amp
    }

    fn load_params(&mut self, dev: &Device, weights: F32Map) -> Result<()> {
        self.model.params.replace_from(dev, weights)
    }

    fn micro_step(&mut self, dev: &Device, step: u64, micro: u64, grads: &mut Gradients) -> Result<MicroStep> {
        let (m, t, classes) = (&self.cfg.model, &self.cfg.train, self.cfg.classes);
        let global = t.batch;
        let rows = world().shard(global);
        let n = rows.len();
        let mut batch = self.loader.next_batch()?;
        let mut rng = stream_rng(Stream::ClassifyStep, &[t.seed, step, micro]);
        let mix = mixup(t);
        let targets = match self.cfg.mode {
            Mode::Finetune if n < global && mix.mixes() => {
                // The loader put each sample's mixing partner after the shard.
                let plane = m.in_chans * m.img_size * m.img_size;
                let (own, partners) = batch.images.split_at_mut(n * plane);
                let (labels, partner_labels) = batch.labels.split_at(n);
                mix.apply_pairs(own, labels, (partners, partner_labels), (m.in_chans, m.img_size, classes), &mut rng)
            }
            Mode::Finetune => mix.apply(&mut batch.images, &batch.labels, m.in_chans, m.img_size, classes, &mut rng),
            Mode::Linprobe => Mixup::targets(&batch.labels, classes, t.label_smoothing),
        };
        let plane = m.in_chans * m.img_size * m.img_size;
        let imgs = Tensor::from_f32(dev, &batch.images[..n * plane], &[n, m.in_chans, m.img_size, m.img_size])?;
        let tape = self.amp.tape(dev, &self.model.params)?;
        let (logits, targets, b) = if self.replicated() && n < global {
            let (logits, targets) = self.probe_on_global_batch(&tape, &imgs, targets)?;
            (logits, targets, global)
        } else {
            let scales = self.drop_path(dev, rows, &mut rng)?;
            let drop: Vec<DropPath<'_>> = scales.iter().map(|(a, m)| DropPath { attn: a, mlp: m }).collect();
            let logits = self.model.forward_train(&tape, &imgs, &drop)?;
            (logits, Tensor::from_f32(dev, &targets, &[n, classes])?, n)
        };
        // Each sample weighs 1/global: the ranks' shares sum to the batch mean.
        let weights = Tensor::from_f32(dev, &vec![1.0 / global as f32; b], &[b])?;
        let loss = tape.weighted_cross_entropy(&logits, &targets, &weights)?;
        self.amp.backward(dev, &tape, &loss, grads)?;
        Ok(MicroStep { loss: loss.value().clone(), parts: None, images: global, skipped_images: batch.skipped })
    }

    fn replicated(&self) -> bool {
        self.cfg.mode == Mode::Linprobe
    }

    fn new_gradients(&self, dev: &Device) -> Result<Gradients> {
        match &self.opt {
            Optimizer::AdamW(o) => o.new_gradients(dev, &self.model.params),
            Optimizer::Lars(_) => Ok(Gradients::default()),
        }
    }

    fn update(&mut self, dev: &Device, grads: &Gradients, lr: f64, grad_scale: f32) -> Result<()> {
        let depth = self.cfg.model.depth;
        let decay = self.cfg.train.layer_decay;
        match &mut self.opt {
            Optimizer::AdamW(o) => {
                let scale = |name: &str| layer_decay_scale(name, depth, decay);
                o.update(dev, &mut self.model.params, grads, (lr, grad_scale), scale, self.amp.scaler_mut())
            }
            Optimizer::Lars(o) => o.update(dev, &mut self.model.params, grads, lr, grad_scale),
        }
    }

    fn optimizer_state(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        let mut state = match &self.opt {
            Optimizer::AdamW(o) => o.state_to_host(dev, &self.model.params)?,
            Optimizer::Lars(o) => o.state_to_host(dev)?,
        };
        state.extend(self.amp.state_to_host(dev)?);
        Ok(state)
    }

    fn load_optimizer_state(&mut self, dev: &Device, step: u64, mut state: F32Map) -> Result<()> {
        self.amp.load_state(dev, &mut state)?;
        match &mut self.opt {
            Optimizer::AdamW(o) => o.load_state(dev, step, state),
            Optimizer::Lars(o) => o.load_state(dev, state),
        }
    }
}

/// Where the encoder weights of a run come from (one file read).
pub fn encoder_weights(path: &Path) -> Result<(ModelConfig, F32Map)> {
    let file = CheckpointFile::read(path)?;
    Ok((file.model_config()?, file.tensors))
}

/// What a finished run scored, as `RUN/results.json` keeps it (fields in
/// alphabetical order, the order the file has always had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyResults {
    pub checkpoint: String,
    pub classes: usize,
    pub epochs: f64,
    /// The pretrained checkpoint, or "scratch".
    pub init: String,
    pub mode: Mode,
    pub steps: u64,
    pub test_images: usize,
    /// Accuracies in percent.
    pub top1: f64,
    pub top5: f64,
}

/// Trains a linear probe or fine-tunes, then evaluates on the test split and
/// writes `RUN/results.json`; no results when the run stopped early.
pub fn train(
    dev: &Device,
    cfg: &ClassifyConfig,
    flags: &RunFlags,
    interrupt: &AtomicBool,
) -> Result<(Summary, Option<ClassifyResults>)> {
    cfg.validate()?;
    world().check_batch(cfg.train.batch)?;
    // The data first: a run that cannot start leaves no run directory behind.
    let spec = DataSpec::parse(&cfg.data.spec)?;
    let (m, t) = (&cfg.model, &cfg.train);
    let train_set = data::open(&spec, Split::Train, cfg.data.synthetic_size, m.img_size)?;
    if train_set.num_classes() != cfg.classes {
        bail!("the data has {} classes, the config {}", train_set.num_classes(), cfg.classes);
    }
    let start = lifecycle::prepare(flags, cfg, &cfg.to_ron(), ClassifyConfig::from_ron)?;
    let mut init_rng = stream_rng(Stream::ClassifyInit, &[t.seed]);
    // A linear probe trains its head in f32 on its frozen encoder's features
    // (computed in the run's precision): no f16 gradient, nothing to scale.
    let amp = match cfg.mode {
        Mode::Finetune => Amp::new(dev, t.precision, true)?,
        Mode::Linprobe => {
            precision::check_adapter(dev, t.precision)?;
            Amp::new(dev, Precision::F32, false)?
        }
    };
    let mut model = if cfg.init.is_empty() {
        Classifier::new(dev, m, cfg.mode, cfg.classes, &mut init_rng)?
    } else {
        let (_, weights) = encoder_weights(Path::new(&cfg.init))?;
        Classifier::from_encoder(dev, m, cfg.mode, cfg.classes, weights, &mut init_rng)
            .with_context(|| format!("initialising from {}", cfg.init))?
    };
    if cfg.mode == Mode::Linprobe {
        model.frozen_precision = t.precision;
    }
    let opt = match cfg.mode {
        Mode::Finetune => Optimizer::AdamW(AdamW::new(
            dev,
            &model.params,
            AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: t.weight_decay, decays: finetune_decays },
        )?),
        Mode::Linprobe => {
            Optimizer::Lars(Lars::new(dev, &model.params, model::probe_head, 0.9, t.weight_decay, 0.001)?)
        }
    };
    let mut transform = Transform::new(m.img_size, m.in_chans, train_set.mean_std(), true);
    transform.scale = (t.crop_min_scale, 1.0);
    if cfg.mode == Mode::Finetune {
        transform.randaug = t.randaug.then(RandAugment::default);
        transform.erase = t.reprob;
    }
    let mut loader_cfg = LoaderConfig::training(t.batch, t.seed, &cfg.data);
    if world().size() > 1 {
        let own: Vec<usize> = world().shard(t.batch).collect();
        let mixes = cfg.mode == Mode::Finetune && mixup(t).mixes();
        // Mixup pairs sample i with sample B − 1 − i of the whole batch.
        let partners = own.iter().map(|&i| t.batch - 1 - i).filter(|_| mixes);
        loader_cfg.positions = Some(own.iter().copied().chain(partners).collect());
    }
    let loader = Loader::new(train_set, transform, loader_cfg, start * t.accum_iter as u64)?;
    let sched = Schedule::new(
        t.epochs,
        t.steps,
        t.warmup_epochs,
        t.accum_iter,
        loader.batches_per_epoch(),
        (cfg.lr(), t.min_lr),
    );
    let mut task = ClassifyTask { cfg, model, opt, amp, loader };
    let cadence =
        Cadence { log_every: cfg.output.log_every as u64, checkpoint_every: cfg.output.checkpoint_every as u64 };
    let task_name = match cfg.mode {
        Mode::Linprobe => "linprobe",
        Mode::Finetune => "finetune",
    };
    let meta = Meta { task: task_name.into(), config: cfg.to_ron(), precision: t.precision };
    let summary = runner::run(dev, &mut task, &sched, &meta, (flags, cadence), interrupt)?;
    // Rank 0 evaluates and writes the results.
    if summary.interrupted || !world().is_root() {
        return Ok((summary, None));
    }
    let test_set = data::test_subset(&spec, cfg.data.synthetic_size, m.img_size, cfg.data.test_images)?;
    let eval = evaluate(dev, &task.model, test_set, cfg.data.bad_images, t.batch, t.seed, false)?;
    let epochs = (summary.step * t.accum_iter as u64) as f64 / sched.batches_per_epoch as f64;
    let results = ClassifyResults {
        checkpoint: summary.checkpoint.display().to_string(),
        classes: cfg.classes,
        epochs,
        init: if cfg.init.is_empty() { "scratch".into() } else { cfg.init.clone() },
        mode: cfg.mode,
        steps: summary.step,
        test_images: eval.images,
        top1: eval.top1,
        top5: eval.top5,
    };
    write_atomic(&flags.out.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    Ok((summary, Some(results)))
}

/// The run's mixup and cutmix (fine-tuning).
fn mixup(t: &super::config::ClassifyTrain) -> Mixup {
    Mixup { mixup_alpha: t.mixup, cutmix_alpha: t.cutmix, switch_prob: 0.5, smoothing: t.label_smoothing }
}

/// Stochastic-depth scales for one branch: 0 with probability `p`, else 1/(1 − p).
pub fn drop_path_scales(b: usize, p: f64, rng: &mut impl Rng) -> Vec<f32> {
    (0..b).map(|_| if rng.random_bool(1.0 - p) { (1.0 / (1.0 - p)) as f32 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn layer_ids_follow_mae() {
        assert_eq!(layer_id("cls_token", 12), 0);
        assert_eq!(layer_id("patch_embed.proj.weight", 12), 0);
        assert_eq!(layer_id("blocks.0.attn.qkv.weight", 12), 1);
        assert_eq!(layer_id("blocks.11.mlp.fc2.bias", 12), 12);
        assert_eq!(layer_id("fc_norm.weight", 12), 13);
        assert_eq!(layer_id("head.weight", 12), 13);
        // Scales 0.65^(13 − id): the head trains at the full rate, embeddings at 0.65^13.
        let s = |n: &str| layer_decay_scale(n, 12, 0.65);
        assert_eq!(s("head.weight"), 1.0);
        assert!((s("blocks.11.norm1.weight") - 0.65).abs() < 1e-12);
        assert!((s("pos_embed") - 0.65f64.powi(13)).abs() < 1e-15);
        assert!(!finetune_decays("pos_embed", &[1, 65, 192]) && !finetune_decays("cls_token", &[1, 1, 192]));
        assert!(finetune_decays("blocks.0.attn.qkv.weight", &[576, 192]) && !finetune_decays("head.bias", &[10]));
    }

    #[test]
    fn results_keep_the_keys_and_order_of_results_json() {
        let r = ClassifyResults {
            checkpoint: "run/checkpoint.safetensors".into(),
            classes: 10,
            epochs: 1.5,
            init: "scratch".into(),
            mode: Mode::Finetune,
            steps: 3,
            test_images: 20,
            top1: 50.0,
            top5: 90.0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"checkpoint":"run/checkpoint.safetensors","classes":10,"epochs":1.5,"init":"scratch","mode":"finetune","steps":3,"test_images":20,"top1":50.0,"top5":90.0}"#
        );
    }

    #[test]
    fn drop_path_keeps_the_expected_value() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let s = drop_path_scales(20000, 0.25, &mut rng);
        assert!(s.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = s.iter().filter(|&&v| v == 0.0).count() as f64 / s.len() as f64;
        let mean = s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01 && (mean - 1.0).abs() < 0.02, "{dropped} {mean}");
        assert!(drop_path_scales(10, 0.0, &mut rng).iter().all(|&v| v == 1.0));
    }
}
