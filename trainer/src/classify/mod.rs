//! Linear probing, fine-tuning and evaluation (top-1/top-5 and the study's
//! robustness tests), on the shared training loop.

pub mod augment;
pub mod model;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::{Device, Gradients, Tape, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{BadImages, DataConfig, ModelConfig};
use crate::data::augment::Transform;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::data::{self, DataSpec, Dataset, Split};
use crate::model::vit::DropPath;
use crate::rng::{Stream, stream_rng};
use crate::safetensors_io::{F32Map, NamedF32, write_atomic};
use crate::train::checkpoint::{self, CheckpointFile, Meta};
use crate::train::optimizer::{AdamW, AdamWConfig, Lars};
use crate::train::pretrain::schedule_steps;
use crate::train::runner::{self, Cadence, MicroStep, RunFlags, Schedule, Summary, Task};
use augment::{Mixup, RandAugment};
pub use model::{Classifier, Mode, Perturb};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyTrain {
    pub batch: usize,
    pub accum_iter: usize,
    pub epochs: f64,
    #[serde(default)]
    pub steps: Option<usize>,
    /// lr = blr · batch · accum / 256.
    pub blr: f64,
    /// Floor of the cosine schedule (MAE fine-tuning: 1e-6).
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    /// Layer-wise lr decay (fine-tuning; 1 = none).
    pub layer_decay: f64,
    /// Stochastic depth rate of the last block (fine-tuning).
    pub drop_path: f64,
    pub label_smoothing: f64,
    pub mixup: f64,
    pub cutmix: f64,
    /// Random-erasing probability.
    pub reprob: f64,
    pub randaug: bool,
    /// Smallest area fraction of RandomResizedCrop.
    pub crop_min_scale: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyOutput {
    pub log_every: usize,
    pub checkpoint_every: usize,
}

/// Everything a linear-probe or fine-tuning run needs; written to `RUN/config.ron`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    pub mode: Mode,
    pub model: ModelConfig,
    pub classes: usize,
    /// The pretrained checkpoint the encoder comes from ("" = from scratch).
    pub init: String,
    pub train: ClassifyTrain,
    pub data: DataConfig,
    pub output: ClassifyOutput,
}

impl ClassifyConfig {
    /// MAE's recipes: LARS probing (blr 0.1, 90 epochs, 10 warmup) and AdamW
    /// fine-tuning (blr 5e-4, layer decay 0.65, drop path 0.1, 100 epochs,
    /// 5 warmup, smoothing 0.1, mixup 0.8, cutmix 1.0, erasing 0.25, RandAugment).
    pub fn recipe(mode: Mode, model: ModelConfig, classes: usize, init: String, spec: &str) -> Self {
        let train = match mode {
            Mode::Linprobe => ClassifyTrain {
                batch: 256,
                accum_iter: 1,
                epochs: 90.0,
                steps: None,
                blr: 0.1,
                min_lr: 0.0,
                warmup_epochs: 10.0,
                weight_decay: 0.0,
                layer_decay: 1.0,
                drop_path: 0.0,
                label_smoothing: 0.0,
                mixup: 0.0,
                cutmix: 0.0,
                reprob: 0.0,
                randaug: false,
                crop_min_scale: 0.08,
                seed: 0,
            },
            Mode::Finetune => ClassifyTrain {
                batch: 64,
                accum_iter: 1,
                epochs: 100.0,
                steps: None,
                blr: 5e-4,
                min_lr: 1e-6,
                warmup_epochs: 5.0,
                weight_decay: 0.05,
                layer_decay: 0.65,
                drop_path: 0.1,
                label_smoothing: 0.1,
                mixup: 0.8,
                cutmix: 1.0,
                reprob: 0.25,
                randaug: true,
                crop_min_scale: 0.08,
                seed: 0,
            },
        };
        Self {
            mode,
            model,
            classes,
            init,
            train,
            data: DataConfig {
                spec: spec.to_string(),
                bad_images: BadImages::Abort,
                workers: 0,
                synthetic_size: 4096,
                test_images: 0,
            },
            output: ClassifyOutput { log_every: 20, checkpoint_every: 500 },
        }
    }

