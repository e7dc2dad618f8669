//! Timing the candidates of one shape class on the tuner's own stream.
//!
//! Each candidate runs once untimed (pipelines compile when first recorded,
//! and lavapipe compiles their machine code when first run: 0.4–3.5 s per
//! pipeline), then up to `REPS` times timed, and scores its fastest run: on a
//! shared machine noise only adds time. The timed runs go round-robin over
//! the candidates, so a load that comes and goes hits them alike. GPU
//! timestamp queries time the dispatches where the adapter has them, else
//! the wall clock runs from submit to idle. The work is bounded: a candidate
//! whose first timed run is far slower than the best gets no second one, and
//! once the budget left is spent no candidate starts and no second round
//! runs (a candidate that warmed up, i.e. compiled, still gets its first
//! timed run). The heuristic's warm-up in a new class is not charged to the
//! budget: compiling its pipelines is work the step that met the class does
//! anyway.

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
    best: f64,
    heuristic_first: bool,
    budget: Option<Duration>,
) -> Result<Timing> {
    let timestamps = s.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    if timestamps {
        s.set_profiling(true)?;
    }
    let started = Instant::now();
    let mut free = Duration::ZERO;
    let spent = |free: Duration| budget.is_some_and(|b| started.elapsed().saturating_sub(free) >= b);
    let mut run = |v: V| {
        s.pin(v);
        run_once(s, timestamps, || problem.run(s, v))
    };
    let mut times = Vec::new();
    // Warm-ups; `live` holds the index in `times` of each candidate still running.
    let mut live = Vec::new();
    for (k, &v) in candidates.iter().enumerate() {
        if spent(free) {
            break;
        }
        let warm_up = run(v);
        if heuristic_first && k == 0 {
            free = started.elapsed();
        }
        if let Err(e) = warm_up {
            log::debug!("autotune: {} {class}: {} cannot run: {e}", V::DECISION, v.name());
        } else {
            live.push((v, times.len()));
        }
        times.push(CandidateTime { name: v.name().to_string(), ms: f64::INFINITY, runs: 0 });
    }
    for round in 0..REPS {
        if round > 0 && spent(free) {
            break;
        }
        for &(v, i) in &live {
            match run(v) {
                Ok(ms) => {
                    times[i].ms = times[i].ms.min(ms);
                    times[i].runs += 1;
                }
                Err(e) => log::debug!("autotune: {} {class}: {} failed: {e}", V::DECISION, v.name()),
            }
        }
        let best = times.iter().map(|c| c.ms).fold(best, f64::min);
        live.retain(|&(_, i)| times[i].runs > 0 && times[i].ms <= DROP_FACTOR * best);
    }
    for c in &mut times {
        if c.runs == 0 {
            c.ms = 0.0;
        }
    }
    Ok(Timing { times, charged: started.elapsed().saturating_sub(free) })
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
