//! A pooled GPU buffer that knows the stream it came from.
//!
//! When the last handle drops, the buffer goes back to its home stream's free
//! list. Reusing it there is safe even if recorded work still reads it: that
//! stream submits in recording order on the one queue. Another stream that
//! records work on this storage keeps it alive until it submits (see
//! `Recorder::keep_alive`), so a buffer never changes hands under a batch
//! that has not been submitted yet. And a stream that uses storage last
//! written by another stream's unsubmitted batch submits that batch first
//! (see [`Storage::last_write`]), so it never reads values not yet written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::stream::Stream;
use super::{Context, lock};

pub struct Storage {
    buffer: Option<wgpu::Buffer>,
    pub(crate) stream_id: u64,
    home: Weak<Stream>,
    ctx: Weak<Context>,
    last_write: Mutex<WriteMark>,
    /// Tensors carved out of this buffer (more than one for a pack).
    regions: AtomicUsize,
}

/// The stream and batch (1-based count of that stream's submits) that last
/// recorded a write into a storage; batch 0 means nothing was written yet.
struct WriteMark {
    stream: Weak<Stream>,
    stream_id: u64,
    batch: u64,
}

impl Storage {
    pub(crate) fn new(buffer: wgpu::Buffer, home: &Arc<Stream>) -> Self {
        Self {
            buffer: Some(buffer),
            stream_id: home.id,
            home: Arc::downgrade(home),
            ctx: Arc::downgrade(&home.ctx),
            last_write: Mutex::new(WriteMark { stream: Arc::downgrade(home), stream_id: home.id, batch: 0 }),
            regions: AtomicUsize::new(1),
        }
    }

    /// Another stream whose batch `batch` wrote this storage, when that is
    /// not `reader` (the stream about to use it). Nothing is cloned in the
    /// common case: the last writer is the reader itself.
    pub(crate) fn foreign_writer(&self, reader: u64) -> Option<(Arc<Stream>, u64)> {
        let mark = lock(&self.last_write);
        if mark.stream_id == reader || mark.batch == 0 {
            return None;
        }
        Some((mark.stream.upgrade()?, mark.batch))
    }

    /// Notes that `writer`'s batch `batch` writes this storage.
    pub(crate) fn mark_written(&self, writer: &Arc<Stream>, batch: u64) {
        let mut mark = lock(&self.last_write);
        if mark.stream_id != writer.id {
            mark.stream = Arc::downgrade(writer);
            mark.stream_id = writer.id;
        }
        mark.batch = batch;
    }

    pub(crate) fn regions(&self) -> usize {
        self.regions.load(Ordering::Relaxed)
    }

    /// Records that `n` tensors share this buffer (a pack); set once, at packing.
    pub(crate) fn set_regions(&self, n: usize) {
        self.regions.store(n, Ordering::Relaxed);
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("the buffer lives until drop")
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let Some(buf) = self.buffer.take() else { return };
        match self.home.upgrade() {
            Some(stream) => stream.give_back(buf),
            None => {
                if let Some(ctx) = self.ctx.upgrade() {
                    ctx.count_in_use(-(buf.size() as i64));
                }
            }
        }
    }
}
