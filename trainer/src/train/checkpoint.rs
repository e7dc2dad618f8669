//! Checkpoints that survive crashes.
//!
//! `RUN/checkpoints/step-NNNNNNNN/` holds `model.safetensors` (timm names,
//! loadable by PyTorch/timm as-is) and `optimizer.safetensors` (AdamW state).
//! A step directory is written under a temporary name and renamed into place
//! when complete, so the newest `step-*` directory is always whole.
//! `RUN/checkpoint.safetensors` is the newest weights, replaced atomically:
//! the stable path other commands take. Older step directories are pruned.

use crate::safetensors_io::F32Map;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::Device;

use super::optimizer::AdamW;
use crate::config::PretrainConfig;
use crate::model::{Mae, ParamStore, param_specs};
use crate::safetensors_io::{self, HostTensor, write_atomic};

pub const FORMAT: &str = "cmae-checkpoint-v1";
/// Step directories kept besides the newest.
const KEEP_OLDER: usize = 1;

fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Writes weights and optimizer state for `step`; returns the weights path.
pub fn save(dev: &Device, run: &Path, step: u64, mae: &Mae, opt: &AdamW, cfg: &PretrainConfig) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = root.join(format!(".tmp-step-{step:08}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;
    let meta = |kind: &str| {
        HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("kind".to_string(), kind.to_string()),
            ("step".to_string(), step.to_string()),
            ("config".to_string(), cfg.to_ron()),
        ])
    };
    let weights = mae.params.to_host(dev)?;
    safetensors_io::write_f32(&tmp.join("model.safetensors"), &weights, meta("model"))?;
    safetensors_io::write_f32(
        &tmp.join("optimizer.safetensors"),
        &opt.state_to_host(dev, &mae.params)?,
        meta("adamw"),
    )?;
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

/// A checkpoint read from disk.
pub struct Loaded {
    pub mae: Mae,
    pub config: Option<PretrainConfig>,
    pub step: Option<u64>,
}

fn f32_tensors(file: safetensors_io::SafetensorsFile, path: &Path) -> Result<F32Map> {
    file.tensors
        .into_iter()
        .map(|(name, t)| match t {
            HostTensor::F32(s, v) => Ok((name, (s, v))),
            _ => bail!("{}: tensor {name} is not f32", path.display()),
        })
        .collect()
}

/// Loads weights. The model config comes from the file's metadata, or from
/// `config` when given (it must then match the file's tensors).
pub fn load_model(dev: &Device, path: &Path, config: Option<&PretrainConfig>) -> Result<Loaded> {
    let file = safetensors_io::read(path)?;
    let from_file = match file.metadata.get("config") {
        Some(text) => {
            Some(PretrainConfig::from_ron(text).with_context(|| format!("{}: config metadata", path.display()))?)
        }
        None => None,
    };
    let step = file.metadata.get("step").and_then(|s| s.parse().ok());
    let cfg = config
        .cloned()
        .or(from_file)
        .ok_or_else(|| anyhow!("{} has no cmae config metadata; it was not written by cmae", path.display()))?;
    let specs = param_specs(&cfg.model);
    let (params, extra) = ParamStore::load(dev, &specs, f32_tensors(file, path)?)
        .with_context(|| format!("loading {}", path.display()))?;
    if !extra.is_empty() {
        log::warn!("{}: ignoring tensors this model does not use: {}", path.display(), extra.join(", "));
    }
    let mae = Mae::with_params(dev, &cfg.model, params)?;
    Ok(Loaded { mae, config: Some(cfg), step })
}

/// Restores a run's model and optimizer from its newest checkpoint.
pub fn resume(dev: &Device, run: &Path, cfg: &PretrainConfig, opt: &mut AdamW) -> Result<(Mae, u64)> {
    let (step, dir) = latest(run)?.ok_or_else(|| anyhow!("{} has no checkpoint to resume from", run.display()))?;
    let loaded = load_model(dev, &dir.join("model.safetensors"), Some(cfg))?;
    let opt_path = dir.join("optimizer.safetensors");
    let file = safetensors_io::read(&opt_path)?;
    if file.metadata.get("step").and_then(|s| s.parse::<u64>().ok()) != Some(step) {
        bail!("{} is not from step {step}", opt_path.display());
    }
    opt.load_state(dev, step, f32_tensors(file, &opt_path)?)?;
    Ok((loaded.mae, step))
}
