//! Classifiers on the GPU: they can fit data, and evaluation counts right.

use std::sync::OnceLock;

use cmae::classify::{Classifier, Mode, Perturb};
use cmae::config::PretrainConfig;
use cmae_engine::kernels::optim::{AdamWStep, adamw};
use cmae_engine::{Device, Gradients, Tape, Tensor};
use rand::SeedableRng;

fn dev() -> &'static Device {
    static DEV: OnceLock<Device> = OnceLock::new();
    DEV.get_or_init(|| Device::from_env().expect("a GPU adapter (CI installs lavapipe)"))
}

fn small_model() -> cmae::config::ModelConfig {
    let mut c = PretrainConfig::preset("tiny").unwrap();
    for s in ["model.img_size=16", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"] {
        c.set(s).unwrap();
    }
    c.model
}

/// A classifier must be able to memorise a fixed batch: the loss of 8
/// random images with 4 random labels drops below a tenth of ln 4.
#[test]
fn finetune_classifier_overfits_a_fixed_batch() {
    let d = dev();
    let cfg = small_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let model = Classifier::new(d, &cfg, Mode::Finetune, 4, &mut rng).unwrap();
    let b = 8;
    let pixels: Vec<f32> = (0..b * 3 * 16 * 16).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
    let imgs = Tensor::from_f32(d, &pixels, &[b, 3, 16, 16]).unwrap();
    let labels = [0u32, 1, 2, 3, 3, 2, 1, 0];
    let targets = Tensor::from_f32(d, &cmae::classify::augment::Mixup::targets(&labels, 4, 0.0), &[b, 4]).unwrap();
    let w = Tensor::from_f32(d, &vec![1.0 / b as f32; b], &[b]).unwrap();
    let state: Vec<(String, Tensor, Tensor)> = model
        .params
        .trainable()
        .map(|(n, t)| (n.to_string(), Tensor::zeros(d, t.shape()).unwrap(), Tensor::zeros(d, t.shape()).unwrap()))
        .collect();
    let mut losses = Vec::new();
    for step in 1..=60u64 {
        let tape = Tape::new(d);
        let logits = model.forward(&tape, &imgs, true, &[], &Perturb::default()).unwrap();
        let loss = tape.weighted_cross_entropy(&logits, &targets, &w).unwrap();
        let mut g = Gradients::default();
        tape.backward(&loss, &mut g).unwrap();
        for (name, m, v) in &state {
            let p = model.params.get(name).unwrap();
            let grad = g.get(name).unwrap_or_else(|| panic!("no gradient for {name}")).reshape(p.shape()).unwrap();
            let s =
                AdamWStep { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step, grad_scale: 1.0 };
            adamw(d, p, &grad, m, v, s).unwrap();
        }
        losses.push(loss.value().to_vec_f32(d).unwrap()[0]);
    }
    let ln4 = 4f32.ln();
    assert!((losses[0] - ln4).abs() < 0.1, "starts at chance: {}", losses[0]);
    assert!(*losses.last().unwrap() < 0.1 * ln4, "loss went {:?}", losses.iter().step_by(10).collect::<Vec<_>>());
}
