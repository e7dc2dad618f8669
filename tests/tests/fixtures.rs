//! Parity with PyTorch: every committed `cmae-fixture-v1` file (made by
//! tools/make_fixtures.py with PyTorch + timm) passes every check of
//! FIXTURES.md: loss, per-shot losses, prediction, all gradients, AdamW.

use std::path::{Path, PathBuf};

use cmae::fixture;
use cmae_engine::{Device, Precision};

fn fixtures() -> Vec<PathBuf> {
    fixture::files_in(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")).unwrap()
}

/// The checks of `file` in `precision`, after asserting there are many
/// (loss, prediction, one gradient and one AdamW result per trainable
/// parameter at least) and that every one passes.
fn all_pass(dev: &Device, file: &Path, precision: Precision) -> Vec<fixture::Check> {
    let what = format!("{} in {}", file.display(), precision.name());
    let checks = fixture::check_in(dev, file, precision).unwrap_or_else(|e| panic!("{what}: {:#}", e.0));
    assert!(checks.len() > 100, "{what}: only {} checks", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} error {:.3e} > bound {:.3e}", c.name, c.error, c.bound))
        .collect();
    assert!(failed.is_empty(), "{what}:\n{}", failed.join("\n"));
    checks
}

#[test]
fn every_committed_fixture_passes_every_check() {
    let dev = Device::from_env().expect("a GPU adapter (CI installs lavapipe)");
    let files = fixtures();
    assert!(files.len() >= 5, "the fixture suite is committed under tests/fixtures");
    for file in files {
        let checks = all_pass(&dev, &file, Precision::F32);
        for name in ["loss", "pred", "grad.cls_token", "grad.decoder_pred.weight", "adamw.mask_token"] {
            assert!(checks.iter().any(|c| c.name == name), "{}: no {name} check", file.display());
        }
    }
}

#[test]
fn a_corrupted_fixture_fails_its_checks() {
    // Flip the sign of one gradient's reference: check-fixture must notice.
    let dev = Device::from_env().unwrap();
    let src = &fixtures()[0];
    let mut file = cmae::safetensors_io::read(src).unwrap();
    let name = "grad_f64.blocks.0.attn.qkv.weight";
    if let Some(cmae::safetensors_io::HostTensor::F64(_, v)) = file.tensors.get_mut(name) {
        v.iter_mut().for_each(|x| *x = -*x);
    } else {
        panic!("{name} is missing from {}", src.display());
    }
    let out = std::env::temp_dir().join(format!("cmae-corrupt-{}.safetensors", std::process::id()));
    cmae::safetensors_io::write_host(&out, &file).unwrap();
    let checks = fixture::check(&dev, &out).unwrap_or_else(|e| panic!("{:#}", e.0));
    let _ = std::fs::remove_file(&out);
    let failed: Vec<&str> = checks.iter().filter(|c| !c.passed()).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, vec!["grad.blocks.0.attn.qkv.weight"]);
}

/// Mixed precision against PyTorch's f16 autocast on the same passes (the
/// fixtures' `autocast.*` tensors): every quantity within twice PyTorch's own
/// f16 error on top of the f32 bound (see `cmae::fixture`). A fixture
/// without the autocast reference cannot be checked in f16, and says how to
/// add it.
#[test]
fn every_committed_fixture_passes_in_f16_against_pytorch_autocast() {
    let dev = Device::from_env().unwrap();
    if !cmae_tests::has_f16() {
        return;
    }
    for file in fixtures() {
        all_pass(&dev, &file, Precision::F16);
    }
    let mut file = cmae::safetensors_io::read(&fixtures()[0]).unwrap();
    file.tensors.retain(|name, _| !name.starts_with("autocast."));
    let out = std::env::temp_dir().join(format!("cmae-no-autocast-{}.safetensors", std::process::id()));
    cmae::safetensors_io::write_host(&out, &file).unwrap();
    let err = fixture::check_in(&dev, &out, Precision::F16).expect_err("no autocast reference, no f16 check").0;
    let _ = std::fs::remove_file(&out);
    assert!(format!("{err:#}").contains("make_fixtures.py --autocast"), "{err:#}");
}
