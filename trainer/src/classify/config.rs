//! The config of a linear-probe or fine-tuning run (`RUN/config.ron`): MAE's
//! two recipes, `--set` overrides and validation.

use anyhow::{Result, anyhow, bail};
use cmae_engine::Precision;
use serde::{Deserialize, Serialize};

use super::Mode;
use crate::config::{BadImages, DataConfig, ModelConfig};

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
    /// f32, or f16 mixed precision (needs the adapter's SHADER_F16). A
    /// linear probe runs its frozen encoder in it and trains its head in f32.
    #[serde(default)]
    pub precision: Precision,
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
                precision: Precision::F32,
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
                precision: Precision::F32,
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
