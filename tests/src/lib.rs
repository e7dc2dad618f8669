//! Cross-crate integration tests live in `tests/tests/`; this is what they share.

use std::path::PathBuf;
use std::sync::OnceLock;

use cmae::config::PretrainConfig;
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

/// A very small pretraining run, so many steps run in seconds.
pub fn micro_pretrain(steps: usize) -> PretrainConfig {
    let mut c = PretrainConfig::preset("micro").unwrap();
    for s in ["model.depth=2", "train.batch=4", "output.log_every=1", "output.recon_images=2"] {
        c.set(s).unwrap();
    }
    c.train.steps = Some(steps);
    c
}
