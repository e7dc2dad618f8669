//! Fine-tuning augmentations as timm applies them for MAE: RandAugment
//! (`rand-m9-mstd0.5-inc1`) on 8-bit images, random erasing on normalised
//! tensors, and mixup / cutmix on whole batches with soft targets.

use image::{DynamicImage, GrayImage, RgbImage};
use rand::Rng;
use rand_distr::{Beta, Distribution, Normal};

/// RandAugment: two ops, each applied with probability 0.5, magnitude
/// m ~ N(9, 0.5) clipped to [0, 10], "increasing" variants of the ops.
#[derive(Debug, Clone, Copy)]
pub struct RandAugment {
    pub ops: usize,
    pub magnitude: f64,
    pub magnitude_std: f64,
}

impl Default for RandAugment {
    fn default() -> Self {
        Self { ops: 2, magnitude: 9.0, magnitude_std: 0.5 }
    }
}

const OPS: [&str; 15] = [
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
];

/// Per-channel 8-bit planes of an image, so every op is written once.
struct Planes {
    w: usize,
    h: usize,
    c: Vec<Vec<u8>>,
}

impl Planes {
    fn of(img: &DynamicImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let c = match img {
            DynamicImage::ImageLuma8(g) => vec![g.as_raw().clone()],
            other => {
                let rgb = other.to_rgb8();
                (0..3).map(|k| rgb.as_raw().iter().skip(k).step_by(3).copied().collect()).collect()
            }
        };
        Self { w, h, c }
    }

