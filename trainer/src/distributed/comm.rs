//! The MPI thread: it initialises MPI, runs the collectives the training
//! thread posts, one at a time and in posting order (the same order on every
//! rank), and finalises MPI when the run ends. A collective runs while the
//! training thread records and the GPU computes the rest of backward.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use cmae_engine::device::LocalRank;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Threading;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::{Collective, collective_timeout};

type Reply<T> = std::result::Result<Collective<T>, String>;

/// Broadcasts move at most this many bytes per MPI call (MPI counts are
/// 32-bit; a ViT-L checkpoint with its AdamW moments is 3.6 GB).
const BROADCAST_CHUNK: usize = 1 << 30;

enum Job {
    SumF32(Vec<f32>, Sender<Reply<Vec<f32>>>),
    SumF64(Vec<f64>, Sender<Reply<Vec<f64>>>),
    Broadcast(Vec<u8>, Sender<Reply<Vec<u8>>>),
    Gather(Vec<f32>, Vec<usize>, Sender<Reply<Vec<f32>>>),
}

/// A posted collective's reply.
pub struct Pending<T> {
    reply: Receiver<Reply<T>>,
    what: &'static str,
    rank: usize,
}

impl<T> Pending<T> {
    pub fn wait(self) -> Result<Collective<T>> {
        let timeout = collective_timeout();
        match self.reply.recv_timeout(timeout) {
            Ok(reply) => reply.map_err(|e| anyhow!("{}: {e}", self.what)),
            Err(RecvTimeoutError::Timeout) => bail!(
                "rank {} waited {:.0} s for the other ranks while {}: one of them died or hangs (raise CMAE_MPI_TIMEOUT_S if a step or a checkpoint legitimately takes longer)",
                self.rank,
                timeout.as_secs_f64(),
                self.what
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("{}: the MPI thread stopped", self.what),
        }
    }
}

pub struct Comm {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    rank: usize,
}

impl Comm {
    /// Starts the MPI thread and returns it with this process's rank, the
    /// number of ranks, and its place among the ranks of its machine.
    pub fn start() -> Result<(Self, usize, usize, LocalRank)> {
        let (jobs, inbox) = channel::<Job>();
        let (told, hear) = channel();
        let thread = std::thread::Builder::new()
            .name("cmae-mpi".into())
            .spawn(move || {
                // Multiple: the training thread may abort while this one waits in a collective.
                let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Multiple) else {
                    let _ = told.send(Err("MPI was initialised twice".to_string()));
                    return;
                };
                if threading != Threading::Multiple {
                    let _ = told.send(Err(format!(
                        "this MPI library offers thread support {threading:?}, cmae needs Multiple (MPI_THREAD_MULTIPLE: Open MPI ≥ 3 and MPICH have it); use such a build"
                    )));
                    return;
                }
                let world = universe.world();
                let machine = world.split_shared(world.rank());
                let _ = told.send(Ok((
                    world.rank() as usize,
                    world.size() as usize,
                    machine.rank() as usize,
                    machine.size() as usize,
                )));
                for job in inbox {
                    run(&world, job);
                }
                // Dropping the universe finalises MPI.
            })
            .map_err(|e| anyhow!("cannot start the MPI thread: {e}"))?;
        let (rank, size, index, count) =
            hear.recv().map_err(|_| anyhow!("MPI failed to start"))?.map_err(|e| anyhow!("{e}"))?;
        let comm = Self { jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)), rank };
        Ok((comm, rank, size, LocalRank { index, count, share: false }))
    }

    fn post<T>(&self, what: &'static str, job: impl FnOnce(Sender<Reply<T>>) -> Job) -> Pending<T> {
        let (tx, rx) = channel();
        if let Some(jobs) = self.jobs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = jobs.send(job(tx));
        }
        Pending { reply: rx, what, rank: self.rank }
    }

    pub fn sum_f32(&self, values: Vec<f32>) -> Pending<Vec<f32>> {
        self.post("summing gradients over the ranks", |tx| Job::SumF32(values, tx))
    }

    pub fn sum_f64(&self, values: Vec<f64>) -> Pending<Vec<f64>> {
        self.post("summing the losses over the ranks", |tx| Job::SumF64(values, tx))
    }

    pub fn broadcast(&self, bytes: Vec<u8>) -> Pending<Vec<u8>> {
        self.post("receiving rank 0's state", |tx| Job::Broadcast(bytes, tx))
    }

    pub fn gather_f32(&self, values: Vec<f32>, counts: Vec<usize>) -> Pending<Vec<f32>> {
        self.post("gathering every rank's features", |tx| Job::Gather(values, counts, tx))
    }

    /// Lets the MPI thread finish its queue and finalise MPI.
    pub fn finish(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Ends every rank of the job (MPI_Abort): the launcher stops the others.
pub fn abort(code: i32) -> ! {
    // SAFETY: MPI was initialised with MPI_THREAD_MULTIPLE by the MPI
    // thread, so any thread may call MPI_Abort on the world communicator.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::exit(code)
}

fn timed<T>(f: impl FnOnce() -> T) -> Collective<T> {
    let start = Instant::now();
    let value = f();
    Collective { value, ran: start..Instant::now() }
}

fn run(world: &SimpleCommunicator, job: Job) {
    match job {
        Job::SumF32(values, tx) => {
            let _ = tx.send(Ok(timed(|| {
                let mut sum = vec![0.0f32; values.len()];
                world.all_reduce_into(&values[..], &mut sum[..], SystemOperation::sum());
                sum
            })));
        }
        Job::SumF64(values, tx) => {
            let _ = tx.send(Ok(timed(|| {
                let mut sum = vec![0.0f64; values.len()];
                world.all_reduce_into(&values[..], &mut sum[..], SystemOperation::sum());
                sum
            })));
        }
        Job::Broadcast(mut bytes, tx) => {
            let _ = tx.send(Ok(timed(|| {
                let root = world.process_at_rank(0);
                let mut len = bytes.len() as u64;
                root.broadcast_into(&mut len);
                bytes.resize(len as usize, 0);
                for chunk in bytes.chunks_mut(BROADCAST_CHUNK) {
                    root.broadcast_into(chunk);
                }
                bytes
            })));
        }
        Job::Gather(values, counts, tx) => {
            let reply = if counts.len() != world.size() as usize || counts[world.rank() as usize] != values.len() {
                Err(format!("{} values from this rank, the counts say {counts:?}", values.len()))
            } else {
                Ok(timed(|| {
                    let counts: Vec<i32> = counts.iter().map(|&c| c as i32).collect();
                    let displs: Vec<i32> =
                        counts.iter().scan(0, |at, &c| Some(std::mem::replace(at, *at + c))).collect();
                    let mut all = vec![0.0f32; counts.iter().map(|&c| c as usize).sum()];
                    world.all_gather_varcount_into(&values[..], &mut PartitionMut::new(&mut all[..], counts, displs));
                    all
                }))
            };
            let _ = tx.send(reply);
        }
    }
}
