//! Gradient buckets summed over ranks while backward runs.
//!
//! The packed gradients are cut into buckets of consecutive members, from
//! the end of the pack (the decoder and last blocks, whose gradients backward
//! finishes first). When backward has recorded the last addition into every
//! member of a bucket, the bucket is copied to the host and the batch so far
//! is submitted; the MPI thread sums it over ranks as soon as the copy lands,
//! while the GPU and the training thread go on with the rest of backward.
//! Buckets are posted in the order backward completes them, which follows
//! from the graph alone and so is the same on every rank. Finally the
//! sums are written back over the local gradients (wgpu cannot copy between
//! devices: everything is staged through host memory).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Result;
use cmae_engine::{Device, Gradients, PendingRead};

use super::{Posted, world};

/// Default bucket size (`CMAE_BUCKET_MB`): a few buckets even for the tiny
/// model, so the first ones are summed while backward still runs.
const DEFAULT_BUCKET_MB: f64 = 4.0;

/// What summing one step's gradients cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncStats {
    pub bytes: u64,
    pub buckets: usize,
    /// Time the MPI thread spent in the sums.
    pub allreduce_ms: f64,
    /// The share of that time that ran while the GPU still computed the
    /// backward pass (before the last bucket's copy landed): hidden behind it.
    pub overlap: f64,
    /// Time the training thread waited for the sums after the GPU finished
    /// backward: the communication nothing hid.
    pub exposed_ms: f64,
}

struct State {
    /// Members of each bucket, in the order backward completes them.
    buckets: Vec<Range<usize>>,
    bucket_of: Vec<usize>,
    missing: Vec<usize>,
    /// Buckets copied out, oldest first, until their copy lands.
    copies: VecDeque<(usize, PendingRead<f32>)>,
    sums: Vec<(usize, Posted<Vec<f32>>)>,
}

impl State {
    fn member_ready(&mut self, dev: &Device, grads: &Gradients, member: usize) -> Result<()> {
        let b = self.bucket_of[member];
        self.missing[b] -= 1;
        if self.missing[b] == 0 {
            self.copies.push_back((b, grads.read_packed(dev, self.buckets[b].clone())?));
            dev.flush()?;
        }
        self.post_landed(false)
    }

    /// Posts the sums of the copies that have landed, in bucket order (all
    /// of them, waiting, with `wait_all`).
    fn post_landed(&mut self, wait_all: bool) -> Result<()> {
        while let Some((b, mut copy)) = self.copies.pop_front() {
            let values = if wait_all {
                copy.wait()?
            } else {
                match copy.try_take()? {
                    Some(v) => v,
                    None => {
                        self.copies.push_front((b, copy));
                        return Ok(());
                    }
                }
            };
            self.sums.push((b, world().sum_f32(values)));
        }
        Ok(())
    }
}

/// Sums the packed gradients of a step over all ranks, bucket by bucket.
pub struct GradientSync {
    state: Rc<RefCell<State>>,
}

impl GradientSync {
    /// Buckets of about `CMAE_BUCKET_MB` over `grads`' packed members.
    pub fn new(grads: &Gradients) -> Self {
        let mb = std::env::var("CMAE_BUCKET_MB").ok().and_then(|v| v.trim().parse::<f64>().ok());
        let limit = (mb.filter(|m| *m > 0.0).unwrap_or(DEFAULT_BUCKET_MB) * 1048576.0) as usize;
        let n = grads.packed_names().count();
        let mut buckets = Vec::new();
        let (mut end, mut bytes) = (n, 0usize);
        for i in (0..n).rev() {
            bytes += grads.packed_numel(i) * 4;
            if bytes >= limit || i == 0 {
                buckets.push(i..end);
                (end, bytes) = (i, 0);
            }
        }
        let mut bucket_of = vec![0; n];
        for (b, r) in buckets.iter().enumerate() {
            bucket_of[r.clone()].fill(b);
        }
        let state = State {
            missing: buckets.iter().map(|r| r.len()).collect(),
            buckets,
            bucket_of,
            copies: VecDeque::new(),
            sums: Vec::new(),
        };
        Self { state: Rc::new(RefCell::new(state)) }
    }

    /// Watches the next backward into `grads` (the step's last micro-batch).
    pub fn arm(&self, grads: &mut Gradients) {
        {
            let mut s = self.state.borrow_mut();
            s.missing = s.buckets.iter().map(|r| r.len()).collect();
            s.copies.clear();
            s.sums.clear();
        }
        let state = self.state.clone();
        grads.on_ready(Some(Box::new(move |dev: &Device, g: &Gradients, member: usize| {
            state.borrow_mut().member_ready(dev, g, member).map_err(|e| cmae_engine::Error::Gpu(format!("{e:#}")))
        })));
    }

    /// After backward: waits for every bucket's sum and writes the sums over
    /// `grads`.
    pub fn finish(&self, dev: &Device, grads: &mut Gradients) -> Result<SyncStats> {
        grads.on_ready(None);
        let mut s = self.state.borrow_mut();
        s.post_landed(true)?;
        let backward_end = Instant::now();
        let mut stats = SyncStats { buckets: s.buckets.len(), ..SyncStats::default() };
        let (mut busy, mut hidden) = (0.0, 0.0);
        for (b, sum) in std::mem::take(&mut s.sums) {
            let done = sum.wait()?;
            let ran = done.ran;
            busy += (ran.end - ran.start).as_secs_f64();
            if ran.start < backward_end {
                hidden += (ran.end.min(backward_end) - ran.start).as_secs_f64();
            }
            stats.bytes += done.value.len() as u64 * 4;
            grads.write_packed(dev, s.buckets[b].clone(), &done.value)?;
        }
        stats.exposed_ms = backward_end.elapsed().as_secs_f64() * 1e3;
        stats.allreduce_ms = busy * 1e3;
        stats.overlap = if busy > 0.0 { hidden / busy } else { 0.0 };
        Ok(stats)
    }
}
