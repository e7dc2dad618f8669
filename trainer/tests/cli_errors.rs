//! Bad input on the command line ends with one clear `error:` line and a
//! failing exit status, never a panic.

use std::process::{Command, Output};

fn cmae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmae")).args(args).output().unwrap()
}

/// The single error line (Mesa's own warnings filtered out).
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> =
        stderr.lines().filter(|l| l.starts_with("error:") && !l.contains("XDG_RUNTIME_DIR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cmae-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn config_and_shot_mistakes_are_named() {
    let cases: [(&[&str], &[&str]); 6] = [
        (&["pretrain", "--set", "model.dpeth=6"], &["model.dpeth", "depth"]),
        (&["pretrain", "--shots", "0:0.75,13:0.1"], &["shot 1 layer 13", "depth 12"]),
        (&["pretrain", "--shots", "0:0.75", "--loss-weights", "1,2"], &["2 weights for 1 shots"]),
        (&["pretrain", "--preset", "vit-xl"], &["vit-xl", "vit-b16"]),
        (&["pretrain", "--data", "fmnist:/definitely/missing"], &["/definitely/missing", "does not exist"]),
        (&["linprobe", "--data", "synthetic"], &["--checkpoint"]),
    ];
    for (args, wants) in cases {
        let out = cmae(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let line = error_line(&out);
        for w in wants {
            assert!(line.contains(w), "{args:?}: {line}");
        }
    }
    // A run that cannot start leaves no run directory behind.
    let dir = temp("no-litter");
    let run = dir.join("run");
    for cmd in [&["pretrain"][..], &["finetune", "--from-scratch"][..]] {
        let out = cmae(&[cmd, &["--data", "fmnist:/definitely/missing", "--out", run.to_str().unwrap()]].concat());
        assert!(error_line(&out).contains("/definitely/missing"));
        assert!(!run.exists(), "{cmd:?} left {}", run.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reconstruct_reports_unreadable_images_and_checkpoints() {
    let dir = temp("recon");
    let broken = dir.join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let ckpt = dir.join("not-a-checkpoint.safetensors");
    std::fs::write(&ckpt, b"nope").unwrap();
    let out = cmae(&[
        "reconstruct",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--images",
        broken.to_str().unwrap(),
        "--out",
        "x.png",
    ]);
    assert!(error_line(&out).contains("not-a-checkpoint.safetensors"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pretrain_then_reconstruct_any_image() {
    let dir = temp("pipeline");
    let run = dir.join("run");
    let out = cmae(&[
        "pretrain",
        "--preset",
        "micro",
        "--steps",
        "2",
        "--batch",
        "4",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "model.depth=2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checkpoint.safetensors") && stdout.contains("recon/step-00000002.png"), "{stdout}");

    let photo = dir.join("photo.png");
    image::RgbImage::from_fn(50, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 90])).save(&photo).unwrap();
    let broken = dir.join("broken.jpg");
    std::fs::write(&broken, b"\xff\xd8\xff garbage").unwrap();
    let ckpt = run.join("checkpoint.safetensors");
    let grid = dir.join("grid.png");
    let args = [
        "reconstruct",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--shots",
        "0:0.5,1:0.5",
        "--out",
        grid.to_str().unwrap(),
        "--images",
    ];
    let ok = cmae(&[&args[..], &[photo.to_str().unwrap(), photo.to_str().unwrap()]].concat());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let img = image::open(&grid).unwrap();
    // Two rows of original | shot 1 | shot 2 | reconstruction | error, 96-px cells.
    assert_eq!((img.width(), img.height()), (5 * 98 + 2, 2 * 98 + 2));
    // --json: the model's loss over the dropped patches, and each image's.
    let json_args = ["reconstruct", "--checkpoint", ckpt.to_str().unwrap(), "--shots", "0:0.5,1:0.5", "--seed", "3"];
    let other = dir.join("other.png");
    image::RgbImage::from_fn(30, 30, |x, y| image::Rgb([(x * y) as u8, 20, (y * 8) as u8])).save(&other).unwrap();
    let printed =
        cmae(&[&json_args[..], &["--json", "--images", photo.to_str().unwrap(), other.to_str().unwrap()]].concat());
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let v: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    let per: Vec<f64> = v["per_image"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let loss = v["loss"].as_f64().unwrap();
    assert!(per.len() == 2 && loss > 0.0 && per[0] != per[1], "{v}");
    // Every image drops as many patches: the batch loss is their mean.
    assert!((loss - (per[0] + per[1]) / 2.0).abs() <= 1e-12 * loss, "{v}");
    assert_eq!((v["shots"].as_str(), v["seed"].as_u64()), (Some("0:0.5,1:0.5"), Some(3)));
    let bad = cmae(&[&args[..], &[broken.to_str().unwrap()]].concat());
    let line = error_line(&bad);
    assert!(line.contains("broken.jpg") && line.contains("corrupt"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cmae eval --set` takes the run-config overrides of linprobe/finetune:
/// `data.test_images` limits the images, a model change is refused.
#[test]
fn eval_takes_set_overrides() {
    let dir = temp("eval-set");
    let (pre, ft) = (dir.join("pre"), dir.join("ft"));
    let small = ["--steps", "2", "--batch", "4", "--quiet", "--set", "data.synthetic_size=64"];
    let out = cmae(&[&["pretrain", "--preset", "micro", "--out", pre.to_str().unwrap()], &small[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ckpt = pre.join("checkpoint.safetensors");
    let args =
        ["finetune", "--checkpoint", ckpt.to_str().unwrap(), "--data", "synthetic", "--out", ft.to_str().unwrap()];
    let out = cmae(&[&args[..], &small[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ft_ckpt = ft.join("checkpoint.safetensors");
    let eval = |extra: &[&str]| {
        cmae(&[&["eval", "--checkpoint", ft_ckpt.to_str().unwrap(), "--data", "synthetic"], extra].concat())
    };
    let images = |out: &Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["images"].as_u64().unwrap()
    };
    let all = images(&eval(&[]));
    assert!(all > 5, "the synthetic test split has {all} images");
    assert_eq!(images(&eval(&["--set", "data.test_images=5"])), 5);
    let line = error_line(&eval(&["--set", "model.depth=1"]));
    assert!(line.contains("model.*"), "{line}");
    let line = error_line(&eval(&["--set", "data.tset_images=5"]));
    assert!(line.contains("tset_images"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An attention path the engine does not know is named with the fix, not ignored.
#[test]
fn unknown_attention_path_is_named() {
    let dir = temp("attention-env");
    let out = Command::new(env!("CARGO_BIN_EXE_cmae"))
        .args(["pretrain", "--preset", "micro", "--steps", "1", "--out", dir.join("run").to_str().unwrap()])
        .env("CMAE_ATTENTION", "flash")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("CMAE_ATTENTION=flash") && line.contains("fused or composed"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `CMAE_AUTOTUNE` value other than on/off is named with the allowed ones.
#[test]
fn unknown_autotune_setting_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_cmae")).arg("info").env("CMAE_AUTOTUNE", "fast").output().unwrap();
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("CMAE_AUTOTUNE=fast") && line.contains("on or off"), "{line}");
}

/// A build without MPI under a multi-rank launcher refuses to run N
/// independent copies into one directory. (CI builds the default features
/// for this test alone: `.ci/run`.)
#[cfg(not(feature = "mpi"))]
#[test]
fn a_multi_rank_launch_of_a_build_without_mpi_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_cmae"))
        .args(["pretrain", "--preset", "micro", "--data", "synthetic", "--steps", "1"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        error_line(&out),
        "error: this cmae was launched as one of 2 ranks (OMPI_COMM_WORLD_SIZE=2) but was built without MPI; rebuild with `cargo build --release -p cmae --features mpi` (needs openmpi-bin libopenmpi-dev libclang-dev), or start one process"
    );
}
