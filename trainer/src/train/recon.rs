//! Reconstruction grids: per image, the original | what each shot left
//! visible (dropped patches grey) | the reconstruction (visible patches from
//! the image, dropped ones predicted) | the per-patch error as a heat map.

use std::path::{Path, PathBuf};

use anyhow::Result;
use cmae_engine::{Device, Tape, Tensor};
use image::{DynamicImage, Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::checkpoint::Loaded;
use crate::config::{ModelConfig, Shot, parse_shots, shots_to_string, validate_shots};
use crate::data::augment::Transform;
use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
use crate::masking::MaskPlan;
use crate::model::Mae;
use crate::safetensors_io::write_atomic;

/// Host copies of one no-grad pass, for drawing.
pub struct Reconstruction {
    pub batch: usize,
    /// Normalised input images `[B, C, H, W]`.
    pub images: Vec<f32>,
    /// Prediction in image space, `[B, C, H, W]` normalised like `images`
    /// (norm-pix predictions are mapped back with each patch's statistics).
    pub predicted: Vec<f32>,
    /// `[B·L]` per-patch MSE of the model's loss.
    pub patch_loss: Vec<f32>,
    pub plan: MaskPlan,
}

/// Photos (files, a page's images) as the model reads them: ImageNet
/// statistics, the centre square resized, no augmentation. `cmae
/// reconstruct`, the viewer and the page all go through here, so the same
/// file gives the same numbers everywhere.
pub fn photo_batch(m: &ModelConfig, photos: &[DynamicImage]) -> (Vec<f32>, Transform) {
    let t = Transform::new(m.img_size, m.in_chans, (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()), false);
    let pixels = photos.iter().flat_map(|p| t.apply(p, &mut ChaCha8Rng::seed_from_u64(0))).collect();
    (pixels, t)
}

/// Runs the model without gradients on `images` (`[B, C, H, W]`, normalised).
/// Async, so a page can await the GPU; native code runs it with `Device::block_on`.
pub async fn reconstruct(
    dev: &Device,
    mae: &Mae,
    images: &[f32],
    batch: usize,
    shots: &[Shot],
    plan: MaskPlan,
) -> Result<Reconstruction> {
    let c = &mae.cfg;
    let imgs = Tensor::from_f32(dev, images, &[batch, c.in_chans, c.img_size, c.img_size])?;
    let tape = Tape::no_grad(dev);
    let out = mae.forward(&tape, &imgs, &plan.upload(dev, shots)?, false)?;
    let mut pred = out.pred.value().read_f32(dev)?.await?;
    let patch_loss = out.patch_loss.read_f32(dev)?.await?;
    let pd = c.patch_dim();
    if c.norm_pix_loss {
        // Undo norm-pix with the statistics of the true patch (MAE's visualisation).
        let raw = cmae_engine::kernels::patch::patchify(
            dev,
            &imgs,
            c.patch_size,
            cmae_engine::kernels::patch::PatchOrder::ChannelLast,
        )?
        .read_f32(dev)?
        .await?;
        for (p, t) in pred.chunks_mut(pd).zip(raw.chunks(pd)) {
            let mean = t.iter().sum::<f32>() / pd as f32;
            let var = t.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (pd.max(2) - 1) as f32;
            let std = (var + 1e-6).sqrt();
            p.iter_mut().for_each(|v| *v = *v * std + mean);
        }
    }
    Ok(Reconstruction {
        batch,
        images: images.to_vec(),
        predicted: unpatchify(&pred, batch, c.in_chans, c.patch_size, c.grid()),
        patch_loss,
        plan,
    })
}

impl Reconstruction {
    /// The model's loss over the batch (its weighting of the dropped
    /// patches: the union mean, or per-shot weights), and each image's loss
    /// weighted the same way within that image.
    pub fn losses(&self, shots: &[Shot]) -> (f64, Vec<f64>) {
        let l = self.plan.num_patches;
        let weighted = |weights: &[f32], losses: &[f32]| -> f64 {
            weights.iter().zip(losses).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum()
        };
        let whole = weighted(&self.plan.loss_weights(shots), &self.patch_loss);
        let per_image = (0..self.batch)
            .map(|b| weighted(&self.plan.rows(b..b + 1).loss_weights(shots), &self.patch_loss[b * l..(b + 1) * l]))
            .collect();
        (whole, per_image)
    }

    /// What `cmae reconstruct --json` prints and the page logs: the losses
    /// (see [`Self::losses`]), each image's per-patch MSE (every patch; the
    /// loss weighs the dropped ones), the shots, seed and adapter.
    pub fn report(&self, shots: &[Shot], seed: u64, adapter: &str) -> Value {
        let (loss, per_image) = self.losses(shots);
        let patch_loss: Vec<&[f32]> = self.patch_loss.chunks(self.plan.num_patches).collect();
        json!({
            "loss": loss,
            "per_image": per_image,
            "patch_loss": patch_loss,
            "shots": shots_to_string(shots),
            "seed": seed,
            "adapter": adapter,
        })
    }
}

/// `cmae reconstruct`'s work: a checkpoint's reconstructions of photo files.
pub struct FileReconstruction {
    pub loaded: Loaded,
    /// The shots used: those asked for, or the checkpoint's own.
    pub shots: Vec<Shot>,
    pub transform: Transform,
    pub result: Reconstruction,
}

/// Reconstructs `images` (photo files) with the MAE in `checkpoint`, masked
/// by `shots` (e.g. `0:0.75,4:0.1`; default: the checkpoint's) drawn from `seed`.
pub fn reconstruct_files(
    dev: &Device,
    checkpoint: &Path,
    images: &[PathBuf],
    shots: Option<&str>,
    seed: u64,
) -> Result<FileReconstruction> {
    let loaded = super::checkpoint::load_model(dev, checkpoint, None)?;
    let shots = match shots {
        Some(s) => parse_shots(s)?,
        None => loaded.config.shots.clone(),
    };
    let m = &loaded.config.model;
    validate_shots(&shots, m)?;
    let photos = images.iter().map(|p| crate::data::open_centre_cropped(p)).collect::<Result<Vec<_>>>()?;
    let (pixels, transform) = photo_batch(m, &photos);
    let plan = MaskPlan::random(&shots, images.len(), m.num_patches(), &mut ChaCha8Rng::seed_from_u64(seed));
    let result = dev.block_on(reconstruct(dev, &loaded.mae, &pixels, images.len(), &shots, plan))?;
    Ok(FileReconstruction { loaded, shots, transform, result })
}

/// `[B, L, p·p·C]` (row, col, channel order) → `[B, C, H, W]`.
pub fn unpatchify(patches: &[f32], batch: usize, chans: usize, p: usize, grid: usize) -> Vec<f32> {
    let side = grid * p;
    let mut out = vec![0.0; batch * chans * side * side];
    for b in 0..batch {
        for i in 0..grid * grid {
            for py in 0..p {
                for px in 0..p {
                    for c in 0..chans {
                        let v = patches[((b * grid * grid + i) * p * p + py * p + px) * chans + c];
                        let (y, x) = ((i / grid) * p + py, (i % grid) * p + px);
                        out[((b * chans + c) * side + y) * side + x] = v;
                    }
                }
            }
        }
    }
    out
}

/// A black → red → yellow → white ramp for t in [0, 1].
fn heat(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0) * 3.0;
    let r = t.min(1.0);
    let g = (t - 1.0).clamp(0.0, 1.0);
    let b = (t - 2.0).clamp(0.0, 1.0);
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}

