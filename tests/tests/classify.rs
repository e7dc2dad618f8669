//! Classifiers on the GPU: they can fit data, and evaluation counts right.

use cmae::classify::{Classifier, Mode};
use cmae::config::PretrainConfig;
use cmae_engine::kernels::elementwise::zeros;
use cmae_engine::kernels::optim::{AdamWStep, adamw};
use cmae_engine::{Gradients, Tape, Tensor, TensorMut};
use cmae_tests::{fresh_temp_dir, shared_device};
use rand::SeedableRng;

fn small_model() -> cmae::config::ModelConfig {
    let mut c = PretrainConfig::preset("micro").unwrap();
    c.set("model.depth=2").unwrap();
    c.model
}

/// One fine-tuning AdamW step against the hand-computed one. On the first
/// step AdamW's bias corrections cancel, so every element moves by
/// `lr·s·g/(|g|+eps)` plus decay `lr·s·wd·p`, where `s` is MAE's layer-decay
/// scale (head 1, block i `0.65^(depth−i)`, embeddings `0.65^(depth+1)`) and
/// `wd` is 0 for biases, norms, the cls token and the position embedding.
#[test]
fn finetune_adamw_step_follows_the_layer_decay_groups() {
    use cmae::classify::{finetune_decays, layer_decay_scale};
    use cmae::train::optimizer::{AdamW, AdamWConfig};
    let d = shared_device();
    let cfg = small_model();
    let mut model =
        Classifier::new(d, &cfg, Mode::Finetune, 4, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3)).unwrap();
    let pixels: Vec<f32> = (0..4 * 3 * 16 * 16).map(|i| ((i * 131) % 61) as f32 / 30.0 - 1.0).collect();
    let imgs = Tensor::from_f32(d, &pixels, &[4, 3, 16, 16]).unwrap();
    let targets =
        Tensor::from_f32(d, &cmae::classify::augment::Mixup::targets(&[0, 1, 2, 3], 4, 0.1), &[4, 4]).unwrap();
    let w = Tensor::from_f32(d, &[0.25; 4], &[4]).unwrap();
    let tape = Tape::new(d);
    let logits = model.forward_train(&tape, &imgs, &[]).unwrap();
    let loss = tape.weighted_cross_entropy(&logits, &targets, &w).unwrap();
    let (lr, wd, decay, depth) = (1e-3, 0.05, 0.65, cfg.depth);
    let adamw_cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd, decays: finetune_decays };
    let mut opt = AdamW::new(d, &model.params, adamw_cfg).unwrap();
    let mut grads = opt.new_gradients(d, &model.params).unwrap();
    tape.backward(&loss, &mut grads).unwrap();
    drop(tape);
    let before: Vec<(String, Vec<f32>, Vec<f32>)> = model
        .params
        .trainable()
        .map(|(n, t)| {
            let g = grads.get(n).unwrap().wait_f32(d).unwrap();
            (n.to_string(), t.wait_f32(d).unwrap(), g)
        })
        .collect();
    opt.update(d, &mut model.params, &grads, (lr, 1.0), |n| layer_decay_scale(n, depth, decay), None).unwrap();
    let mut scales_seen = std::collections::BTreeSet::new();
    for (name, p0, g) in &before {
        let p1 = model.params.get(name).unwrap().wait_f32(d).unwrap();
        let shape = model.params.get(name).unwrap().shape().to_vec();
        let s = layer_decay_scale(name, depth, decay);
        let wd_here = if finetune_decays(name, &shape) { wd } else { 0.0 };
        scales_seen.insert((s * 1e6).round() as i64);
        for ((&a, &b), &gi) in p0.iter().zip(&p1).zip(g) {
            let (a, gi) = (f64::from(a), f64::from(gi));
            let want = a * (1.0 - lr * s * wd_here) - lr * s * gi / (gi.abs() + 1e-8);
            assert!((f64::from(b) - want).abs() < 1e-6 * (1.0 + a.abs()), "{name}: {b} vs {want} (scale {s})");
        }
    }
    // Embeddings, each block and the head: depth + 2 distinct rates.
    assert_eq!(scales_seen.len(), depth + 2);
}

