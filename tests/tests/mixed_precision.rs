//! Pretraining in f16 mixed precision end to end (lavapipe has SHADER_F16):
//! it tracks the same run in f32, resumes bit for bit, and records its
//! precision and loss scale in the config, the checkpoints and the metrics.

use std::sync::atomic::AtomicBool;

use cmae::config::PretrainConfig;
use cmae::safetensors_io::{self, HostTensor};
use cmae::train::metrics::{MetricsLine, MetricsLog};
use cmae::train::runner::RunFlags;
use cmae_engine::Precision;
use cmae_tests::{assert_resume_is_exact, fresh_temp_dir, has_f16, micro_pretrain, run_pretrain, shared_device};

/// The metrics of `cfg` run for its steps in `precision`, logged every step.
fn losses(cfg: &PretrainConfig, precision: Precision, name: &str) -> Vec<MetricsLine> {
    let mut cfg = cfg.clone();
    cfg.train.precision = precision;
    cfg.output.log_every = 1;
    let out = fresh_temp_dir(name);
    run_pretrain(&cfg, &out, false, None).unwrap();
    let lines = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    lines
}

fn mean_loss(lines: &[MetricsLine]) -> f64 {
    lines.iter().map(|m| m.loss).sum::<f64>() / lines.len() as f64
}

/// The same run in f16 and f32 (same data, masks and initial weights): the
/// mean loss over the last `tail` steps within 3% relative. The f16 run
/// reports its loss scale (f32 runs report none) and skips no step.
fn f16_tracks_f32(cfg: &PretrainConfig, tail: usize, name: &str) {
    let f32_run = losses(cfg, Precision::F32, &format!("{name}-f32"));
    let f16_run = losses(cfg, Precision::F16, &format!("{name}-f16"));
    let steps = cfg.train.steps.unwrap();
    assert_eq!((f32_run.len(), f16_run.len()), (steps, steps));
    let (a, b) = (mean_loss(&f32_run[steps - tail..]), mean_loss(&f16_run[steps - tail..]));
    assert!((b - a).abs() <= 0.03 * a, "{name}: mean loss of the last {tail} steps {b:.5} in f16, {a:.5} in f32");
    assert!(f16_run.iter().zip(&f32_run).any(|(x, y)| x.loss != y.loss), "{name}: f16 changed no loss");
    assert!(f32_run.iter().all(|m| m.loss_scale.is_none() && m.skipped_steps == 0));
    let scales: Vec<f64> = f16_run.iter().map(|m| m.loss_scale.expect("an f16 run reports its loss scale")).collect();
    assert!(scales.iter().all(|&s| s == 65536.0), "{name}: the scale moved without an overflow: {scales:?}");
    assert_eq!(f16_run.last().unwrap().skipped_steps, 0);
    let first = mean_loss(&f16_run[..tail.min(10)]);
    assert!(b < first, "{name}: the f16 loss did not fall ({first:.4} → {b:.4})");
}

#[test]
fn micro_pretraining_in_f16_tracks_f32() {
    if !has_f16() {
        return;
    }
    let mut cfg = PretrainConfig::preset("micro").unwrap();
    cfg.train.steps = Some(300);
    cfg.output.recon_images = 2;
    f16_tracks_f32(&cfg, 50, "micro300");
}

#[test]
fn tiny_pretraining_in_f16_tracks_f32() {
    if !has_f16() {
        return;
    }
    let mut cfg = PretrainConfig::preset("tiny").unwrap();
    cfg.train.steps = Some(30);
    cfg.train.batch = 8;
    cfg.output.recon_images = 2;
    f16_tracks_f32(&cfg, 10, "tiny30");
}