/// Draws the grid: one row per image, columns original | shot 1..S | reconstruction | error.
pub fn render(r: &Reconstruction, mae: &Mae, t: &Transform) -> RgbImage {
    let c = &mae.cfg;
    let (side, grid, p, chans) = (c.img_size, c.grid(), c.patch_size, c.in_chans);
    let plane = chans * side * side;
    let scale = (96 / side).max(1);
    let cell = side * scale;
    let gap = 2;
    let cols = 3 + r.plan.shots.len();
    let mut img = RgbImage::from_pixel(
        (cols * (cell + gap) + gap) as u32,
        (r.batch * (cell + gap) + gap) as u32,
        Rgb([255, 255, 255]),
    );
    let dropped_by = r.plan.dropped_by();
    let max_err =
        r.patch_loss.iter().zip(&dropped_by).filter(|(_, d)| d.is_some()).map(|(e, _)| *e).fold(1e-12f32, f32::max);
    for b in 0..r.batch {
        let orig = t.to_pixels(&r.images[b * plane..(b + 1) * plane]);
        let pred = t.to_pixels(&r.predicted[b * plane..(b + 1) * plane]);
        let patch_of = |x: usize, y: usize| (y / p) * grid + x / p;
        let rgb = |px: &[u8], x: usize, y: usize| -> [u8; 3] {
            let i = (y * side + x) * chans;
            if chans == 1 { [px[i]; 3] } else { [px[i], px[i + 1], px[i + 2]] }
        };
        for col in 0..cols {
            for y in 0..side {
                for x in 0..side {
                    let patch = patch_of(x, y);
                    let dropped = dropped_by[b * grid * grid + patch];
                    let color = match col {
                        0 => rgb(&orig, x, y),
                        k if k <= r.plan.shots.len() => match dropped {
                            Some(s) if s < k => [128, 128, 128],
                            _ => rgb(&orig, x, y),
                        },
                        k if k == cols - 2 => match dropped {
                            Some(_) => rgb(&pred, x, y),
                            None => rgb(&orig, x, y),
                        },
                        _ => match dropped {
                            Some(_) => heat(r.patch_loss[b * grid * grid + patch] / max_err),
                            None => [0, 0, 0],
                        },
                    };
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = gap + col * (cell + gap) + x * scale + dx;
                            let py = gap + b * (cell + gap) + y * scale + dy;
                            img.put_pixel(px as u32, py as u32, Rgb(color));
                        }
                    }
                }
            }
        }
    }
    img
}

/// Writes a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpatchify_inverts_mae_patchify() {
        let (b, c, p, g) = (2, 3, 2, 3);
        let side = p * g;
        let imgs: Vec<f32> = (0..b * c * side * side).map(|i| i as f32).collect();
        // MAE patchify on the host: (row, col, channel) inside each patch.
        let mut patches = Vec::new();
        for bi in 0..b {
            for i in 0..g * g {
                for py in 0..p {
                    for px in 0..p {
                        for ch in 0..c {
                            patches.push(imgs[((bi * c + ch) * side + (i / g) * p + py) * side + (i % g) * p + px]);
                        }
                    }
                }
            }
        }
        assert_eq!(unpatchify(&patches, b, c, p, g), imgs);
        assert_eq!(heat(0.0), [0, 0, 0]);
        assert_eq!(heat(1.0), [255, 255, 255]);
    }
}