    fn into_image(self) -> DynamicImage {
        let (w, h) = (self.w as u32, self.h as u32);
        if self.c.len() == 1 {
            let mut c = self.c;
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, c.remove(0)).expect("sizes agree"))
        } else {
            let raw: Vec<u8> = (0..self.w * self.h).flat_map(|i| [self.c[0][i], self.c[1][i], self.c[2][i]]).collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, raw).expect("sizes agree"))
        }
    }

    /// Luminance (PIL's "L" conversion) of pixel i.
    fn grey(&self, i: usize) -> f64 {
        if self.c.len() == 1 {
            f64::from(self.c[0][i])
        } else {
            (299.0 * f64::from(self.c[0][i]) + 587.0 * f64::from(self.c[1][i]) + 114.0 * f64::from(self.c[2][i]))
                / 1000.0
        }
    }

    fn map(&mut self, f: impl Fn(u8) -> u8) {
        self.c.iter_mut().flatten().for_each(|v| *v = f(*v));
    }

    /// PIL's ImageEnhance: blend with a degenerate image by `factor`.
    fn blend(&mut self, degenerate: &[Vec<u8>], factor: f64) {
        for (plane, deg) in self.c.iter_mut().zip(degenerate) {
            for (v, d) in plane.iter_mut().zip(deg) {
                *v = (f64::from(*d) + factor * (f64::from(*v) - f64::from(*d))).round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// Inverse affine warp (output pixel → source pixel), bilinear, grey fill.
    fn affine(&mut self, m: [f64; 6]) {
        let (w, h) = (self.w, self.h);
        let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
        let out: Vec<Vec<u8>> = self
            .c
            .iter()
            .map(|plane| {
                let mut o = vec![128u8; w * h];
                for y in 0..h {
                    for x in 0..w {
                        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                        let sx = m[0] * dx + m[1] * dy + m[2] + cx - 0.5;
                        let sy = m[3] * dx + m[4] * dy + m[5] + cy - 0.5;
                        if sx < -0.5 || sy < -0.5 || sx > w as f64 - 0.5 || sy > h as f64 - 0.5 {
                            continue;
                        }
                        let (x0, y0) = (sx.floor().max(0.0) as usize, sy.floor().max(0.0) as usize);
                        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                        let (fx, fy) = ((sx - x0 as f64).clamp(0.0, 1.0), (sy - y0 as f64).clamp(0.0, 1.0));
                        let at = |xx: usize, yy: usize| f64::from(plane[yy * w + xx]);
                        let v = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                            + at(x1, y0) * fx * (1.0 - fy)
                            + at(x0, y1) * (1.0 - fx) * fy
                            + at(x1, y1) * fx * fy;
                        o[y * w + x] = v.round() as u8;
                    }
                }
                o
            })
            .collect();
        self.c = out;
    }
}

fn signed(rng: &mut impl Rng, v: f64) -> f64 {
    if rng.random_bool(0.5) { -v } else { v }
}

impl RandAugment {
    pub fn apply(&self, img: &DynamicImage, rng: &mut impl Rng) -> DynamicImage {
        let mut p = Planes::of(img);
        let noise = Normal::new(0.0, self.magnitude_std.max(1e-9)).expect("a positive std");
        for _ in 0..self.ops {
            let op = OPS[rng.random_range(0..OPS.len())];
            if !rng.random_bool(0.5) {
                continue;
            }
            let m = (self.magnitude + noise.sample(rng)).clamp(0.0, 10.0) / 10.0;
            apply_op(&mut p, op, m, rng);
        }
        p.into_image()
    }
}

/// One op at relative magnitude `m` ∈ [0, 1].
fn apply_op(p: &mut Planes, op: &str, m: f64, rng: &mut impl Rng) {
    let n = p.w * p.h;
    match op {
        "AutoContrast" => {
            for plane in &mut p.c {
                let (lo, hi) = (*plane.iter().min().unwrap_or(&0), *plane.iter().max().unwrap_or(&255));
                if hi > lo {
                    let scale = 255.0 / f64::from(hi - lo);
                    plane.iter_mut().for_each(|v| *v = (f64::from(*v - lo) * scale).round() as u8);
                }
            }
        }
        "Equalize" => {
            for plane in &mut p.c {
                let mut hist = [0usize; 256];
                plane.iter().for_each(|&v| hist[v as usize] += 1);
                let mut cdf = [0usize; 256];
                let mut acc = 0;
                for (i, h) in hist.iter().enumerate() {
                    acc += h;
                    cdf[i] = acc;
                }
                let first = cdf.iter().copied().find(|&c| c > 0).unwrap_or(0);
                if n > first {
                    plane.iter_mut().for_each(|v| {
                        *v = ((cdf[*v as usize] - first) as f64 * 255.0 / (n - first) as f64).round() as u8
                    });
                }
            }
        }
        "Invert" => p.map(|v| 255 - v),
        "Posterize" => {
            let bits = 4 - (m * 4.0) as u32;
            let mask = (0xffu32 << (8 - bits.max(1))) as u8;
            p.map(|v| v & mask);
        }
        "Solarize" => {
            let threshold = 256.0 - m * 256.0;
            p.map(|v| if f64::from(v) >= threshold { 255 - v } else { v });
        }
        "SolarizeAdd" => {
            let add = (m * 110.0) as u16;
            p.map(|v| if v < 128 { (u16::from(v) + add).min(255) as u8 } else { v });
        }
        "Color" | "Contrast" | "Brightness" | "Sharpness" => {
            let factor = 1.0 + signed(rng, m * 0.9);
            let degenerate: Vec<Vec<u8>> = match op {
                "Color" => {
                    let g: Vec<u8> = (0..n).map(|i| p.grey(i).round() as u8).collect();
                    vec![g; p.c.len()]
                }
                "Contrast" => {
                    let mean = ((0..n).map(|i| p.grey(i)).sum::<f64>() / n as f64).round() as u8;
                    vec![vec![mean; n]; p.c.len()]
                }
                "Brightness" => vec![vec![0; n]; p.c.len()],
                _ => p.c.iter().map(|plane| smooth(plane, p.w, p.h)).collect(),
            };
            p.blend(&degenerate, factor);
        }
        "Rotate" => {
            let a = signed(rng, m * 30.0).to_radians();
            p.affine([a.cos(), -a.sin(), 0.0, a.sin(), a.cos(), 0.0]);
        }
        "ShearX" => p.affine([1.0, signed(rng, m * 0.3), 0.0, 0.0, 1.0, 0.0]),
        "ShearY" => p.affine([1.0, 0.0, 0.0, signed(rng, m * 0.3), 1.0, 0.0]),
        "TranslateXRel" => p.affine([1.0, 0.0, signed(rng, m * 0.45) * p.w as f64, 0.0, 1.0, 0.0]),
        _ => p.affine([1.0, 0.0, 0.0, 0.0, 1.0, signed(rng, m * 0.45) * p.h as f64]),
    }
}

/// PIL's SMOOTH filter (3×3, centre 5, others 1, /13), borders kept.
fn smooth(plane: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = plane.to_vec();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let mut acc = 0u32;
            for dy in 0..3 {
                for dx in 0..3 {
                    let wgt = if dx == 1 && dy == 1 { 5 } else { 1 };
                    acc += wgt * u32::from(plane[(y + dy - 1) * w + x + dx - 1]);
                }
            }
            out[y * w + x] = ((acc as f64) / 13.0).round() as u8;
        }
    }
    out
}

