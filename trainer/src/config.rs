//! Run configuration: serde structs read from RON, shipped presets, command-line
//! overrides (`--set a.b=value`, `--shots`, `--loss-weights`) and validation.
//!
//! Unknown keys are errors everywhere, so a typo never silently falls back to
//! a default.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::Precision;
use serde::{Deserialize, Serialize};

/// The ViT encoder and MAE decoder shapes (timm/MAE names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub decoder_embed_dim: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    pub norm_pix_loss: bool,
}

impl ModelConfig {
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn decoder_mlp_hidden(&self) -> usize {
        (self.decoder_embed_dim as f64 * self.mlp_ratio) as usize
    }

    pub fn validate(&self) -> Result<()> {
        let m = self;
        if m.patch_size == 0 || m.img_size == 0 || !m.img_size.is_multiple_of(m.patch_size) {
            bail!("model.img_size {} must be a positive multiple of model.patch_size {}", m.img_size, m.patch_size);
        }
        if m.in_chans == 0 || m.depth == 0 || m.mlp_ratio <= 0.0 {
            bail!("model.in_chans, model.depth and model.mlp_ratio must be positive");
        }
        for (what, dim, heads) in [
            ("model.embed_dim", m.embed_dim, m.num_heads),
            ("model.decoder_embed_dim", m.decoder_embed_dim, m.decoder_num_heads),
        ] {
            if heads == 0 || dim == 0 || dim % heads != 0 {
                bail!("{what} {dim} must be a positive multiple of its head count {heads}");
            }
            if dim % 4 != 0 {
                bail!("{what} {dim} must be a multiple of 4 (2-D sin-cos position embeddings)");
            }
        }
        Ok(())
    }
}

/// One masking shot: drop `ratio` of the visible tokens just before encoder
/// block `layer` (layer 0 = MAE's input masking, layer == depth = after the
/// last block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shot {
    pub layer: usize,
    pub ratio: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weight: Option<f64>,
}

/// Writes shots the way `--shots` takes them: `0:0.75,10:0.1`.
pub fn shots_to_string(shots: &[Shot]) -> String {
    shots.iter().map(|s| format!("{}:{}", s.layer, s.ratio)).collect::<Vec<_>>().join(",")
}

/// Parses `--shots 0:0.75,10:0.1`.
pub fn parse_shots(text: &str) -> Result<Vec<Shot>> {
    text.split(',')
        .enumerate()
        .map(|(i, part)| {
            let (layer, ratio) = part
                .trim()
                .split_once(':')
                .ok_or_else(|| anyhow!("--shots: shot {i} {part:?} must be LAYER:RATIO, e.g. 0:0.75,10:0.1"))?;
            let layer =
                layer.trim().parse().map_err(|_| anyhow!("--shots: shot {i} layer {layer:?} is not a whole number"))?;
            let ratio =
                ratio.trim().parse().map_err(|_| anyhow!("--shots: shot {i} ratio {ratio:?} is not a number"))?;
            Ok(Shot { layer, ratio, loss_weight: None })
        })
        .collect()
}

/// Applies `--loss-weights 1,0.5` (one weight per shot).
pub fn set_loss_weights(shots: &mut [Shot], text: &str) -> Result<()> {
    let weights: Vec<f64> = text
        .split(',')
        .map(|w| w.trim().parse().map_err(|_| anyhow!("--loss-weights: {w:?} is not a number")))
        .collect::<Result<_>>()?;
    if weights.len() != shots.len() {
        bail!("--loss-weights gives {} weights for {} shots; give one per shot", weights.len(), shots.len());
    }
    for (s, w) in shots.iter_mut().zip(weights) {
        s.loss_weight = Some(w);
    }
    Ok(())
}

