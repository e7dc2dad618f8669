//! `metrics.jsonl`: one JSON object per logged step, appended and flushed
//! as the run goes, so a viewer can follow it live.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimizer steps completed.
    pub step: u64,
    pub epoch: f64,
    pub loss: f64,
    /// Mean patch loss of each shot's dropped patches (null: the shot drops none).
    pub loss_per_shot: Vec<Option<f64>>,
    pub lr: f64,
    pub images_per_s: f64,
    /// Resident host memory (null where the OS does not report it).
    pub host_rss_mb: Option<f64>,
    /// GPU buffer-pool bytes: handed out, and waiting for reuse.
    pub gpu_in_use_mb: f64,
    pub gpu_pooled_mb: f64,
    pub skipped_images: u64,
    pub elapsed_s: f64,
    /// The dynamic loss scale after the step: null in an f32 run, which scales nothing.
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// Optimizer steps skipped so far for an overflowing (non-finite) gradient.
    #[serde(default)]
    pub skipped_steps: u64,
    /// Data-parallel ranks that computed the step (1 without MPI).
    #[serde(default = "one_rank")]
    pub ranks: u64,
    /// Time the step's gradient sums over ranks took (null on one rank).
    #[serde(default)]
    pub allreduce_ms: Option<f64>,
    /// The share of `allreduce_ms` hidden behind the backward pass.
    #[serde(default)]
    pub allreduce_overlap: Option<f64>,
    /// Gradient bytes each rank sent into the sums.
    #[serde(default)]
    pub allreduce_bytes: Option<u64>,
}

fn one_rank() -> u64 {
    1
}

pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    /// Opens `RUN/metrics.jsonl`, dropping lines past `resume_step` (steps a
    /// crashed run logged after its last checkpoint; they are about to be redone).
    pub fn open(run: &Path, resume_step: u64) -> Result<Self> {
        let path = run.join("metrics.jsonl");
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.step <= resume_step))
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            crate::safetensors_io::write_atomic(&path, body.as_bytes())?;
        }
        Ok(Self { path })
    }

    pub fn append(&self, line: &MetricsLine) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(line)?)?;
        f.flush()?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Vec<MetricsLine>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
            .collect()
    }
}

/// Resident set size of this process in MiB (Linux), None elsewhere.
pub fn host_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