    pub fn from_ron(text: &str) -> Result<Self> {
        ron::from_str(text).map_err(|e| anyhow!("{e}"))
    }

    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).expect("configs always serialise")
    }

    /// `--set key=value` on this config (same rules as pretraining's).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        *self = crate::config::set_field(&*self, assignment)?;
        Ok(())
    }

    pub fn lr(&self) -> f64 {
        self.train.blr * (self.train.batch * self.train.accum_iter) as f64 / 256.0
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let t = &self.train;
        if self.classes < 2 {
            bail!("classes must be at least 2");
        }
        if t.batch < 2 || t.accum_iter == 0 {
            bail!("train.batch must be at least 2 (batch statistics) and train.accum_iter at least 1");
        }
        if !(0.0..1.0).contains(&t.drop_path)
            || !(0.0..=1.0).contains(&t.reprob)
            || !(0.0..1.0).contains(&t.label_smoothing)
        {
            bail!("train.drop_path and train.label_smoothing must be in [0, 1), train.reprob in [0, 1]");
        }
        if t.steps == Some(0) || t.epochs <= 0.0 || t.blr <= 0.0 {
            bail!("the run needs at least one step and a positive train.blr");
        }
        Ok(())
    }
}

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

/// Evaluation transform: the test images resized to the model's size.
fn eval_transform(cfg: &ModelConfig, set: &dyn Dataset) -> Transform {
    Transform::new(cfg.img_size, cfg.in_chans, set.mean_std(), false)
}

struct ClassifyTask<'a> {
    cfg: &'a ClassifyConfig,
    model: Classifier,
    opt: Optimizer,
    loader: Loader,
}

impl ClassifyTask<'_> {
    /// Per-block drop-path scales for one micro-batch (linearly rising rates, as timm).
    fn drop_path(&self, dev: &Device, b: usize, rng: &mut impl Rng) -> Result<Vec<(Tensor, Tensor)>> {
        let (depth, rate) = (self.cfg.model.depth, self.cfg.train.drop_path);
        if rate <= 0.0 || self.cfg.mode == Mode::Linprobe {
            return Ok(Vec::new());
        }
        (0..depth)
            .map(|i| {
                let p = rate * i as f64 / (depth.max(2) - 1) as f64;
                let attn = Tensor::from_f32(dev, &drop_path_scales(b, p, rng), &[b])?;
                Ok((attn, Tensor::from_f32(dev, &drop_path_scales(b, p, rng), &[b])?))
            })
            .collect()
    }
}