/// A classifier must be able to memorise a fixed batch: the loss of 8
/// random images with 4 random labels drops below a tenth of ln 4.
#[test]
fn finetune_classifier_overfits_a_fixed_batch() {
    let d = shared_device();
    let cfg = small_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut model = Classifier::new(d, &cfg, Mode::Finetune, 4, &mut rng).unwrap();
    let b = 8;
    let pixels: Vec<f32> = (0..b * 3 * 16 * 16).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
    let imgs = Tensor::from_f32(d, &pixels, &[b, 3, 16, 16]).unwrap();
    let labels = [0u32, 1, 2, 3, 3, 2, 1, 0];
    let targets = Tensor::from_f32(d, &cmae::classify::augment::Mixup::targets(&labels, 4, 0.0), &[b, 4]).unwrap();
    let w = Tensor::from_f32(d, &vec![1.0 / b as f32; b], &[b]).unwrap();
    let mut state: Vec<(String, TensorMut, TensorMut)> = model
        .params
        .trainable()
        .map(|(n, t)| (n.to_string(), zeros(d, t.shape()).unwrap(), zeros(d, t.shape()).unwrap()))
        .collect();
    let mut losses = Vec::new();
    for step in 1..=60u64 {
        let tape = Tape::new(d);
        let logits = model.forward_train(&tape, &imgs, &[]).unwrap();
        let loss = tape.weighted_cross_entropy(&logits, &targets, &w).unwrap();
        let mut g = Gradients::default();
        tape.backward(&loss, &mut g).unwrap();
        for (name, m, v) in &mut state {
            let p = model.params.trainable_by_name(name).unwrap();
            let grad = g.get(name).unwrap_or_else(|| panic!("no gradient for {name}")).reshape(p.shape()).unwrap();
            let s =
                AdamWStep { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step, grad_scale: 1.0 };
            adamw(d, p, &grad, m, v, s).unwrap();
        }
        losses.push(loss.value().wait_f32(d).unwrap()[0]);
    }
    let ln4 = 4f32.ln();
    assert!((losses[0] - ln4).abs() < 0.1, "starts at chance: {}", losses[0]);
    assert!(*losses.last().unwrap() < 0.1 * ln4, "loss went {:?}", losses.iter().step_by(10).collect::<Vec<_>>());
}

/// A pretrained micro MAE to probe and fine-tune.
fn pretrained(out: &std::path::Path) -> std::path::PathBuf {
    let mut cfg = PretrainConfig::preset("micro").unwrap();
    for s in ["model.depth=2", "data.synthetic_size=100"] {
        cfg.set(s).unwrap();
    }
    cfg.train.steps = Some(2);
    let opts = cmae::train::runner::RunFlags { out: out.to_path_buf(), resume: false, quiet: true, stop_at: None };
    cmae::train::pretrain::pretrain(shared_device(), &cfg, &opts, &std::sync::atomic::AtomicBool::new(false)).unwrap();
    out.join("checkpoint.safetensors")
}

fn classify_cfg(mode: Mode, init: &std::path::Path, steps: usize) -> cmae::classify::ClassifyConfig {
    let model = cmae::train::checkpoint::model_config_of(init).unwrap();
    let mut c = cmae::classify::ClassifyConfig::recipe(mode, model, 10, init.display().to_string(), "synthetic");
    c.train.steps = Some(steps);
    c.train.batch = 8;
    c.data.synthetic_size = 100;
    c.output.log_every = 1;
    c.output.checkpoint_every = 3;
    c
}

fn train(
    cfg: &cmae::classify::ClassifyConfig,
    out: &std::path::Path,
    resume: bool,
    stop_at: Option<u64>,
) -> anyhow::Result<(cmae::train::runner::Summary, serde_json::Value)> {
    let flags = cmae::train::runner::RunFlags { out: out.to_path_buf(), resume, quiet: true, stop_at };
    let (summary, results) =
        cmae::classify::train(shared_device(), cfg, &flags, &std::sync::atomic::AtomicBool::new(false))?;
    Ok((summary, serde_json::to_value(results)?))
}