/// 10 steps, a resume, 10 more: bit for bit the 20 straight steps, loss scale
/// included. The run's precision is in its config, its checkpoints' metadata
/// and (with the scaler's state) its optimizer file; it may go on in f32.
#[test]
fn f16_runs_resume_bit_for_bit_and_record_their_precision() {
    if !has_f16() {
        return;
    }
    let mut cfg = micro_pretrain(20);
    cfg.train.precision = Precision::F16;
    cfg.output.checkpoint_every = 7;
    let (straight, split) = assert_resume_is_exact(&cfg, "f16-resume");

    let config = std::fs::read_to_string(split.join("config.ron")).unwrap();
    assert!(config.contains("precision: f16"), "{config}");
    let step_dir = split.join("checkpoints").join("step-00000020");
    let model = safetensors_io::read(&step_dir.join("model.safetensors")).unwrap();
    assert_eq!(model.metadata.get("precision").map(String::as_str), Some("f16"));
    let optimizer = safetensors_io::read(&step_dir.join("optimizer.safetensors")).unwrap();
    match optimizer.tensors.get("loss_scaler") {
        Some(HostTensor::F32(shape, v)) => {
            assert_eq!((shape.as_slice(), v[0], v[2]), (&[3][..], 65536.0, 0.0), "[scale, good steps, skipped]");
            assert_eq!(v[1], 20.0, "20 good steps in a row");
        }
        other => panic!("no loss scaler state in the optimizer file: {other:?}"),
    }

    // A run may go on in the other precision (checkpoints are f32 either way).
    let switched = fresh_temp_dir("f16-then-f32");
    run_pretrain(&cfg, &switched, false, Some(10)).unwrap();
    let mut wide = cfg.clone();
    wide.train.precision = Precision::F32;
    assert_eq!(run_pretrain(&wide, &switched, true, None).unwrap().step, 20);
    let lines = MetricsLog::read(&switched.join("metrics.jsonl")).unwrap();
    assert!(lines[..10].iter().all(|m| m.loss_scale == Some(65536.0)));
    assert!(lines[10..].iter().all(|m| m.loss_scale.is_none()), "f32 steps carry no loss scale");
    for d in [straight, split, switched] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A linear probe and a fine-tuning run from the same pretrained micro MAE,
/// in f16 and in f32: every step's loss within 2% (the ~10 f16 roundings on
/// each path, about 1%, compounded over six steps), results written. Fine-
/// tuning scales its loss; a probe trains its head in f32 on features its
/// frozen encoder computes in f16, so it has no loss scale.
#[test]
fn probing_and_fine_tuning_in_f16_track_f32() {
    use cmae::classify::{ClassifyConfig, Mode};
    if !has_f16() {
        return;
    }
    let base = fresh_temp_dir("f16-classify");
    let mut pre = PretrainConfig::preset("micro").unwrap();
    pre.set("model.depth=2").unwrap();
    pre.train.steps = Some(2);
    run_pretrain(&pre, &base.join("pretrain"), false, None).unwrap();
    let ckpt = base.join("pretrain").join("checkpoint.safetensors");
    for mode in [Mode::Linprobe, Mode::Finetune] {
        let model = cmae::train::checkpoint::model_config_of(&ckpt).unwrap();
        let mut cfg = ClassifyConfig::recipe(mode, model, 10, ckpt.display().to_string(), "synthetic");
        cfg.train.steps = Some(6);
        cfg.train.batch = 8;
        cfg.data.synthetic_size = 100;
        cfg.output.log_every = 1;
        let mut curves = Vec::new();
        for precision in [Precision::F32, Precision::F16] {
            cfg.train.precision = precision;
            let out = base.join(format!("{mode:?}-{}", precision.name()));
            let flags = RunFlags { out: out.clone(), resume: false, quiet: true, stop_at: None };
            let (summary, results) =
                cmae::classify::train(shared_device(), &cfg, &flags, &AtomicBool::new(false)).unwrap();
            assert_eq!(summary.step, 6);
            assert!(results.is_some_and(|r| r.top1.is_finite()), "{mode:?} {precision:?}: no results");
            curves.push(MetricsLog::read(&out.join("metrics.jsonl")).unwrap());
        }
        let (wide, half) = (&curves[0], &curves[1]);
        for (a, b) in wide.iter().zip(half) {
            assert!(
                (a.loss - b.loss).abs() <= 0.02 * a.loss,
                "{mode:?} step {}: f16 {} vs f32 {}",
                a.step,
                b.loss,
                a.loss
            );
        }
        let scaled = mode == Mode::Finetune;
        assert!(half.iter().all(|m| m.loss_scale.is_some() == scaled), "{mode:?}: loss scale reported {scaled}?");
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Overflowing gradients only skip steps, but a loss that is itself not
/// finite (weights blown up by a huge learning rate) stops an f16 run as it
/// stops an f32 one: named, with the last good checkpoint kept and nothing
/// after it logged.
#[test]
fn a_non_finite_loss_stops_an_f16_run_keeping_the_last_good_checkpoint() {
    if !has_f16() {
        return;
    }
    let out = fresh_temp_dir("f16-nan");
    let mut cfg = micro_pretrain(30);
    cfg.train.precision = Precision::F16;
    cfg.train.blr = 1e9;
    cfg.train.warmup_epochs = 0.0;
    cfg.output.checkpoint_every = 1;
    let err = format!("{:#}", run_pretrain(&cfg, &out, false, None).unwrap_err());
    assert!(err.contains("the loss became") && err.contains("train.blr"), "{err}");
    let (step, _) = cmae::train::checkpoint::latest(&out).unwrap().expect("a checkpoint from before the divergence");
    let lines = MetricsLog::read(&out.join("metrics.jsonl")).unwrap();
    assert!(lines.iter().all(|m| m.loss.is_finite() && m.step <= step), "nothing after a non-finite loss is saved");
    let _ = std::fs::remove_dir_all(&out);
}
