//! Every WGSL file in shaders/ parses and validates with naga, so a broken
//! shader fails `cargo test` before it reaches a GPU; and every kernel the
//! engine can build is written for every backend wgpu has, as wgpu would
//! write it there.

use std::io::Write;
use std::process::Command;

use cmae_engine::device::{INVOCATIONS_PER_WORKGROUP, KernelFamilies, STORAGE_BUFFERS_PER_STAGE, reflect};
use cmae_engine::kernels::{KernelVariant, catalog};
use cmae_engine::shaders::{ALL, Needs};
use naga::back;
use naga::valid::{ModuleInfo, ValidationFlags};
use naga::{Module, ShaderStage};

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut registered: Vec<String> = ALL.iter().flat_map(|s| s.files.iter().map(|f| f.to_string())).collect();
    registered.sort();
    registered.dedup();
    assert_eq!(on_disk, registered, "every file in shaders/ is part of a shader in engine/src/shaders.rs");

    // The engine's own reflection parses and validates each shader, as the
    // device does before building a pipeline from it.
    for shader in ALL {
        if let Err(e) = reflect(shader) {
            panic!("{e}");
        }
    }
}

/// The widest kernels set what the device asks of an adapter's limits when
/// it opens one: the constants it checks are the maxima over every entry point.
#[test]
fn adapter_limit_checks_match_the_widest_kernels() {
    let (mut storage, mut invocations) = (0, 0);
    for shader in ALL {
        for e in reflect(shader).unwrap() {
            storage = storage.max(e.storage.len() as u32);
            invocations = invocations.max(e.workgroup_size.iter().product::<u32>());
        }
    }
    assert_eq!(storage, STORAGE_BUFFERS_PER_STAGE, "the most storage buffers an entry point binds");
    assert_eq!(invocations, INVOCATIONS_PER_WORKGROUP, "the largest workgroup");
}

/// A shading language as one backend writes it.
#[derive(Clone, Copy, Debug)]
enum Language {
    SpirV(u8, u8),
    Msl(u8, u8),
    Hlsl(back::hlsl::ShaderModel),
    Glsl(back::glsl::Version),
}

/// One kind of adapter a backend may give: the language wgpu writes for it
/// and what the kernel selection reads from it (features, subgroup sizes,
/// device type). Each backend gets its least and its most capable kind.
struct Profile {
    backend: &'static str,
    adapter: &'static str,
    language: Language,
    features: wgpu::Features,
    subgroup_sizes: (u32, u32),
    device_type: wgpu::DeviceType,
}

impl Profile {
    fn families(&self) -> KernelFamilies {
        KernelFamilies::of_parts(self.features, self.subgroup_sizes, self.device_type)
    }

    /// naga's validator as wgpu builds it for a device with these features.
    fn validate(&self, module: &Module) -> Result<ModuleInfo, String> {
        let downlevel = match self.language {
            Language::Glsl(_) => wgpu::DownlevelFlags::COMPUTE_SHADERS,
            _ => wgpu::DownlevelFlags::all(),
        };
        wgpu_naga_bridge::create_validator(self.features, downlevel, ValidationFlags::all())
            .validate(module)
            .map_err(|e| format!("naga validation: {e:?}"))
    }
}

