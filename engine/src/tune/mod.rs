//! Autotuning: kernels with variants are timed on the running adapter the
//! first time a shape class is seen, and the winner is cached on disk per
//! adapter, driver and engine version.
//!
//! A *decision* is a kind of choice (the matmul family, the attention path)
//! made per *shape class*, a bounded key (extents bucketed to powers of two)
//! so a run meets a handful of classes, not one per shape. The kernel wrapper
//! names the candidates valid for the call at hand, its built-in heuristic's
//! choice first; the tuner returns the cached winner or times the candidates
//! on a representative problem (the first real shape of the class) on a
//! stream of its own, so the caller's half-recorded batch is untouched. With
//! `CMAE_AUTOTUNE=off` the heuristic's choice is the only one.
//!
//! Timing on first sight delays the first step, so a device has a budget of
//! wall time for what tuning adds to it ([`TuneConfig::budget`]). On a GPU
//! the budget is rarely touched; on lavapipe, which compiles each pipeline's
//! machine code on its first run (0.4–3.5 s each), timing every class of a
//! cold start would add tens of seconds. A class the budget cuts short keeps
//! (on disk too) the candidates it timed and runs the fastest of them; a
//! class met once the budget is spent runs its entry's fastest or the
//! heuristic's choice; either way a later run times the rest (`cmae tune`,
//! which has no budget, all of it). A process never switches kernels for a
//! class it has already run.
//!
//! Adding a decision: implement [`Variant`] for its enum, give its kernel
//! wrapper a selection function like [`matmul::family`] (class key,
//! candidates, a [`Problem`]) and call it where the wrapper picks its kernel.

pub(crate) mod attention;
mod cache;
mod clock;
pub(crate) mod matmul;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::device::{Device, lock};
use crate::error::{Error, Result};
pub(crate) use cache::Cache;

pub use cache::default_cache_dir;

/// Wall time a device from [`TuneConfig::from_env`] may add to its work by
/// timing: a bound on what tuning adds to a cold start.
pub const START_BUDGET: Duration = Duration::from_secs(2);

/// How a device picks among kernel variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuneConfig {
    /// Time the variants (cached), or always take the built-in heuristic's choice.
    pub enabled: bool,
    /// Where the cache file lives; `None` keeps the results in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Wall time timing may add to the device's work (not counting the
    /// heuristic's own first run of each class), `None` for no limit.
    pub budget: Option<Duration>,
}

impl TuneConfig {
    /// `CMAE_AUTOTUNE=on|off` (default on, read once per process), the cache
    /// directory of [`default_cache_dir`] and [`START_BUDGET`].
    pub fn from_env() -> Result<Self> {
        Ok(Self { enabled: autotune_env()?, cache_dir: default_cache_dir(), budget: Some(START_BUDGET) })
    }

    /// The built-in heuristic only: nothing is timed, read or written.
    pub fn off() -> Self {
        Self { enabled: false, cache_dir: None, budget: None }
    }

    /// Tuning on, cached in `dir`, without a time limit.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { enabled: true, cache_dir: Some(dir.into()), budget: None }
    }
}

/// `CMAE_AUTOTUNE`, read once per process.
fn autotune_env() -> Result<bool> {
    static ON: OnceLock<std::result::Result<bool, String>> = OnceLock::new();
    let on = ON.get_or_init(|| match std::env::var("CMAE_AUTOTUNE").as_deref() {
        Err(_) | Ok("on") => Ok(true),
        Ok("off") => Ok(false),
        Ok(other) => Err(format!("CMAE_AUTOTUNE={other} is not a setting; set on or off, or unset it")),
    });
    on.clone().map_err(Error::Env)
}

/// One variant's time on a class's representative problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateTime {
    pub name: String,
    /// The fastest timed run, in ms (GPU time where the adapter has timestamp
    /// queries, else wall time around submit and wait).
    pub ms: f64,
    /// Timed runs after the warm-up: one when the first was far slower than
    /// the best so far, none when it could not run here (a dispatch beyond
    /// this adapter's limits).
    pub runs: u32,
}

/// The tuned outcome of one decision for one shape class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    pub decision: String,
    pub class: String,
    /// The problem that was timed: the first shape met in the class (fewer
    /// batches or rows when it exceeds the tuner's memory cap).
    pub shape: String,
    pub winner: String,
    pub candidates: Vec<CandidateTime>,
    /// Timed by this process (false: read from the cache file).
    #[serde(skip)]
    pub timed_here: bool,
    /// Met by this process's work so far.
    #[serde(skip)]
    pub met: bool,
}

impl TuneEntry {
    /// The fastest timed candidate among `valid`.
    fn best_of<V: Variant>(&self, valid: &[V]) -> Option<V> {
        self.candidates
            .iter()
            .filter(|c| c.runs > 0)
            .filter_map(|c| V::from_name(&c.name).filter(|v| valid.contains(v)).map(|v| (c.ms, v)))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, v)| v)
    }
}

