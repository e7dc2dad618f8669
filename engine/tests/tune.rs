//! The autotuner on the real adapter: the cache is written once and reused
//! without timing again, is keyed by adapter and driver, survives a corrupt
//! file, and `TuneConfig::off` times nothing; tuned choices are always valid
//! and compute exactly what the forced kernel does. Every device here gets
//! its tuning configuration explicitly, never from the environment.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cmae_engine::device::AdapterRequest;
use cmae_engine::kernels::attention::{AttentionPath, training_path};
use cmae_engine::kernels::matmul::matmul;
use cmae_engine::{Device, MatmulKind, Tensor, TileShape, TuneConfig};
use common::rand_vec;

fn open(tune: TuneConfig) -> Device {
    Device::open(&AdapterRequest::from_env().unwrap(), tune).expect("a GPU adapter (CI installs lavapipe)")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cmae-tune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `[40, 72]·[24, 72]ᵀ`: one matmul shape class.
fn product(d: &Device) -> Vec<f32> {
    let a = Tensor::from_f32(d, &rand_vec(40 * 72, 1), &[40, 72]).unwrap();
    let b = Tensor::from_f32(d, &rand_vec(24 * 72, 2), &[24, 72]).unwrap();
    matmul(d, &a, &b, false, true).unwrap().wait_f32(d).unwrap()
}

/// A training attention of 2 heads of dim 16 over 40 tokens.
fn attention_path(d: &Device, head_dim: usize) -> AttentionPath {
    let qkv = Tensor::from_f32(d, &vec![0.0; 2 * 40 * 6 * head_dim], &[2, 40, 6 * head_dim]).unwrap();
    training_path(d, &qkv, 2).unwrap()
}

fn cache_path(d: &Device) -> &Path {
    d.tune_cache_path().expect("a cache directory was given")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn shader(kind: MatmulKind) -> &'static str {
    match kind {
        MatmulKind::Register => "matmul_register.wgsl",
        MatmulKind::Subgroup => "matmul_subgroup.wgsl",
        MatmulKind::Tiled(_) => "matmul_tiled.wgsl",
    }
}

fn matmul_shaders(d: &Device) -> Vec<&'static str> {
    let mut v: Vec<_> = d.checked_kernels().into_iter().map(|(s, _)| s).filter(|s| s.starts_with("matmul")).collect();
    v.dedup();
    v
}

