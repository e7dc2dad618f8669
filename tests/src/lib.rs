//! Cross-crate integration tests live in `tests/tests/`; this is what they share.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use cmae::config::PretrainConfig;
use cmae::safetensors_io::{self, HostTensor};
use cmae::train::pretrain::pretrain;
use cmae::train::runner::{RunFlags, Summary};
use cmae_engine::Device;

/// One device for every test in a binary: opening an adapter is slow on lavapipe.
pub fn shared_device() -> &'static Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| Device::from_env().expect("a GPU adapter (CI installs lavapipe)"))
}

/// A path under the temp dir, unique to this test process and `name`, with
/// anything a previous run left there removed (the directory is not created).
pub fn fresh_temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmae-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Whether the shared device runs f16 (SHADER_F16). Where it does not, says
/// so on stderr (past the harness's capture), or fails when
/// CMAE_REQUIRE_F16 is set (CI's lavapipe has it).
pub fn has_f16() -> bool {
    use std::io::Write;
    let dev = shared_device();
    if dev.kernel_families().shader_f16 {
        return true;
    }
    assert!(
        std::env::var_os("CMAE_REQUIRE_F16").is_none(),
        "CMAE_REQUIRE_F16 is set but {} has no SHADER_F16",
        dev.info().name
    );
    let _ = writeln!(std::io::stderr(), "NOT RUN: {} has no SHADER_F16", dev.info().name);
    false
}

/// Pretrains `cfg` into `out` on the shared device, quietly.
pub fn run_pretrain(cfg: &PretrainConfig, out: &Path, resume: bool, stop_at: Option<u64>) -> anyhow::Result<Summary> {
    let opts = RunFlags { out: out.to_path_buf(), resume, quiet: true, stop_at };
    pretrain(shared_device(), cfg, &opts, &AtomicBool::new(false))
}

/// Every tensor of a checkpoint (all f32), sorted by name.
pub fn checkpoint_weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<(String, Vec<f32>)> = safetensors_io::read(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, t)| match t {
            HostTensor::F32(_, d) => (n, d),
            _ => panic!("{n} is not f32"),
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs `cfg` (20 steps) straight into one fresh directory, and in another
/// stopped at step 10 and resumed; asserts both end with the same weights
/// bit for bit and log the same steps, losses, learning rates and loss
/// scales. Returns the two directories (straight, split).
pub fn assert_resume_is_exact(cfg: &PretrainConfig, name: &str) -> (PathBuf, PathBuf) {
    use cmae::train::metrics::{MetricsLine, MetricsLog};
    assert_eq!(cfg.train.steps, Some(20));
    let straight = fresh_temp_dir(&format!("{name}-straight"));
    run_pretrain(cfg, &straight, false, None).unwrap();
    let split = fresh_temp_dir(&format!("{name}-split"));
    let first = run_pretrain(cfg, &split, false, Some(10)).unwrap();
    assert!(first.interrupted && first.step == 10);
    assert_eq!(run_pretrain(cfg, &split, true, None).unwrap().step, 20);
    let weights = |dir: &Path| checkpoint_weights(&dir.join("checkpoint.safetensors"));
    assert_eq!(weights(&straight), weights(&split));
    let logged = |dir: &Path| -> Vec<(u64, f64, f64, Option<f64>)> {
        let lines: Vec<MetricsLine> = MetricsLog::read(&dir.join("metrics.jsonl")).unwrap();
        lines.iter().map(|m| (m.step, m.loss, m.lr, m.loss_scale)).collect()
    };
    assert_eq!(logged(&straight), logged(&split));
    (straight, split)
}

/// A very small pretraining run, so many steps run in seconds.
pub fn micro_pretrain(steps: usize) -> PretrainConfig {
    let mut c = PretrainConfig::preset("micro").unwrap();
    for s in ["model.depth=2", "train.batch=4", "output.log_every=1", "output.recon_images=2"] {
        c.set(s).unwrap();
    }
    c.train.steps = Some(steps);
    c
}
