//! A stream: the recording half of a device, owned by one thread.
//!
//! Dispatches are appended to one open compute pass of one open command
//! encoder; their small parameter blocks go to a host-side arena written to a
//! single uniform buffer just before the batch is submitted. A whole training
//! step is therefore one submit. Each thread that records GPU work (the
//! training loop, the viewer's model worker) has a stream of its own, so one
//! never flushes or waits on the other's half-recorded batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::pool::Pool;
use super::profile::{DispatchCost, Profiler};
use super::read::{MapState, ReadSlot};
use super::storage::Storage;
use super::{Context, lock};
use crate::error::Result;

const INITIAL_ARENA: u64 = 4 << 20;

pub(crate) struct Stream {
    pub(crate) id: u64,
    pub(crate) ctx: Arc<Context>,
    pub(crate) recorder: Mutex<Recorder>,
    pub(crate) pool: Mutex<Pool>,
    /// FLOPs of every matmul recorded on this stream, counted from the shapes
    /// each dispatch was given: the measured side of `cmae bench`'s estimate.
    pub(crate) matmul_flops: AtomicU64,
    /// Dispatches recorded on this stream (`cmae bench pretrain` reports them per step).
    pub(crate) dispatches: AtomicU64,
    /// `(decision, variant)` pairs this stream runs without asking the tuner:
    /// the tuner's own streams, timing one candidate.
    pub(crate) pins: Mutex<Vec<(&'static str, &'static str)>>,
}

impl Stream {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let arena_buf = make_arena(&ctx.device, INITIAL_ARENA);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            recorder: Mutex::new(Recorder {
                encoder: None,
                pass: None,
                arena: Vec::with_capacity(INITIAL_ARENA as usize),
                arena_buf,
                to_map: Vec::new(),
                keep_alive: Vec::new(),
                submitted: 0,
                profiler: None,
            }),
            pool: Mutex::default(),
            matmul_flops: AtomicU64::new(0),
            dispatches: AtomicU64::new(0),
            pins: Mutex::default(),
            ctx,
        }
    }

    pub(crate) fn give_back(&self, buf: wgpu::Buffer) {
        lock(&self.pool).give_back(&self.ctx, buf);
    }
}

impl Drop for Stream {
    /// Work recorded and never submitted would be lost: submit it.
    fn drop(&mut self) {
        let rec = self.recorder.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = rec.submit(&self.ctx) {
            log::warn!("submitting a dropped stream's last batch: {e}");
        }
        self.pool.get_mut().unwrap_or_else(|p| p.into_inner()).trim(&self.ctx);
    }
}

pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Parameter blocks and upload data for the batch being recorded.
    pub(crate) arena: Vec<u8>,
    pub(crate) arena_buf: wgpu::Buffer,
    /// Async reads whose buffers get mapped once the batch is submitted.
    pub(crate) to_map: Vec<Arc<ReadSlot>>,
    /// Storage from other streams used by this batch, held until it is submitted.
    pub(crate) keep_alive: Vec<Arc<Storage>>,
    /// Batches submitted so far; the one being recorded is `submitted + 1`.
    pub(crate) submitted: u64,
    pub(crate) profiler: Option<Profiler>,
}

fn make_arena(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("cmae params+uploads"),
        size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

impl Recorder {
    pub(crate) fn encoder(&mut self, ctx: &Context) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cmae batch") })
        })
    }

    pub(crate) fn close_pass(&mut self) {
        self.pass = None;
    }

    /// Space for `size` bytes in the arena; submits the batch first when full,
    /// and grows the arena when one item alone is larger than it.
    pub(crate) fn reserve(&mut self, ctx: &Context, size: u64, align: u64) -> Result<u64> {
        let mut offset = (self.arena.len() as u64).next_multiple_of(align);
        if offset + size > self.arena_buf.size() {
            self.submit(ctx)?;
            offset = 0;
            if size > self.arena_buf.size() {
                self.arena_buf = make_arena(&ctx.device, size.next_power_of_two());
            }
        }
        self.arena.resize((offset + size) as usize, 0);
        Ok(offset)
    }

    pub(crate) fn record_dispatch(
        &mut self,
        ctx: &Context,
        label: &'static str,
        bound_bytes: impl FnOnce() -> (u64, u64),
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) -> Result<()> {
        if self.profiler.as_ref().is_some_and(Profiler::full) {
            self.submit(ctx)?;
        }
        // Counting the bound bytes is profiler work: not done otherwise.
        let query_pair = self.profiler.as_mut().map(|p| {
            let (bytes_read, bytes_written) = bound_bytes();
            p.next_pair(DispatchCost { label, bytes_read, bytes_written })
        });
        let timing = self.profiler.as_ref().map(|p| (p.query_set.clone(), p.inside_passes));
        if let (Some((qs, false)), Some(first)) = (&timing, query_pair) {
            // Timestamps only at pass boundaries: give this dispatch a pass of its own.
            self.close_pass();
            let mut pass = self.encoder(ctx).begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: qs,
                    beginning_of_pass_write_index: Some(first),
                    end_of_pass_write_index: Some(first + 1),
                }),
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            return Ok(());
        }
        if self.pass.is_none() {
            let pass = self
                .encoder(ctx)
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("cmae"), timestamp_writes: None });
            self.pass = Some(pass.forget_lifetime());
        }
        let pass = self.pass.as_mut().expect("pass was just opened");
        if let (Some((qs, _)), Some(q)) = (&timing, query_pair) {
            pass.write_timestamp(qs, q);
        }
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if let (Some((qs, _)), Some(q)) = (&timing, query_pair) {
            pass.write_timestamp(qs, q + 1);
        }
        Ok(())
    }

    pub(crate) fn submit(&mut self, ctx: &Context) -> Result<()> {
        self.close_pass();
        if self.encoder.is_none() && self.arena.is_empty() {
            return Ok(());
        }
        if let Some(profiler) = self.profiler.as_mut() {
            let encoder = self.encoder.get_or_insert_with(|| {
                ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cmae batch") })
            });
            profiler.resolve(encoder);
        }
        if !self.arena.is_empty() {
            ctx.queue.write_buffer(&self.arena_buf, 0, &self.arena);
            self.arena.clear();
        }
        let commands = self.encoder.take().map(|e| e.finish());
        ctx.queue.submit(commands);
        self.submitted += 1;
        // Submitted work is ordered before anything recorded later on any stream.
        self.keep_alive.clear();
        for slot in self.to_map.drain(..) {
            let s = slot.clone();
            *lock(&slot.state) = MapState::Submitted;
            slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| s.mapped(r.map_err(|e| e.to_string())));
        }
        if let Some(profiler) = self.profiler.as_mut() {
            ctx.wait_idle()?;
            profiler.collect(ctx)?;
        }
        ctx.keep_pipeline_list();
        ctx.check_gpu_error()
    }
}
