//! Data-parallel training: one process (rank) per GPU, started by `mpirun`
//! or `srun`, each computing a shard of every global batch.
//!
//! Which samples, augmentations and masks a rank computes is a pure function
//! of (seed, step, position in the global batch), so N ranks compute exactly
//! what one rank would with the same global batch, and a run may resume on
//! another number of ranks. A rank's loss is its shard's share of the global
//! mean (its samples weighted by 1/global batch), so the global loss and
//! gradient are plain sums over ranks. Rank 0 alone writes files.
//!
//! MPI runs on a thread of its own ([`comm`]) that takes collectives in the
//! order the training thread posts them: every rank posts the same sequence,
//! and gradient buckets are summed while backward still runs ([`buckets`]).

pub mod buckets;
#[cfg(feature = "mpi")]
mod comm;

use std::ops::Range;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cmae_engine::Device;
use cmae_engine::device::{AdapterRequest, LocalRank};
use cmae_engine::tune::TuneConfig;

/// This process's place among the ranks of a run.
pub struct World {
    rank: usize,
    size: usize,
    local: LocalRank,
    #[cfg(feature = "mpi")]
    comm: Option<comm::Comm>,
    /// `CMAE_INJECT_NAN=RANK:STEP`: this rank's loss of that step reads NaN
    /// (tests the all-ranks stop).
    inject_nan: Option<(usize, u64)>,
}

/// A finished collective: its result, and when the MPI thread ran it.
pub struct Collective<T> {
    pub value: T,
    pub ran: Range<Instant>,
}

/// A collective posted to the MPI thread, not yet waited for.
pub enum Posted<T> {
    /// One rank alone: the value needs no communication.
    Ready(T),
    #[cfg(feature = "mpi")]
    Pending(comm::Pending<T>),
}

impl<T> Posted<T> {
    /// Blocks until every rank has taken part (bounded by `CMAE_MPI_TIMEOUT_S`).
    pub fn wait(self) -> Result<Collective<T>> {
        match self {
            Posted::Ready(value) => {
                let now = Instant::now();
                Ok(Collective { value, ran: now..now })
            }
            #[cfg(feature = "mpi")]
            Posted::Pending(p) => p.wait(),
        }
    }
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The process's world: what [`init`] found, or one rank alone.
pub fn world() -> &'static World {
    WORLD.get_or_init(World::alone)
}

/// How many ranks the launcher started, read from its environment
/// (Open MPI, MPICH/Hydra and Intel MPI, Slurm's srun), and where it said so.
pub fn launched_ranks() -> Option<(usize, &'static str)> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"]
        .into_iter()
        .find_map(|var| Some((std::env::var(var).ok()?.trim().parse().ok()?, var)))
}

/// Joins the run's other ranks when a launcher started several; a build
/// without MPI refuses such a launch instead of running N copies that write
/// one directory. Call once, first thing in `main`.
pub fn init() -> Result<&'static World> {
    let mut world = match launched_ranks() {
        Some((n, _)) if n > 1 => World::joined()?,
        _ => World::alone(),
    };
    if let Ok(v) = std::env::var("CMAE_INJECT_NAN") {
        world.inject_nan = Some(parse_rank_step(&v)?);
    }
    Ok(WORLD.get_or_init(|| world))
}

impl World {
    fn alone() -> Self {
        Self {
            rank: 0,
            size: 1,
            local: LocalRank { index: 0, count: 1, share: false },
            #[cfg(feature = "mpi")]
            comm: None,
            inject_nan: None,
        }
    }

    #[cfg(feature = "mpi")]
    fn joined() -> Result<Self> {
        let (comm, rank, size, local) = comm::Comm::start()?;
        let share = std::env::var("CMAE_SHARE_ADAPTER").is_ok_and(|v| v.trim() == "1");
        Ok(Self { rank, size, local: LocalRank { share, ..local }, comm: Some(comm), inject_nan: None })
    }