#[test]
fn the_cache_is_written_once_and_reused_without_timing_again() {
    let dir = temp("reuse");
    let first = open(TuneConfig::in_dir(&dir));
    product(&first);
    assert_eq!(first.tune_timings(), 1, "one shape class met, one timed");
    let path = cache_path(&first).to_path_buf();
    assert!(path.starts_with(&dir), "{}", path.display());
    let entries = first.tune_entries();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e.decision.as_str(), e.class.as_str(), e.shape.as_str()),
        ("matmul", "nt m64 n32 k128 z1", "m40 n24 k72 z1")
    );
    assert!(e.timed_here && e.met && e.candidates.iter().any(|c| c.name == e.winner && c.runs > 0), "{e:?}");
    // Every family this adapter can run was tried.
    let families = if first.supports_subgroup_matmul() { 3 } else { 2 };
    assert_eq!(e.candidates.len(), families, "{e:?}");
    assert_eq!(matmul_shaders(&first).len(), families);
    let timed_attention = attention_path(&first, 16);
    assert!(first.tune_timings() >= 2, "the attention class was timed");
    let written = std::fs::read(&path).unwrap();
    drop(first);

    let second = open(TuneConfig::in_dir(&dir));
    product(&second);
    assert_eq!(attention_path(&second, 16), timed_attention);
    assert_eq!(second.tune_timings(), 0, "everything met came from the cache");
    assert_eq!(std::fs::read(&path).unwrap(), written, "a run that times nothing leaves the file alone");
    let reused = second.tune_entries();
    assert!(reused.iter().all(|e| !e.timed_here), "{reused:?}");
    assert!(reused.iter().any(|e| e.decision == "matmul" && e.met), "{reused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_timed_on_another_adapter_or_driver_is_not_used_and_is_rewritten() {
    let dir = temp("foreign");
    let d = open(TuneConfig::in_dir(&dir));
    product(&d);
    let path = cache_path(&d).to_path_buf();
    drop(d);
    let mut file = read_json(&path);
    let ours = file["key"].clone();
    file["key"]["driver_info"] = "some other driver 0.1".into();
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

    let d = open(TuneConfig::in_dir(&dir));
    assert!(d.tune_entries().is_empty(), "the other driver's entries are not used");
    product(&d);
    assert_eq!(d.tune_timings(), 1, "timed again on this driver");
    let rewritten = read_json(&path);
    assert_eq!(rewritten["key"], ours);
    assert_eq!(rewritten["entries"].as_array().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_cache_is_recovered_from() {
    let dir = temp("corrupt");
    let path = cache_path(&open(TuneConfig::in_dir(&dir))).to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, b"\x00\xffnot json at all").unwrap();
    let d = open(TuneConfig::in_dir(&dir));
    assert_eq!(read_json(&path)["entries"].as_array().unwrap().len(), 0, "rewritten as a valid, empty cache");
    product(&d);
    assert_eq!(d.tune_timings(), 1);
    assert_eq!(read_json(&path)["entries"].as_array().unwrap().len(), 1);

    // A parsable file naming variants this engine does not have: timed again.
    let mut file = read_json(&path);
    file["entries"][0]["candidates"][0]["name"] = "warp-specialised".into();
    file["entries"][0]["candidates"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let d = open(TuneConfig::in_dir(&dir));
    product(&d);
    assert_eq!(d.tune_timings(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tuning_off_times_nothing_and_takes_the_heuristic() {
    let d = open(TuneConfig::off());
    let heuristic = d.matmul_kind();
    product(&d);
    let composed_or_fused = attention_path(&d, 16);
    assert_eq!(d.tune_timings(), 0);
    assert!(d.tune_entries().is_empty() && d.tune_cache_path().is_none() && !d.autotune());
    assert_eq!(matmul_shaders(&d), [shader(heuristic)], "only the heuristic's family ran");
    let cpu = d.info().device_type == wgpu::DeviceType::Cpu;
    let want = if cpu { AttentionPath::Composed } else { AttentionPath::Fused };
    assert_eq!(composed_or_fused, want, "T = 40 on the built-in rule");
}

/// A spent budget times nothing and writes nothing, but the cache is still
/// read: a later run (or `cmae tune`) fills in what this one could not.
#[test]
fn a_spent_budget_takes_the_heuristic_and_still_reads_the_cache() {
    let dir = temp("budget");
    let spent = TuneConfig { budget: Some(Duration::ZERO), ..TuneConfig::in_dir(&dir) };
    let d = open(spent.clone());
    product(&d);
    assert_eq!(d.tune_timings(), 0);
    assert_eq!(matmul_shaders(&d), [shader(d.matmul_kind())]);
    assert!(!cache_path(&d).exists(), "nothing timed, nothing written");
    drop(d);
    product(&open(TuneConfig::in_dir(&dir)));
    let d = open(spent);
    product(&d);
    assert!(d.tune_entries().iter().all(|e| e.met && !e.timed_here), "the cached winner was used");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A class a budget cut short keeps what it timed; the next run times only
/// the candidates it lacks.
#[test]
fn a_class_cut_short_is_completed_by_the_next_run() {
    let dir = temp("partial");
    let d = open(TuneConfig::in_dir(&dir));
    product(&d);
    let path = cache_path(&d).to_path_buf();
    drop(d);
    let mut file = read_json(&path);
    let first = file["entries"][0]["candidates"][0].clone();
    file["entries"][0]["candidates"].as_array_mut().unwrap().truncate(1);
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

    let d = open(TuneConfig::in_dir(&dir));
    product(&d);
    assert_eq!(d.tune_timings(), 1);
    let completed = read_json(&path);
    let candidates = completed["entries"][0]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), if d.supports_subgroup_matmul() { 3 } else { 2 }, "{completed}");
    assert_eq!(candidates[0], first, "what was timed before is kept, not timed again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device opened without optional features (no subgroups, no timestamp
/// queries) never tries the subgroup kernel and times by the wall clock.
#[test]
fn without_subgroups_or_timestamps_the_tuner_stays_valid_and_uses_the_wall_clock() {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    let adapter = pollster::block_on(wgpu::Instance::new(desc).request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let dir = temp("plain");
    let d = Device::from_wgpu(device, queue, adapter.get_info(), TuneConfig::in_dir(&dir));
    assert!(!d.supports_subgroup_matmul() && !d.features().contains(wgpu::Features::TIMESTAMP_QUERY));
    product(&d);
    let entries = d.tune_entries();
    let names: Vec<&str> = entries[0].candidates.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{entries:?}");
    assert!(!names.contains(&"subgroup") && entries[0].candidates.iter().all(|c| c.ms > 0.0), "{entries:?}");
    assert!(!matmul_shaders(&d).contains(&shader(MatmulKind::Subgroup)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_forced_family_is_not_tuned() {
    let dir = temp("forced");
    let d = open(TuneConfig::in_dir(&dir));
    d.set_matmul_kind(MatmulKind::Register);
    product(&d);
    assert_eq!(d.tune_timings(), 0);
    assert_eq!(matmul_shaders(&d), [shader(MatmulKind::Register)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tuned_choices_are_valid_and_compute_what_the_forced_kernel_does() {
    let dir = temp("valid");
    let d = open(TuneConfig::in_dir(&dir));
    let tuned = product(&d);
    attention_path(&d, 16);
    // Head dim 6 is beyond the fused kernel: composed, and nothing to tune.
    assert_eq!(attention_path(&d, 6), AttentionPath::Composed);
    let entries = d.tune_entries();
    assert!(!entries.iter().any(|e| e.class.contains("hd6")), "{entries:?}");
    for e in &entries {
        assert!(e.candidates.iter().any(|c| c.name == e.winner), "{e:?}");
        if !d.supports_subgroup_matmul() {
            assert!(!e.candidates.iter().any(|c| c.name == "subgroup"), "{e:?}");
        }
    }
    let winner = &entries.iter().find(|e| e.class == "nt m64 n32 k128 z1").unwrap().winner;
    let kind = match winner.as_str() {
        "register" => MatmulKind::Register,
        "subgroup" => MatmulKind::Subgroup,
        tiled => {
            let shape = TileShape::ALL.iter().find(|s| format!("tiled-{}", s.name()) == tiled);
            MatmulKind::Tiled(*shape.unwrap_or_else(|| panic!("unknown winner {tiled}")))
        }
    };
    let forced = open(TuneConfig::off());
    forced.set_matmul_kind(kind);
    assert_eq!(product(&forced), tuned, "the tuned run is the {winner} kernel, bit for bit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A matmul, a LayerNorm and a fused attention: several pipelines of three shaders.
fn warm_workload(d: &Device) -> Vec<f32> {
    let mut out = product(d);
    let x = Tensor::from_f32(d, &rand_vec(6 * 32, 3), &[6, 32]).unwrap();
    let gamma = Tensor::from_f32(d, &rand_vec(32, 4), &[32]).unwrap();
    let beta = Tensor::from_f32(d, &rand_vec(32, 5), &[32]).unwrap();
    let (y, _) = cmae_engine::kernels::layernorm::layer_norm(d, &x, &gamma, &beta, 1e-6).unwrap();
    out.extend(y.wait_f32(d).unwrap());
    let qkv = Tensor::from_f32(d, &rand_vec(2 * 17 * 6 * 16, 6), &[2, 17, 6 * 16]).unwrap();
    let (o, _) = cmae_engine::kernels::attention::fused_attention(d, &qkv, 2).unwrap();
    out.extend(o.wait_f32(d).unwrap());
    out
}

/// Built pipelines as comparable `shader entry constants` lines.
fn built(d: &Device) -> Vec<String> {
    let mut v: Vec<String> =
        d.built_kernels().iter().map(|k| format!("{} {} {:?}", k.shader.name, k.entry, k.constants)).collect();
    v.sort();
    v
}

fn pipeline_lists(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("pipelines-warm-test-"))
        .collect();
    v.sort();
    v
}

/// Tuning off, lists kept in `dir`: the pipeline set is the heuristic's, the same every run.
fn warm_device(dir: &Path) -> Device {
    let d = open(TuneConfig { enabled: false, cache_dir: Some(dir.to_path_buf()), budget: None });
    d.warm_start("warm-test");
    d
}

/// Waits (bounded) until the device has built at least `want` pipelines.
fn wait_built(d: &Device, want: &[String]) -> Vec<String> {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let now = built(d);
        if want.iter().all(|w| now.contains(w)) || std::time::Instant::now() > until {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_warm_start_builds_the_last_runs_pipelines_before_they_are_asked_for() {
    let dir = temp("warm");
    let first = warm_device(&dir);
    assert!(pipeline_lists(&dir).is_empty(), "nothing is written before a pipeline is used");
    let expected = warm_workload(&first);
    let used = built(&first);
    assert!(used.len() >= 3, "the workload builds several pipelines: {used:?}");
    let lists = pipeline_lists(&dir);
    assert_eq!(lists.len(), 1, "one list for the workload on this adapter: {lists:?}");
    let listed = read_json(&lists[0]);
    assert_eq!(listed["format"], "cmae-pipelines-1");
    assert_eq!(listed["entries"].as_array().unwrap().len(), used.len(), "the list holds what the run used");
    drop(first);

    // The next run builds them on helper threads without being asked...
    let second = warm_device(&dir);
    assert_eq!(wait_built(&second, &used), used, "every listed pipeline is built before any kernel runs");
    assert!(second.checked_kernels().is_empty(), "no wrapper has asked for one yet");
    // ...and the wrappers then use them (checked on first use), computing the same.
    assert_eq!(warm_workload(&second), expected);
    assert_eq!(built(&second), used);
    assert_eq!(second.checked_kernels().len(), used.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_pipeline_list_is_skipped_and_rewritten() {
    let dir = temp("warm-bad");
    let first = warm_device(&dir);
    let expected = warm_workload(&first);
    let list = pipeline_lists(&dir).remove(0);
    drop(first);

    // Entries that name no shader, no entry point of it, or an entry point
    // the module lacks (a word of its source, not a function): none is built,
    // no GPU error leaks into the run, and the run computes the same.
    let mut doc = read_json(&list);
    let entries = doc["entries"].as_array_mut().unwrap();
    entries.push(serde_json::json!({"shader": "nope.wgsl", "entry": "main", "constants": []}));
    entries.push(serde_json::json!({"shader": "layernorm.wgsl", "entry": "no_such_entry", "constants": []}));
    entries.push(serde_json::json!({"shader": "layernorm.wgsl", "entry": "gamma", "constants": []}));
    std::fs::write(&list, serde_json::to_vec(&doc).unwrap()).unwrap();
    let second = warm_device(&dir);
    assert_eq!(warm_workload(&second), expected);
    assert!(!built(&second).iter().any(|k| k.contains("gamma") || k.contains("nope")));
    drop(second);

    // A corrupt file: ignored with a warning, rewritten as a valid list once pipelines are used.
    std::fs::write(&list, b"{ not json").unwrap();
    let third = warm_device(&dir);
    assert_eq!(warm_workload(&third), expected);
    assert_eq!(read_json(&list)["format"], "cmae-pipelines-1");
    let _ = std::fs::remove_dir_all(&dir);
}
