//! Checkpoints that survive crashes.
//!
//! `RUN/checkpoints/step-NNNNNNNN/` holds `model.safetensors` (timm names,
//! loadable by PyTorch/timm as-is) and `optimizer.safetensors` (optimizer
//! state). A step directory is written under a temporary name and renamed into
//! place when complete, so the newest `step-*` directory is always whole.
//! `RUN/checkpoint.safetensors` is the newest weights, replaced atomically:
//! the stable path other commands take. Older step directories are pruned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::{Device, Precision};

use crate::classify::ClassifyConfig;
use crate::config::{ModelConfig, PretrainConfig};
use crate::model::{Mae, ParamStore, param_specs};
use crate::safetensors_io::{self, F32Map, HostTensor, NamedF32, write_atomic};

pub const FORMAT: &str = "cmae-checkpoint-v1";
/// Step directories kept besides the newest.
const KEEP_OLDER: usize = 1;

/// Which training wrote a checkpoint, and its config (RON of that task's config type).
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub task: String,
    pub config: String,
    /// `f32` or `f16`: what the run trained in (its tensors are f32 either way).
    pub precision: Precision,
}

fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Writes weights and optimizer state for `step`; returns the stable weights path.
pub fn save(
    dev: &Device,
    run: &Path,
    step: u64,
    params: &ParamStore,
    optimizer: &[NamedF32],
    meta: &Meta,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = root.join(format!(".tmp-step-{step:08}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    let weights = dev.block_on(weights_bytes(dev, params, step, meta))?;
    write_atomic(&tmp.join("model.safetensors"), &weights)?;
    safetensors_io::write_f32(&tmp.join("optimizer.safetensors"), optimizer, metadata(meta, step, "optimizer"))?;
    let dir = step_dir(run, step);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move the checkpoint into {}", dir.display()))?;

    // The stable path: a copy of the newest weights, swapped in atomically.
    let stable = run.join("checkpoint.safetensors");
    write_atomic(&stable, &std::fs::read(dir.join("model.safetensors"))?)?;

    for old in step_dirs(run)?.into_iter().rev().skip(1 + KEEP_OLDER) {
        std::fs::remove_dir_all(&old.1).with_context(|| format!("cannot prune {}", old.1.display()))?;
    }
    Ok(stable)
}

/// What every file of a checkpoint says of itself.
fn metadata(meta: &Meta, step: u64, role: &str) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("task".to_string(), meta.task.clone()),
        ("role".to_string(), role.to_string()),
        ("step".to_string(), step.to_string()),
        ("config".to_string(), meta.config.clone()),
        ("precision".to_string(), meta.precision.name().to_string()),
    ])
}

/// The weights file of step `step` (`model.safetensors`, and the run's
/// `checkpoint.safetensors`), as bytes: async, so a page can offer it as a
/// download.
pub async fn weights_bytes(dev: &Device, params: &ParamStore, step: u64, meta: &Meta) -> Result<Vec<u8>> {
    safetensors_io::f32_bytes(&params.read_to_host(dev).await?, metadata(meta, step, "weights"))
}

