//! Timing the candidates of one shape class on the tuner's own stream.
//!
//! Each candidate runs once untimed (pipelines compile when first recorded,
//! and lavapipe compiles its machine code when first run: 0.4–3.5 s per
//! pipeline), then up to `REPS` times timed, and scores its fastest run: on a
//! shared machine noise only adds time. GPU timestamp queries time the
//! dispatches where the adapter has them, else the wall clock runs from
//! submit to idle. The work is bounded: the heuristic's choice goes first, a
//! candidate whose first timed run is far slower than the best so far gets
//! no second one, and no candidate starts (nor takes its second timed run)
//! once the budget left is spent. The heuristic's warm-up in a new class is
//! not charged to the budget: compiling its pipelines is work the step that
//! met the class does anyway.

use std::time::{Duration, Instant};

use super::{CandidateTime, Problem, Variant};
use crate::device::Device;
use crate::error::Result;

/// Timed runs of a candidate that keeps up with the best.
const REPS: u32 = 2;
/// A first timed run this many times slower than the best ends the candidate's runs.
const DROP_FACTOR: f64 = 1.5;

/// What timing a class found.
pub(super) struct Timing {
    /// The candidates that ran, or failed to (with no runs), before the budget ran out.
    pub times: Vec<CandidateTime>,
    /// Wall time to charge to the budget.
    pub charged: Duration,
}

/// Times `candidates` on `s`, a stream of the tuner's own, within `budget`
/// (`None`: no limit). `best` is the fastest time the class already has;
/// with `heuristic_first`, `candidates[0]`'s warm-up is not charged.
pub(super) fn time_candidates<V: Variant>(
    s: &Device,
    class: &str,
    candidates: &[V],
    problem: &mut impl Problem<V>,
    mut best: f64,
    heuristic_first: bool,
    budget: Option<Duration>,
) -> Result<Timing> {
    let timestamps = s.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    if timestamps {
        s.set_profiling(true)?;
    }
    let started = Instant::now();
    let mut free = Duration::ZERO;
    let charged = |free: Duration| started.elapsed().saturating_sub(free);
    let mut times = Vec::new();
    let mut spent = false;
    'candidates: for (k, &v) in candidates.iter().enumerate() {
        s.pin(v);
        let mut once = || run_once(s, timestamps, || problem.run(s, v));
        let mut fastest = f64::INFINITY;
        let mut runs = 0;
        // The warm-up, then the timed runs; a candidate that warmed up
        // (compiled) always gets its first timed run, or the compile is wasted.
        for i in 0..=REPS {
            spent = budget.is_some_and(|b| charged(free) >= b);
            if spent && i != 1 {
                break;
            }
            let result = once();
            if heuristic_first && k == 0 && i == 0 {
                free = started.elapsed();
            }
            match result {
                Ok(ms) if i > 0 => {
                    fastest = fastest.min(ms);
                    runs += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("autotune: {} {class}: {} cannot run: {e}", V::DECISION, v.name());
                    times.push(CandidateTime { name: v.name().to_string(), ms: 0.0, runs: 0 });
                    continue 'candidates;
                }
            }
            if runs == 1 && fastest > DROP_FACTOR * best {
                break;
            }
        }
        if runs > 0 {
            best = best.min(fastest);
            times.push(CandidateTime { name: v.name().to_string(), ms: fastest, runs });
        }
        if spent {
            break;
        }
    }
    Ok(Timing { times, charged: charged(free) })
}

/// Records one run with `record`, submits it and returns its time in ms.
fn run_once(s: &Device, timestamps: bool, record: impl FnOnce() -> Result<()>) -> Result<f64> {
    if timestamps {
        record()?;
        return Ok(s.take_profile()?.iter().map(|k| k.total_ms).sum());
    }
    // Nothing else may still run when the clock starts.
    s.sync()?;
    record()?;
    let start = Instant::now();
    s.sync()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}