impl Task for ClassifyTask<'_> {
    fn params(&self) -> &crate::model::ParamStore {
        &self.model.params
    }

    fn load_params(&mut self, dev: &Device, weights: F32Map) -> Result<()> {
        self.model.params.replace_from(dev, weights)
    }

    fn micro_step(&mut self, dev: &Device, step: u64, micro: u64, grads: &mut Gradients) -> Result<MicroStep> {
        let (m, t) = (&self.cfg.model, &self.cfg.train);
        let mut batch = self.loader.next_batch()?;
        let mut rng = stream_rng(Stream::ClassifyStep, &[t.seed, step, micro]);
        let targets = if self.cfg.mode == Mode::Finetune {
            let mix =
                Mixup { mixup_alpha: t.mixup, cutmix_alpha: t.cutmix, switch_prob: 0.5, smoothing: t.label_smoothing };
            mix.apply(&mut batch.images, &batch.labels, m.in_chans, m.img_size, self.cfg.classes, &mut rng)
        } else {
            Mixup::targets(&batch.labels, self.cfg.classes, t.label_smoothing)
        };
        let b = batch.size;
        let imgs = Tensor::from_f32(dev, &batch.images, &[b, m.in_chans, m.img_size, m.img_size])?;
        let targets = Tensor::from_f32(dev, &targets, &[b, self.cfg.classes])?;
        let weights = Tensor::from_f32(dev, &vec![1.0 / b as f32; b], &[b])?;
        let scales = self.drop_path(dev, b, &mut rng)?;
        let drop: Vec<DropPath<'_>> = scales.iter().map(|(a, m)| DropPath { attn: a, mlp: m }).collect();
        let tape = Tape::new(dev);
        let logits = self.model.forward(&tape, &imgs, true, &drop, &Perturb::default())?;
        let loss = tape.weighted_cross_entropy(&logits, &targets, &weights)?;
        tape.backward(&loss, grads)?;
        Ok(MicroStep { loss: loss.value().clone(), parts: None, images: b, skipped_images: batch.skipped })
    }

    fn update(&mut self, dev: &Device, grads: &Gradients, lr: f64, grad_scale: f32) -> Result<()> {
        let depth = self.cfg.model.depth;
        let decay = self.cfg.train.layer_decay;
        match &mut self.opt {
            Optimizer::AdamW(o) => {
                o.update(dev, &self.model.params, grads, lr, grad_scale, |name| layer_decay_scale(name, depth, decay))
            }
            Optimizer::Lars(o) => o.update(dev, &self.model.params, grads, lr, grad_scale),
        }
    }

    fn optimizer_state(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        match &self.opt {
            Optimizer::AdamW(o) => o.state_to_host(dev, &self.model.params),
            Optimizer::Lars(o) => o.state_to_host(dev),
        }
    }

    fn load_optimizer_state(&mut self, dev: &Device, step: u64, state: F32Map) -> Result<()> {
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

/// Trains a linear probe or fine-tunes, then evaluates on the test split and
/// writes `RUN/results.json`.
pub fn train(
    dev: &Device,
    cfg: &ClassifyConfig,
    flags: &RunFlags,
    interrupt: &AtomicBool,
) -> Result<(Summary, serde_json::Value)> {
    cfg.validate()?;
    // The data first: a run that cannot start leaves no run directory behind.
    let spec = DataSpec::parse(&cfg.data.spec)?;
    let (m, t) = (&cfg.model, &cfg.train);
    let train_set = data::open(&spec, Split::Train, cfg.data.synthetic_size, m.img_size)?;
    if train_set.num_classes() != cfg.classes {
        bail!("the data has {} classes, the config {}", train_set.num_classes(), cfg.classes);
    }
    runner::prepare_out(&flags.out, flags.resume, &cfg.to_ron(), |saved| {
        let mut saved = ClassifyConfig::from_ron(saved)?;
        saved.output = cfg.output.clone();
        saved.data.workers = cfg.data.workers;
        if saved != *cfg {
            bail!(
                "--resume with a different config than the run's ({}); resume with the same flags or start a new --out",
                flags.out.join("config.ron").display()
            );
        }
        Ok(())
    })?;
    let mut init_rng = stream_rng(Stream::ClassifyInit, &[t.seed]);
    let model = if cfg.init.is_empty() {
        Classifier::new(dev, m, cfg.mode, cfg.classes, &mut init_rng)?
    } else {
        let (_, weights) = encoder_weights(Path::new(&cfg.init))?;
        Classifier::from_encoder(dev, m, cfg.mode, cfg.classes, weights, &mut init_rng)
            .with_context(|| format!("initialising from {}", cfg.init))?
    };
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
    let loader_cfg = LoaderConfig {
        batch: t.batch,
        seed: t.seed,
        workers: cfg.data.workers,
        bad_images: cfg.data.bad_images,
        shuffle: true,
        drop_last: true,
        prefetch: 4,
    };
    let start = if flags.resume { checkpoint::latest(&flags.out)?.map_or(0, |(s, _)| s) } else { 0 };
    let loader = Loader::new(train_set, transform, loader_cfg, start * t.accum_iter as u64)?;
    let batches_per_epoch = loader.batches_per_epoch();
    let (total_steps, warmup_steps) =
        schedule_steps(t.epochs, t.steps, t.warmup_epochs, t.accum_iter, batches_per_epoch);
    let sched = Schedule {
        total_steps,
        warmup_steps,
        peak_lr: cfg.lr(),
        min_lr: t.min_lr,
        accum_iter: t.accum_iter as u64,
        batches_per_epoch,
    };
    let mut task = ClassifyTask { cfg, model, opt, loader };
    let cadence =
        Cadence { log_every: cfg.output.log_every as u64, checkpoint_every: cfg.output.checkpoint_every as u64 };
    let task_name = match cfg.mode {
        Mode::Linprobe => "linprobe",
        Mode::Finetune => "finetune",
    };
    let meta = Meta { task: task_name.into(), config: cfg.to_ron() };
    let summary = runner::run(dev, &mut task, &sched, &meta, (flags, cadence), interrupt)?;
    if summary.interrupted {
        return Ok((summary, json!({})));
    }
    let test_set =
        data::Subset::first(data::open(&spec, Split::Test, cfg.data.synthetic_size, m.img_size)?, cfg.data.test_images);
    let eval = evaluate(dev, &task.model, test_set, cfg.data.bad_images, t.batch, t.seed, false)?;
    let epochs = (summary.step * t.accum_iter as u64) as f64 / batches_per_epoch as f64;
    let results = json!({
        "mode": task_name,
        "top1": eval.top1,
        "top5": eval.top5,
        "epochs": epochs,
        "steps": summary.step,
        "test_images": eval.images,
        "classes": cfg.classes,
        "init": if cfg.init.is_empty() { "scratch" } else { cfg.init.as_str() },
        "checkpoint": summary.checkpoint.display().to_string(),
    });
    write_atomic(&flags.out.join("results.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    Ok((summary, results))
}

/// Accuracies in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub top1_occlusion50: Option<f64>,
    pub top1_shuffled: Option<f64>,
    pub images: usize,
}

/// Index of the `k` largest logits of each row contain the label?
fn hits(logits: &[f32], labels: &[u32], classes: usize, k: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let target = row[l as usize];
            // Rank = how many logits beat the label's (ties count against it).
            row.iter().enumerate().filter(|&(j, &v)| v > target || (v == target && j < l as usize)).count() < k
        })
        .count()
}

