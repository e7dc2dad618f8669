//! Pretraining augmentation (MAE): RandomResizedCrop(scale 0.2–1, ratio 3/4–4/3,
//! bicubic), horizontal flip, then mean/std normalisation into CHW floats.

use image::DynamicImage;
use image::imageops::FilterType;
use rand::Rng;

/// What the model wants: size, channels and the source's statistics.
#[derive(Debug, Clone)]
pub struct Transform {
    pub size: usize,
    pub chans: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Random crop + flip (training) or a plain resize (evaluation, reconstructions).
    pub augment: bool,
    pub scale: (f64, f64),
    /// RandAugment after crop and flip (fine-tuning).
    pub randaug: Option<crate::classify::augment::RandAugment>,
    /// Random-erasing probability on the normalised image (fine-tuning).
    pub erase: f64,
}

impl Transform {
    /// Statistics are per source channel; a source of another channel count is
    /// converted (grey → RGB by repetition, RGB → grey by luminance) and its
    /// statistics averaged or repeated to match.
    pub fn new(size: usize, chans: usize, (mean, std): (Vec<f32>, Vec<f32>), augment: bool) -> Self {
        let fit = |v: Vec<f32>| -> Vec<f32> {
            if v.len() == chans { v } else { vec![v.iter().sum::<f32>() / v.len() as f32; chans] }
        };
        Self { size, chans, mean: fit(mean), std: fit(std), augment, scale: (0.2, 1.0), randaug: None, erase: 0.0 }
    }

    /// torchvision's RandomResizedCrop.get_params: ten tries at a random area
    /// and aspect ratio, then the centre crop fallback.
    fn crop_box(&self, w: u32, h: u32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
        let area = f64::from(w) * f64::from(h);
        let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale.0..=self.scale.1);
            let ratio = rng.random_range(lo..=hi).exp();
            let cw = (target * ratio).sqrt().round() as u32;
            let ch = (target / ratio).sqrt().round() as u32;
            if cw > 0 && ch > 0 && cw <= w && ch <= h {
                let x = rng.random_range(0..=w - cw);
                let y = rng.random_range(0..=h - ch);
                return (x, y, cw, ch);
            }
        }
        let ratio = f64::from(w) / f64::from(h);
        let (cw, ch) = if ratio < 3.0 / 4.0 {
            (w, ((f64::from(w) / (3.0 / 4.0)).round() as u32).min(h))
        } else if ratio > 4.0 / 3.0 {
            (((f64::from(h) * (4.0 / 3.0)).round() as u32).min(w), h)
        } else {
            (w, h)
        };
        ((w - cw) / 2, (h - ch) / 2, cw, ch)
    }

    /// The image as normalised CHW floats, `chans·size·size` values.
    pub fn apply(&self, img: &DynamicImage, rng: &mut impl Rng) -> Vec<f32> {
        let img = match self.chans {
            1 => DynamicImage::ImageLuma8(img.to_luma8()),
            _ => DynamicImage::ImageRgb8(img.to_rgb8()),
        };
        let s = self.size as u32;
        let mut out_img = if self.augment {
            let (x, y, w, h) = self.crop_box(img.width(), img.height(), rng);
            img.crop_imm(x, y, w, h).resize_exact(s, s, FilterType::CatmullRom)
        } else if img.width() == s && img.height() == s {
            img
        } else {
            img.resize_exact(s, s, FilterType::CatmullRom)
        };
        if self.augment && rng.random_bool(0.5) {
            out_img = out_img.fliph();
        }
        if let Some(ra) = self.randaug.filter(|_| self.augment) {
            out_img = ra.apply(&out_img, rng);
        }
        let raw = match self.chans {
            1 => out_img.to_luma8().into_raw(),
            _ => out_img.to_rgb8().into_raw(),
        };
        let plane = self.size * self.size;
        let mut out = vec![0.0f32; self.chans * plane];
        for (i, px) in raw.chunks(self.chans).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[c * plane + i] = (f32::from(v) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        if self.augment {
            crate::classify::augment::random_erase(&mut out, self.chans, self.size, self.erase, rng);
        }
        out
    }

    /// Undoes the normalisation of one CHW image into 8-bit pixels (HWC).
    pub fn to_pixels(&self, chw: &[f32]) -> Vec<u8> {
        let plane = self.size * self.size;
        let mut out = vec![0u8; plane * self.chans];
        for c in 0..self.chans {
            for i in 0..plane {
                let v = chw[c * plane + i] * self.std[c] + self.mean[c];
                out[i * self.chans + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn crops_cover_a_fifth_to_all_of_the_image_and_normalise() {
        let t = Transform::new(16, 3, (vec![0.5; 3], vec![0.25; 3]), true);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (x, y, w, h) = t.crop_box(64, 48, &mut rng);
            assert!(x + w <= 64 && y + h <= 48);
            let frac = f64::from(w * h) / f64::from(64 * 48);
            assert!(frac > 0.18 && frac <= 1.0, "{frac}");
        }
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, image::Rgb([255, 128, 0])));
        let out = t.apply(&img, &mut rng);
        assert_eq!(out.len(), 3 * 16 * 16);
        // A flat image stays flat through crop, resize and flip.
        assert!(
            (out[0] - 2.0).abs() < 1e-6
                && (out[256] - (128.0 / 255.0 - 0.5) / 0.25).abs() < 1e-5
                && (out[512] + 2.0).abs() < 1e-6
        );
        assert_eq!(t.to_pixels(&out)[..3], [255, 128, 0]);
        // Grey sources feed RGB models and the other way round.
        let grey = Transform::new(8, 1, (vec![0.5; 3], vec![0.25; 3]), false);
        assert_eq!(grey.apply(&img, &mut rng).len(), 64);
    }
}
