//! Mask plans: which tokens every shot keeps, for one batch.
//!
//! A plan is made on the host from a seeded RNG. For each shot and sample it
//! holds the kept indices into the previous shot's visible sequence (what the
//! GPU gathers), and the composed original patch ids of the tokens kept and
//! dropped (what the decoder and the loss need). cls is never part of it: the
//! GPU gathers index lists with cls prepended at position 0.

use std::ops::Range;

use anyhow::{Result, bail};
use cmae_engine::{Device, Tensor};
use rand::Rng;

use crate::config::{Shot, keep_count};

/// One shot for the whole batch; per-sample lists are concatenated.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotPlan {
    pub layer: usize,
    /// Tokens visible before this shot, and kept by it (same for every sample).
    pub visible: usize,
    pub keep: usize,
    /// `[batch, keep]`: indices into the visible sequence before this shot.
    pub ids_keep: Vec<u32>,
    /// `[batch, keep]`: original patch ids of the kept tokens, in kept order.
    pub kept_patches: Vec<u32>,
    /// `[batch, visible − keep]`: original patch ids this shot drops.
    pub dropped_patches: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MaskPlan {
    pub batch: usize,
    pub num_patches: usize,
    pub shots: Vec<ShotPlan>,
}

/// MAE's per-sample shuffle: uniform noise, argsort, keep the first `keep`.
fn random_keep(n: usize, keep: usize, rng: &mut impl Rng) -> Vec<u32> {
    let noise: Vec<f64> = (0..n).map(|_| rng.random()).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by(|&a, &b| noise[a as usize].total_cmp(&noise[b as usize]));
    order.truncate(keep);
    order
}

impl MaskPlan {
    /// A random plan (shots must be validated).
    pub fn random(shots: &[Shot], batch: usize, num_patches: usize, rng: &mut impl Rng) -> Self {
        let mut ids = Vec::with_capacity(shots.len());
        let mut visible = num_patches;
        for s in shots {
            let keep = keep_count(visible, s.ratio);
            ids.push((0..batch).flat_map(|_| random_keep(visible, keep, rng)).collect::<Vec<u32>>());
            visible = keep;
        }
        Self::from_ids(shots, batch, num_patches, &ids).expect("random plans are valid by construction")
    }

    /// A plan from given kept indices (e.g. a reference fixture), checked:
    /// the right counts, in range, no index twice within a sample.
    pub fn from_ids(shots: &[Shot], batch: usize, num_patches: usize, ids: &[Vec<u32>]) -> Result<Self> {
        if ids.len() != shots.len() {
            bail!("{} index lists for {} shots", ids.len(), shots.len());
        }
        // current[b] = original patch ids of the visible tokens of sample b, in order.
        let mut current: Vec<Vec<u32>> = (0..batch).map(|_| (0..num_patches as u32).collect()).collect();
        let mut out = Vec::with_capacity(shots.len());
        for (k, (s, ids_k)) in shots.iter().zip(ids).enumerate() {
            let visible = current[0].len();
            let keep = keep_count(visible, s.ratio);
            if keep == 0 {
                bail!("shot {k} keeps no token of {visible}");
            }
            if ids_k.len() != batch * keep {
                bail!(
                    "shot {k}: {} kept indices, expected {batch}×{keep} (floor({visible}·(1−{})))",
                    ids_k.len(),
                    s.ratio
                );
            }
            let mut kept_patches = Vec::with_capacity(batch * keep);
            let mut dropped_patches = Vec::with_capacity(batch * (visible - keep));
            for (b, row) in ids_k.chunks(keep).enumerate() {
                let mut taken = vec![false; visible];
                for &i in row {
                    let i = i as usize;
                    if i >= visible || taken[i] {
                        bail!("shot {k} sample {b}: index {i} is out of range (< {visible}) or repeated");
                    }
                    taken[i] = true;
                }
                let kept: Vec<u32> = row.iter().map(|&i| current[b][i as usize]).collect();
                dropped_patches.extend(current[b].iter().zip(&taken).filter(|(_, t)| !**t).map(|(p, _)| *p));
                kept_patches.extend_from_slice(&kept);
                current[b] = kept;
            }
            out.push(ShotPlan {
                layer: s.layer,
                visible,
                keep,
                ids_keep: ids_k.clone(),
                kept_patches,
                dropped_patches,
            });
        }
        Ok(Self { batch, num_patches, shots: out })
    }