/// Rows kept when half the patches are removed: cls (row 0) and a random
/// ⌊L/2⌋ of the patch rows 1..=L, per sample: `[b, 1 + L/2]`.
pub fn occlusion_rows(b: usize, l: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b)
        .flat_map(|_| {
            let mut ids: Vec<u32> = (1..=l as u32).collect();
            ids.shuffle(rng);
            ids.truncate(l / 2);
            std::iter::once(0).chain(ids)
        })
        .collect()
}

/// A random permutation of the L patches per sample: `[b, L]`.
pub fn shuffled_patches(b: usize, l: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b)
        .flat_map(|_| {
            let mut ids: Vec<u32> = (0..l as u32).collect();
            ids.shuffle(rng);
            ids
        })
        .collect()
}

/// Stochastic-depth scales for one branch: 0 with probability `p`, else 1/(1 − p).
pub fn drop_path_scales(b: usize, p: f64, rng: &mut impl Rng) -> Vec<f32> {
    (0..b).map(|_| if rng.random_bool(1.0 - p) { (1.0 / (1.0 - p)) as f32 } else { 0.0 }).collect()
}

/// Top-1/top-5 on `set`; with `robustness`, also top-1 with 50% of the
/// patch tokens removed and with the patches shuffled (seeded).
pub fn evaluate(
    dev: &Device,
    model: &Classifier,
    set: std::sync::Arc<dyn Dataset>,
    bad: BadImages,
    batch: usize,
    seed: u64,
    robustness: bool,
) -> Result<Accuracy> {
    let m = &model.cfg;
    let transform = eval_transform(m, set.as_ref());
    let cfg = LoaderConfig { batch, seed, workers: 0, bad_images: bad, shuffle: false, drop_last: false, prefetch: 2 };
    let mut loader = Loader::new(set, transform, cfg, 0)?;
    let l = m.num_patches();
    let (mut top1, mut top5, mut occl, mut shuf, mut n) = (0, 0, 0, 0, 0);
    let mut rng = stream_rng(Stream::Robustness, &[seed]);
    for _ in 0..loader.batches_per_epoch() {
        let Batch { images, labels, size: b, .. } = loader.next_batch()?;
        let imgs = Tensor::from_f32(dev, &images, &[b, m.in_chans, m.img_size, m.img_size])?;
        let run = |p: &Perturb<'_>| -> Result<Vec<f32>> {
            let tape = Tape::no_grad(dev);
            Ok(model.forward(&tape, &imgs, false, &[], p)?.value().to_vec_f32(dev)?)
        };
        let logits = run(&Perturb::default())?;
        top1 += hits(&logits, &labels, model.classes, 1);
        top5 += hits(&logits, &labels, model.classes, 5.min(model.classes));
        if robustness {
            let keep_t = Tensor::from_u32(dev, &occlusion_rows(b, l, &mut rng), &[b, 1 + l / 2])?;
            occl += hits(&run(&Perturb { keep: Some(&keep_t), shuffle: None })?, &labels, model.classes, 1);
            let order_t = Tensor::from_u32(dev, &shuffled_patches(b, l, &mut rng), &[b, l])?;
            shuf += hits(&run(&Perturb { keep: None, shuffle: Some(&order_t) })?, &labels, model.classes, 1);
        }
        n += b;
    }
    let pct = |h: usize| 100.0 * h as f64 / n.max(1) as f64;
    Ok(Accuracy {
        top1: pct(top1),
        top5: pct(top5),
        top1_occlusion50: robustness.then(|| pct(occl)),
        top1_shuffled: robustness.then(|| pct(shuf)),
        images: n,
    })
}

