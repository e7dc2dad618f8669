//! The shared half of a device: adapter, limits, compiled pipelines, the
//! autotuning table and the GPU error sink. Every stream of a device holds
//! one `Arc<Context>`; nothing here belongs to a half-recorded batch, so
//! threads never wait on each other for more than a cache lookup, or for a
//! pipeline another thread is building.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::abi::{self, Reflection};
use super::{Binding, KernelFamilies, KernelSpec, MatmulKind, TileShape, lock};
use crate::error::{Error, Result};
use crate::kernels::KernelVariant;
use crate::shaders::{self, Shader};
use crate::tune::{Cache, TuneConfig, Tuner};

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
    pipelines: Mutex<HashMap<PipelineKey, Arc<Slot>>>,
    /// Where `warm_start` keeps its pipeline lists (the tune cache's directory).
    cache_dir: Option<PathBuf>,
    /// The pipeline list being prewarmed and kept, once `warm_start` named a workload.
    warm: Mutex<Option<Warm>>,
    /// Pipelines the wrappers asked for, in the order they first did.
    used: Mutex<Vec<PipelineKey>>,
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

/// A pipeline: its shader, entry point and override constants (as bits).
#[derive(Clone, Hash, PartialEq, Eq)]
struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

impl PipelineKey {
    fn of(spec: &KernelSpec<'_>) -> Self {
        Self {
            shader: spec.shader.name,
            entry: spec.entry,
            constants: spec.constants.iter().map(|&(n, v)| (n, v.to_bits())).collect(),
        }
    }

    /// A listed pipeline of a registered shader. Its names are taken from
    /// the shader's source text (where every entry point and override is
    /// spelt), so keys stay `'static`; a name the source lacks drops it.
    fn listed(p: &ListedPipeline) -> Option<Self> {
        let shader = registered(&p.shader)?;
        let name = |n: &str| (!n.is_empty()).then(|| shader.source.find(n).map(|i| &shader.source[i..i + n.len()]))?;
        let constants = p.constants.iter().map(|(n, v)| Some((name(n)?, v.to_bits()))).collect::<Option<_>>()?;
        Some(Self { shader: shader.name, entry: name(&p.entry)?, constants })
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        self.constants.iter().map(|&(n, bits)| (n, f64::from_bits(bits))).collect()
    }
}

/// A pipeline as a pipeline list stores it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ListedPipeline {
    shader: String,
    entry: String,
    constants: Vec<(String, f64)>,
}

/// One pipeline of the cache: built, being built by some thread, or not yet.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    done: Condvar,
    /// Its wrapper passed the ABI check (a prewarmed pipeline is checked on first use).
    checked: AtomicBool,
    /// A wrapper asked for it in this process (it goes into the pipeline list).
    used: AtomicBool,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Free,
    Building,
    Ready(Arc<wgpu::ComputePipeline>),
}

/// `warm_start`'s state: the list file, what is left to prewarm, and how
/// many used pipelines the file holds.
struct Warm {
    file: Cache,
    queue: VecDeque<PipelineKey>,
    written: usize,
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
        let cache_dir = tune.cache_dir.clone();
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
            cache_dir,
            warm: Mutex::default(),
            used: Mutex::default(),
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
    /// rather than garbage on the GPU. While another thread builds it (a
    /// prewarm helper), this one builds the next pipeline on the list
    /// instead of idling, then waits. `before_waiting` runs first whenever
    /// the pipeline is not ready: the caller submits what it has recorded,
    /// so the GPU works while the CPU compiles.
    pub(crate) fn pipeline(
        &self,
        spec: &KernelSpec<'_>,
        params_size: usize,
        bindings: &[Binding<'_>],
        before_waiting: impl FnOnce() -> Result<()>,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey::of(spec);
        let slot = self.slot(&key);
        if !slot.checked.load(Ordering::Acquire) {
            if let Some(missing) = self.families.missing(spec.shader.needs) {
                return Err(Error::NoAdapter(format!(
                    "kernel {}::{} needs {missing}, which adapter {} ({:?}) lacks; use an adapter that has it (CMAE_BACKEND, CMAE_ADAPTER)",
                    spec.shader.name, spec.entry, self.info.name, self.info.backend
                )));
            }
            let bound: Vec<_> = bindings.iter().map(|b| (b.slot, b.access)).collect();
            abi::check(&*self.reflection(spec)?, spec, params_size, &bound)?;
            lock(&self.checked).insert((spec.shader.name, spec.entry));
            slot.checked.store(true, Ordering::Release);
        }
        if !slot.used.swap(true, Ordering::Relaxed) {
            lock(&self.used).push(key.clone());
        }
        if let SlotState::Ready(p) = &*lock(&slot.state) {
            return Ok(p.clone());
        }
        before_waiting()?;
        loop {
            let mut state = lock(&slot.state);
            match &*state {
                SlotState::Ready(p) => return Ok(p.clone()),
                SlotState::Free => {
                    *state = SlotState::Building;
                    drop(state);
                    return self.finish(&slot, self.build(spec.shader, &key));
                }
                SlotState::Building => {
                    drop(state);
                    if !self.prewarm_next() {
                        let state = lock(&slot.state);
                        drop(slot.done.wait_while(state, |s| matches!(s, SlotState::Building)));
                    }
                }
            }
        }
    }

    /// `key`'s slot, made on first sight (the key is copied only then: this
    /// runs for every dispatch).
    fn slot(&self, key: &PipelineKey) -> Arc<Slot> {
        let mut pipelines = lock(&self.pipelines);
        if let Some(slot) = pipelines.get(key) {
            return slot.clone();
        }
        pipelines.entry(key.clone()).or_default().clone()
    }

    /// Publishes what a build gave: the pipeline, or a free slot (another
    /// caller may try again) and the error.
    fn finish(&self, slot: &Slot, built: Result<wgpu::ComputePipeline>) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut state = lock(&slot.state);
        let out = match built {
            Ok(p) => {
                let p = Arc::new(p);
                *state = SlotState::Ready(p.clone());
                Ok(p)
            }
            Err(e) => {
                *state = SlotState::Free;
                Err(e)
            }
        };
        slot.done.notify_all();
        out
    }

