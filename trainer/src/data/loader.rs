//! Batches decoded and augmented on background threads, ahead of the GPU.
//!
//! Batch g of a run is a pure function of (seed, g): epoch e = g / batches per
//! epoch uses the permutation seeded by (seed, e), and each sample's
//! augmentation RNG is seeded by (seed, e, sample). Workers may finish batches
//! in any order; the consumer reorders them. So a run is reproducible with any
//! number of workers, and a resumed run continues with exactly the batch an
//! uninterrupted run would have used. A page, which has no threads, builds
//! the same batches on the caller's thread instead (`inline`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use anyhow::{Result, anyhow, bail};
use rand::seq::SliceRandom;

use super::Dataset;
use super::augment::Transform;
use crate::config::{BadImages, DataConfig};
use crate::rng::{Stream, stream_rng};

/// One batch: images `[B, C, H, W]` normalised, and labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub index: u64,
    pub size: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Unreadable images replaced by the next readable one.
    pub skipped: usize,
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch: usize,
    pub seed: u64,
    pub workers: usize,
    pub bad_images: BadImages,
    /// Shuffle every epoch (training) or keep dataset order (evaluation).
    pub shuffle: bool,
    /// Drop the last partial batch (training) or keep it (evaluation).
    pub drop_last: bool,
    /// Batches decoded ahead of the consumer.
    pub prefetch: u64,
    /// The positions of every batch this process loads, in this order (a
    /// data-parallel rank's shard); None: the whole batch.
    pub positions: Option<Vec<usize>>,
    /// Build each batch on the caller's thread when it is asked for, with
    /// no workers (a page has no threads); the batches are the same.
    pub inline: bool,
}

impl LoaderConfig {
    /// A training run's reads: shuffled every epoch, full batches only, a few
    /// batches ahead of the GPU.
    pub fn training(batch: usize, seed: u64, data: &DataConfig) -> Self {
        Self {
            batch,
            seed,
            workers: data.workers,
            bad_images: data.bad_images,
            shuffle: true,
            drop_last: true,
            prefetch: 4,
            positions: None,
            inline: cfg!(target_arch = "wasm32"),
        }
    }
}

struct Shared {
    dataset: Arc<dyn Dataset>,
    transform: Transform,
    cfg: LoaderConfig,
    batches_per_epoch: u64,
    next_claim: AtomicU64,
    stop: AtomicBool,
    /// Index of the batch the consumer waits for; workers stay within `prefetch` of it.
    consumed: Mutex<u64>,
    advanced: Condvar,
}

