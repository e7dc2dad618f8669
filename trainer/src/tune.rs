//! `cmae tune`: fills the autotune cache ahead of time with every shape class
//! one training step of a preset meets, and prints what each variant took.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use cmae_engine::{CandidateTime, Device, Precision, TuneEntry};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bench::pretrain::{setup, step};
use crate::train::precision::Amp;

#[derive(Debug, Clone)]
pub struct Options {
    pub preset: String,
    pub batch: Option<usize>,
    /// Time every class again, even those in the cache.
    pub retune: bool,
    /// The step's precision (f16 operands are classes of their own).
    pub precision: Precision,
}

/// Runs one training step (forward, backward, AdamW) of the preset with its
/// default masking; returns the tune entries of the classes it met.
pub fn run(dev: &Device, opts: &Options) -> Result<Vec<TuneEntry>> {
    if !dev.autotune() {
        bail!("autotuning is off (CMAE_AUTOTUNE=off); unset CMAE_AUTOTUNE or set it to on to tune");
    }
    let (mut mae, mut opt, imgs, _) = setup(dev, &opts.preset, opts.batch)?;
    let mut amp = Amp::new(dev, opts.precision, true)?;
    let shots = crate::config::PretrainConfig::preset(&opts.preset)?.shots;
    if opts.retune {
        dev.retune();
    }
    step(dev, (&mut mae, &mut opt, &mut amp), &imgs, &shots, &mut ChaCha8Rng::seed_from_u64(0), &mut None)?;
    dev.sync()?;
    Ok(dev.tune_entries().into_iter().filter(|e| e.met).collect())
}

/// The table `cmae tune` prints: one line per class, every candidate's ms.
pub fn table(dev: &Device, entries: &[TuneEntry]) -> String {
    let timer = if dev.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        "GPU timestamps"
    } else {
        "wall clock (no timestamp queries)"
    };
    let mut out = format!(
        "{:<10} {:<24} {:<22} {:<40} {:<9} source\n",
        "decision", "shape class", "timed as", "ms per variant (fastest run)", "winner"
    );
    if entries.is_empty() {
        out.push_str(
            "(no shape class with variants to choose from: CMAE_MATMUL and CMAE_ATTENTION force every choice)\n",
        );
    }
    for e in entries {
        let time = |c: &CandidateTime| match c.runs {
            0 => format!("{} failed", c.name),
            _ => format!("{} {:.3}", c.name, c.ms),
        };
        let times: Vec<String> = e.candidates.iter().map(time).collect();
        let source = if e.timed_here { "timed" } else { "cache" };
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<22} {:<40} {:<9} {source}",
            e.decision,
            e.class,
            e.shape,
            times.join("  "),
            e.winner
        );
    }
    let _ = writeln!(
        out,
        "ms: fastest of up to two runs after a warm-up, by {timer}; one run when it was far slower than the best"
    );
    let path = match dev.tune_cache_path() {
        None => "none (no cache directory: set CMAE_CACHE_DIR)".to_string(),
        Some(p) if !p.exists() => format!("{} could not be written (see the warning above)", p.display()),
        Some(p) => format!("{} ({} entries for this adapter)", p.display(), dev.tune_entries().len()),
    };
    let _ = write!(out, "cache: {path}");
    out
}