    /// Compiles `key`'s pipeline. Natively a validation error is caught in an
    /// error scope of this thread, so a helper's failure never surfaces as
    /// another thread's GPU error; a page cannot wait for a scope, and its
    /// errors arrive through the device's error sink as before.
    fn build(&self, shader: &'static Shader, key: &PipelineKey) -> Result<wgpu::ComputePipeline> {
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = lock(&self.modules)
            .entry(shader.name)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name),
                    source: wgpu::ShaderSource::Wgsl(shader.source.into()),
                })
            })
            .clone();
        let constants = key.constants();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: None,
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("building {}::{}: {e}", shader.name, key.entry)));
        }
        #[cfg(target_arch = "wasm32")]
        self.check_gpu_error()?;
        Ok(pipeline)
    }

    /// Starts building, on helper threads, the pipelines the last run of
    /// `workload` on this adapter built (the list in the cache directory),
    /// and keeps this run's list there for the next one. Building pipelines
    /// is most of a warm start (lavapipe: ~1.9 s of a tiny step's 36, each
    /// compiled on one thread); spread over the cores it goes that much
    /// faster, and a list that does not fit this run only costs helper time.
    pub(crate) fn warm_start(self: &Arc<Self>, workload: &str) {
        let Some(dir) = &self.cache_dir else { return };
        let file = Cache::pipelines(dir, &self.info, workload);
        let listed: Vec<ListedPipeline> = file.load();
        let queue: VecDeque<PipelineKey> = listed
            .iter()
            .filter_map(PipelineKey::listed)
            .filter(|k| self.families.missing(shader(k.shader).needs).is_none())
            .collect();
        *lock(&self.warm) = Some(Warm { file, queue, written: 0 });
        #[cfg(not(target_arch = "wasm32"))]
        self.spawn_prewarm_helpers(workload);
    }

    /// Helper threads that build listed pipelines until none is left (or the
    /// context is gone). A page has no threads: there the recording thread
    /// builds them as it meets them.
    #[cfg(not(target_arch = "wasm32"))]
    fn spawn_prewarm_helpers(self: &Arc<Self>, workload: &str) {
        let listed = lock(&self.warm).as_ref().map_or(0, |w| w.queue.len());
        if listed == 0 {
            return;
        }
        let helpers = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 3);
        log::debug!("prewarming {listed} pipelines of the last {workload} run on {helpers} helper thread(s)");
        for i in 0..helpers {
            let ctx = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name(format!("cmae-prewarm-{i}"))
                .spawn(move || while ctx.upgrade().is_some_and(|c| c.prewarm_next()) {});
            if let Err(e) = spawned {
                log::warn!("cannot start a pipeline prewarm thread ({e}); pipelines are built as they are needed");
                break;
            }
        }
    }

    /// Builds the next listed pipeline nobody has started; false when none is left.
    fn prewarm_next(&self) -> bool {
        let Some(key) = lock(&self.warm).as_mut().and_then(|w| w.queue.pop_front()) else {
            return false;
        };
        let slot = self.slot(&key);
        {
            let mut state = lock(&slot.state);
            if !matches!(*state, SlotState::Free) {
                return true;
            }
            *state = SlotState::Building;
        }
        // A panic inside the driver must not leave the slot "building" for
        // whoever waits on it: it becomes an error, and the slot free.
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(shader(key.shader), &key)))
            .unwrap_or_else(|_| Err(Error::Gpu(format!("building {}::{} panicked", key.shader, key.entry))));
        if let Err(e) = self.finish(&slot, built) {
            log::warn!("prewarming a listed pipeline: {e}; it is built when needed");
        }
        true
    }

    /// Writes the pipeline list when wrappers asked for pipelines it lacks.
    pub(crate) fn keep_pipeline_list(&self) {
        let mut warm = lock(&self.warm);
        let Some(w) = warm.as_mut() else { return };
        let used = lock(&self.used);
        if used.len() == w.written {
            return;
        }
        let listed: Vec<ListedPipeline> = used
            .iter()
            .map(|k| ListedPipeline {
                shader: k.shader.to_string(),
                entry: k.entry.to_string(),
                constants: k.constants().into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            })
            .collect();
        w.file.write(&listed);
        w.written = used.len();
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
        lock(&self.pipelines)
            .iter()
            .filter(|(_, slot)| matches!(*lock(&slot.state), SlotState::Ready(_)))
            .map(|(k, _)| KernelVariant {
                shader: shader(k.shader),
                entry: k.entry.to_string(),
                constants: k.constants(),
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

/// The registered shader named `name`, if any (a pipeline list may name anything).
fn registered(name: &str) -> Option<&'static Shader> {
    shaders::ALL.iter().copied().find(|s| s.name == name)
}

/// The registered shader named `name` (every key's shader is one).
fn shader(name: &str) -> &'static Shader {
    registered(name).expect("a registered shader")
}
