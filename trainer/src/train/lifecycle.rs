//! A run directory's lifecycle, the same for every task (pretraining, linear
//! probing, fine-tuning): a fresh directory that never overwrites a run, or,
//! with `--resume`, the run's own directory under a config that matches the
//! saved one wherever it changes the math, continued from its newest checkpoint.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

use super::checkpoint;
use super::runner::RunFlags;
use crate::distributed::world;
use crate::safetensors_io::write_atomic;

/// Config fields that may differ on resume: logging, checkpoint and
/// reconstruction cadence and loader threads do not change the math, and a
/// run may go on in the other precision (checkpoints are f32 either way;
/// the steps after the switch round differently, so such a run is not
/// bit-identical to one that never switched).
const MAY_DIFFER: [&str; 3] = ["output", "data.workers", "train.precision"];

/// Prepares `flags.out` for a run of `config` (`text` is its RON, `parse`
/// reads the saved one back) and returns the step the run starts from: 0 in
/// a fresh directory, the newest checkpoint's step when resuming. Over
/// several ranks rank 0 does this and tells the others the step.
pub fn prepare<C: Serialize>(
    flags: &RunFlags,
    config: &C,
    text: &str,
    parse: impl FnOnce(&str) -> Result<C>,
) -> Result<u64> {
    let w = world();
    let start = if w.is_root() { prepare_dir(flags, config, text, parse)? } else { 0 };
    if w.size() == 1 {
        return Ok(start);
    }
    let told: [u8; 8] =
        w.broadcast(start.to_le_bytes().to_vec())?.try_into().map_err(|_| anyhow!("rank 0 sent no step"))?;
    Ok(u64::from_le_bytes(told))
}

fn prepare_dir<C: Serialize>(
    flags: &RunFlags,
    config: &C,
    text: &str,
    parse: impl FnOnce(&str) -> Result<C>,
) -> Result<u64> {
    let out = &flags.out;
    let config_path = out.join("config.ron");
    let existing = checkpoint::latest(out)?;
    let start = match (flags.resume, existing) {
        (true, None) => bail!(
            "--resume: {} holds no checkpoint to resume from; drop --resume to start a new run there",
            out.display()
        ),
        (true, Some((step, _))) => {
            let saved =
                std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
            check_resumable(&parse(&saved)?, config, &config_path)?;
            step
        }
        (false, Some(_)) => {
            bail!("{} already holds a run; pass --resume to continue it or choose another --out", out.display())
        }
        (false, None) => 0,
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_atomic(&config_path, text.as_bytes())?;
    Ok(start)
}

/// Refuses to resume the run whose config is `saved` with `now`, naming
/// every field that differs.
fn check_resumable<C: Serialize>(saved: &C, now: &C, saved_path: &Path) -> Result<()> {
    let mut diffs = Vec::new();
    differences(&serde_json::to_value(saved)?, &serde_json::to_value(now)?, "", &mut diffs);
    if !diffs.is_empty() {
        bail!(
            "--resume with a different config than the run's ({}: {}); resume with the run's settings or start a new --out",
            saved_path.display(),
            diffs.join("; ")
        );
    }
    Ok(())
}

/// Appends `field: saved in the run, now now` for every field under `path`
/// that differs, descending into sections and skipping [`MAY_DIFFER`].
fn differences(saved: &Value, now: &Value, path: &str, diffs: &mut Vec<String>) {
    if MAY_DIFFER.contains(&path) {
        return;
    }
    match (saved, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                differences(a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), &field, diffs);
            }
        }
        _ if saved != now => diffs.push(format!("{path}: {saved} in the run, {now} now")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{ClassifyConfig, Mode};
    use crate::config::PretrainConfig;

    fn diffs<C: Serialize>(saved: &C, now: &C) -> Vec<String> {
        let mut d = Vec::new();
        differences(&serde_json::to_value(saved).unwrap(), &serde_json::to_value(now).unwrap(), "", &mut d);
        d
    }

    #[test]
    fn resume_names_the_fields_that_change_the_math_and_only_those() {
        let saved = PretrainConfig::preset("micro").unwrap();
        let mut now = saved.clone();
        now.output.log_every += 1;
        now.data.workers += 1;
        assert!(diffs(&saved, &now).is_empty(), "cadence and threads may change");
        now.model.depth += 1;
        now.train.seed = 7;
        assert_eq!(
            diffs(&saved, &now),
            [
                format!("model.depth: {} in the run, {} now", saved.model.depth, now.model.depth),
                "train.seed: 0 in the run, 7 now".to_string()
            ]
        );
        let saved = ClassifyConfig::recipe(Mode::Linprobe, saved.model, 10, String::new(), "synthetic");
        let mut now = saved.clone();
        now.output.checkpoint_every = 1;
        assert!(diffs(&saved, &now).is_empty());
        now.classes = 5;
        assert_eq!(diffs(&saved, &now), ["classes: 10 in the run, 5 now"]);
    }
}