/// Vulkan, Metal, DX12 and GL, each as its plainest adapter and as one with
/// subgroups (claimed 8 lanes wide, so the subgroup kernel is written too)
/// and f16 where the backend can have them. The shader models, MSL and SPIR-V
/// versions are the ones wgpu 30 picks for such adapters.
fn profiles() -> Vec<Profile> {
    use back::glsl::Version;
    use back::hlsl::ShaderModel;
    use wgpu::{DeviceType::*, Features as F};
    let (none, sub_f16) = (F::empty(), F::SUBGROUP | F::SHADER_F16);
    let p = |backend, adapter, language, features, subgroup_sizes, device_type| Profile {
        backend,
        adapter,
        language,
        features,
        subgroup_sizes,
        device_type,
    };
    vec![
        p("Vulkan", "Vulkan 1.0 GPU, no optional features", Language::SpirV(1, 0), none, (0, 0), DiscreteGpu),
        p(
            "Vulkan",
            "Vulkan 1.1 CPU with 8-lane subgroups and f16 (lavapipe)",
            Language::SpirV(1, 3),
            sub_f16,
            (8, 8),
            Cpu,
        ),
        p(
            "Metal",
            "MSL 2.1 GPU without SIMD-group functions",
            Language::Msl(2, 1),
            F::SHADER_F16,
            (0, 0),
            IntegratedGpu,
        ),
        p("Metal", "MSL 2.4 GPU with SIMD-group functions", Language::Msl(2, 4), sub_f16, (8, 8), IntegratedGpu),
        p("DX12", "FXC, shader model 5.1", Language::Hlsl(ShaderModel::V5_1), none, (0, 0), DiscreteGpu),
        p(
            "DX12",
            "DXC, shader model 6.2 with wave ops and f16",
            Language::Hlsl(ShaderModel::V6_2),
            sub_f16,
            (8, 8),
            IntegratedGpu,
        ),
        p("GL", "OpenGL ES 3.1", Language::Glsl(Version::new_gles(310)), none, (0, 0), IntegratedGpu),
        p("GL", "desktop OpenGL 4.3 (llvmpipe gives 4.5)", Language::Glsl(Version::Desktop(430)), none, (0, 0), Cpu),
    ]
}

/// A translation, or why there is none.
enum Written {
    SpirV(Vec<u32>),
    Text(String),
}

fn write(module: &Module, info: &ModuleInfo, language: Language, v: &KernelVariant) -> Result<Written, String> {
    let mut constants = back::PipelineConstants::default();
    for &(name, value) in &v.constants {
        constants.insert(name.to_string(), value);
    }
    let (module, info) =
        back::pipeline_constants::process_overrides(module, info, Some((ShaderStage::Compute, &v.entry)), &constants)
            .map_err(|e| format!("override constants: {e}"))?;
    let entry = v.entry.clone();
    match language {
        Language::SpirV(major, minor) => {
            use back::spv::Capability as C;
            let mut capabilities: naga::FastHashSet<C> = [C::Shader, C::Matrix].into_iter().collect();
            if v.shader.needs.subgroups_of_8 {
                capabilities.extend([C::GroupNonUniform, C::GroupNonUniformBallot, C::GroupNonUniformShuffle]);
            }
            if v.shader.needs.f16 {
                capabilities.insert(C::Float16);
            }
            let options = back::spv::Options {
                lang_version: (major, minor),
                capabilities: Some(capabilities),
                flags: back::spv::WriterFlags::empty(),
                ..Default::default()
            };
            let pipeline = back::spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry };
            back::spv::write_vec(&module, &info, &options, Some(&pipeline))
                .map(Written::SpirV)
                .map_err(|e| e.to_string())
        }
        Language::Msl(major, minor) => {
            let options = back::msl::Options { lang_version: (major, minor), ..Default::default() };
            let pipeline =
                back::msl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry)), ..Default::default() };
            back::msl::write_string(&module, &info, &options, &pipeline)
                .map(|(s, _)| Written::Text(s))
                .map_err(|e| e.to_string())
        }
        Language::Hlsl(shader_model) => {
            let options = back::hlsl::Options { shader_model, ..Default::default() };
            let pipeline = back::hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry)) };
            let mut out = String::new();
            back::hlsl::Writer::new(&mut out, &options, &pipeline)
                .write(&module, &info, None)
                .map_err(|e| e.to_string())?;
            Ok(Written::Text(out))
        }
        Language::Glsl(version) => {
            // wgpu assigns each binding its slot; so does this map.
            let binding_map =
                module.global_variables.iter().filter_map(|(_, g)| g.binding.map(|b| (b, b.binding as u8))).collect();
            let options = back::glsl::Options { version, binding_map, ..Default::default() };
            let pipeline =
                back::glsl::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry, multiview: None };
            let mut out = String::new();
            back::glsl::Writer::new(&mut out, &module, &info, &options, &pipeline, Default::default())
                .and_then(|mut w| w.write())
                .map_err(|e| e.to_string())?;
            Ok(Written::Text(out))
        }
    }
}

