//! Adapter choice: which backend and which GPU, from the environment.
//!
//! `CMAE_BACKEND` (vulkan|metal|dx12|gl) restricts the backend and
//! `CMAE_ADAPTER` picks an adapter by a case-insensitive name substring.
//! Without `CMAE_BACKEND` only the primary backends are considered: a machine
//! whose only adapter is OpenGL gets an error that says so instead of silently
//! running on a slower, less capable backend.

use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct AdapterRequest {
    pub backend: Option<wgpu::Backends>,
    pub name_contains: Option<String>,
    /// One process of several on this machine (data-parallel ranks).
    pub local_rank: Option<LocalRank>,
}

/// Which of a machine's processes asks: process `index` of `count` takes the
/// `index`-th best matching adapter, unless they `share` the best one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRank {
    pub index: usize,
    pub count: usize,
    pub share: bool,
}

impl AdapterRequest {
    /// Reads `CMAE_BACKEND` and `CMAE_ADAPTER`.
    pub fn from_env() -> Result<Self> {
        let backend = match std::env::var("CMAE_BACKEND") {
            Ok(name) if !name.trim().is_empty() => Some(parse_backend(&name)?),
            _ => None,
        };
        let name_contains = std::env::var("CMAE_ADAPTER").ok().filter(|s| !s.trim().is_empty());
        Ok(Self { backend, name_contains, local_rank: None })
    }
}

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        other => {
            Err(Error::NoAdapter(format!("CMAE_BACKEND={other:?} is not a backend: use vulkan, metal, dx12 or gl")))
        }
    }
}

/// How to get an adapter on this platform, for error messages.
fn install_hint() -> &'static str {
    if cfg!(target_os = "linux") {
        "install a Vulkan driver (on Debian/Ubuntu without a GPU: `apt-get install -y mesa-vulkan-drivers libvulkan1` gives the lavapipe software driver)"
    } else if cfg!(target_os = "windows") {
        "install or update your GPU driver (DX12 or Vulkan)"
    } else {
        "update the operating system's GPU driver (Metal or Vulkan)"
    }
}

/// Higher is better: a discrete GPU over an integrated one over software.
fn preference(info: &wgpu::AdapterInfo) -> u8 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    }
}

impl AdapterRequest {
    /// The backends to enumerate: the one asked for, else the primary ones.
    pub fn backends(&self) -> wgpu::Backends {
        self.backend.unwrap_or(wgpu::Backends::PRIMARY)
    }

    /// Picks the best of `adapters` that matches the request, or explains why
    /// none does. The viewer hands it the adapters that can draw to its window.
    pub fn pick(&self, adapters: &[wgpu::Adapter]) -> Result<wgpu::Adapter> {
        let matching: Vec<&wgpu::Adapter> = adapters
            .iter()
            .filter(|a| self.backends().contains(a.get_info().backend.into()))
            .filter(|a| match &self.name_contains {
                Some(want) => a.get_info().name.to_lowercase().contains(&want.to_lowercase()),
                None => true,
            })
            .collect();
        let Some(best) = matching.iter().max_by_key(|a| preference(&a.get_info())) else {
            return Err(self.none_found());
        };
        match self.local_rank {
            None | Some(LocalRank { share: true, .. }) => Ok((*best).clone()),
            Some(LocalRank { index, count, .. }) => {
                // Ranks split the best adapters of the best one's kind and
                // backend, in enumeration order (the same in every process
                // of a machine): never a GPU and the CPU driver, nor one GPU
                // seen through two backends.
                let (kind, backend) = (preference(&best.get_info()), best.get_info().backend);
                let matching: Vec<&wgpu::Adapter> = matching
                    .into_iter()
                    .filter(|a| preference(&a.get_info()) == kind && a.get_info().backend == backend)
                    .collect();
                if matching.len() < count {
                    let names: Vec<String> = matching.iter().map(|a| a.get_info().name).collect();
                    return Err(Error::NoAdapter(format!(
                        "{count} ranks run on this machine but only {} adapter(s) match ({}); start at most {} rank(s) per machine, narrow the choice with CMAE_ADAPTER, or set CMAE_SHARE_ADAPTER=1 to let ranks share one adapter",
                        matching.len(),
                        names.join(", "),
                        matching.len()
                    )));
                }
                Ok(matching[index].clone())
            }
        }
    }