/// Complete step directories, oldest first.
fn step_dirs(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The newest complete checkpoint of a run: `(step, directory)`.
pub fn latest(run: &Path) -> Result<Option<(u64, PathBuf)>> {
    Ok(step_dirs(run)?.pop())
}

/// All f32 tensors of a weights or optimizer file.
pub fn f32_tensors(file: safetensors_io::SafetensorsFile, path: &Path) -> Result<F32Map> {
    file.tensors
        .into_iter()
        .map(|(name, t)| match t {
            HostTensor::F32(s, v) => Ok((name, (s, v))),
            _ => bail!("{}: tensor {name} is not f32", path.display()),
        })
        .collect()
}

/// The newest step's weights and optimizer state, checked to belong together.
pub fn read_latest(run: &Path) -> Result<(u64, F32Map, F32Map)> {
    let (step, dir) = latest(run)?.ok_or_else(|| anyhow!("{} has no checkpoint to resume from", run.display()))?;
    let mut maps = Vec::new();
    for name in ["model.safetensors", "optimizer.safetensors"] {
        let path = dir.join(name);
        let file = safetensors_io::read(&path)?;
        if file.metadata.get("step").and_then(|s| s.parse::<u64>().ok()) != Some(step) {
            bail!("{} is not from step {step}", path.display());
        }
        maps.push(f32_tensors(file, &path)?);
    }
    let opt = maps.pop().expect("two files");
    Ok((step, maps.pop().expect("two files"), opt))
}

/// A pretrained model read from disk.
pub struct Loaded {
    pub mae: Mae,
    pub config: PretrainConfig,
    pub step: Option<u64>,
}

/// Guesses the MAE shapes of a file without cmae metadata (e.g. official MAE
/// weights converted by tools/pth_to_safetensors.py) from its tensor shapes.
/// Heads are not stored anywhere, so they follow the ViT convention of 64
/// dimensions per head (ViT-S/B/L) unless `heads` says otherwise.
pub fn infer_model_config(t: &F32Map, heads: Option<usize>) -> Result<ModelConfig> {
    let shape =
        |n: &str| t.get(n).map(|(s, _)| s.clone()).ok_or_else(|| anyhow!("no tensor {n}: not a ViT/MAE checkpoint"));
    let pw = shape("patch_embed.proj.weight")?;
    let [dim, chans, p, _] = pw[..] else { bail!("patch_embed.proj.weight has shape {pw:?}, expected [D, C, p, p]") };
    let pos = shape("pos_embed")?;
    let [1, tokens, _] = pos[..] else { bail!("pos_embed has shape {pos:?}, expected [1, 1 + L, D]") };
    let grid = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
    let count = |prefix: &str| (0..).take_while(|i| t.contains_key(&format!("{prefix}{i}.norm1.weight"))).count();
    let fc1 = shape("blocks.0.mlp.fc1.weight")?;
    let [hidden, _] = fc1[..] else { bail!("blocks.0.mlp.fc1.weight has shape {fc1:?}, expected [hidden, D]") };
    let (dd, ddepth) = match t.get("decoder_embed.weight") {
        Some((s, _)) => match s[..] {
            [dd, _] => (dd, count("decoder_blocks.")),
            _ => bail!("decoder_embed.weight has shape {s:?}, expected [Dd, D]"),
        },
        None => (64, 0),
    };
    Ok(ModelConfig {
        img_size: grid * p,
        patch_size: p,
        in_chans: chans,
        embed_dim: dim,
        depth: count("blocks."),
        num_heads: heads.unwrap_or((dim / 64).max(1)),
        mlp_ratio: hidden as f64 / dim as f64,
        decoder_embed_dim: dd,
        decoder_depth: ddepth,
        decoder_num_heads: (dd / 32).max(1),
        norm_pix_loss: false,
    })
}

/// A weights file read once: what wrote it and its tensors. Every loader
/// (pretrained MAE, classifier, bare encoder) starts from one of these, so a
/// checkpoint is read from disk once however it is used.
pub struct CheckpointFile {
    pub path: PathBuf,
    /// The task that wrote it (`pretrain`, `linprobe`, `finetune`); None for foreign weights.
    pub task: Option<String>,
    pub step: Option<u64>,
    /// The RON config of that task, when cmae wrote the file.
    pub config: Option<String>,
    pub tensors: F32Map,
}

impl CheckpointFile {
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_file(safetensors_io::read(path)?, path)
    }

    /// A checkpoint held in memory (a page's download, picker or drop);
    /// `name` stands for its path in messages.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self> {
        Self::from_file(safetensors_io::parse(bytes, name)?, Path::new(name))
    }

    fn from_file(mut file: safetensors_io::SafetensorsFile, path: &Path) -> Result<Self> {
        let mut meta = |key: &str| file.metadata.remove(key);
        let (task, step, config) = (meta("task"), meta("step").and_then(|s| s.parse().ok()), meta("config"));
        Ok(Self { path: path.to_path_buf(), task, step, config, tensors: f32_tensors(file, path)? })
    }

    fn describe_config_error(&self) -> String {
        format!("{}: config metadata", self.path.display())
    }

    /// The ViT shape the file holds: from the config of the task that wrote
    /// it, else guessed from the tensor shapes.
    pub fn model_config(&self) -> Result<ModelConfig> {
        match (self.task.as_deref(), self.config.as_deref()) {
            (Some("pretrain"), Some(text)) => {
                Ok(PretrainConfig::from_ron(text).with_context(|| self.describe_config_error())?.model)
            }
            (Some(_), Some(text)) => {
                Ok(ClassifyConfig::from_ron(text).with_context(|| self.describe_config_error())?.model)
            }
            _ => infer_model_config(&self.tensors, None),
        }
    }

    /// The pretrained MAE in the file. The config comes from the file's
    /// metadata, or from `config` when given (it must then match the tensors).
    pub fn into_mae(self, dev: &Device, config: Option<&PretrainConfig>) -> Result<Loaded> {
        let path = self.path.display();
        let from_file = match (self.task.as_deref(), self.config.as_deref()) {
            (Some("pretrain"), Some(text)) => {
                Some(PretrainConfig::from_ron(text).with_context(|| self.describe_config_error())?)
            }
            (Some(task), _) => bail!("{path} is a {task} checkpoint, not a pretrained MAE"),
            _ => None,
        };
        let cfg = config
            .cloned()
            .or(from_file)
            .ok_or_else(|| anyhow!("{path} has no cmae config metadata; it was not written by cmae pretrain"))?;
        let specs = param_specs(&cfg.model);
        let (params, extra) = ParamStore::load(dev, &specs, self.tensors).with_context(|| format!("loading {path}"))?;
        if !extra.is_empty() {
            log::warn!("{path}: ignoring tensors this model does not use: {}", extra.join(", "));
        }
        Ok(Loaded { mae: Mae::with_params(&cfg.model, params), config: cfg, step: self.step })
    }
}

/// Reads the config a cmae checkpoint was trained with (any task).
pub fn model_config_of(path: &Path) -> Result<ModelConfig> {
    CheckpointFile::read(path)?.model_config()
}

/// Loads a pretrained MAE (see [`CheckpointFile::into_mae`]).
pub fn load_model(dev: &Device, path: &Path, config: Option<&PretrainConfig>) -> Result<Loaded> {
    CheckpointFile::read(path)?.into_mae(dev, config)
}
