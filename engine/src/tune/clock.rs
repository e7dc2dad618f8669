//! Timing the candidates of one shape class on the tuner's own stream.
//!
//! Each candidate runs once untimed (pipelines compile when first recorded,
//! and lavapipe compiles its machine code when first run: 0.4–3.5 s per
//! pipeline), then up to `REPS` times timed, and scores its fastest run: on a
//! shared machine noise only adds time. GPU timestamp queries time the
//! dispatches where the adapter has them, else the wall clock runs from
//! submit to idle. The work is bounded: the heuristic's choice goes first, a
//! candidate whose first timed run is far slower than the best so far gets
//! no second one, and no run starts past the deadline (what is left of the
//! device's tuning budget).

use std::time::Instant;

use super::{CandidateTime, Problem, Variant};
use crate::device::Device;
use crate::error::Result;

/// Timed runs of a candidate that keeps up with the best.
const REPS: u32 = 2;
/// A first timed run this many times slower than the best ends the candidate's runs.
const DROP_FACTOR: f64 = 1.5;

/// Times `candidates` on `s` (a stream of the tuner's own); a candidate that
/// fails to run (a dispatch beyond this adapter's limits) is left out.
/// Returns the times and whether every candidate was timed before `deadline`.
pub(super) fn time_candidates<V: Variant>(
    s: &Device,
    class: &str,
    candidates: &[V],
    problem: &mut impl Problem<V>,
    deadline: Option<Instant>,
) -> Result<(Vec<CandidateTime>, bool)> {
    let timestamps = s.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    if timestamps {
        s.set_profiling(true)?;
    }
    let late = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut best = f64::INFINITY;
    let mut times = Vec::new();
    for &v in candidates {
        s.pin(v);
        let mut once = || run_once(s, timestamps, || problem.run(s, v));
        let mut fastest = f64::INFINITY;
        let mut runs = 0;
        // The warm-up, then the timed runs.
        for i in 0..=REPS {
            if late() {
                return Ok((times, false));
            }
            match once() {
                Ok(ms) if i > 0 => {
                    fastest = fastest.min(ms);
                    runs += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("autotune: {} {class}: {} cannot run: {e}", V::DECISION, v.name());
                    break;
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
    }
    Ok((times, true))
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
