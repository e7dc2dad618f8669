//! End-to-end pretraining on the GPU (lavapipe in CI): the loss falls, resume
//! is exact, checkpoints round-trip, and bad input fails with clear errors.
//! Memory is checked in `memory.rs`, a process of its own.

use std::sync::atomic::AtomicBool;

use cmae::config::PretrainConfig;
use cmae::safetensors_io;
use cmae::train::checkpoint;
use cmae::train::metrics::MetricsLog;
use cmae::train::pretrain::{Session, pretrain};
use cmae::train::runner::RunFlags;
use cmae_tests::{
    assert_resume_is_exact, checkpoint_weights, fresh_temp_dir, micro_pretrain, run_pretrain, shared_device,
};

#[test]
fn thirty_step_tiny_pretrain_loss_falls() {
    let out = fresh_temp_dir("thirty");
    let mut cfg = PretrainConfig::preset("tiny").unwrap();
    cfg.train.steps = Some(30);
    cfg.train.batch = 8;
    cfg.output.log_every = 1;
    let s = run_pretrain(&cfg, &out, false, None).unwrap();
    assert_eq!((s.step, s.interrupted), (30, false));
    let lines = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 30);
    let mean = |l: &[cmae::train::metrics::MetricsLine]| l.iter().map(|m| m.loss).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&lines[..5]), mean(&lines[25..]));
    assert!(last < 0.7 * first, "loss fell from {first:.3} to only {last:.3}");
    for m in &lines {
        assert_eq!(m.loss_per_shot.len(), 1);
        assert!(m.lr >= 0.0 && m.images_per_s > 0.0 && m.gpu_pooled_mb >= 0.0);
    }
    assert!(s.checkpoint.is_file() && s.artifact.as_ref().is_some_and(|r| r.is_file()));
    assert!(out.join("config.ron").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

/// The page's way of training (one awaited step at a time, batches built
/// without threads, the checkpoint as bytes) is `cmae pretrain`'s run: the
/// same losses step by step and the same checkpoint file.
#[test]
fn a_session_driven_step_by_step_is_the_same_run_as_pretrain() {
    let cfg = {
        let mut c = micro_pretrain(6);
        c.shots = cmae::config::parse_shots("0:0.5,1:0.25").unwrap();
        c
    };
    let out = fresh_temp_dir("session");
    run_pretrain(&cfg, &out, false, None).unwrap();
    let dev = shared_device();
    let mut session = Session::new(dev, &cfg).unwrap();
    assert_eq!((session.step(), session.total_steps()), (0, 6));
    let clock = std::time::Instant::now();
    let mut lines = Vec::new();
    // Steps recorded ahead (as the page does between its checkpoints) or one at a time.
    while session.step() < session.total_steps() {
        let ahead = session.step() != 2;
        lines.push(dev.block_on(session.advance(dev, || clock.elapsed().as_secs_f64(), ahead)).unwrap());
        if session.step() == 2 {
            assert!(session.is_ahead());
            let err = dev.block_on(session.checkpoint(dev)).unwrap_err().to_string();
            assert!(err.contains("step 3 is still running"), "{err}");
        }
    }
    assert!(!session.is_ahead());
    let native = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    let losses = |l: &[cmae::train::metrics::MetricsLine]| -> Vec<(u64, f64, Vec<Option<f64>>)> {
        l.iter().map(|m| (m.step, m.loss, m.loss_per_shot.clone())).collect()
    };
    // The run's lines went through JSON (whose float parsing is not exact): so do these.
    let lines: Vec<cmae::train::metrics::MetricsLine> =
        lines.iter().map(|l| serde_json::from_str(&serde_json::to_string(l).unwrap()).unwrap()).collect();
    assert_eq!(losses(&lines), losses(&native));
    let bytes = dev.block_on(session.checkpoint(dev)).unwrap();
    let page = out.join("from-session.safetensors");
    std::fs::write(&page, &bytes).unwrap();
    let stable = out.join("checkpoint.safetensors");
    assert_eq!(checkpoint_weights(&page), checkpoint_weights(&stable));
    let (a, b) = (safetensors_io::read(&page).unwrap().metadata, safetensors_io::read(&stable).unwrap().metadata);
    assert_eq!(a, b);
    let err = dev.block_on(session.advance(dev, || 0.0, true)).unwrap_err().to_string();
    assert!(err.contains("all its 6 steps"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn resume_continues_bit_for_bit() {
    let cfg = {
        let mut c = micro_pretrain(20);
        c.shots = cmae::config::parse_shots("0:0.5,1:0.25").unwrap();
        c.output.checkpoint_every = 7;
        c
    };
    let (straight, split) = assert_resume_is_exact(&cfg, "resume");
    // Resuming with another model is refused, naming the difference.
    let mut other = cfg.clone();
    other.model.depth = 3;
    let err = format!("{:#}", run_pretrain(&other, &split, true, None).unwrap_err());
    assert!(err.contains("model.depth") && err.contains("--resume"), "{err}");
    // A run directory is never silently overwritten.
    let err = format!("{:#}", run_pretrain(&cfg, &split, false, None).unwrap_err());
    assert!(err.contains("already holds a run") && err.contains("--resume"), "{err}");
    for d in [straight, split] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn checkpoints_round_trip_with_timm_names_and_reject_other_configs() {
    let out = fresh_temp_dir("roundtrip");
    let cfg = micro_pretrain(2);
    run_pretrain(&cfg, &out, false, None).unwrap();
    let path = out.join("checkpoint.safetensors");
    let file = safetensors_io::read(&path).unwrap();
    assert_eq!(file.metadata.get("format").map(String::as_str), Some(checkpoint::FORMAT));
    let (d, l) = (cfg.model.embed_dim, cfg.model.num_patches());
    for (name, shape) in [
        ("blocks.1.attn.qkv.weight", vec![3 * d, d]),
        ("patch_embed.proj.weight", vec![d, 3, 4, 4]),
        ("pos_embed", vec![1, 1 + l, d]),
        ("decoder_pred.weight", vec![48, cfg.model.decoder_embed_dim]),
        ("mask_token", vec![1, 1, cfg.model.decoder_embed_dim]),
    ] {
        assert_eq!(file.tensors.get(name).map(|t| t.shape().to_vec()), Some(shape), "{name}");
    }
    let loaded = checkpoint::load_model(shared_device(), &path, None).unwrap();
    assert_eq!(loaded.step, Some(2));
    let back: Vec<(String, Vec<f32>)> = {
        let mut v: Vec<(String, Vec<f32>)> =
            loaded.mae.params.to_host(shared_device()).unwrap().into_iter().map(|(n, _, d)| (n, d)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(back, checkpoint_weights(&path));
    let mut other = cfg.clone();
    other.model.embed_dim = 64;
    let err = format!("{:#}", checkpoint::load_model(shared_device(), &path, Some(&other)).err().unwrap());
    assert!(err.contains("shape") && err.contains("another model"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let out = fresh_temp_dir("nan");
    let mut cfg = micro_pretrain(30);
    cfg.train.blr = 1e9;
    cfg.train.warmup_epochs = 0.0;
    cfg.output.checkpoint_every = 1;
    let err = format!("{:#}", run_pretrain(&cfg, &out, false, None).unwrap_err());
    assert!(err.contains("the loss became") && err.contains("train.blr"), "{err}");
    let (step, _) = checkpoint::latest(&out).unwrap().expect("a checkpoint from before the divergence");
    let lines = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert!(
        lines.iter().all(|m| m.loss.is_finite() && m.step <= step),
        "nothing after a non-finite loss is logged or saved"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_interrupt_checkpoints_and_stops_cleanly() {
    let out = fresh_temp_dir("interrupt");
    let opts = RunFlags { out: out.clone(), resume: false, quiet: true, stop_at: None };
    let s = pretrain(shared_device(), &micro_pretrain(50), &opts, &AtomicBool::new(true)).unwrap();
    assert!(s.interrupted && s.step == 1);
    assert_eq!(checkpoint::latest(&out).unwrap().map(|(s, _)| s), Some(1));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_input_fails_with_clear_errors() {
    let out = fresh_temp_dir("bad");
    let mut cfg = micro_pretrain(2);
    cfg.data.spec = "fmnist:/no/such/fashion-mnist".into();
    let err = format!("{:#}", run_pretrain(&cfg, &out, false, None).unwrap_err());
    assert!(err.contains("/no/such/fashion-mnist") && err.contains("does not exist"), "{err}");

    // An image folder with one corrupt PNG: abort names the file, skip counts it.
    let data = fresh_temp_dir("folder");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..6 {
            let img = image::RgbImage::from_fn(20, 20, |x, y| image::Rgb([(x * 10) as u8, (y * 10) as u8, i * 40]));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(data.join("b").join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let mut cfg = micro_pretrain(3);
    cfg.data.spec = format!("folder:{}", data.display());
    cfg.train.batch = 13;
    let err = format!("{:#}", run_pretrain(&cfg, &out, false, None).unwrap_err());
    assert!(err.contains("broken.png") && err.contains("bad_images=skip"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
    cfg.data.bad_images = cmae::config::BadImages::Skip;
    run_pretrain(&cfg, &out, false, None).unwrap();
    let lines = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert!(lines.last().unwrap().skipped_images >= 1);

    let err = PretrainConfig::preset("tiny").unwrap().set("train.bs=3").unwrap_err().to_string();
    assert!(err.contains("train.bs") && err.contains("batch"), "{err}");
    let mut cfg = micro_pretrain(2);
    cfg.shots = cmae::config::parse_shots("0:0.75,9:0.1").unwrap();
    let err = format!("{:#}", run_pretrain(&cfg, &out, false, None).unwrap_err());
    assert!(err.contains("shot 1 layer 9") && err.contains("depth 2"), "{err}");
    for d in [out, data] {
        let _ = std::fs::remove_dir_all(d);
    }
}