/// timm's RandomErasing (mode "pixel", one box): with probability `prob`,
/// a box of 2–33% of the area and aspect 0.3–3.3 gets normal noise.
pub fn random_erase(chw: &mut [f32], chans: usize, size: usize, prob: f64, rng: &mut impl Rng) {
    if prob <= 0.0 || !rng.random_bool(prob.min(1.0)) {
        return;
    }
    let area = (size * size) as f64;
    let normal = Normal::new(0.0f32, 1.0).expect("unit normal");
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..1.0 / 3.0);
        let aspect = rng.random_range(0.3f64.ln()..(1.0f64 / 0.3).ln()).exp();
        let (h, w) = ((target * aspect).sqrt().round() as usize, (target / aspect).sqrt().round() as usize);
        if w < size && h < size && w > 0 && h > 0 {
            let (top, left) = (rng.random_range(0..=size - h), rng.random_range(0..=size - w));
            for c in 0..chans {
                for y in top..top + h {
                    for x in left..left + w {
                        chw[(c * size + y) * size + x] = normal.sample(rng);
                    }
                }
            }
            return;
        }
    }
}

/// timm's Mixup in batch mode: mixup (α 0.8) or cutmix (α 1.0), chosen with
/// `switch_prob` when both are on; labels become smoothed one-hot mixtures.
#[derive(Debug, Clone, Copy)]
pub struct Mixup {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    pub switch_prob: f64,
    pub smoothing: f64,
}

impl Mixup {
    /// Soft targets without mixing (label smoothing only).
    pub fn targets(labels: &[u32], classes: usize, smoothing: f64) -> Vec<f32> {
        let off = smoothing / classes as f64;
        let mut t = vec![off as f32; labels.len() * classes];
        for (i, &l) in labels.iter().enumerate() {
            t[i * classes + l as usize] = (1.0 - smoothing + off) as f32;
        }
        t
    }

    /// Whether [`Mixup::apply`] mixes anything (else it only smooths labels).
    pub fn mixes(&self) -> bool {
        self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0
    }

    /// Mixes a normalised `[B, C, S, S]` batch with its reverse in place and
    /// returns the soft targets `[B, classes]`.
    pub fn apply(
        &self,
        images: &mut [f32],
        labels: &[u32],
        chans: usize,
        size: usize,
        classes: usize,
        rng: &mut impl Rng,
    ) -> Vec<f32> {
        let plane = chans * size * size;
        let partners: Vec<f32> = images.chunks(plane.max(1)).rev().flatten().copied().collect();
        let partner_labels: Vec<u32> = labels.iter().rev().copied().collect();
        self.apply_pairs(images, labels, (&partners, &partner_labels), (chans, size, classes), rng)
    }