/// A choice among kernel variants.
pub(crate) trait Variant: Copy + PartialEq + 'static {
    /// The decision's name in the cache file and `cmae tune`'s table.
    const DECISION: &'static str;
    /// Every variant, valid on this adapter or not.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name() == name)
    }
}

/// A representative problem of a shape class, allocated on the tuning stream.
pub(crate) trait Problem<V> {
    /// What is timed, for the table (e.g. `m1088 n576 k192 z1`).
    fn describe(&self) -> String;
    /// Records one run of `candidate` on `s` (the stream pins `candidate`).
    fn run(&mut self, s: &Device, candidate: V) -> Result<()>;
}

/// The tuning table of one context: the cache file's entries plus what this
/// process timed.
pub(crate) struct Tuner {
    enabled: bool,
    cache: Option<Cache>,
    table: Mutex<BTreeMap<(String, String), TuneEntry>>,
    /// Classes whose problem could not be built or timed (out of memory):
    /// the heuristic's for this process, never written.
    untimable: Mutex<HashSet<(String, String)>>,
    /// Classes timed by this context.
    timed: AtomicU64,
    /// What is left of the budget (`None`: no limit).
    left: Mutex<Option<Duration>>,
    /// Entries this process did not time are not used (`cmae tune --retune`).
    retune: AtomicBool,
    /// What each class met so far in this process runs: a run never switches
    /// a class's kernel once it has used it, and a class already decided
    /// costs every later call one lookup instead of the table walk.
    decided: Mutex<HashMap<(String, String), &'static str>>,
}

impl Tuner {
    pub(crate) fn new(config: &TuneConfig, info: &wgpu::AdapterInfo) -> Self {
        let cache = config.cache_dir.as_deref().filter(|_| config.enabled).map(|dir| Cache::new(dir, info));
        let entries = cache.as_ref().map(Cache::load::<TuneEntry>).unwrap_or_default();
        let table = entries.into_iter().map(|e| ((e.decision.clone(), e.class.clone()), e)).collect();
        Self {
            enabled: config.enabled,
            cache,
            table: Mutex::new(table),
            untimable: Mutex::default(),
            timed: AtomicU64::new(0),
            left: Mutex::new(config.budget),
            retune: AtomicBool::new(false),
            decided: Mutex::default(),
        }
    }

    /// The entry of `key` this process may use (marked met), if any.
    fn entry(&self, key: &(String, String)) -> Option<TuneEntry> {
        let mut table = lock(&self.table);
        let entry = table.get_mut(key).filter(|e| e.timed_here || !self.retune.load(Ordering::Relaxed))?;
        entry.met = true;
        Some(entry.clone())
    }

    /// The budget left (`None`: no limit), or `Err(())` when it is spent.
    fn left(&self) -> std::result::Result<Option<Duration>, ()> {
        match *lock(&self.left) {
            Some(left) if left.is_zero() => Err(()),
            left => Ok(left),
        }
    }

    fn spend(&self, spent: Duration) {
        if let Some(left) = lock(&self.left).as_mut() {
            *left = left.saturating_sub(spent);
        }
    }

    /// Stores a freshly timed entry and writes the cache file.
    fn insert(&self, entry: TuneEntry) {
        let mut table = lock(&self.table);
        table.insert((entry.decision.clone(), entry.class.clone()), entry);
        if let Some(cache) = &self.cache {
            cache.save(&table);
        }
    }
}

impl Device {
    fn tuner(&self) -> &Tuner {
        &self.ctx().tuner
    }

    /// The variant to run for a class: the one pinned on this stream (the
    /// tuner timing it), else the fastest of `candidates` (all valid for this
    /// call; `candidates[0]` is the heuristic's choice, taken when tuning is
    /// off or nothing could be timed). Candidates the class's entry lacks are
    /// timed first, as far as the budget goes; a class cut short keeps what
    /// was timed, on disk too, and a later run times the rest.
    pub(crate) fn select<V: Variant, P: Problem<V>>(
        &self,
        class: impl FnOnce() -> String,
        candidates: &[V],
        problem: impl FnOnce(&Device) -> Result<P>,
    ) -> Result<V> {
        if let Some(v) = self.pinned::<V>() {
            return Ok(v);
        }
        let heuristic = candidates[0];
        let tuner = self.tuner();
        if !tuner.enabled || candidates.len() < 2 {
            return Ok(heuristic);
        }
        let key = (V::DECISION.to_string(), class());
        let decided = lock(&tuner.decided).get(&key).and_then(|name| V::from_name(name));
        if let Some(v) = decided.filter(|v| candidates.contains(v)) {
            return Ok(v);
        }
        let v = self.decide(key.clone(), candidates, problem)?;
        lock(&tuner.decided).insert(key, v.name());
        Ok(v)
    }