    #[cfg(not(feature = "mpi"))]
    fn joined() -> Result<Self> {
        let (n, var) = launched_ranks().expect("called for a multi-rank launch");
        bail!(
            "this cmae was launched as one of {n} ranks ({var}={n}) but was built without MPI; rebuild with `cargo build --release -p cmae --features mpi` (needs openmpi-bin libopenmpi-dev libclang-dev), or start one process"
        )
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0 writes checkpoints, metrics and images, and prints.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    pub fn local_rank(&self) -> LocalRank {
        self.local
    }

    /// This rank's positions of a global batch of `n`: contiguous, the first
    /// `n mod size` ranks one more.
    pub fn shard(&self, n: usize) -> Range<usize> {
        shard(n, self.rank, self.size)
    }

    /// Refuses a global batch some rank would get no image of.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        if batch < self.size {
            bail!(
                "train.batch={batch} is smaller than the {} ranks: every rank needs at least one image of each batch; raise --batch or start fewer ranks",
                self.size
            );
        }
        Ok(())
    }

    /// Opens this rank's adapter: `CMAE_BACKEND`/`CMAE_ADAPTER` narrow the
    /// machine's adapters, and local rank i takes the i-th best of them.
    /// The pipelines the last run of `workload` built start building at once
    /// ([`Device::warm_start`]).
    pub fn open_device(&self, workload: &str) -> Result<Device> {
        let mut req = AdapterRequest::from_env()?;
        if self.size > 1 {
            req.local_rank = Some(self.local);
        }
        let dev = Device::open(&req, TuneConfig::from_env()?)?;
        dev.warm_start(workload);
        Ok(dev)
    }

    /// Element-wise sum over ranks.
    pub fn sum_f32(&self, values: Vec<f32>) -> Posted<Vec<f32>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return Posted::Pending(c.sum_f32(values));
        }
        Posted::Ready(values)
    }

    /// Element-wise sum over ranks, in f64 (losses, counts).
    pub fn sum_f64(&self, values: Vec<f64>) -> Result<Vec<f64>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return Ok(c.sum_f64(values).wait()?.value);
        }
        Ok(values)
    }

    /// Whether any rank says yes (an interrupt), so all stop at the same step.
    pub fn any(&self, yes: bool) -> Result<bool> {
        Ok(self.sum_f64(vec![f64::from(u8::from(yes))])?[0] > 0.0)
    }

    /// Rank 0's `bytes` on every rank.
    pub fn broadcast(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return Ok(c.broadcast(bytes).wait()?.value);
        }
        Ok(bytes)
    }

    /// Every rank's values concatenated in rank order (`counts[r]` from rank r).
    pub fn gather_f32(&self, values: Vec<f32>, counts: Vec<usize>) -> Result<Vec<f32>> {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            return Ok(c.gather_f32(values, counts).wait()?.value);
        }
        debug_assert_eq!(counts, [values.len()]);
        Ok(values)
    }

    /// Whether this rank's loss of `step` is to read NaN (`CMAE_INJECT_NAN`).
    pub fn nan_injected(&self, step: u64) -> bool {
        self.inject_nan == Some((self.rank, step))
    }

    /// Ends MPI cleanly (every rank calls it after its last collective).
    pub fn finish(&self) {
        #[cfg(feature = "mpi")]
        if let Some(c) = &self.comm {
            c.finish();
        }
    }

    /// Stops every rank of the job after this rank failed alone (the others
    /// would wait for it in their next collective otherwise).
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.comm.is_some() {
            comm::abort(code);
        }
        std::process::exit(code)
    }

    /// What `cmae info` says about multi-GPU training.
    pub fn support() -> &'static str {
        if cfg!(feature = "mpi") { "MPI (data-parallel over ranks)" } else { "not built in (--features mpi)" }
    }
}

/// An error every rank reached at the same step from the same agreed values
/// (a non-finite global loss): the ranks exit together, no abort needed, and
/// only rank 0 reports it.
#[derive(Debug)]
pub struct Agreed(pub String);

impl std::fmt::Display for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Agreed {}

/// Rank `rank`'s positions of a global batch of `n` over `size` ranks.
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

fn parse_rank_step(text: &str) -> Result<(usize, u64)> {
    let parsed = text.split_once(':').and_then(|(r, s)| Some((r.trim().parse().ok()?, s.trim().parse().ok()?)));
    match parsed {
        Some(rs) => Ok(rs),
        None => bail!("CMAE_INJECT_NAN={text:?} is not RANK:STEP (e.g. 1:5)"),
    }
}

/// How long a rank waits in one collective before it gives up on the others
/// (`CMAE_MPI_TIMEOUT_S`, default 600 s: a rank 0 writing a large checkpoint
/// keeps the others waiting that long).
pub fn collective_timeout() -> Duration {
    let secs = std::env::var("CMAE_MPI_TIMEOUT_S").ok().and_then(|v| v.trim().parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|s| *s > 0.0).unwrap_or(600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once_in_rank_order() {
        for n in [1, 7, 16, 64] {
            for size in 1..=5 {
                let shards: Vec<Range<usize>> = (0..size).map(|r| shard(n, r, size)).collect();
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[size - 1].end, n);
                assert!(shards.windows(2).all(|w| w[0].end == w[1].start));
                let (min, max) = (shards.iter().map(|s| s.len()).min(), shards.iter().map(|s| s.len()).max());
                assert!(max.unwrap() - min.unwrap() <= 1, "{n} over {size}: {shards:?}");
            }
        }
        assert_eq!(shard(16, 1, 2), 8..16);
    }

    #[test]
    fn nan_injection_is_rank_colon_step() {
        assert_eq!(parse_rank_step("1:5").unwrap(), (1, 5));
        assert!(parse_rank_step("5").unwrap_err().to_string().contains("RANK:STEP"));
    }
}
