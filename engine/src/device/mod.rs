//! The GPU device: adapter, pipeline cache, buffer pool and command batching.
//!
//! Kernels never submit work themselves. Each dispatch is appended to one open
//! compute pass of one open command encoder; its small parameter block goes to
//! a host-side arena that is written to a single uniform buffer just before
//! the batch is submitted. A whole training step is therefore one submit, and
//! nothing waits on the GPU until a caller asks to read a tensor.

mod adapter;
mod overhead;
mod pool;
mod profile;

pub use adapter::{AdapterRequest, wanted_features};
pub use overhead::DispatchOverhead;
pub use profile::KernelTime;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::{Error, Result};
use crate::shaders::Shader;
use crate::tensor::{DType, Tensor};
use profile::Profiler;

/// Which matmul kernel family runs on this adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKind {
    /// Register-blocked straight from storage buffers, no shared memory:
    /// for CPU rasterisers, where shared memory does not pay.
    Register,
    /// `Register` with B shared across 8-lane subgroups by broadcasts:
    /// fastest on lavapipe (1.8× `Register`).
    Subgroup,
    /// Shared-memory tiles: fastest on real GPUs.
    Tiled,
}

/// A compute kernel: one entry point of one shader with fixed override constants.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec<'a> {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub constants: &'a [(&'static str, f64)],
    /// Name used in profiles (`cmae bench pretrain --profile`).
    pub label: &'static str,
}

/// Bytes in use and waiting in the buffer pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    pub in_use_bytes: u64,
    pub pooled_bytes: u64,
}

#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    matmul_kind: Mutex<MatmulKind>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pub(crate) pool: Mutex<pool::Pool>,
    readback_pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    recorder: Mutex<Recorder>,
    gpu_error: Arc<Mutex<Option<String>>>,
    /// FLOPs of every matmul recorded so far, counted from the shapes each
    /// dispatch was given: the measured side of `cmae bench`'s FLOP estimate.
    matmul_flops: AtomicU64,
}

#[derive(Hash, PartialEq, Eq)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Parameter blocks and upload data for the batch being recorded.
    arena: Vec<u8>,
    arena_buf: wgpu::Buffer,
    /// Async reads whose buffers get mapped once the batch is submitted.
    to_map: Vec<Arc<ReadSlot>>,
    profiler: Option<Profiler>,
}

const INITIAL_ARENA: u64 = 4 << 20;

impl Device {
    /// Opens the adapter chosen by `CMAE_BACKEND` / `CMAE_ADAPTER` (or the best one).
    pub fn from_env() -> Result<Self> {
        Self::open(&AdapterRequest::from_env()?)
    }