    /// [`Device::select`] for a class this process has not decided yet.
    fn decide<V: Variant, P: Problem<V>>(
        &self,
        key: (String, String),
        candidates: &[V],
        problem: impl FnOnce(&Device) -> Result<P>,
    ) -> Result<V> {
        let heuristic = candidates[0];
        let tuner = self.tuner();
        let entry = tuner.entry(&key);
        let fastest = |e: &Option<TuneEntry>| e.as_ref().and_then(|e| e.best_of(candidates)).unwrap_or(heuristic);
        let missing: Vec<V> = match &entry {
            Some(e) => {
                candidates.iter().copied().filter(|v| !e.candidates.iter().any(|c| c.name == v.name())).collect()
            }
            None => candidates.to_vec(),
        };
        if missing.is_empty() || lock(&tuner.untimable).contains(&key) {
            return Ok(fastest(&entry));
        }
        let Ok(budget) = tuner.left() else {
            return Ok(fastest(&entry));
        };
        let started = Instant::now();
        let timed = self.time_class(&key.1, &missing, entry.as_ref(), problem, budget);
        let (timing, shape) = match timed {
            Ok(t) => t,
            Err(e) => {
                tuner.spend(started.elapsed());
                log::warn!("autotune: cannot time {} {} ({e}); using the built-in choice", key.0, key.1);
                lock(&tuner.untimable).insert(key);
                return Ok(heuristic);
            }
        };
        tuner.spend(timing.charged);
        tuner.timed.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "autotune: {} {} took {:.2} s ({:.2} s charged to the budget)",
            key.0,
            key.1,
            started.elapsed().as_secs_f64(),
            timing.charged.as_secs_f64()
        );
        if timing.times.is_empty() {
            return Ok(fastest(&entry));
        }
        let mut merged = entry.unwrap_or_else(|| TuneEntry {
            decision: key.0.clone(),
            class: key.1.clone(),
            shape,
            winner: String::new(),
            candidates: Vec::new(),
            timed_here: true,
            met: true,
        });
        merged.candidates.extend(timing.times);
        merged.timed_here = true;
        let Some(winner) = merged.best_of(candidates) else {
            log::warn!("autotune: no {} variant ran for {}; using the built-in choice", key.0, key.1);
            lock(&tuner.untimable).insert(key);
            return Ok(heuristic);
        };
        merged.winner = winner.name().to_string();
        tuner.insert(merged);
        Ok(winner)
    }

    /// Times `missing` on a representative problem built on a stream of its
    /// own, against the times `entry` already holds: what timing found, and
    /// what was timed.
    fn time_class<V: Variant, P: Problem<V>>(
        &self,
        class: &str,
        missing: &[V],
        entry: Option<&TuneEntry>,
        problem: impl FnOnce(&Device) -> Result<P>,
        budget: Option<Duration>,
    ) -> Result<(clock::Timing, String)> {
        let s = self.new_stream();
        let mut problem = problem(&s)?;
        let best = entry.map_or(f64::INFINITY, |e| {
            e.candidates.iter().filter(|c| c.runs > 0).map(|c| c.ms).fold(f64::INFINITY, f64::min)
        });
        // Only a new class's first run is the heuristic's, which the step needs anyway.
        let heuristic_first = entry.is_none();
        let timing = clock::time_candidates(&s, class, missing, &mut problem, best, heuristic_first, budget)?;
        Ok((timing, problem.describe()))
    }

    fn pinned<V: Variant>(&self) -> Option<V> {
        let pins = self.pins();
        pins.iter().find(|(d, _)| *d == V::DECISION).and_then(|(_, name)| V::from_name(name))
    }

    /// Makes this stream run `v` for its decision (the tuner's own runs).
    fn pin<V: Variant>(&self, v: V) {
        let mut pins = self.pins();
        pins.retain(|(d, _)| *d != V::DECISION);
        pins.push((V::DECISION, v.name()));
    }

    /// Whether kernel variants are timed (`CMAE_AUTOTUNE`, default on).
    pub fn autotune(&self) -> bool {
        self.tuner().enabled
    }

    /// The tune cache file of this adapter, if results are kept on disk.
    pub fn tune_cache_path(&self) -> Option<&Path> {
        self.tuner().cache.as_ref().map(Cache::path)
    }

    /// Every tuned decision this device knows: from the cache file and timed
    /// by this process.
    pub fn tune_entries(&self) -> Vec<TuneEntry> {
        lock(&self.tuner().table).values().cloned().collect()
    }

    /// Shape classes timed by this device so far (0 when every class met was cached).
    pub fn tune_timings(&self) -> u64 {
        self.tuner().timed.load(Ordering::Relaxed)
    }

    /// Times every class met from now on again, even those in the cache
    /// (`cmae tune --retune`).
    pub fn retune(&self) {
        self.tuner().retune.store(true, Ordering::Relaxed);
    }
}

/// A shape-class bucket: the next power of two, so a class spans at most a 2× range.
pub(crate) fn bucket(x: usize) -> usize {
    x.max(1).next_power_of_two()
}
