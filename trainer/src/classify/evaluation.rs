//! Evaluation of a trained classifier: top-1/top-5 and the study's
//! robustness tests (half the patches removed, patches shuffled), and loading
//! a linprobe/finetune checkpoint to evaluate.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cmae_engine::{Device, Tape, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{Classifier, ClassifyConfig, Perturb};
use crate::config::{BadImages, ModelConfig};
use crate::data::Dataset;
use crate::data::augment::Transform;
use crate::data::loader::{Batch, Loader, LoaderConfig};
use crate::rng::{Stream, stream_rng};
use crate::train::checkpoint::CheckpointFile;

/// Evaluation transform: the test images resized to the model's size.
fn eval_transform(cfg: &ModelConfig, set: &dyn Dataset) -> Transform {
    Transform::new(cfg.img_size, cfg.in_chans, set.mean_std(), false)
}

/// Accuracies in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
    pub top1_occlusion50: Option<f64>,
    pub top1_shuffled: Option<f64>,
    pub images: usize,
}

/// Index of the `k` largest logits of each row contain the label?
fn hits(logits: &[f32], labels: &[u32], classes: usize, k: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let target = row[l as usize];
            // Rank = how many logits beat the label's (ties count against it).
            row.iter().enumerate().filter(|&(j, &v)| v > target || (v == target && j < l as usize)).count() < k
        })
        .count()
}

/// Rows kept when half the patches are removed: cls (row 0) and a random
/// ⌊L/2⌋ of the patch rows 1..=L, per sample: `[b, 1 + L/2]`.
pub fn occlusion_rows(b: usize, l: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b)
        .flat_map(|_| {
            let mut ids: Vec<u32> = (1..=l as u32).collect();
            ids.shuffle(rng);
            ids.truncate(l / 2);
            std::iter::once(0).chain(ids)
        })
        .collect()
}

/// A random permutation of the L patches per sample: `[b, L]`.
pub fn shuffled_patches(b: usize, l: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b)
        .flat_map(|_| {
            let mut ids: Vec<u32> = (0..l as u32).collect();
            ids.shuffle(rng);
            ids
        })
        .collect()
}

/// Top-1/top-5 on `set`; with `robustness`, also top-1 with 50% of the
/// patch tokens removed and with the patches shuffled (seeded).
pub fn evaluate(
    dev: &Device,
    model: &Classifier,
    set: std::sync::Arc<dyn Dataset>,
    bad: BadImages,
    batch: usize,
    seed: u64,
    robustness: bool,
) -> Result<Accuracy> {
    let m = &model.cfg;
    let transform = eval_transform(m, set.as_ref());
    let cfg = LoaderConfig {
        batch,
        seed,
        workers: 0,
        bad_images: bad,
        shuffle: false,
        drop_last: false,
        prefetch: 2,
        positions: None,
        inline: cfg!(target_arch = "wasm32"),
    };
    let mut loader = Loader::new(set, transform, cfg, 0)?;
    let l = m.num_patches();
    let (mut top1, mut top5, mut occl, mut shuf, mut n) = (0, 0, 0, 0, 0);
    let mut rng = stream_rng(Stream::Robustness, &[seed]);
    for _ in 0..loader.batches_per_epoch() {
        let Batch { images, labels, size: b, .. } = loader.next_batch()?;
        let imgs = Tensor::from_f32(dev, &images, &[b, m.in_chans, m.img_size, m.img_size])?;
        let run = |p: &Perturb<'_>| -> Result<Vec<f32>> {
            let tape = Tape::no_grad(dev);
            Ok(model.forward(&tape, &imgs, p)?.value().wait_f32(dev)?)
        };
        let logits = run(&Perturb::default())?;
        top1 += hits(&logits, &labels, model.classes, 1);
        top5 += hits(&logits, &labels, model.classes, 5.min(model.classes));
        if robustness {
            let keep_t = Tensor::from_u32(dev, &occlusion_rows(b, l, &mut rng), &[b, 1 + l / 2])?;
            occl += hits(&run(&Perturb { keep: Some(&keep_t), shuffle: None })?, &labels, model.classes, 1);
            let order_t = Tensor::from_u32(dev, &shuffled_patches(b, l, &mut rng), &[b, l])?;
            shuf += hits(&run(&Perturb { keep: None, shuffle: Some(&order_t) })?, &labels, model.classes, 1);
        }
        n += b;
    }
    let pct = |h: usize| 100.0 * h as f64 / n.max(1) as f64;
    Ok(Accuracy {
        top1: pct(top1),
        top5: pct(top5),
        top1_occlusion50: robustness.then(|| pct(occl)),
        top1_shuffled: robustness.then(|| pct(shuf)),
        images: n,
    })
}