#[test]
fn probe_and_finetune_write_results_and_resume_exactly() {
    let base = fresh_temp_dir("pipeline");
    let ckpt = pretrained(&base.join("pretrain"));
    for mode in [Mode::Linprobe, Mode::Finetune] {
        let cfg = classify_cfg(mode, &ckpt, 6);
        let straight = base.join(format!("{mode:?}-straight"));
        let (s, results) = train(&cfg, &straight, false, None).unwrap();
        assert_eq!(s.step, 6);
        for key in ["top1", "top5", "epochs"] {
            assert!(results[key].is_number(), "{mode:?}: {key} in {results}");
        }
        let on_disk: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(straight.join("results.json")).unwrap()).unwrap();
        assert_eq!(on_disk, results);
        let split = base.join(format!("{mode:?}-split"));
        train(&cfg, &split, false, Some(3)).unwrap();
        train(&cfg, &split, true, None).unwrap();
        let a = cmae::safetensors_io::read(&straight.join("checkpoint.safetensors")).unwrap();
        let b = cmae::safetensors_io::read(&split.join("checkpoint.safetensors")).unwrap();
        let mut names: Vec<&String> = a.tensors.keys().collect();
        names.sort();
        for n in names {
            assert_eq!(
                format!("{:?}", a.tensors[n]),
                format!("{:?}", b.tensors[n]),
                "{mode:?}: {n} differs after resume"
            );
        }
        // The probe only trains its head; its encoder is the pretrained one.
        if mode == Mode::Linprobe {
            let pre = cmae::safetensors_io::read(&ckpt).unwrap();
            assert_eq!(
                format!("{:?}", a.tensors["blocks.1.attn.qkv.weight"]),
                format!("{:?}", pre.tensors["blocks.1.attn.qkv.weight"])
            );
        }
        let (model, _) =
            cmae::classify::load_classifier(shared_device(), &straight.join("checkpoint.safetensors")).unwrap();
        assert_eq!(model.mode, mode);
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// A classifier that always answers class 3 scores exactly what the labels
/// say: the synthetic test set has every class equally often.
#[test]
fn eval_of_a_constant_classifier_has_a_known_answer() {
    let d = shared_device();
    let cfg = small_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut model = Classifier::new(d, &cfg, Mode::Finetune, 10, &mut rng).unwrap();
    let mut weights: cmae::safetensors_io::F32Map =
        model.params.to_host(d).unwrap().into_iter().map(|(n, s, v)| (n, (s, v))).collect();
    weights.insert("head.weight".into(), (vec![10, 32], vec![0.0; 320]));
    let mut bias = vec![0.0; 10];
    bias[3] = 5.0;
    weights.insert("head.bias".into(), (vec![10], bias));
    model.params.replace_from(d, weights).unwrap();
    let test: std::sync::Arc<dyn cmae::data::Dataset> =
        std::sync::Arc::new(cmae::data::synthetic::Synthetic::new(200, 16, cmae::data::Split::Test));
    let acc = cmae::classify::evaluate(d, &model, test, cmae::config::BadImages::Abort, 32, 0, true).unwrap();
    assert_eq!(acc.images, 200);
    assert_eq!(acc.top1, 10.0);
    // Ties break towards lower class ids: classes 0, 1, 2, 3 and 4 are in the top five.
    assert_eq!(acc.top5, 50.0);
    assert_eq!((acc.top1_occlusion50, acc.top1_shuffled), (Some(10.0), Some(10.0)));
}

#[test]
fn classification_bad_input_is_clear() {
    let base = fresh_temp_dir("bad");
    let ckpt = pretrained(&base.join("pretrain"));
    // A pretraining checkpoint is not a classifier.
    let err = format!("{:#}", cmae::classify::load_classifier(shared_device(), &ckpt).err().unwrap());
    assert!(err.contains("pretrain checkpoint") && err.contains("linprobe or finetune"), "{err}");
    // Another model's encoder.
    let mut cfg = classify_cfg(Mode::Finetune, &ckpt, 2);
    cfg.model.embed_dim = 64;
    let err = format!("{:#}", train(&cfg, &base.join("other"), false, None).unwrap_err());
    assert!(err.contains("shape") && err.contains(&ckpt.display().to_string()), "{err}");
    // A missing checkpoint file.
    let err = format!("{:#}", cmae::train::checkpoint::model_config_of(&base.join("nope.safetensors")).unwrap_err());
    assert!(err.contains("nope.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
