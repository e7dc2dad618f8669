//! Per-kernel GPU timing with timestamp queries.
//!
//! With TIMESTAMP_QUERY_INSIDE_PASSES a timestamp is written around each
//! dispatch inside the shared pass; without it each dispatch gets a pass of its
//! own with begin/end timestamps. Either way profiling makes every batch wait
//! for the GPU, so it is for `--profile` runs only.

use std::collections::HashMap;

use super::Context;
use crate::error::{Error, Result};

const QUERY_CAPACITY: u32 = 4096;

/// Total GPU time spent in one kernel label, and the bytes of the tensors
/// its dispatches bound read-only and writable (a writable one may be read
/// too): the footprint, a lower bound on the memory traffic, since a kernel
/// may read a value more than once.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub label: String,
    pub dispatches: u64,
    pub total_ms: f64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// One profiled dispatch: its label and the bytes it binds to read and to write.
#[derive(Clone, Copy)]
pub(crate) struct DispatchCost {
    pub label: &'static str,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Default)]
struct Totals {
    dispatches: u64,
    ms: f64,
    bytes_read: u64,
    bytes_written: u64,
}

pub(crate) struct Profiler {
    pub query_set: wgpu::QuerySet,
    pub inside_passes: bool,
    resolve_buf: wgpu::Buffer,
    read_buf: wgpu::Buffer,
    dispatches: Vec<DispatchCost>,
    period_ns: f64,
    totals: HashMap<&'static str, Totals>,
}

impl Profiler {
    pub fn new(ctx: &Context) -> Result<Self> {
        let features = ctx.device.features();
        if !features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::Limit(format!(
                "adapter {} has no timestamp queries, so kernels cannot be profiled",
                ctx.info.name
            )));
        }
        let device = &ctx.device;
        let bytes = u64::from(QUERY_CAPACITY) * 8;
        Ok(Self {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("cmae profile"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERY_CAPACITY,
            }),
            inside_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            resolve_buf: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cmae profile resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read_buf: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cmae profile read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            dispatches: Vec::new(),
            period_ns: f64::from(ctx.queue.get_timestamp_period()),
            totals: HashMap::new(),
        })
    }

    pub fn full(&self) -> bool {
        (self.dispatches.len() as u32 + 1) * 2 > QUERY_CAPACITY
    }

    /// Reserves the begin/end query indices for the next dispatch.
    pub fn next_pair(&mut self, cost: DispatchCost) -> u32 {
        self.dispatches.push(cost);
        (self.dispatches.len() as u32 - 1) * 2
    }

    pub fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        let n = self.dispatches.len() as u32 * 2;
        if n == 0 {
            return;
        }
        encoder.resolve_query_set(&self.query_set, 0..n, &self.resolve_buf, 0);
        encoder.copy_buffer_to_buffer(&self.resolve_buf, 0, &self.read_buf, 0, u64::from(n) * 8);
    }

    /// Reads the resolved timestamps of the batch that was just waited for.
    pub fn collect(&mut self, ctx: &Context) -> Result<()> {
        if self.dispatches.is_empty() {
            return Ok(());
        }
        let n = self.dispatches.len() as u64 * 2;
        let (tx, rx) = std::sync::mpsc::channel();
        self.read_buf.map_async(wgpu::MapMode::Read, ..n * 8, move |r| {
            let _ = tx.send(r);
        });
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for timestamps: {e}")))?;
        rx.recv()
            .map_err(|e| Error::Gpu(e.to_string()))?
            .map_err(|e| Error::Gpu(format!("reading timestamps: {e}")))?;
        {
            let view = self.read_buf.get_mapped_range(..n * 8).map_err(|e| Error::Gpu(e.to_string()))?;
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            for (i, d) in self.dispatches.iter().enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.period_ns;
                let t = self.totals.entry(d.label).or_default();
                t.dispatches += 1;
                t.ms += dt * 1e-6;
                t.bytes_read += d.bytes_read;
                t.bytes_written += d.bytes_written;
            }
        }
        self.read_buf.unmap();
        self.dispatches.clear();
        Ok(())
    }

    pub fn take(&mut self) -> Vec<KernelTime> {
        let mut out: Vec<KernelTime> = self
            .totals
            .drain()
            .map(|(label, t)| KernelTime {
                label: label.to_string(),
                dispatches: t.dispatches,
                total_ms: t.ms,
                bytes_read: t.bytes_read,
                bytes_written: t.bytes_written,
            })
            .collect();
        out.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        out
    }
}
