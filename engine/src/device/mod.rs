//! The GPU device: one shared [`Context`] (adapter, limits, pipeline and
//! module caches, readback buffers) and the stream a handle records on.
//!
//! A [`Device`] is a handle on both. Clones share the stream, so one thread
//! can pass its device around freely; a thread that records on its own (the
//! viewer's model worker next to its training thread) takes
//! [`Device::new_stream`], which shares everything but the recording. Kernels
//! never submit work themselves: they append to the handle's stream, and
//! nothing waits on the GPU until a caller asks to read a tensor.

mod abi;
mod adapter;
mod context;
mod families;
mod pool;
mod profile;
mod read;
mod storage;
mod stream;

pub use abi::{EntryAbi, reflect};
pub use adapter::{
    AdapterRequest, INVOCATIONS_PER_WORKGROUP, LocalRank, STORAGE_BUFFERS_PER_STAGE, choose_async, wanted_features,
};
pub use families::KernelFamilies;
pub use profile::KernelTime;
pub use read::PendingRead;
pub use storage::Storage;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::shaders::Shader;
use crate::tune::TuneConfig;
pub(crate) use context::Context;
use profile::Profiler;
use read::ReadSlot;
use stream::Stream;

/// Which matmul kernel family runs on this adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKind {
    /// Register-blocked straight from storage buffers, no shared memory:
    /// for CPU rasterisers, where shared memory does not pay.
    Register,
    /// `Register` with B shared across 8-lane subgroups by broadcasts:
    /// fastest on lavapipe (1.8× `Register`).
    Subgroup,
    /// Shared-memory tiles of a given shape: fastest on real GPUs.
    Tiled(TileShape),
}

/// A shape of the shared-memory tiled matmul (`shaders/matmul_tiled.wgsl`):
/// each of a workgroup's 16×16 invocations holds a `tm`×`tn` block of C, so
/// the workgroup's tile is (16·tm)×(16·tn); `bk` is the depth of the slice
/// staged per step, and `double` stages the next slice while the current one
/// is multiplied. Which is fastest depends on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileShape {
    pub tm: u32,
    pub tn: u32,
    pub bk: u32,
    pub double: bool,
}

impl TileShape {
    /// 64×64 tiles, 4×4 per invocation, slices of 16: the shape that works
    /// everywhere (the default until the autotuner has measured the others).
    pub const DEFAULT: TileShape = TileShape { tm: 4, tn: 4, bk: 16, double: false };

    /// Every shape the kernel is built for: each stages at most 2048 floats
    /// of A and of B (16 KiB of workgroup memory, WebGPU's minimum).
    pub const ALL: [TileShape; 6] = [
        Self::DEFAULT,
        TileShape { tm: 4, tn: 4, bk: 32, double: false },
        TileShape { tm: 4, tn: 4, bk: 16, double: true },
        TileShape { tm: 8, tn: 4, bk: 16, double: false },
        TileShape { tm: 8, tn: 8, bk: 16, double: false },
        TileShape { tm: 8, tn: 8, bk: 8, double: true },
    ];

    /// Rows and columns of C per workgroup.
    pub fn tile(&self) -> [u32; 2] {
        [16 * self.tm, 16 * self.tn]
    }

    /// E.g. `128x64k16` or `128x128k8db`.
    pub fn name(&self) -> String {
        let [rows, cols] = self.tile();
        format!("{rows}x{cols}k{}{}", self.bk, if self.double { "db" } else { "" })
    }
}

/// A compute kernel: one entry point of one shader with fixed override constants.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec<'a> {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub constants: &'a [(&'static str, f64)],
    /// Name used in profiles (`cmae bench pretrain --profile`).
    pub label: &'static str,
    /// The `@workgroup_size` the wrapper computes its dispatch grid for
    /// (checked against the shader when the pipeline is built).
    pub workgroup: [u32; 3],
}

impl KernelSpec<'static> {
    /// A kernel without override constants on a one-dimensional workgroup of `threads`.
    pub const fn new(shader: &'static Shader, entry: &'static str, label: &'static str, threads: u32) -> Self {
        Self { shader, entry, constants: &[], label, workgroup: [threads, 1, 1] }
    }
}

