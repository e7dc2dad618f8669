//! Parity with PyTorch: every committed `cmae-fixture-v1` file (made by
//! tools/make_fixtures.py with PyTorch + timm) passes every check of
//! FIXTURES.md: loss, per-shot losses, prediction, all gradients, AdamW.

use std::path::PathBuf;

use cmae::fixture;
use cmae_engine::Device;

fn fixtures() -> Vec<PathBuf> {
    fixture::files_in(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")).unwrap()
}

#[test]
fn every_committed_fixture_passes_every_check() {
    let dev = Device::from_env().expect("a GPU adapter (CI installs lavapipe)");
    let files = fixtures();
    assert!(files.len() >= 5, "the fixture suite is committed under tests/fixtures");
    for file in files {
        let checks = fixture::check(&dev, &file).unwrap_or_else(|e| panic!("{}: {:#}", file.display(), e.0));
        // Loss, prediction, one gradient and one AdamW result per trainable parameter at least.
        assert!(checks.len() > 100, "{}: only {} checks", file.display(), checks.len());
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| format!("{} error {:.3e} > bound {:.3e}", c.name, c.error, c.bound))
            .collect();
        assert!(failed.is_empty(), "{}:\n{}", file.display(), failed.join("\n"));
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
    use cmae_engine::Precision;
    let dev = Device::from_env().unwrap();
    if !dev.kernel_families().shader_f16 {
        assert!(
            std::env::var_os("CMAE_REQUIRE_F16").is_none(),
            "CMAE_REQUIRE_F16 is set but the adapter has no SHADER_F16"
        );
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "NOT RUN: {} has no SHADER_F16", dev.info().name);
        return;
    }
    for file in fixtures() {
        let checks =
            fixture::check_in(&dev, &file, Precision::F16).unwrap_or_else(|e| panic!("{}: {:#}", file.display(), e.0));
        assert!(checks.len() > 100, "{}: only {} checks", file.display(), checks.len());
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| format!("{} error {:.3e} > bound {:.3e}", c.name, c.error, c.bound))
            .collect();
        assert!(failed.is_empty(), "{} in f16:\n{}", file.display(), failed.join("\n"));
    }
    let mut file = cmae::safetensors_io::read(&fixtures()[0]).unwrap();
    file.tensors.retain(|name, _| !name.starts_with("autocast."));
    let out = std::env::temp_dir().join(format!("cmae-no-autocast-{}.safetensors", std::process::id()));
    cmae::safetensors_io::write_host(&out, &file).unwrap();
    let err = fixture::check_in(&dev, &out, Precision::F16).expect_err("no autocast reference, no f16 check").0;
    let _ = std::fs::remove_file(&out);
    assert!(format!("{err:#}").contains("make_fixtures.py --autocast"), "{err:#}");
}