impl Shared {
    fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut stream_rng(Stream::EpochOrder, &[self.cfg.seed, epoch]));
        }
        order
    }

    fn sample(&self, index: usize, epoch: u64, skipped: &mut usize) -> Result<(Vec<f32>, u32)> {
        let n = self.dataset.len();
        let mut rng = stream_rng(Stream::Augment, &[self.cfg.seed, epoch, index as u64]);
        for attempt in 0..n {
            let i = (index + attempt) % n;
            match self.dataset.get(i) {
                Ok((img, label)) => return Ok((self.transform.apply(&img, &mut rng), label)),
                Err(e) if self.cfg.bad_images == BadImages::Skip => {
                    log::warn!("skipping unreadable image: {e:#}");
                    *skipped += 1;
                }
                Err(e) => {
                    return Err(e.context("use --set data.bad_images=skip to skip unreadable images"));
                }
            }
        }
        bail!("no image of the dataset could be read")
    }

    fn build(&self, g: u64, order_cache: &mut Option<(u64, Vec<usize>)>) -> Result<Batch> {
        let epoch = g / self.batches_per_epoch;
        let pos = (g % self.batches_per_epoch) as usize;
        if order_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *order_cache = Some((epoch, self.order(epoch)));
        }
        let order = &order_cache.as_ref().expect("just set").1;
        let start = pos * self.cfg.batch;
        let end = (start + self.cfg.batch).min(order.len());
        let picked: Vec<usize> = match &self.cfg.positions {
            None => order[start..end].to_vec(),
            Some(p) => p.iter().map(|&p| start + p).filter(|&i| i < end).map(|i| order[i]).collect(),
        };
        let mut images =
            Vec::with_capacity(picked.len() * self.transform.chans * self.transform.size * self.transform.size);
        let mut labels = Vec::with_capacity(picked.len());
        let mut skipped = 0;
        for &i in &picked {
            let (img, label) = self.sample(i, epoch, &mut skipped)?;
            images.extend_from_slice(&img);
            labels.push(label);
        }
        Ok(Batch { index: g, size: labels.len(), images, labels, skipped })
    }

    fn work(&self, tx: &SyncSender<(u64, Result<Batch>)>) {
        let mut cache = None;
        loop {
            let g = self.next_claim.fetch_add(1, Ordering::SeqCst);
            {
                let mut consumed = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
                while g >= *consumed + self.cfg.prefetch && !self.stop.load(Ordering::SeqCst) {
                    consumed = self.advanced.wait(consumed).unwrap_or_else(|p| p.into_inner());
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let batch = self.build(g, &mut cache);
            if tx.send((g, batch)).is_err() {
                return;
            }
        }
    }
}

pub struct Loader {
    shared: Arc<Shared>,
    rx: Receiver<(u64, Result<Batch>)>,
    pending: BTreeMap<u64, Result<Batch>>,
    next: u64,
    workers: Vec<JoinHandle<()>>,
    /// The epoch order an inline loader built last.
    order: Option<(u64, Vec<usize>)>,
}

impl Loader {
    /// Starts workers producing batches from global batch index `start` on.
    pub fn new(dataset: Arc<dyn Dataset>, transform: Transform, cfg: LoaderConfig, start: u64) -> Result<Self> {
        let n = dataset.len();
        if cfg.batch == 0 {
            bail!("the batch size must be at least 1");
        }
        let batches_per_epoch = if cfg.drop_last { n / cfg.batch } else { n.div_ceil(cfg.batch) } as u64;
        if batches_per_epoch == 0 {
            bail!("the dataset has {n} images, fewer than one batch of {}; use a smaller --batch", cfg.batch);
        }
        let workers = if cfg.inline {
            0
        } else if cfg.workers == 0 {
            std::thread::available_parallelism().map_or(1, |p| p.get().saturating_sub(1).max(1))
        } else {
            cfg.workers
        };
        let prefetch = cfg.prefetch.max(1);
        let (tx, rx) = sync_channel(workers + prefetch as usize);
        let shared = Arc::new(Shared {
            dataset,
            transform,
            cfg: LoaderConfig { prefetch, ..cfg },
            batches_per_epoch,
            next_claim: AtomicU64::new(start),
            stop: AtomicBool::new(false),
            consumed: Mutex::new(start),
            advanced: Condvar::new(),
        });
        let handles = (0..workers)
            .map(|i| {
                let (s, tx) = (shared.clone(), tx.clone());
                std::thread::Builder::new()
                    .name(format!("cmae-data-{i}"))
                    .spawn(move || s.work(&tx))
                    .map_err(|e| anyhow!("cannot start a data thread: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shared, rx, pending: BTreeMap::new(), next: start, workers: handles, order: None })
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.shared.batches_per_epoch
    }

    /// The next batch in order (blocks until it is ready).
    pub fn next_batch(&mut self) -> Result<Batch> {
        let want = self.next;
        let batch =
            if self.shared.cfg.inline { self.shared.build(want, &mut self.order) } else { self.threaded_batch(want)? };
        self.next += 1;
        *self.shared.consumed.lock().unwrap_or_else(|p| p.into_inner()) = self.next;
        self.shared.advanced.notify_all();
        batch
    }

    /// Batch `want` from the workers, which may finish batches out of order.
    fn threaded_batch(&mut self, want: u64) -> Result<Result<Batch>> {
        Ok(loop {
            if let Some(b) = self.pending.remove(&want) {
                break b;
            }
            let (g, b) = self.rx.recv().map_err(|_| anyhow!("the data threads stopped"))?;
            self.pending.insert(g, b);
        })
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.advanced.notify_all();
        // Unblock workers waiting to send, then join them.
        while self.rx.try_recv().is_ok() {}
        for h in self.workers.drain(..) {
            while !h.is_finished() {
                while self.rx.try_recv().is_ok() {}
                std::thread::yield_now();
            }
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::data::synthetic::Synthetic;

    fn loader(workers: usize, start: u64, shuffle: bool, drop_last: bool) -> Loader {
        shard_loader(workers, start, shuffle, drop_last, None)
    }

    /// [`loader`]'s data and settings, without threads.
    fn inline_loader(start: u64) -> Loader {
        let threaded = loader(1, start, true, true);
        let cfg = LoaderConfig { inline: true, ..threaded.shared.cfg.clone() };
        let l = Loader::new(threaded.shared.dataset.clone(), threaded.shared.transform.clone(), cfg, start).unwrap();
        assert!(l.workers.is_empty());
        l
    }

    fn shard_loader(
        workers: usize,
        start: u64,
        shuffle: bool,
        drop_last: bool,
        positions: Option<Vec<usize>>,
    ) -> Loader {
        let ds: Arc<dyn Dataset> = Arc::new(Synthetic::new(50, 16, Split::Train));
        let t = Transform::new(8, 3, ds.mean_std(), true);
        let cfg = LoaderConfig {
            batch: 8,
            seed: 3,
            workers,
            bad_images: BadImages::Abort,
            shuffle,
            drop_last,
            prefetch: 3,
            positions,
            inline: false,
        };
        Loader::new(ds, t, cfg, start).unwrap()
    }

    #[test]
    fn batches_are_reproducible_across_worker_counts_and_resumes() {
        let mut one = loader(1, 0, true, true);
        let mut three = loader(3, 0, true, true);
        assert_eq!(one.batches_per_epoch(), 6);
        let a: Vec<Batch> = (0..14).map(|_| one.next_batch().unwrap()).collect();
        let b: Vec<Batch> = (0..14).map(|_| three.next_batch().unwrap()).collect();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.index, &x.labels, &x.images), (y.index, &y.labels, &y.images));
        }
        // Epochs are reshuffled.
        assert_ne!(a[0].labels, a[6].labels);
        // Starting at batch 9 gives batch 9 exactly.
        let mut resumed = loader(2, 9, true, true);
        let r = resumed.next_batch().unwrap();
        assert_eq!((r.index, &r.images), (9, &a[9].images));
        // A page's loader (no threads) gives the same batches, resumed too.
        let mut inline = inline_loader(0);
        for x in &a {
            let y = inline.next_batch().unwrap();
            assert_eq!((x.index, &x.labels, &x.images), (y.index, &y.labels, &y.images));
        }
        assert_eq!(inline_loader(9).next_batch().unwrap().images, a[9].images);
    }

    #[test]
    fn shards_load_their_positions_of_each_global_batch() {
        let whole: Vec<Batch> = {
            let mut l = loader(2, 0, true, true);
            (0..8).map(|_| l.next_batch().unwrap()).collect()
        };
        let plane = 3 * 8 * 8;
        for positions in [vec![0, 1, 2], vec![3, 4, 5, 6, 7], vec![7, 0]] {
            let mut shard = shard_loader(2, 0, true, true, Some(positions.clone()));
            for w in &whole {
                let b = shard.next_batch().unwrap();
                assert_eq!(b.size, positions.len());
                for (k, &p) in positions.iter().enumerate() {
                    assert_eq!(b.labels[k], w.labels[p]);
                    assert_eq!(b.images[k * plane..(k + 1) * plane], w.images[p * plane..(p + 1) * plane]);
                }
            }
        }
    }

    #[test]
    fn evaluation_order_keeps_the_partial_last_batch() {
        let mut l = loader(2, 0, false, false);
        assert_eq!(l.batches_per_epoch(), 7);
        let sizes: Vec<usize> = (0..7).map(|_| l.next_batch().unwrap().size).collect();
        assert_eq!(sizes, vec![8, 8, 8, 8, 8, 8, 2]);
    }
}