/// Whether a kernel only reads a binding or writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

/// One storage binding of a dispatch: made by `Tensor::bind` (read) or
/// `TensorMut::bind_mut` (write), so only a mutable tensor can be written.
pub struct Binding<'a> {
    pub(crate) slot: u32,
    pub(crate) access: Access,
    pub(crate) storage: &'a Arc<Storage>,
    /// Byte offset of the tensor in its buffer (non-zero for a pack's members).
    pub(crate) offset: u64,
    pub(crate) shape: &'a [usize],
    pub(crate) bytes: u64,
    /// Whether another handle shares these elements.
    pub(crate) shared: bool,
}

impl Binding<'_> {
    /// Writing into storage another handle still sees (a tensor the tape
    /// keeps for backward, a view, another stream's unsubmitted batch) would
    /// change values someone treats as immutable: refuse it.
    fn check_unaliased(&self, op: &str) -> Result<()> {
        if self.access == Access::Write && self.shared {
            return Err(Error::Aliased(format!(
                "{op} writes into a tensor of shape {:?} that other handles still read (a tape kept for backward, \
                 a view or clone, or another stream's unsubmitted work); drop them before writing",
                self.shape
            )));
        }
        Ok(())
    }
}

/// Bytes in use and waiting in the buffer pools of all streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub in_use_bytes: u64,
    pub pooled_bytes: u64,
}

/// A handle on a stream, and through it on the context it records for.
#[derive(Clone)]
pub struct Device {
    stream: Arc<Stream>,
}

impl Device {
    /// Opens the adapter chosen by `CMAE_BACKEND` / `CMAE_ADAPTER` (or the
    /// best one), tuning as `CMAE_AUTOTUNE` and `CMAE_CACHE_DIR` say.
    pub fn from_env() -> Result<Self> {
        Self::open(&AdapterRequest::from_env()?, TuneConfig::from_env()?)
    }

    pub fn open(req: &AdapterRequest, tune: TuneConfig) -> Result<Self> {
        pollster::block_on(Self::open_async(req, tune))
    }

