//! ViT classifiers on a (pretrained) encoder, as MAE's `models_vit.py`:
//! linear probing reads the cls token after the final norm through
//! BatchNorm1d (no affine, eps 1e-6) and a Linear head; fine-tuning averages
//! the patch tokens, applies `fc_norm` and a Linear head.

use anyhow::{Result, bail};
use cmae_engine::kernels::{batchnorm, gather};
use cmae_engine::{DType, Device, Precision, Tape, Tensor, TensorMut, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::model::encoder::{PosEmbed, Route, VitEncoder, encoder_specs, final_norm_specs};
use crate::model::params::{Init, ParamSpec, ParamStore};
use crate::model::vit::{DropPath, Layers, Taps};
use crate::safetensors_io::F32Map;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Linprobe,
    Finetune,
}

/// The encoder's parameters (MAE/timm names) plus the head for `mode`.
pub fn param_specs(c: &ModelConfig, mode: Mode, classes: usize) -> Vec<ParamSpec> {
    let d = c.embed_dim;
    // Fine-tuning trains the position embeddings (timm's ViT), probing keeps them.
    let pos = if mode == Mode::Finetune { PosEmbed::Trained } else { PosEmbed::Fixed };
    let mut specs = encoder_specs(c, pos);
    match mode {
        Mode::Linprobe => {
            specs.extend(final_norm_specs(c));
            specs.extend([
                ParamSpec::new(RUNNING_MEAN, &[d], Init::Buffer(vec![0.0; d])),
                ParamSpec::new(RUNNING_VAR, &[d], Init::Buffer(vec![1.0; d])),
                ParamSpec::new("head.1.weight", &[classes, d], Init::Normal(0.01)),
                ParamSpec::new("head.1.bias", &[classes], Init::Zeros),
            ]);
        }
        Mode::Finetune => specs.extend([
            ParamSpec::new("fc_norm.weight", &[d], Init::Ones),
            ParamSpec::new("fc_norm.bias", &[d], Init::Zeros),
            ParamSpec::new("head.weight", &[classes, d], Init::Normal(2e-5)),
            ParamSpec::new("head.bias", &[classes], Init::Zeros),
        ]),
    }
    specs
}

/// The probe's BatchNorm1d running statistics (buffers, as in PyTorch).
const RUNNING_MEAN: &str = "head.0.running_mean";
const RUNNING_VAR: &str = "head.0.running_var";
const BN_EPS: f32 = 1e-6;
const BN_MOMENTUM: f32 = 0.1;

/// The names of a linear probe's trainable parameters (the encoder is frozen).
pub fn probe_head(name: &str) -> bool {
    name.starts_with("head.1.")
}

/// Token-level changes for the robustness evaluation.
#[derive(Default)]
pub struct Perturb<'a> {
    /// `[B, L]` patch permutation applied before the position embeddings
    /// (the same as shuffling the image's patches).
    pub shuffle: Option<&'a Tensor>,
    /// `[B, 1 + keep]` rows kept after the position embeddings (cls first):
    /// patches removed, not zeroed.
    pub keep: Option<&'a Tensor>,
}

pub struct Classifier {
    pub cfg: ModelConfig,
    pub mode: Mode,
    pub classes: usize,
    pub params: ParamStore,
    /// The precision a linear probe's frozen encoder runs in (its head trains in f32).
    pub frozen_precision: Precision,
}

impl Classifier {
    /// A fresh classifier (`--from-scratch`).
    pub fn new(dev: &Device, cfg: &ModelConfig, mode: Mode, classes: usize, rng: &mut impl Rng) -> Result<Self> {
        cfg.validate()?;
        let params = ParamStore::init(dev, &param_specs(cfg, mode, classes), rng)?;
        Ok(Self { cfg: cfg.clone(), mode, classes, params, frozen_precision: Precision::F32 })
    }

    /// Encoder weights from `weights` (an MAE or timm state dict; decoder
    /// tensors are ignored), a new head. Position embeddings of another grid
    /// are interpolated bicubically, as MAE's `interpolate_pos_embed`.
    pub fn from_encoder(
        dev: &Device,
        cfg: &ModelConfig,
        mode: Mode,
        classes: usize,
        mut weights: F32Map,
        rng: &mut impl Rng,
    ) -> Result<Self> {
        cfg.validate()?;
        if let Some((shape, table)) = weights.get("pos_embed").cloned() {
            let (d, l) = (cfg.embed_dim, cfg.num_patches());
            if shape != [1, 1 + l, d] {
                let resized =
                    crate::model::posembed::interpolate(&table, shape.get(2).copied().unwrap_or(0), cfg.grid())?;
                weights.insert("pos_embed".into(), (vec![1, 1 + l, d], resized));
            }
        }
        let specs = param_specs(cfg, mode, classes);
        let mut params = ParamStore::init(dev, &specs, rng)?;
        // The head is always new; the final norm is new when the source has
        // none (a fine-tuned model, which ends in fc_norm).
        let fresh: F32Map = params.to_host(dev)?.into_iter().map(|(n, s, v)| (n, (s, v))).collect();
        for (name, t) in fresh {
            let head = name.starts_with("head.") || name.starts_with("fc_norm.");
            if head || (name.starts_with("norm.") && !weights.contains_key(&name)) {
                weights.insert(name, t);
            }
        }
        let missing: Vec<&str> = specs.iter().map(|s| s.name.as_str()).filter(|n| !weights.contains_key(*n)).collect();
        if !missing.is_empty() {
            bail!("the checkpoint lacks encoder parameters {}; it is not a ViT of this shape", missing.join(", "));
        }
        params.replace_from(dev, weights)?;
        Ok(Self { cfg: cfg.clone(), mode, classes, params, frozen_precision: Precision::F32 })
    }