/// Khronos's validator for a language, if this machine has it: the command,
/// its arguments before the file, and the file's extension.
fn external_validator(language: Language) -> Option<(&'static str, Vec<&'static str>, &'static str)> {
    match language {
        Language::SpirV(1, 0) => Some(("spirv-val", vec!["--target-env", "vulkan1.0"], "spv")),
        Language::SpirV(..) => Some(("spirv-val", vec!["--target-env", "vulkan1.1"], "spv")),
        Language::Glsl(_) => Some(("glslangValidator", vec![], "comp")),
        Language::Msl(..) | Language::Hlsl(_) => None,
    }
}

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Writes straight to stderr, past the test harness's capture: a step the
/// test could not take is said aloud even when the test passes.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What one profile's pass over the catalog found.
#[derive(Default)]
struct Tally {
    written: usize,
    tool_checked: usize,
    /// Variants that could not be written and that the selection never
    /// chooses on this profile.
    never_chosen: Vec<String>,
    /// Rule breaks: a variant the selection may choose that does not
    /// translate or validate.
    failures: Vec<String>,
}

fn run_profile(p: &Profile, catalog: &[KernelVariant], tool_ok: bool, scratch: &std::path::Path) -> Tally {
    let mut tally = Tally::default();
    let families = p.families();
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        let info = p.validate(&module);
        for v in catalog.iter().filter(|v| std::ptr::eq(v.shader, *shader)) {
            let name = format!("{}::{} {:?}", shader.name, v.entry, v.constants);
            let chosen = families.can_run(shader);
            let written = info.clone().and_then(|info| write(&module, &info, p.language, v));
            let written = match (written, chosen) {
                (Ok(w), _) => w,
                (Err(_), false) => {
                    tally.never_chosen.push(name);
                    continue;
                }
                (Err(e), true) => {
                    tally.failures.push(format!("{name}: {e}"));
                    continue;
                }
            };
            tally.written += 1;
            let Some((tool, args, ext)) = external_validator(p.language).filter(|_| tool_ok) else { continue };
            let file = scratch.join(format!("kernel.{ext}"));
            match &written {
                Written::SpirV(words) => std::fs::write(&file, bytemuck::cast_slice::<u32, u8>(words)).unwrap(),
                Written::Text(text) => std::fs::write(&file, text).unwrap(),
            }
            let out = Command::new(tool).args(&args).arg(&file).output().unwrap();
            tally.tool_checked += 1;
            if !out.status.success() {
                let keep = scratch.join(format!("failed-{}.{ext}", tally.failures.len()));
                let _ = std::fs::copy(&file, &keep);
                let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
                let verdict = if chosen { "" } else { " (never chosen here, yet written: fix it all the same)" };
                tally.failures.push(format!("{name}: {tool} rejects {}{verdict}:\n{msg}", keep.display()));
            }
        }
    }
    tally
}