/// Loads a linprobe/finetune checkpoint for evaluation.
pub fn load_classifier(dev: &Device, path: &Path) -> Result<(Classifier, ClassifyConfig)> {
    Classifier::from_file(dev, CheckpointFile::read(path)?, &[])
}

impl Classifier {
    /// The classifier of a linprobe/finetune checkpoint already read, and its
    /// run's config with `overrides` (`--set key=value`) applied. The model
    /// is the checkpoint's: an override of `model.*` or `classes` is an error.
    pub fn from_file(dev: &Device, file: CheckpointFile, overrides: &[String]) -> Result<(Classifier, ClassifyConfig)> {
        let path = &file.path;
        let mut cfg = match (file.task.as_deref(), file.config.as_deref()) {
            (Some("linprobe" | "finetune"), Some(text)) => ClassifyConfig::from_ron(text)?,
            (Some(task), _) => {
                bail!("{} is a {task} checkpoint; evaluate a linprobe or finetune checkpoint", path.display())
            }
            _ => bail!(
                "{} has no cmae classifier metadata; it was not written by cmae linprobe/finetune",
                path.display()
            ),
        };
        let (model_before, classes_before) = (cfg.model.clone(), cfg.classes);
        for o in overrides {
            cfg.set(o)?;
        }
        if cfg.model != model_before || cfg.classes != classes_before {
            bail!("--set cannot change model.* or classes of a trained checkpoint ({})", path.display());
        }
        let model = Classifier::load(dev, &cfg.model, cfg.mode, cfg.classes, file.tensors)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((model, cfg))
    }
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
    fn robustness_indices_keep_the_right_tokens() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, l) = (3, 49);
        let rows = occlusion_rows(b, l, &mut rng);
        assert_eq!(rows.len(), b * (1 + 24));
        for r in rows.chunks(25) {
            assert_eq!(r[0], 0, "cls is always kept, first");
            let mut rest = r[1..].to_vec();
            rest.sort();
            rest.dedup();
            assert_eq!(rest.len(), 24, "distinct patches");
            assert!(rest.iter().all(|&i| (1..=49).contains(&i)));
        }
        for p in shuffled_patches(b, l, &mut rng).chunks(l) {
            let mut sorted = p.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..l as u32).collect::<Vec<_>>(), "a permutation");
        }
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

    #[test]
    fn top_k_counts_ties_against_the_label() {
        // Row 0: [0.1, 0.9, 0.5]; row 1: [0.5, 0.5, 0.2].
        let logits = [0.1, 0.9, 0.5, 0.5, 0.5, 0.2];
        assert_eq!(hits(&logits, &[1, 2], 3, 1), 1, "row 0 right, row 1's 0.2 is third");
        // Row 1 label 1 ties with class 0, which comes first: rank 1, not top-1.
        assert_eq!(hits(&logits, &[2, 1], 3, 1), 0);
        assert_eq!(hits(&logits, &[2, 1], 3, 2), 2);
        assert_eq!(hits(&logits, &[0, 2], 3, 2), 0);
    }
}