    fn none_found(&self) -> Error {
        // A page may not block to list what else exists.
        if cfg!(target_arch = "wasm32") {
            return Error::NoAdapter(
                "this browser gives no WebGPU adapter: open the page in a current Chrome, Edge or Safari (or Firefox with WebGPU enabled) on a machine with a GPU driver".into(),
            );
        }
        let all: Vec<String> =
            pollster::block_on(instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()))
                .iter()
                .map(|a| {
                    let i = a.get_info();
                    format!("{} ({:?})", i.name, i.backend)
                })
                .collect();
        let msg = match (&self.name_contains, self.backend) {
            (Some(want), _) if !all.is_empty() => {
                format!("no GPU adapter name contains CMAE_ADAPTER={want:?}; available: {}", all.join(", "))
            }
            (None, None) if !all.is_empty() => format!(
                "no Vulkan, Metal or DX12 adapter found, only {}; set CMAE_BACKEND=gl to use it, or {}",
                all.join(", "),
                install_hint()
            ),
            (_, Some(b)) if !all.is_empty() => format!(
                "no adapter for backend {b:?}; available: {}; unset CMAE_BACKEND or {}",
                all.join(", "),
                install_hint()
            ),
            _ => format!("no GPU adapter found: {}", install_hint()),
        };
        Error::NoAdapter(msg)
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Enumerates adapters and picks the best one that matches `req`. GL is only
/// initialised when asked for or to name it in the error: probing it costs
/// time and logs driver noise on machines without a display. Async: the
/// browser's one WebGPU adapter comes through the same enumeration, and a
/// page may not block on it.
pub async fn choose_async(req: &AdapterRequest) -> Result<wgpu::Adapter> {
    let adapters = instance(req.backends()).enumerate_adapters(req.backends()).await;
    req.pick(&adapters)
}

/// The optional features the engine uses when the adapter has them.
pub fn wanted_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    let wanted = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
    adapter.features() & wanted
}

/// Storage buffers the widest entry point binds and invocations in the
/// largest workgroup (the tiled matmul's 16×16). `kernels::catalog()` is checked against both by
/// `engine/tests/shaders_validate.rs`.
pub const STORAGE_BUFFERS_PER_STAGE: u32 = 6;
pub const INVOCATIONS_PER_WORKGROUP: u32 = 256;

/// Refuses an adapter whose limits cannot hold every kernel when it is
/// opened (OpenGL ES 3.1 may allow only 4 storage buffers per stage), not
/// at the first kernel that does not fit.
pub fn check_limits(adapter: &str, limits: &wgpu::Limits) -> Result<()> {
    let short = |name: &str, has: u32, needs: u32| {
        Error::NoAdapter(format!(
            "adapter {adapter} allows {has} for {name}, cmae's kernels need {needs}; use another adapter (CMAE_BACKEND, CMAE_ADAPTER)"
        ))
    };
    if limits.max_storage_buffers_per_shader_stage < STORAGE_BUFFERS_PER_STAGE {
        let has = limits.max_storage_buffers_per_shader_stage;
        return Err(short("max_storage_buffers_per_shader_stage", has, STORAGE_BUFFERS_PER_STAGE));
    }
    if limits.max_compute_invocations_per_workgroup < INVOCATIONS_PER_WORKGROUP {
        let has = limits.max_compute_invocations_per_workgroup;
        return Err(short("max_compute_invocations_per_workgroup", has, INVOCATIONS_PER_WORKGROUP));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_too_small_for_the_kernels_are_refused_by_name() {
        let info = "tiny gles (Gl)";
        assert!(check_limits(info, &wgpu::Limits::default()).is_ok());
        let gles = wgpu::Limits { max_storage_buffers_per_shader_stage: 4, ..wgpu::Limits::default() };
        let e = check_limits(info, &gles).unwrap_err().to_string();
        assert!(
            e.contains("tiny gles") && e.contains("max_storage_buffers_per_shader_stage") && e.contains("allows 4"),
            "{e}"
        );
        let small = wgpu::Limits { max_compute_invocations_per_workgroup: 128, ..wgpu::Limits::default() };
        assert!(check_limits(info, &small).unwrap_err().to_string().contains("max_compute_invocations_per_workgroup"));
    }

    #[test]
    fn backend_names_parse_and_bad_ones_are_named() {
        assert_eq!(parse_backend("Vulkan").unwrap(), wgpu::Backends::VULKAN);
        assert_eq!(parse_backend("dx12").unwrap(), wgpu::Backends::DX12);
        let err = parse_backend("cuda").unwrap_err().to_string();
        assert!(err.contains("\"cuda\"") && err.contains("vulkan, metal, dx12 or gl"), "{err}");
    }
}