/// Loads a linprobe/finetune checkpoint for evaluation.
pub fn load_classifier(dev: &Device, path: &Path) -> Result<(Classifier, ClassifyConfig)> {
    Classifier::from_file(dev, CheckpointFile::read(path)?, &[])
}

impl Classifier {
    /// The classifier of a linprobe/finetune checkpoint already read, and its
    /// run's config with `overrides` (`--set key=value`) applied. The model
    /// is the checkpoint's: an override of `model.*` or `classes` is an error.
    pub fn from_file(dev: &Device, file: CheckpointFile, overrides: &[String]) -> Result<(Classifier, ClassifyConfig)> {
        let path = &file.path;
        let mut cfg = match (file.task.as_deref(), file.config.as_deref()) {
            (Some("linprobe" | "finetune"), Some(text)) => ClassifyConfig::from_ron(text)?,
            (Some(task), _) => {
                bail!("{} is a {task} checkpoint; evaluate a linprobe or finetune checkpoint", path.display())
            }
            _ => bail!(
                "{} has no cmae classifier metadata; it was not written by cmae linprobe/finetune",
                path.display()
            ),
        };
        let (model_before, classes_before) = (cfg.model.clone(), cfg.classes);
        for o in overrides {
            cfg.set(o)?;
        }
        if cfg.model != model_before || cfg.classes != classes_before {
            bail!("--set cannot change model.* or classes of a trained checkpoint ({})", path.display());
        }
        let model = Classifier::load(dev, &cfg.model, cfg.mode, cfg.classes, file.tensors)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((model, cfg))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn robustness_indices_keep_the_right_tokens() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, l) = (3, 49);
        let rows = occlusion_rows(b, l, &mut rng);
        assert_eq!(rows.len(), b * (1 + 24));
        for r in rows.chunks(25) {
            assert_eq!(r[0], 0, "cls is always kept, first");
            let mut rest = r[1..].to_vec();
            rest.sort();
            rest.dedup();
            assert_eq!(rest.len(), 24, "distinct patches");
            assert!(rest.iter().all(|&i| (1..=49).contains(&i)));
        }
        for p in shuffled_patches(b, l, &mut rng).chunks(l) {
            let mut sorted = p.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..l as u32).collect::<Vec<_>>(), "a permutation");
        }
    }

    #[test]
    fn top_k_counts_ties_against_the_label() {
        // Row 0: [0.1, 0.9, 0.5]; row 1: [0.5, 0.5, 0.2].
        let logits = [0.1, 0.9, 0.5, 0.5, 0.5, 0.2];
        assert_eq!(hits(&logits, &[1, 2], 3, 1), 1, "row 0 right, row 1's 0.2 is third");
        // Row 1 label 1 ties with class 0, which comes first: rank 1, not top-1.
        assert_eq!(hits(&logits, &[2, 1], 3, 1), 0);
        assert_eq!(hits(&logits, &[2, 1], 3, 2), 2);
        assert_eq!(hits(&logits, &[0, 2], 3, 2), 0);
    }
}