    /// Tokens that reach the decoder (kept by every shot), per sample.
    pub fn final_keep(&self) -> usize {
        self.shots.last().map_or(self.num_patches, |s| s.keep)
    }

    /// `[batch, num_patches]`: for each patch, the shot that dropped it, or None if it survived.
    pub fn dropped_by(&self) -> Vec<Option<usize>> {
        let mut by = vec![None; self.batch * self.num_patches];
        for (k, s) in self.shots.iter().enumerate() {
            let per = s.visible - s.keep;
            for b in 0..self.batch {
                for &p in &s.dropped_patches[b * per..(b + 1) * per] {
                    by[b * self.num_patches + p as usize] = Some(k);
                }
            }
        }
        by
    }

    /// Patches each shot dropped over the whole batch.
    pub fn dropped_counts(&self) -> Vec<usize> {
        self.shots.iter().map(|s| self.batch * (s.visible - s.keep)).collect()
    }

    /// Per-patch loss weights `[batch·num_patches]`: the union mean of every
    /// dropped patch, or Σ_k w_k · (mean over shot k's patches) with loss weights.
    /// A shot that drops nothing contributes nothing.
    pub fn loss_weights(&self, shots: &[Shot]) -> Vec<f32> {
        let by = self.dropped_by();
        let counts = self.dropped_counts();
        let union: usize = counts.iter().sum();
        by.iter()
            .map(|d| match d {
                None => 0.0,
                Some(k) => match shots[*k].loss_weight {
                    None => 1.0 / union as f32,
                    Some(w) => (w / counts[*k] as f64) as f32,
                },
            })
            .collect()
    }

    /// `[shots, batch·num_patches]`: row k averages the patch losses of shot k's patches.
    pub fn shot_mean_weights(&self) -> Vec<f32> {
        let by = self.dropped_by();
        let counts = self.dropped_counts();
        let mut w = vec![0.0f32; self.shots.len() * by.len()];
        for (i, d) in by.iter().enumerate() {
            if let Some(k) = d {
                w[k * by.len() + i] = 1.0 / counts[*k] as f32;
            }
        }
        w
    }

    /// Uploads what the GPU forward needs.
    pub fn upload(&self, dev: &Device, shots: &[Shot]) -> Result<GpuPlan> {
        self.upload_weighted(dev, &self.loss_weights(shots), &self.shot_mean_weights())
    }

    /// Samples `rows` of the plan (a data-parallel rank's shard).
    pub fn rows(&self, rows: Range<usize>) -> Self {
        let shots = self
            .shots
            .iter()
            .map(|s| {
                let (keep, dropped) = (s.keep, s.visible - s.keep);
                ShotPlan {
                    ids_keep: s.ids_keep[rows.start * keep..rows.end * keep].to_vec(),
                    kept_patches: s.kept_patches[rows.start * keep..rows.end * keep].to_vec(),
                    dropped_patches: s.dropped_patches[rows.start * dropped..rows.end * dropped].to_vec(),
                    ..s.clone()
                }
            })
            .collect();
        Self { batch: rows.len(), num_patches: self.num_patches, shots }
    }

    /// Uploads samples `rows` with their loss weights as parts of the whole
    /// batch's loss: the losses of all shards sum to the batch's loss, and so
    /// do their gradients.
    pub fn upload_shard(&self, dev: &Device, shots: &[Shot], rows: Range<usize>) -> Result<GpuPlan> {
        let (l, per_shot) = (self.num_patches, self.batch * self.num_patches);
        let loss = &self.loss_weights(shots)[rows.start * l..rows.end * l];
        let means = self.shot_mean_weights();
        let shot_means: Vec<f32> = (0..self.shots.len())
            .flat_map(|k| means[k * per_shot + rows.start * l..k * per_shot + rows.end * l].iter().copied())
            .collect();
        self.rows(rows).upload_weighted(dev, loss, &shot_means)
    }