    /// [`Mixup::apply`] for part of a batch (a data-parallel rank's shard):
    /// sample i of `images` is mixed with `partners.0` sample i, its partner
    /// in the whole batch's reverse, of label `partners.1[i]`. The draws are
    /// the whole batch's, so every shard mixes as the whole batch would.
    pub fn apply_pairs(
        &self,
        images: &mut [f32],
        labels: &[u32],
        (partners, partner_labels): (&[f32], &[u32]),
        (chans, size, classes): (usize, usize, usize),
        rng: &mut impl Rng,
    ) -> Vec<f32> {
        let b = labels.len();
        let plane = chans * size * size;
        let use_cutmix = match (self.mixup_alpha > 0.0, self.cutmix_alpha > 0.0) {
            (true, true) => rng.random_bool(self.switch_prob),
            (false, true) => true,
            (true, false) => false,
            (false, false) => return Self::targets(labels, classes, self.smoothing),
        };
        let alpha = if use_cutmix { self.cutmix_alpha } else { self.mixup_alpha };
        let mut lam = Beta::new(alpha, alpha).expect("positive alphas").sample(rng);
        if use_cutmix {
            // A box of area (1 − λ) at a random centre, clipped; λ corrected to the clipped area.
            let cut = (1.0 - lam).sqrt();
            let (ch, cw) = ((size as f64 * cut) as isize, (size as f64 * cut) as isize);
            let (cy, cx) = (rng.random_range(0..size) as isize, rng.random_range(0..size) as isize);
            let (y0, y1) =
                ((cy - ch / 2).clamp(0, size as isize) as usize, (cy + ch / 2).clamp(0, size as isize) as usize);
            let (x0, x1) =
                ((cx - cw / 2).clamp(0, size as isize) as usize, (cx + cw / 2).clamp(0, size as isize) as usize);
            for i in 0..b {
                for c in 0..chans {
                    for y in y0..y1 {
                        for x in x0..x1 {
                            let o = (c * size + y) * size + x;
                            images[i * plane + o] = partners[i * plane + o];
                        }
                    }
                }
            }
            lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (size * size) as f64;
        } else {
            for i in 0..b {
                for o in 0..plane {
                    images[i * plane + o] = (lam * f64::from(images[i * plane + o])
                        + (1.0 - lam) * f64::from(partners[i * plane + o]))
                        as f32;
                }
            }
        }
        let own = Self::targets(labels, classes, self.smoothing);
        let other = Self::targets(partner_labels, classes, self.smoothing);
        own.iter().zip(&other).map(|(&a, &b)| (lam * f64::from(a) + (1.0 - lam) * f64::from(b)) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mixup_and_cutmix_mix_labels_by_the_mixed_area() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, c, s, classes) = (4, 1, 8, 3);
        let labels = [0u32, 1, 2, 1];
        // Image i is filled with the value i, so the mixed pixels reveal λ.
        let base: Vec<f32> = (0..b).flat_map(|i| vec![i as f32; c * s * s]).collect();
        for (mix, cut) in [(0.8, 0.0), (0.0, 1.0)] {
            let m = Mixup { mixup_alpha: mix, cutmix_alpha: cut, switch_prob: 0.5, smoothing: 0.1 };
            let mut imgs = base.clone();
            let t = m.apply(&mut imgs, &labels, c, s, classes, &mut rng);
            for i in 0..b {
                let j = (b - 1 - i) as f32;
                let row = &t[i * classes..(i + 1) * classes];
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "targets sum to 1");
                // Fraction of image i's pixels that now come from image j.
                let mean = imgs[i * s * s..(i + 1) * s * s].iter().sum::<f32>() / (s * s) as f32;
                let from_other = if (j - i as f32).abs() > 0.0 { (mean - i as f32) / (j - i as f32) } else { continue };
                let lam = 1.0 - from_other;
                let on = 0.9 + 0.1 / 3.0;
                let off = 0.1 / 3.0;
                let own = labels[i] as usize;
                let other = labels[b - 1 - i] as usize;
                let mut want = vec![off; classes];
                want[own] += lam * (on - off);
                want[other] += (1.0 - lam) * (on - off);
                for k in 0..classes {
                    assert!((row[k] - want[k]).abs() < 1e-4, "mix {mix} cut {cut} sample {i}: {row:?} vs {want:?}");
                }
            }
        }
    }

    #[test]
    fn erasing_and_randaugment_change_pixels_and_keep_shapes() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut x = vec![0.0f32; 3 * 16 * 16];
        random_erase(&mut x, 3, 16, 1.0, &mut rng);
        let changed = x.iter().filter(|v| **v != 0.0).count();
        assert!((3 * 5..=3 * 16 * 16 / 3 + 48).contains(&changed), "{changed}");
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(20, 20, |x, y| Rgb([(x * 12) as u8, (y * 12) as u8, 60])));
        let ra = RandAugment::default();
        let mut differs = 0;
        for _ in 0..20 {
            let out = ra.apply(&img, &mut rng);
            assert_eq!((out.width(), out.height()), (20, 20));
            differs += usize::from(out != img);
        }
        assert!(differs >= 10, "RandAugment changed only {differs} of 20 images");
        for op in OPS {
            let mut p = Planes::of(&img);
            apply_op(&mut p, op, 0.9, &mut rng);
            let out = p.into_image();
            assert_eq!((out.width(), out.height()), (20, 20), "{op}");
        }
        let grey = DynamicImage::ImageLuma8(GrayImage::from_pixel(9, 7, Luma([40])));
        assert_eq!(ra.apply(&grey, &mut rng).color(), image::ColorType::L8);
    }
}