    /// A whole classifier (encoder and head) from a linprobe/finetune checkpoint.
    pub fn load(dev: &Device, cfg: &ModelConfig, mode: Mode, classes: usize, weights: F32Map) -> Result<Self> {
        let (params, _) = ParamStore::load(dev, &param_specs(cfg, mode, classes), weights)?;
        Ok(Self { cfg: cfg.clone(), mode, classes, params, frozen_precision: Precision::F32 })
    }

    fn layers<'a>(&'a self, tape: &'a Tape) -> Layers<'a> {
        Layers { tape, params: &self.params }
    }

    /// The encoder on this model's parameters: ending in `norm` for the
    /// probe, without it for global-pool fine-tuning (MAE's `models_vit.py`).
    pub fn encoder(&self) -> VitEncoder<'_> {
        VitEncoder { cfg: &self.cfg, params: &self.params, final_norm: self.mode == Mode::Linprobe }
    }

    /// Encoder output tokens `[B, T, D]`.
    pub fn encode(
        &self,
        tape: &Tape,
        imgs: &Tensor,
        drop_path: &[DropPath<'_>],
        perturb: &Perturb<'_>,
        taps: &mut Taps,
    ) -> Result<Var> {
        let route =
            Route { shuffle: perturb.shuffle, gathers: perturb.keep.map(|k| (0, k)).into_iter().collect(), drop_path };
        self.encoder().forward(tape, imgs, &route, taps)
    }

    /// Fine-tuning head on the encoder tokens: mean of the patch tokens, fc_norm, Linear.
    pub fn finetune_head(&self, tape: &Tape, tokens: &Var) -> Result<Var> {
        let layers = self.layers(tape);
        let pooled = tape.mean_tokens(tokens, 1)?;
        let pooled = layers.layer_norm(&pooled, "fc_norm")?;
        layers.linear(&pooled, "head")
    }

    /// The probe's features: the cls token of the normed tokens, `[B, D]` (no gradient).
    pub fn probe_features(&self, tape: &Tape, x: &Var) -> Result<Tensor> {
        let [b, _, d] = *x.shape() else { bail!("tokens {:?} are not [B, T, D]", x.shape()) };
        let mut cls = TensorMut::uninit(tape.device(), &[b, 1, d], DType::F32)?;
        gather::copy_rows(tape.device(), x.value(), 0, &mut cls, 0, 1)?;
        Ok(cls.freeze().reshape(&[b, d])?)
    }

    /// The probe's head in evaluation: BatchNorm1d with the running
    /// statistics, then Linear, on features that carry no gradient.
    pub fn probe_head(&self, tape: &Tape, features: &Tensor) -> Result<Var> {
        let stats = (self.params.buffer(RUNNING_MEAN)?, self.params.buffer(RUNNING_VAR)?);
        let normed = batchnorm::batch_norm_eval(tape.device(), features, stats, BN_EPS)?;
        self.layers(tape).linear(&tape.constant(normed), "head.1")
    }

    /// The probe's head in training: BatchNorm1d with the batch statistics,
    /// updating the running ones in place, then Linear.
    pub fn probe_head_train(&mut self, tape: &Tape, features: &Tensor) -> Result<Var> {
        let [mean, var] = self.params.buffers_mut([RUNNING_MEAN, RUNNING_VAR])?;
        let normed = batchnorm::batch_norm_train(tape.device(), features, (mean, var), BN_EPS, BN_MOMENTUM)?;
        self.layers(tape).linear(&tape.constant(normed), "head.1")
    }

    /// Evaluation logits `[B, classes]`.
    pub fn forward(&self, tape: &Tape, imgs: &Tensor, perturb: &Perturb<'_>) -> Result<Var> {
        match self.mode {
            Mode::Finetune => {
                let tokens = self.encode(tape, imgs, &[], perturb, &mut Taps::default())?;
                self.finetune_head(tape, &tokens)
            }
            Mode::Linprobe => {
                let features = self.frozen_features(tape.device(), imgs, perturb)?;
                self.probe_head(tape, &features)
            }
        }
    }

    /// Training logits `[B, classes]`: with stochastic depth when fine-tuning;
    /// the probe updates its running statistics, hence `&mut self`.
    pub fn forward_train(&mut self, tape: &Tape, imgs: &Tensor, drop: &[DropPath<'_>]) -> Result<Var> {
        match self.mode {
            Mode::Finetune => {
                let tokens = self.encode(tape, imgs, drop, &Perturb::default(), &mut Taps::default())?;
                self.finetune_head(tape, &tokens)
            }
            Mode::Linprobe => {
                let features = self.frozen_features(tape.device(), imgs, &Perturb::default())?;
                self.probe_head_train(tape, &features)
            }
        }
    }

    /// The probe's encoder is frozen: it runs without recording anything.
    pub(crate) fn frozen_features(&self, dev: &Device, imgs: &Tensor, perturb: &Perturb<'_>) -> Result<Tensor> {
        let frozen = Tape::with_precision(dev, false, self.frozen_precision)?;
        let tokens = self.encode(&frozen, imgs, &[], perturb, &mut Taps::default())?;
        self.probe_features(&frozen, &tokens)
    }
}