    /// [`Device::open`] without blocking, for the browser (WebGPU), where
    /// nothing may wait on the GPU.
    pub async fn open_async(req: &AdapterRequest, tune: TuneConfig) -> Result<Self> {
        let adapter = adapter::choose_async(req).await?;
        let info = adapter.get_info();
        adapter::check_limits(&format!("{} ({:?})", info.name, info.backend), &adapter.limits())?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("cmae"),
                required_features: adapter::wanted_features(&adapter),
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("could not open adapter {}: {e}", info.name)))?;
        log::info!(
            "GPU adapter: {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        Ok(Self::from_wgpu(device, queue, info, tune))
    }

    /// Wraps a device someone else opened (the viewer passes eframe's), so the
    /// model and the UI share one GPU.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, tune: TuneConfig) -> Self {
        Self { stream: Arc::new(Stream::new(Arc::new(Context::new(device, queue, info, &tune)))) }
    }

    /// Builds, on helper threads, the pipelines the last run of `workload`
    /// (e.g. `pretrain`) built on this adapter, while this thread goes on,
    /// and keeps this run's list for the next one (`pipelines-<workload>-…json`
    /// beside the tune cache). A warm start then compiles on every core
    /// instead of one pipeline at a time as the first step meets them. Call
    /// it right after opening; without a cache directory it does nothing.
    pub fn warm_start(&self, workload: &str) {
        self.stream.ctx.warm_start(workload);
    }

    /// A handle on the same context that records on a stream of its own.
    /// Give one to each thread that records GPU work independently.
    pub fn new_stream(&self) -> Self {
        Self { stream: Arc::new(Stream::new(self.stream.ctx.clone())) }
    }

    pub(crate) fn ctx(&self) -> &Context {
        &self.stream.ctx
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.ctx().info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.ctx().limits
    }

    pub fn features(&self) -> wgpu::Features {
        self.ctx().device.features()
    }

    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.ctx().device
    }

    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.ctx().queue
    }

    /// The matmul family forced by `CMAE_MATMUL` or [`Device::set_matmul_kind`],
    /// else the built-in heuristic's; with autotuning on, a shape class may
    /// run another (see [`Device::tune_entries`]).
    pub fn matmul_kind(&self) -> MatmulKind {
        lock(&self.ctx().matmul_forced).unwrap_or_else(|| self.ctx().families.matmul_heuristic())
    }

    /// Forces a matmul family for every product, bypassing the autotuner
    /// (tests run each family on every adapter).
    pub fn set_matmul_kind(&self, kind: MatmulKind) {
        *lock(&self.ctx().matmul_forced) = Some(kind);
    }

    /// Whether this device can run [`MatmulKind::Subgroup`].
    pub fn supports_subgroup_matmul(&self) -> bool {
        self.ctx().families.subgroups_of_8
    }

    /// The kernel families this adapter may run (see [`KernelFamilies`]).
    pub fn kernel_families(&self) -> KernelFamilies {
        self.ctx().families
    }

    /// FLOPs (2·m·n·k per matrix product) of every matmul recorded on this
    /// stream, fused attention counting the products it computes in one pass.
    pub fn matmul_flops(&self) -> u64 {
        self.stream.matmul_flops.load(Ordering::Relaxed)
    }

    /// Variants pinned on this stream, by decision (see `tune`).
    pub(crate) fn pins(&self) -> MutexGuard<'_, Vec<(&'static str, &'static str)>> {
        lock(&self.stream.pins)
    }

    pub(crate) fn count_matmul_flops(&self, flops: u64) {
        self.stream.matmul_flops.fetch_add(flops, Ordering::Relaxed);
    }

    /// Dispatches recorded on this stream so far.
    pub fn dispatches(&self) -> u64 {
        self.stream.dispatches.load(Ordering::Relaxed)
    }

    /// The most tensor memory in use (all streams) since [`Device::reset_peak_memory`].
    pub fn peak_memory_bytes(&self) -> u64 {
        self.ctx().peak_in_use.load(Ordering::Relaxed)
    }

    /// Starts a new peak from what is in use now.
    pub fn reset_peak_memory(&self) {
        self.ctx().peak_in_use.store(self.ctx().in_use.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `(shader, entry)` pairs whose wrappers passed the ABI check so far.
    pub fn checked_kernels(&self) -> Vec<(&'static str, &'static str)> {
        self.ctx().checked_kernels()
    }

    /// Every pipeline built on this device so far (each is in
    /// [`crate::kernels::catalog`]; the kernel ABI test checks that).
    pub fn built_kernels(&self) -> Vec<crate::kernels::KernelVariant> {
        self.ctx().built_kernels()
    }

    pub fn memory(&self) -> MemoryStats {
        MemoryStats {
            in_use_bytes: self.ctx().in_use.load(Ordering::Relaxed),
            pooled_bytes: self.ctx().pooled.load(Ordering::Relaxed),
        }
    }

    /// Releases this stream's pooled buffers back to the driver.
    pub fn trim_pool(&self) {
        lock(&self.stream.pool).trim(self.ctx());
    }

    /// A pooled storage buffer of at least `bytes`; fails cleanly past the adapter's limits.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<Storage> {
        let max = self.ctx().limits.max_buffer_size;
        if bytes > max {
            return Err(Error::Limit(format!(
                "a tensor of {} MiB exceeds this adapter's largest buffer ({} MiB); use a smaller --batch",
                bytes >> 20,
                max >> 20
            )));
        }
        let buffer = lock(&self.stream.pool).take(self.ctx(), bytes);
        Ok(Storage::new(buffer, &self.stream))
    }

    /// Keeps another stream's storage alive until this stream's batch is submitted.
    fn hold_if_foreign(&self, rec: &mut stream::Recorder, storage: &Arc<Storage>) {
        if storage.stream_id != self.stream.id {
            rec.keep_alive.push(storage.clone());
        }
    }

    /// Submits another stream's batch that wrote one of `storages` and is not
    /// submitted yet, so this stream's work runs after those writes. Called
    /// before this stream's recorder is locked, so two streams never wait
    /// on each other's lock while holding their own.
    fn order_after_writers<'s>(&self, storages: impl IntoIterator<Item = &'s Arc<Storage>>) -> Result<()> {
        for storage in storages {
            if let Some((writer, batch)) = storage.foreign_writer(self.stream.id) {
                let mut rec = lock(&writer.recorder);
                if rec.submitted < batch {
                    rec.submit(self.ctx())?;
                }
            }
        }
        Ok(())
    }

    /// Notes that this stream's batch being recorded writes `storage`.
    fn mark_written(&self, rec: &stream::Recorder, storage: &Storage) {
        storage.mark_written(&self.stream, rec.submitted + 1);
    }

    /// Appends one dispatch to this stream's open batch. Each binding binds at
    /// its number in group 0; the parameter block binds at 0.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        spec: KernelSpec<'_>,
        params: &P,
        bindings: &[Binding<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        let max_groups = self.ctx().limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::Limit(format!(
                "{}: dispatch of {groups:?} workgroups exceeds this adapter's {max_groups} per dimension",
                spec.label
            )));
        }
        let max_binding = self.ctx().limits.max_storage_buffer_binding_size;
        for b in bindings {
            if b.bytes > max_binding {
                return Err(Error::Limit(format!(
                    "{}: a tensor of shape {:?} ({} MiB) exceeds this adapter's {} MiB storage binding limit; use a smaller --batch",
                    spec.label,
                    b.shape,
                    b.bytes >> 20,
                    max_binding >> 20
                )));
            }
            b.check_unaliased(spec.label)?;
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let submit_recorded = || lock(&self.stream.recorder).submit(self.ctx());
        let pipeline = self.ctx().pipeline(&spec, size_of::<P>(), bindings, submit_recorded)?;
        self.order_after_writers(bindings.iter().map(|b| b.storage))?;
        let param_bytes = bytemuck::bytes_of(params);
        let param_size = (param_bytes.len() as u64).next_multiple_of(16);
        let align = u64::from(self.ctx().limits.min_uniform_buffer_offset_alignment);

        let mut rec = lock(&self.stream.recorder);
        let offset = rec.reserve(self.ctx(), param_size, align)?;
        rec.arena[offset as usize..offset as usize + param_bytes.len()].copy_from_slice(param_bytes);

        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = Vec::with_capacity(bindings.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &rec.arena_buf,
                offset,
                size: std::num::NonZeroU64::new(param_size),
            }),
        });
        for b in bindings {
            entries.push(wgpu::BindGroupEntry {
                binding: b.slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.storage.buffer(),
                    offset: b.offset,
                    size: std::num::NonZeroU64::new(b.bytes.next_multiple_of(16)),
                }),
            });
        }
        let bind_group = self.ctx().device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.label),
            layout: &layout,
            entries: &entries,
        });
        for b in bindings {
            self.hold_if_foreign(&mut rec, b.storage);
            if b.access == Access::Write {
                self.mark_written(&rec, b.storage);
            }
        }
        self.stream.dispatches.fetch_add(1, Ordering::Relaxed);
        rec.record_dispatch(self.ctx(), spec.label, || bound_bytes(bindings), &pipeline, &bind_group, groups)
    }

    /// Records a copy of host bytes into a tensor (in order with the dispatches).
    pub(crate) fn write_bytes(&self, dst: &Binding<'_>, data: &[u8]) -> Result<()> {
        if data.len() as u64 != dst.bytes {
            return Err(crate::error::shape_err(
                "write",
                format!("{} bytes for a tensor of shape {:?} ({} bytes)", data.len(), dst.shape, dst.bytes),
            ));
        }
        dst.check_unaliased("write")?;
        if data.is_empty() {
            return Ok(());
        }
        self.order_after_writers([dst.storage])?;
        let mut rec = lock(&self.stream.recorder);
        let offset = rec.reserve(self.ctx(), data.len() as u64, 16)?;
        rec.arena[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        rec.close_pass();
        let arena_buf = rec.arena_buf.clone();
        rec.encoder(self.ctx()).copy_buffer_to_buffer(
            &arena_buf,
            offset,
            dst.storage.buffer(),
            dst.offset,
            data.len() as u64,
        );
        self.hold_if_foreign(&mut rec, dst.storage);
        self.mark_written(&rec, dst.storage);
        Ok(())
    }

    /// Records a copy of `bytes` from one tensor's start into another's start.
    pub(crate) fn copy_bytes(&self, src: &Binding<'_>, dst: &Binding<'_>, bytes: u64) -> Result<()> {
        if bytes > src.bytes || bytes > dst.bytes || !bytes.is_multiple_of(4) {
            return Err(crate::error::shape_err(
                "copy",
                format!("{bytes} bytes from {:?} into {:?}", src.shape, dst.shape),
            ));
        }
        dst.check_unaliased("copy")?;
        self.order_after_writers([src.storage, dst.storage])?;
        let mut rec = lock(&self.stream.recorder);
        rec.close_pass();
        rec.encoder(self.ctx()).copy_buffer_to_buffer(
            src.storage.buffer(),
            src.offset,
            dst.storage.buffer(),
            dst.offset,
            bytes,
        );
        self.hold_if_foreign(&mut rec, src.storage);
        self.hold_if_foreign(&mut rec, dst.storage);
        self.mark_written(&rec, dst.storage);
        Ok(())
    }

    /// Schedules a read of `src` at the end of this stream's batch.
    pub(crate) fn read_later<T: bytemuck::Pod>(&self, src: &Binding<'_>) -> Result<PendingRead<T>> {
        let bytes = src.bytes.next_multiple_of(4).max(4);
        let class = pool::size_class(bytes);
        let buffer = lock(&self.ctx().readback_pool).get_mut(&class).and_then(Vec::pop).unwrap_or_else(|| {
            self.ctx().device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cmae readback"),
                size: class,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let slot = Arc::new(ReadSlot::new(buffer, src.bytes));
        self.order_after_writers([src.storage])?;
        let mut rec = lock(&self.stream.recorder);
        rec.close_pass();
        if src.bytes > 0 {
            rec.encoder(self.ctx()).copy_buffer_to_buffer(src.storage.buffer(), src.offset, &slot.buffer, 0, bytes);
        }
        self.hold_if_foreign(&mut rec, src.storage);
        rec.to_map.push(slot.clone());
        Ok(PendingRead::new(self.clone(), slot))
    }

    /// Submits everything this stream recorded so far. Does not wait.
    pub fn flush(&self) -> Result<()> {
        lock(&self.stream.recorder).submit(self.ctx())
    }

    /// Submits and waits until the GPU is idle.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.ctx().wait_idle()
    }

    /// Turns per-dispatch GPU timing of this stream on or off (needs TIMESTAMP_QUERY).
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        let mut rec = lock(&self.stream.recorder);
        rec.submit(self.ctx())?;
        rec.profiler = if on { Some(Profiler::new(self.ctx())?) } else { None };
        Ok(())
    }

    /// Time per kernel label since profiling was turned on, slowest first.
    pub fn take_profile(&self) -> Result<Vec<KernelTime>> {
        let mut rec = lock(&self.stream.recorder);
        rec.submit(self.ctx())?;
        Ok(rec.profiler.as_mut().map(Profiler::take).unwrap_or_default())
    }
}

/// Bytes of the tensors a dispatch binds read-only and writable, for the
/// profiler; a tensor bound twice (a wrapper's stand-in for an unused slot)
/// counts once.
fn bound_bytes(bindings: &[Binding<'_>]) -> (u64, u64) {
    let first = |i: usize| {
        let b = &bindings[i];
        !bindings[..i].iter().any(|o| Arc::ptr_eq(o.storage, b.storage) && o.offset == b.offset && o.bytes == b.bytes)
    };
    let bound = |access| {
        (0..bindings.len()).filter(|&i| bindings[i].access == access && first(i)).map(|i| bindings[i].bytes).sum()
    };
    (bound(Access::Read), bound(Access::Write))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
