//! The GL backend as a user reaches it: `CMAE_BACKEND=gl` (here llvmpipe's
//! OpenGL 4.5 through EGL, with no display). Every committed PyTorch fixture
//! passes `cmae check-fixture` with the same checks as on Vulkan, and a micro
//! pretraining's loss falls and tracks the same run on Vulkan step by step.
//!
//! A machine without a GL adapter (macOS, or Linux without Mesa's EGL) says
//! so on stderr and does not run these; CI sets `CMAE_REQUIRE_GL=1`, which
//! makes a missing GL adapter a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `cmae` on `backend`, with its tuning cache in `cache` (kept out of the
/// user's own cache).
fn cmae(backend: &str, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmae"))
        .args(args)
        .env("CMAE_BACKEND", backend)
        .env("CMAE_CACHE_DIR", cache)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmae-backends-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Whether a GL adapter opens; if not, says why (on stderr, past the test
/// harness's capture) or fails when `CMAE_REQUIRE_GL` is set.
fn gl_adapter(cache: &Path) -> bool {
    let out = cmae("gl", cache, &["info", "--json"]);
    if out.status.success() {
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["backend"], "Gl", "{info}");
        assert_eq!(info["kernels"]["subgroup_matmul"], false, "wgpu's GL backend has no subgroups: {info}");
        return true;
    }
    let why = text(&out);
    assert!(
        std::env::var_os("CMAE_REQUIRE_GL").is_none(),
        "CMAE_REQUIRE_GL is set but no GL adapter opens (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri): {why}"
    );
    let _ = writeln!(std::io::stderr(), "NOT RUN: no GL adapter on this machine ({})", why.trim());
    false
}

/// `(passed, failed)` from check-fixture's last line.
fn fixture_counts(out: &Output) -> (usize, usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let words: Vec<&str> = last.split_whitespace().collect();
    match words[..] {
        [passed, "passed,", failed, "failed"] => (passed.parse().unwrap(), failed.parse().unwrap()),
        _ => panic!("no summary line: {}", text(out)),
    }
}

#[test]
fn every_fixture_passes_on_gl_with_the_same_checks_as_on_vulkan() {
    let cache = temp("fixtures");
    if !gl_adapter(&cache) {
        return;
    }
    let files = cmae::fixture::files_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")).unwrap();
    assert!(files.len() >= 5, "the fixture suite is committed under tests/fixtures");
    for file in &files {
        let path = file.to_str().unwrap();
        let gl = cmae("gl", &cache, &["check-fixture", path]);
        let vulkan = cmae("vulkan", &cache, &["check-fixture", path]);
        assert!(gl.status.success(), "{path} on GL:\n{}", text(&gl));
        assert!(vulkan.status.success(), "{path} on Vulkan:\n{}", text(&vulkan));
        let (passed, failed) = fixture_counts(&gl);
        assert_eq!((passed, failed), fixture_counts(&vulkan), "{path}: GL and Vulkan ran different checks");
        assert!(passed > 100 && failed == 0, "{path}: {passed} passed, {failed} failed");
    }
    let _ = std::fs::remove_dir_all(&cache);
}

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// Both backends run on the same llvmpipe, and most kernels do the same
/// arithmetic in the same order; what differs is the matmul family (8-lane
/// subgroup kernel on Vulkan, the register kernel on GL, whose sums over k
/// associate differently) and where each shader compiler fuses a·b+c. That
/// is a rounding difference of about 1e-7 per step (measured: 2e-7 at most
/// over these 100 steps), which training may amplify but not to 1e-4.
const LOSS_RTOL: f64 = 1e-4;

#[test]
fn micro_pretraining_on_gl_falls_and_tracks_vulkan() {
    let cache = temp("pretrain-cache");
    if !gl_adapter(&cache) {
        return;
    }
    let mut curves = Vec::new();
    for backend in ["gl", "vulkan"] {
        let out_dir = temp(&format!("pretrain-{backend}"));
        let args = [
            "pretrain",
            "--preset",
            "micro",
            "--steps",
            "100",
            "--batch",
            "16",
            "--quiet",
            "--set",
            "output.log_every=1",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        let out = cmae(backend, &cache, &args);
        assert!(out.status.success(), "{backend}:\n{}", text(&out));
        curves.push(losses(&out_dir.join("metrics.jsonl")));
        let _ = std::fs::remove_dir_all(&out_dir);
    }
    let (gl, vulkan) = (&curves[0], &curves[1]);
    assert_eq!(gl.len(), 100);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&gl[90..]) < 0.9 * mean(&gl[..10]), "the loss on GL does not fall: {gl:?}");
    for (step, (g, v)) in gl.iter().zip(vulkan).enumerate() {
        assert!((g - v).abs() <= LOSS_RTOL * v.abs(), "step {}: GL loss {g} vs Vulkan {v}", step + 1);
    }
    let worst = gl.iter().zip(vulkan).map(|(g, v)| (g - v).abs() / v.abs()).fold(0.0, f64::max);
    let _ = writeln!(
        std::io::stderr(),
        "micro, 100 steps: loss {:.4} -> {:.4} on GL, {:.4} -> {:.4} on Vulkan; largest step difference {worst:.1e} relative",
        mean(&gl[..10]),
        mean(&gl[90..]),
        mean(&vulkan[..10]),
        mean(&vulkan[90..])
    );
    let _ = std::fs::remove_dir_all(&cache);
}

/// wgpu's GL backend has no SHADER_F16: mixed precision is refused there in
/// one line naming the feature, the adapter and the fix, before any run
/// directory is made, for pretraining and for the benchmark.
#[test]
fn f16_is_refused_on_gl_naming_the_feature_and_the_adapter() {
    let cache = temp("f16-cache");
    if !gl_adapter(&cache) {
        return;
    }
    let info: serde_json::Value = serde_json::from_slice(&cmae("gl", &cache, &["info", "--json"]).stdout).unwrap();
    assert_eq!(info["kernels"]["f16_mixed_precision"], false, "{info}");
    let adapter = info["adapter"].as_str().unwrap().to_string();
    let run = temp("f16-run").join("run");
    let run_arg = run.to_str().unwrap();
    let cases: [&[&str]; 2] = [
        &["pretrain", "--preset", "micro", "--steps", "2", "--set", "train.precision=f16", "--out", run_arg],
        &["bench", "pretrain", "--preset", "micro", "--steps", "1", "--precision", "f16"],
    ];
    for args in cases {
        let out = cmae("gl", &cache, args);
        assert!(!out.status.success(), "{args:?} ran on GL in f16");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line =
            stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {stderr}"));
        for part in ["SHADER_F16", adapter.as_str(), "train.precision=f32"] {
            assert!(line.contains(part), "{args:?}: {line:?} should name {part}");
        }
        assert!(!run.exists(), "a refused run left {}", run.display());
    }
    let _ = std::fs::remove_dir_all(&cache);
}