    pub fn open(req: &AdapterRequest) -> Result<Self> {
        let adapter = adapter::choose(req)?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("cmae"),
            required_features: adapter::wanted_features(&adapter),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::NoAdapter(format!("could not open adapter {}: {e}", info.name)))?;
        log::info!(
            "GPU adapter: {} ({:?}, {:?}, driver {} {})",
            info.name,
            info.backend,
            info.device_type,
            info.driver,
            info.driver_info
        );
        Ok(Self::from_wgpu(device, queue, info))
    }

    /// Wraps a device someone else opened (the viewer passes eframe's), so the
    /// model and the UI share one GPU.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let gpu_error = Arc::new(Mutex::new(None::<String>));
        let sink = gpu_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let matmul_kind = match std::env::var("CMAE_MATMUL").as_deref() {
            Ok("register") => MatmulKind::Register,
            Ok("subgroup") if subgroups_of_8(&device, &info) => MatmulKind::Subgroup,
            Ok("tiled") => MatmulKind::Tiled,
            _ if info.device_type == wgpu::DeviceType::Cpu && subgroups_of_8(&device, &info) => MatmulKind::Subgroup,
            _ if info.device_type == wgpu::DeviceType::Cpu => MatmulKind::Register,
            _ => MatmulKind::Tiled,
        };
        let limits = device.limits();
        let arena_buf = make_arena(&device, INITIAL_ARENA);
        Self {
            inner: Arc::new(Inner {
                info,
                limits,
                matmul_kind: Mutex::new(matmul_kind),
                pipelines: Mutex::default(),
                modules: Mutex::default(),
                pool: Mutex::default(),
                readback_pool: Mutex::default(),
                recorder: Mutex::new(Recorder {
                    encoder: None,
                    pass: None,
                    arena: Vec::with_capacity(INITIAL_ARENA as usize),
                    arena_buf,
                    to_map: Vec::new(),
                    profiler: None,
                }),
                gpu_error,
                matmul_flops: AtomicU64::new(0),
                device,
                queue,
            }),
        }
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn features(&self) -> wgpu::Features {
        self.inner.device.features()
    }

    pub fn wgpu_device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn wgpu_queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    pub fn matmul_kind(&self) -> MatmulKind {
        *lock(&self.inner.matmul_kind)
    }

    /// Forces a matmul family (tests run both on every adapter).
    pub fn set_matmul_kind(&self, kind: MatmulKind) {
        *lock(&self.inner.matmul_kind) = kind;
    }

    /// FLOPs (2·m·n·k per matrix product) of every matmul recorded on this device.
    pub fn matmul_flops(&self) -> u64 {
        self.inner.matmul_flops.load(Ordering::Relaxed)
    }

    pub(crate) fn count_matmul_flops(&self, flops: u64) {
        self.inner.matmul_flops.fetch_add(flops, Ordering::Relaxed);
    }

    pub fn memory(&self) -> MemoryStats {
        let pool = lock(&self.inner.pool);
        MemoryStats { in_use_bytes: pool.in_use, pooled_bytes: pool.pooled }
    }

    /// Releases pooled buffers back to the driver.
    pub fn trim_pool(&self) {
        lock(&self.inner.pool).trim();
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// A pooled storage buffer of at least `bytes`; fails cleanly past the adapter's limits.
    pub(crate) fn alloc(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let max = self.inner.limits.max_buffer_size;
        if bytes > max {
            return Err(Error::Limit(format!(
                "a tensor of {} MiB exceeds this adapter's largest buffer ({} MiB); use a smaller --batch",
                bytes >> 20,
                max >> 20
            )));
        }
        Ok(lock(&self.inner.pool).take(&self.inner.device, bytes))
    }

    /// Appends one dispatch to the open batch. Each tensor binds at the given
    /// binding number of group 0; the parameter block binds at 0.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        spec: KernelSpec<'_>,
        params: &P,
        tensors: &[(u32, &Tensor)],
        groups: [u32; 3],
    ) -> Result<()> {
        let max_groups = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::Limit(format!(
                "{}: dispatch of {groups:?} workgroups exceeds this adapter's {max_groups} per dimension",
                spec.label
            )));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max_binding = self.inner.limits.max_storage_buffer_binding_size;
        for (_, t) in tensors {
            if t.byte_len() > max_binding {
                return Err(Error::Limit(format!(
                    "{}: a tensor of shape {:?} ({} MiB) exceeds this adapter's {} MiB storage binding limit; use a smaller --batch",
                    spec.label,
                    t.shape(),
                    t.byte_len() >> 20,
                    max_binding >> 20
                )));
            }
        }
        let pipeline = self.pipeline(&spec)?;
        let param_bytes = bytemuck::bytes_of(params);
        let param_size = (param_bytes.len() as u64).next_multiple_of(16);
        let align = u64::from(self.inner.limits.min_uniform_buffer_offset_alignment);

        let mut rec = lock(&self.inner.recorder);
        let offset = rec.reserve(self, param_size, align)?;
        rec.arena[offset as usize..offset as usize + param_bytes.len()].copy_from_slice(param_bytes);

        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = Vec::with_capacity(tensors.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &rec.arena_buf,
                offset,
                size: std::num::NonZeroU64::new(param_size),
            }),
        });
        for &(binding, t) in tensors {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: t.buffer(),
                    offset: 0,
                    size: std::num::NonZeroU64::new(t.byte_len().next_multiple_of(16)),
                }),
            });
        }
        let bind_group = self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.label),
            layout: &layout,
            entries: &entries,
        });
        rec.record_dispatch(self, spec.label, &pipeline, &bind_group, groups)
    }

    fn pipeline(&self, spec: &KernelSpec<'_>) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            shader: spec.shader.name,
            entry: spec.entry,
            constants: spec.constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        };
        if let Some(p) = lock(&self.inner.pipelines).get(&key) {
            return Ok(p.clone());
        }
        let module = {
            let mut modules = lock(&self.inner.modules);
            modules
                .entry(spec.shader.name)
                .or_insert_with(|| {
                    self.inner.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(spec.shader.name),
                        source: wgpu::ShaderSource::Wgsl(spec.shader.source.into()),
                    })
                })
                .clone()
        };
        let pipeline = self.inner.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.label),
            layout: None,
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: spec.constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.check_gpu_error()?;
        let pipeline = Arc::new(pipeline);
        lock(&self.inner.pipelines).insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Uploads host data into a new tensor. The copy is recorded in order with
    /// the dispatches, so a pooled buffer still read by recorded work is safe.
    pub fn upload(&self, data: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::uninit(self, shape, dtype)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrites a tensor's contents (recorded in order, like a dispatch).
    pub fn write(&self, t: &Tensor, data: &[u8]) -> Result<()> {
        if data.len() as u64 != t.byte_len() {
            return Err(crate::error::shape_err(
                "write",
                format!("{} bytes for a tensor of shape {:?} ({} bytes)", data.len(), t.shape(), t.byte_len()),
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut rec = lock(&self.inner.recorder);
        let offset = rec.reserve(self, data.len() as u64, 16)?;
        rec.arena[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        rec.close_pass();
        let arena_buf = rec.arena_buf.clone();
        rec.encoder(self).copy_buffer_to_buffer(&arena_buf, offset, t.buffer(), 0, data.len() as u64);
        Ok(())
    }

    /// Copies `bytes` from one tensor's start into another's start.
    pub fn copy(&self, src: &Tensor, dst: &Tensor, bytes: u64) -> Result<()> {
        if bytes > src.byte_len() || bytes > dst.byte_len() || !bytes.is_multiple_of(4) {
            return Err(crate::error::shape_err(
                "copy",
                format!("{bytes} bytes from {:?} into {:?}", src.shape(), dst.shape()),
            ));
        }
        let mut rec = lock(&self.inner.recorder);
        rec.close_pass();
        rec.encoder(self).copy_buffer_to_buffer(src.buffer(), 0, dst.buffer(), 0, bytes);
        Ok(())
    }

    /// Submits everything recorded so far. Does not wait.
    pub fn flush(&self) -> Result<()> {
        lock(&self.inner.recorder).submit(self)
    }

    /// Submits and waits until the GPU is idle.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.wait_idle()
    }

    fn wait_idle(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_gpu_error()
    }

    fn check_gpu_error(&self) -> Result<()> {
        match lock(&self.inner.gpu_error).take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// Reads a tensor back to the host, waiting for all recorded work.
    pub fn read_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        self.read_later(t)?.wait()
    }

    /// Schedules a read of `t` at the end of the current batch. The result is
    /// collected later with [`PendingRead::try_take`] or [`PendingRead::wait`],
    /// so the training loop never stalls on the GPU for its loss value.
    pub fn read_later(&self, t: &Tensor) -> Result<PendingRead> {
        let bytes = t.byte_len().next_multiple_of(4).max(4);
        let class = pool::size_class(bytes);
        let buffer = lock(&self.inner.readback_pool).get_mut(&class).and_then(Vec::pop).unwrap_or_else(|| {
            self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cmae readback"),
                size: class,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let slot = Arc::new(ReadSlot { buffer, len: t.byte_len(), state: Mutex::new(MapState::Recorded) });
        let mut rec = lock(&self.inner.recorder);
        rec.close_pass();
        if t.byte_len() > 0 {
            rec.encoder(self).copy_buffer_to_buffer(t.buffer(), 0, &slot.buffer, 0, bytes);
        }
        rec.to_map.push(slot.clone());
        Ok(PendingRead { device: self.clone(), slot: Some(slot) })
    }

    /// Turns per-dispatch GPU timing on or off (needs TIMESTAMP_QUERY).
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        let mut rec = lock(&self.inner.recorder);
        rec.submit(self)?;
        rec.profiler = if on { Some(Profiler::new(self)?) } else { None };
        Ok(())
    }

    /// Time per kernel label since profiling was turned on, slowest first.
    pub fn take_profile(&self) -> Result<Vec<KernelTime>> {
        let mut rec = lock(&self.inner.recorder);
        rec.submit(self)?;
        Ok(rec.profiler.as_mut().map(Profiler::take).unwrap_or_default())
    }
}

/// The subgroup matmul assumes exactly 8 lanes per subgroup.
fn subgroups_of_8(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> bool {
    device.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size == 8 && info.subgroup_max_size == 8
}

impl Device {
    /// Whether this device can run [`MatmulKind::Subgroup`].
    pub fn supports_subgroup_matmul(&self) -> bool {
        subgroups_of_8(&self.inner.device, &self.inner.info)
    }
}

fn make_arena(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("cmae params+uploads"),
        size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    fn encoder(&mut self, dev: &Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            dev.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cmae batch") })
        })
    }

    fn close_pass(&mut self) {
        self.pass = None;
    }

    /// Space for `size` bytes in the arena; submits the batch first when full,
    /// and grows the arena when one item alone is larger than it.
    fn reserve(&mut self, dev: &Device, size: u64, align: u64) -> Result<u64> {
        let mut offset = (self.arena.len() as u64).next_multiple_of(align);
        if offset + size > self.arena_buf.size() {
            self.submit(dev)?;
            offset = 0;
            if size > self.arena_buf.size() {
                self.arena_buf = make_arena(&dev.inner.device, size.next_power_of_two());
            }
        }
        self.arena.resize((offset + size) as usize, 0);
        Ok(offset)
    }

    fn record_dispatch(
        &mut self,
        dev: &Device,
        label: &'static str,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        groups: [u32; 3],
    ) -> Result<()> {
        if self.profiler.as_ref().is_some_and(Profiler::full) {
            self.submit(dev)?;
        }
        let query_pair = self.profiler.as_mut().map(|p| p.next_pair(label));
        let inside_pass = self.profiler.as_ref().is_none_or(|p| p.inside_passes);
        if !inside_pass {
            // Timestamps only at pass boundaries: give this dispatch a pass of its own.
            self.close_pass();
            let (qs, first) = (self.profiler.as_ref().unwrap().query_set.clone(), query_pair.unwrap());
            let encoder = self.encoder(dev);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
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
            let encoder = self.encoder(dev);
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("cmae"), timestamp_writes: None });
            self.pass = Some(pass.forget_lifetime());
        }
        let qs = self.profiler.as_ref().map(|p| p.query_set.clone());
        let pass = self.pass.as_mut().expect("pass was just opened");
        if let (Some(qs), Some(q)) = (&qs, query_pair) {
            pass.write_timestamp(qs, q);
        }
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if let (Some(qs), Some(q)) = (&qs, query_pair) {
            pass.write_timestamp(qs, q + 1);
        }
        Ok(())
    }

    fn submit(&mut self, dev: &Device) -> Result<()> {
        self.close_pass();
        if self.encoder.is_none() && self.arena.is_empty() {
            return Ok(());
        }
        if let Some(profiler) = self.profiler.as_mut() {
            let encoder = self.encoder.get_or_insert_with(|| {
                dev.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cmae batch") })
            });
            profiler.resolve(encoder);
        }
        if !self.arena.is_empty() {
            dev.inner.queue.write_buffer(&self.arena_buf, 0, &self.arena);
            self.arena.clear();
        }
        let commands = self.encoder.take().map(|e| e.finish());
        dev.inner.queue.submit(commands);
        for slot in self.to_map.drain(..) {
            let s = slot.clone();
            *lock(&slot.state) = MapState::Submitted;
            slot.buffer.map_async(wgpu::MapMode::Read, .., move |r| {
                *lock(&s.state) = match r {
                    Ok(()) => MapState::Mapped,
                    Err(e) => MapState::Failed(e.to_string()),
                };
            });
        }
        if let Some(profiler) = self.profiler.as_mut() {
            dev.wait_idle()?;
            profiler.collect(dev)?;
        }
        dev.check_gpu_error()
    }
}

enum MapState {
    Recorded,
    Submitted,
    Mapped,
    Failed(String),
}

struct ReadSlot {
    buffer: wgpu::Buffer,
    len: u64,
    state: Mutex<MapState>,
}

/// A tensor read that completes after its batch runs on the GPU.
pub struct PendingRead {
    device: Device,
    slot: Option<Arc<ReadSlot>>,
}

impl PendingRead {
    /// The bytes if the GPU has finished, without blocking.
    pub fn try_take(&mut self) -> Result<Option<Vec<u8>>> {
        let _ = self.device.inner.device.poll(wgpu::PollType::Poll);
        self.take_if_mapped()
    }

    /// Blocks until the bytes are available (submitting the batch if needed).
    pub fn wait(mut self) -> Result<Vec<u8>> {
        let recorded = self.slot.as_ref().is_some_and(|s| matches!(*lock(&s.state), MapState::Recorded));
        if recorded {
            self.device.flush()?;
        }
        loop {
            self.device.wait_idle()?;
            if let Some(bytes) = self.take_if_mapped()? {
                return Ok(bytes);
            }
        }
    }

    fn take_if_mapped(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(slot) = self.slot.as_ref() else {
            return Err(Error::Gpu("this read was already taken".into()));
        };
        let state = std::mem::replace(&mut *lock(&slot.state), MapState::Recorded);
        match state {
            MapState::Mapped => {}
            MapState::Failed(msg) => {
                return Err(Error::Gpu(format!("reading a tensor back: {msg}")));
            }
            other => {
                *lock(&slot.state) = other;
                return Ok(None);
            }
        }
        let bytes = {
            let view =
                slot.buffer.get_mapped_range(..).map_err(|e| Error::Gpu(format!("reading a tensor back: {e}")))?;
            view[..slot.len as usize].to_vec()
        };
        slot.buffer.unmap();
        let slot = self.slot.take().expect("checked above");
        if let Ok(slot) = Arc::try_unwrap(slot) {
            let class = slot.buffer.size();
            lock(&self.device.inner.readback_pool).entry(class).or_default().push(slot.buffer);
        }
        Ok(Some(bytes))
    }
}