    fn upload_weighted(&self, dev: &Device, loss_weights: &[f32], shot_means: &[f32]) -> Result<GpuPlan> {
        let (b, l) = (self.batch, self.num_patches);
        let mut gathers = Vec::new();
        for s in &self.shots {
            // cls stays at position 0; token i of the visible sequence is row 1 + i.
            let with_cls: Vec<u32> = (0..b)
                .flat_map(|bi| {
                    std::iter::once(0).chain(s.ids_keep[bi * s.keep..(bi + 1) * s.keep].iter().map(|i| i + 1))
                })
                .collect();
            gathers.push((s.layer, Tensor::from_u32(dev, &with_cls, &[b, 1 + s.keep])?));
        }
        let last = self.shots.last().expect("at least one shot");
        let restore: Vec<u32> = (0..b)
            .flat_map(|bi| {
                std::iter::once(0).chain(last.kept_patches[bi * last.keep..(bi + 1) * last.keep].iter().map(|p| p + 1))
            })
            .collect();
        let mut fill = vec![1.0f32; b * (1 + l)];
        for bi in 0..b {
            fill[bi * (1 + l)] = 0.0;
            for &p in &last.kept_patches[bi * last.keep..(bi + 1) * last.keep] {
                fill[bi * (1 + l) + 1 + p as usize] = 0.0;
            }
        }
        Ok(GpuPlan {
            gathers,
            restore: Tensor::from_u32(dev, &restore, &[b, 1 + last.keep])?,
            mask_rows: Tensor::from_f32(dev, &fill, &[b * (1 + l)])?,
            loss_weights: Tensor::from_f32(dev, loss_weights, &[b * l])?,
            shot_weights: Tensor::from_f32(dev, shot_means, &[self.shots.len(), b * l])?,
            dropped_counts: self.dropped_counts(),
        })
    }
}

/// A mask plan on the GPU.
pub struct GpuPlan {
    /// For each shot: its layer and the `[B, 1 + keep]` rows the encoder
    /// gathers before that block (cls first; shot 0 is MAE's input masking).
    pub gathers: Vec<(usize, Tensor)>,
    /// `[B, 1 + keep_final]`: decoder row of each final token (cls → 0, patch p → 1 + p).
    pub restore: Tensor,
    /// `[B·(1+L)]`: 1 on decoder rows that get the mask token.
    pub mask_rows: Tensor,
    /// `[B·L]` per-patch loss weights.
    pub loss_weights: Tensor,
    /// `[shots, B·L]` per-shot mean weights.
    pub shot_weights: Tensor,
    pub dropped_counts: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_shots;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn shots_strategy() -> impl Strategy<Value = (Vec<Shot>, usize, usize)> {
        // (grid side, batch, up to 3 shots at increasing layers with ratios that keep ≥ 1).
        (2usize..9, 1usize..5, proptest::collection::vec((1usize..4, 0.0f64..0.9), 0..3), 0.0f64..0.9).prop_map(
            |(g, batch, later, r0)| {
                let mut shots = vec![Shot { layer: 0, ratio: r0, loss_weight: None }];
                let mut layer = 0;
                for (step, r) in later {
                    layer += step;
                    shots.push(Shot { layer, ratio: r, loss_weight: None });
                }
                (shots, g * g, batch)
            },
        )
    }