/// Checks the shots against the model; the error names the shot and the fix.
pub fn validate_shots(shots: &[Shot], model: &ModelConfig) -> Result<()> {
    let Some(first) = shots.first() else {
        bail!("at least one shot is needed, e.g. --shots 0:0.75 (plain MAE)");
    };
    if first.layer != 0 {
        bail!("shot 0 must be at layer 0 (the input masking), not layer {}", first.layer);
    }
    let mut visible = model.num_patches();
    let weighted = shots.iter().filter(|s| s.loss_weight.is_some()).count();
    if weighted != 0 && weighted != shots.len() {
        bail!("either every shot has a loss weight or none does ({weighted} of {} have one)", shots.len());
    }
    for (i, s) in shots.iter().enumerate() {
        if i > 0 && s.layer <= shots[i - 1].layer {
            bail!("shot {i} layer {} must be greater than shot {}'s layer {}", s.layer, i - 1, shots[i - 1].layer);
        }
        if s.layer > model.depth {
            bail!(
                "shot {i} layer {} must be ≤ depth {} (layer {} means after the last block)",
                s.layer,
                model.depth,
                model.depth
            );
        }
        if !(0.0..1.0).contains(&s.ratio) {
            bail!("shot {i} ratio {} must be in [0, 1)", s.ratio);
        }
        if let Some(w) = s.loss_weight
            && (!w.is_finite() || w < 0.0)
        {
            bail!("shot {i} loss weight {w} must be a finite number ≥ 0");
        }
        let keep = keep_count(visible, s.ratio);
        if keep == 0 {
            bail!("shot {i} keeps no token: floor({visible}·(1−{})) = 0; lower its ratio", s.ratio);
        }
        visible = keep;
    }
    Ok(())
}

/// Tokens kept out of `n` visible at ratio `r`: floor(n·(1−r)) in f64, as MAE.
pub fn keep_count(n: usize, ratio: f64) -> usize {
    (n as f64 * (1.0 - ratio)).floor() as usize
}

/// What to do with an image that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadImages {
    /// Stop with an error naming the file.
    Abort,
    /// Use the next readable image instead and count the skipped ones.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub batch: usize,
    /// Micro-batches whose gradients are summed per optimizer step.
    pub accum_iter: usize,
    pub epochs: f64,
    /// When set, the run stops here and the schedule is compressed to fit.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Base learning rate: lr = blr · batch · accum_iter / 256.
    pub blr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub seed: u64,
    /// f32, or f16 mixed precision (needs the adapter's SHADER_F16).
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `synthetic`, `fmnist:DIR`, `mnist:DIR`, `cifar10:DIR`, `cifar100:DIR` or `folder:DIR`.
    pub spec: String,
    pub bad_images: BadImages,
    /// Decoding/augmentation threads; 0 = one per core, less one.
    pub workers: usize,
    /// Images in the built-in synthetic training set.
    pub synthetic_size: usize,
    /// Evaluate on the first N test images only (0 = the whole test split).
    #[serde(default)]
    pub test_images: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub recon_every: usize,
    /// Images in each reconstruction grid.
    pub recon_images: usize,
}

/// Everything a pretraining run needs; written to `RUN/config.ron`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub model: ModelConfig,
    pub shots: Vec<Shot>,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub output: OutputConfig,
}

/// A copy of `config` with one dotted field changed (`train.blr=1e-3`). The
/// value is read as JSON when it parses (numbers, booleans, null) and as a
/// string otherwise; unknown keys are errors that list the valid ones.
pub fn set_field<T: Serialize + serde::de::DeserializeOwned>(config: &T, assignment: &str) -> Result<T> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| anyhow!("--set {assignment:?} must be KEY=VALUE, e.g. train.blr=1e-3"))?;
    let value: serde_json::Value =
        serde_json::from_str(value.trim()).unwrap_or_else(|_| serde_json::Value::String(value.trim().to_string()));
    let mut tree = serde_json::to_value(config)?;
    let mut node = &mut tree;
    let parts: Vec<&str> = key.trim().split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj =
            node.as_object_mut().ok_or_else(|| anyhow!("--set {key}: {:?} has no fields", parts[..i].join(".")))?;
        if !obj.contains_key(*part) {
            let known: Vec<&str> = obj.keys().map(String::as_str).collect();
            bail!("unknown config key {key:?}: {part:?} is not one of {}", known.join(", "));
        }
        node = obj.get_mut(*part).expect("checked above");
    }
    *node = value;
    serde_json::from_value(tree).map_err(|e| anyhow!("--set {key}: {e}"))
}

pub const PRESETS: &[(&str, &str)] = &[
    ("micro", include_str!("../presets/micro.ron")),
    ("tiny", include_str!("../presets/tiny.ron")),
    ("fmnist", include_str!("../presets/fmnist.ron")),
    ("vit-s16", include_str!("../presets/vit-s16.ron")),
    ("vit-b16", include_str!("../presets/vit-b16.ron")),
    ("vit-l16", include_str!("../presets/vit-l16.ron")),
];