/// Every pipeline of [`catalog`] is written for every backend's adapters:
/// SPIR-V (Vulkan), MSL (Metal), HLSL (DX12), GLSL ES 3.1 and GLSL 4.3 (GL).
/// A variant that cannot be written for an adapter must be one that
/// [`KernelFamilies`] never lets the selection choose there; every other one
/// must be written, and pass `spirv-val` / `glslangValidator` where the
/// machine has them (CI installs both and sets `CMAE_REQUIRE_SHADER_TOOLS`).
/// No validator for MSL or HLSL is packaged for Linux, so those are checked
/// by naga's writers alone, and the test says so.
#[test]
fn shaders_translate_to_every_backend() {
    let catalog = catalog().unwrap();
    // Every override a shader declares is set by its catalog entries, so no
    // combination the wrappers pass is left at a default here.
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        for (_, o) in module.overrides.iter() {
            let name = o.name.as_deref().unwrap();
            let set =
                catalog.iter().any(|v| std::ptr::eq(v.shader, *shader) && v.constants.iter().any(|c| c.0 == name));
            assert!(set, "{}: override {name} is never set by kernels::catalog()", shader.name);
        }
    }

    let required = std::env::var_os("CMAE_REQUIRE_SHADER_TOOLS").is_some();
    let mut tools_ok = std::collections::BTreeMap::new();
    for tool in ["spirv-val", "glslangValidator"] {
        let ok = installed(tool);
        if !ok {
            let package = if tool == "spirv-val" { "spirv-tools" } else { "glslang-tools" };
            assert!(
                !required,
                "CMAE_REQUIRE_SHADER_TOOLS is set but {tool} is not installed (apt-get install {package})"
            );
            say(&format!(
                "NOT RUN: {tool} is not installed (apt-get install {package}): its outputs are only written by naga"
            ));
        }
        tools_ok.insert(tool, ok);
    }
    say(
        "NOT RUN: no MSL or HLSL validator exists for Linux: Metal and DX12 outputs are checked by naga's writers only",
    );

    let profiles = profiles();
    let scratch = std::env::temp_dir().join(format!("cmae-translate-{}", std::process::id()));
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = profiles
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let dir = scratch.join(i.to_string());
                std::fs::create_dir_all(&dir).unwrap();
                let tool_ok = external_validator(p.language).is_some_and(|(tool, ..)| tools_ok[tool]);
                let catalog = &catalog;
                s.spawn(move || run_profile(p, catalog, tool_ok, &dir))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut failures = Vec::new();
    for (p, t) in profiles.iter().zip(&tallies) {
        say(&format!(
            "{:<6} {:<58} {:>4} written, {:>4} passed {}, {} never chosen there{}",
            p.backend,
            p.adapter,
            t.written,
            t.tool_checked,
            external_validator(p.language).map_or("no validator", |(tool, ..)| tool),
            t.never_chosen.len(),
            t.never_chosen.first().map_or(String::new(), |n| format!(" (e.g. {n})"))
        ));
        failures.extend(t.failures.iter().map(|f| format!("{} ({}): {f}", p.backend, p.adapter)));
        // Every variant is accounted for on every profile.
        assert_eq!(t.written + t.never_chosen.len() + t.failures.len(), catalog.len(), "{}", p.adapter);
    }
    assert!(failures.is_empty(), "{} translations break the rule:\n{}", failures.len(), failures.join("\n"));
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A shader's declared needs are what it uses: it validates with exactly
/// those features, and not without them. The device and the translation
/// test trust the declarations.
#[test]
fn declared_needs_are_what_the_shaders_use() {
    for shader in ALL {
        let module = naga::front::wgsl::parse_str(shader.source).unwrap();
        let mut features = wgpu::Features::empty();
        features.set(wgpu::Features::SUBGROUP, shader.needs.subgroups_of_8);
        features.set(wgpu::Features::SHADER_F16, shader.needs.f16);
        let validate = |features| {
            wgpu_naga_bridge::create_validator(features, wgpu::DownlevelFlags::all(), ValidationFlags::all())
                .validate(&module)
                .map_err(|e| format!("{e:?}"))
        };
        if let Err(e) = validate(features) {
            panic!("{} does not validate with its declared needs {:?}: {e}", shader.name, shader.needs);
        }
        if shader.needs != Needs::NOTHING {
            assert!(
                validate(wgpu::Features::empty()).is_err(),
                "{} declares {:?} but needs none",
                shader.name,
                shader.needs
            );
        }
    }
}
