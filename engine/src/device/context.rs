//! The shared half of a device: adapter, limits, compiled pipelines, the
//! autotuning table and the GPU error sink. Every stream of a device holds
//! one `Arc<Context>`; nothing here belongs to a half-recorded batch, so
//! threads never wait on each other for more than a cache lookup.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::abi::{self, Reflection};
use super::{Binding, KernelFamilies, KernelSpec, MatmulKind, TileShape, lock};
use crate::error::{Error, Result};
use crate::kernels::KernelVariant;
use crate::tune::{TuneConfig, Tuner};

pub(crate) struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// The matmul family `CMAE_MATMUL` or `Device::set_matmul_kind` forces: no tuning then.
    pub(crate) matmul_forced: Mutex<Option<MatmulKind>>,
    /// What this adapter may run, and the built-in choices among it.
    pub(crate) families: KernelFamilies,
    pub(crate) tuner: Tuner,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    /// naga's view of each shader, for the ABI check of each new pipeline.
    reflections: Mutex<HashMap<&'static str, Arc<Reflection>>>,
    /// `(shader, entry)` pairs whose Rust wrapper passed the ABI check.
    checked: Mutex<HashSet<(&'static str, &'static str)>>,
    pub(crate) readback_pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    gpu_error: Arc<Mutex<Option<String>>>,
    /// Bytes of tensor buffers handed out (in use) and waiting in stream pools.
    pub(crate) in_use: AtomicU64,
    pub(crate) pooled: AtomicU64,
    /// The most `in_use` has been since the last `reset_peak`.
    pub(crate) peak_in_use: AtomicU64,
}

#[derive(Hash, PartialEq, Eq)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

impl Context {
    pub(crate) fn new(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, tune: &TuneConfig) -> Self {
        let gpu_error = Arc::new(Mutex::new(None::<String>));
        let sink = gpu_error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = lock(&sink);
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let families = KernelFamilies::of(device.features(), &info);
        let matmul_forced = match std::env::var("CMAE_MATMUL").as_deref() {
            Ok("register") => Some(MatmulKind::Register),
            Ok("subgroup") if families.subgroups_of_8 => Some(MatmulKind::Subgroup),
            Ok("tiled") => Some(MatmulKind::Tiled(TileShape::DEFAULT)),
            _ => None,
        };
        Self {
            limits: device.limits(),
            tuner: Tuner::new(tune, &info),
            info,
            matmul_forced: Mutex::new(matmul_forced),
            families,
            pipelines: Mutex::default(),
            modules: Mutex::default(),
            reflections: Mutex::default(),
            checked: Mutex::default(),
            readback_pool: Mutex::default(),
            gpu_error,
            in_use: AtomicU64::new(0),
            pooled: AtomicU64::new(0),
            peak_in_use: AtomicU64::new(0),
            device,
            queue,
        }
    }

    /// The pipeline for `spec`, built once. A new pipeline is first checked
    /// against the shader's reflection: a wrapper that disagrees with its
    /// WGSL (uniform size, bindings, access, workgroup size) is an error here
    /// rather than garbage on the GPU.
    pub(crate) fn pipeline(
        &self,
        spec: &KernelSpec<'_>,
        params_size: usize,
        bindings: &[Binding<'_>],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            shader: spec.shader.name,
            entry: spec.entry,
            constants: spec.constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        };
        if let Some(p) = lock(&self.pipelines).get(&key) {
            return Ok(p.clone());
        }
        if let Some(missing) = self.families.missing(spec.shader.needs) {
            return Err(Error::NoAdapter(format!(
                "kernel {}::{} needs {missing}, which adapter {} ({:?}) lacks; use an adapter that has it (CMAE_BACKEND, CMAE_ADAPTER)",
                spec.shader.name, spec.entry, self.info.name, self.info.backend
            )));
        }
        let bound: Vec<_> = bindings.iter().map(|b| (b.slot, b.access)).collect();
        abi::check(&*self.reflection(spec)?, spec, params_size, &bound)?;
        lock(&self.checked).insert((spec.shader.name, spec.entry));
        let module = lock(&self.modules)
            .entry(spec.shader.name)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(spec.shader.name),
                    source: wgpu::ShaderSource::Wgsl(spec.shader.source.into()),
                })
            })
            .clone();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
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
        lock(&self.pipelines).insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn reflection(&self, spec: &KernelSpec<'_>) -> Result<Arc<Reflection>> {
        if let Some(r) = lock(&self.reflections).get(spec.shader.name) {
            return Ok(r.clone());
        }
        let r = Arc::new(Reflection::of(spec.shader)?);
        lock(&self.reflections).insert(spec.shader.name, r.clone());
        Ok(r)
    }

    /// `(shader, entry)` pairs whose wrappers have been checked against their WGSL.
    pub(crate) fn checked_kernels(&self) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = lock(&self.checked).iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn built_kernels(&self) -> Vec<KernelVariant> {
        let shader = |name| crate::shaders::ALL.iter().copied().find(|s| s.name == name).expect("a registered shader");
        lock(&self.pipelines)
            .keys()
            .map(|k| KernelVariant {
                shader: shader(k.shader),
                entry: k.entry.to_string(),
                constants: k.constants.iter().map(|&(n, bits)| (n, f64::from_bits(bits))).collect(),
            })
            .collect()
    }

    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_gpu_error()
    }

    pub(crate) fn check_gpu_error(&self) -> Result<()> {
        match lock(&self.gpu_error).take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    pub(crate) fn count_in_use(&self, delta: i64) {
        let now = add_signed(&self.in_use, delta);
        self.peak_in_use.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn count_pooled(&self, delta: i64) {
        add_signed(&self.pooled, delta);
    }
}

/// Adds `delta` and returns the new value.
fn add_signed(counter: &AtomicU64, delta: i64) -> u64 {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed) + delta as u64
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed) - delta.unsigned_abs()
    }
}