impl PretrainConfig {
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            anyhow!("unknown preset {name:?}; presets: {}", names.join(", "))
        })?;
        Self::from_ron(text).with_context(|| format!("preset {name}"))
    }

    pub fn from_ron(text: &str) -> Result<Self> {
        ron::from_str(text).map_err(|e| anyhow!("{e}"))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::from_ron(&text).with_context(|| format!("config {}", path.display()))
    }

    pub fn to_ron(&self) -> String {
        ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default()).expect("configs always serialise")
    }

    /// Applies `key=value` with a dotted key (`train.blr=1e-3`, `model.depth=6`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        *self = set_field(&*self, assignment)?;
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        validate_shots(&self.shots, &self.model)?;
        let t = &self.train;
        if t.batch == 0 || t.accum_iter == 0 {
            bail!("train.batch and train.accum_iter must be at least 1");
        }
        if t.steps == Some(0) || t.epochs <= 0.0 {
            bail!("the run needs at least one step (train.epochs > 0, train.steps ≥ 1)");
        }
        if !(t.blr > 0.0 && t.warmup_epochs >= 0.0 && t.weight_decay >= 0.0) {
            bail!("train.blr must be > 0 and train.warmup_epochs, train.weight_decay ≥ 0");
        }
        let o = &self.output;
        if o.log_every == 0 || o.checkpoint_every == 0 || o.recon_every == 0 {
            bail!("output.log_every, output.checkpoint_every and output.recon_every must be at least 1");
        }
        Ok(())
    }

    /// Peak learning rate (MAE's linear scaling rule).
    pub fn lr(&self) -> f64 {
        self.train.blr * (self.train.batch * self.train.accum_iter) as f64 / 256.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_validates_as_plain_mae() {
        for (name, _) in PRESETS {
            let c = PretrainConfig::preset(name).unwrap();
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(shots_to_string(&c.shots), "0:0.75", "{name} defaults to L(0; 0.75)");
            let back = PretrainConfig::from_ron(&c.to_ron()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn set_overrides_fields_and_rejects_unknown_keys() {
        let mut c = PretrainConfig::preset("tiny").unwrap();
        c.set("train.blr=0.002").unwrap();
        c.set("model.depth=6").unwrap();
        c.set("data.spec=fmnist:/tmp/x").unwrap();
        assert_eq!((c.train.blr, c.model.depth, c.data.spec.as_str()), (0.002, 6, "fmnist:/tmp/x"));
        let err = c.set("model.dept=6").unwrap_err().to_string();
        assert!(err.contains("model.dept") && err.contains("depth"), "{err}");
        let err = c.set("model.depth=six").unwrap_err().to_string();
        assert!(err.contains("model.depth"), "{err}");
        let err =
            PretrainConfig::from_ron(&c.to_ron().replace("norm_pix_loss", "norm_pixel_loss")).unwrap_err().to_string();
        assert!(err.contains("norm_pixel_loss"), "{err}");
    }

    #[test]
    fn shots_parse_and_invalid_shots_name_the_shot() {
        let model = PretrainConfig::preset("tiny").unwrap().model;
        let mut shots = parse_shots("0:0.75,10:0.1").unwrap();
        validate_shots(&shots, &model).unwrap();
        set_loss_weights(&mut shots, "0.75,0.15").unwrap();
        assert_eq!(shots[1].loss_weight, Some(0.15));
        assert!(set_loss_weights(&mut shots, "1").unwrap_err().to_string().contains("2 shots"));
        let cases = [
            ("1:0.75", "shot 0 must be at layer 0"),
            ("0:0.75,3:0.1,3:0.1", "shot 2 layer 3 must be greater"),
            ("0:0.75,13:0.1", "shot 1 layer 13 must be ≤ depth 12"),
            ("0:1.0", "shot 0 ratio 1 must be in [0, 1)"),
            ("0:0.75,2:0.95", "shot 1 keeps no token"),
        ];
        for (text, want) in cases {
            let err = validate_shots(&parse_shots(text).unwrap(), &model).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(parse_shots("0-0.75").unwrap_err().to_string().contains("LAYER:RATIO"));
        assert_eq!(keep_count(16, 0.1), 14);
        assert_eq!(keep_count(196, 0.75), 49);
    }
}