    proptest! {
        #[test]
        fn plans_partition_patches_and_compose_indices((shots, n, batch) in shots_strategy(), seed in 0u64..1000) {
            // Drop configurations where some shot keeps nothing: validation rejects those.
            let mut visible = n;
            for s in &shots {
                visible = keep_count(visible, s.ratio);
                prop_assume!(visible > 0);
            }
            let plan = MaskPlan::random(&shots, batch, n, &mut ChaCha8Rng::seed_from_u64(seed));
            let mut visible = n;
            for (k, s) in plan.shots.iter().enumerate() {
                prop_assert_eq!(s.visible, visible);
                prop_assert_eq!(s.keep, keep_count(visible, shots[k].ratio));
                prop_assert_eq!(s.ids_keep.len(), batch * s.keep);
                prop_assert_eq!(s.dropped_patches.len(), batch * (visible - s.keep));
                visible = s.keep;
            }
            for b in 0..batch {
                // Every patch is kept to the end or dropped by exactly one shot.
                let mut seen = vec![0u32; n];
                for s in &plan.shots {
                    let per = s.visible - s.keep;
                    for &p in &s.dropped_patches[b * per..(b + 1) * per] { seen[p as usize] += 1; }
                }
                let last = plan.shots.last().unwrap();
                for &p in &last.kept_patches[b * last.keep..(b + 1) * last.keep] { seen[p as usize] += 1; }
                prop_assert!(seen.iter().all(|&c| c == 1));
                // kept_patches composes ids_keep through the earlier shots.
                let mut cur: Vec<u32> = (0..n as u32).collect();
                for s in &plan.shots {
                    let ids = &s.ids_keep[b * s.keep..(b + 1) * s.keep];
                    let next: Vec<u32> = ids.iter().map(|&i| cur[i as usize]).collect();
                    prop_assert_eq!(&next[..], &s.kept_patches[b * s.keep..(b + 1) * s.keep]);
                    cur = next;
                }
            }
            // Loss weights: the union mean sums to 1 over the batch; shot rows each sum to 1.
            let w = plan.loss_weights(&shots);
            let any_dropped = plan.dropped_counts().iter().sum::<usize>() > 0;
            let total: f64 = w.iter().map(|&v| f64::from(v)).sum();
            prop_assert!(!any_dropped || (total - 1.0).abs() < 1e-4);
            let sw = plan.shot_mean_weights();
            for (k, &count) in plan.dropped_counts().iter().enumerate() {
                let row: f64 = sw[k * batch * n..(k + 1) * batch * n].iter().map(|&v| f64::from(v)).sum();
                prop_assert!(count == 0 || (row - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn gpu_plan_keeps_cls_first_and_marks_mask_rows() {
        let dev = Device::from_env().unwrap();
        let shots = parse_shots("0:0.5,1:0.5").unwrap();
        let plan = MaskPlan::from_ids(&shots, 1, 4, &[vec![3, 1], vec![1]]).unwrap();
        assert_eq!(plan.shots[1].kept_patches, vec![1]);
        assert_eq!(plan.shots[1].dropped_patches, vec![3]);
        assert_eq!(plan.shots[0].dropped_patches, vec![0, 2]);
        let g = plan.upload(&dev, &shots).unwrap();
        assert_eq!(g.gathers[1].1.wait_u32(&dev).unwrap(), vec![0, 2], "cls row 0, then visible token 1 at row 2");
        assert_eq!(g.restore.wait_u32(&dev).unwrap(), vec![0, 2], "cls → row 0, patch 1 → row 2");
        assert_eq!(g.mask_rows.wait_f32(&dev).unwrap(), vec![0.0, 1.0, 0.0, 1.0, 1.0]);
        assert!(MaskPlan::from_ids(&shots, 1, 4, &[vec![3, 3], vec![1]]).is_err(), "repeated index");
        assert!(MaskPlan::from_ids(&shots, 1, 4, &[vec![3, 4], vec![1]]).is_err(), "out of range");
    }

    #[test]
    fn shards_of_a_plan_are_its_rows_weighted_as_parts_of_the_whole() {
        let dev = Device::from_env().unwrap();
        let shots = parse_shots("0:0.75,1:0.5").unwrap();
        let plan = MaskPlan::random(&shots, 6, 16, &mut ChaCha8Rng::seed_from_u64(5));
        let ids: Vec<Vec<u32>> = plan.shots.iter().map(|s| s.ids_keep[2 * s.keep..5 * s.keep].to_vec()).collect();
        assert_eq!(plan.rows(2..5), MaskPlan::from_ids(&shots, 3, 16, &ids).unwrap());
        let whole = plan.upload(&dev, &shots).unwrap();
        let (mut loss, mut means) = (Vec::new(), vec![Vec::new(); shots.len()]);
        for rows in [0..2, 2..5, 5..6] {
            let part = plan.upload_shard(&dev, &shots, rows.clone()).unwrap();
            loss.extend(part.loss_weights.wait_f32(&dev).unwrap());
            let m = part.shot_weights.wait_f32(&dev).unwrap();
            for (k, chunk) in m.chunks(rows.len() * 16).enumerate() {
                means[k].extend_from_slice(chunk);
            }
        }
        assert_eq!(loss, whole.loss_weights.wait_f32(&dev).unwrap());
        assert_eq!(means.concat(), whole.shot_weights.wait_f32(&dev).unwrap());
    }
}
