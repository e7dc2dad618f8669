//! A built-in labelled image set that needs no files: ten classes of
//! procedural shapes and textures (circle, square, triangle, ring, cross,
//! horizontal / vertical / diagonal stripes, checkerboard, soft blob) with
//! random colours, positions, sizes, periods and a little pixel noise.
//! Image i is a pure function of (split, i), so every run sees the same data.

use anyhow::Result;
use image::{DynamicImage, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Dataset, Split};

pub const CLASSES: [&str; 10] =
    ["circle", "square", "triangle", "ring", "cross", "h-stripes", "v-stripes", "d-stripes", "checkerboard", "blob"];

pub struct Synthetic {
    len: usize,
    size: usize,
    split: Split,
}

impl Synthetic {
    pub fn new(len: usize, size: usize, split: Split) -> Self {
        Self { len, size, split }
    }
}

fn color(rng: &mut impl Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

/// Draws image `index` of class `index % 10`.
fn render(size: usize, seed: u64, class: usize) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (bg, fg) = (color(&mut rng), color(&mut rng));
    let s = size as f32;
    let (cx, cy) = (rng.random_range(0.3..0.7) * s, rng.random_range(0.3..0.7) * s);
    let radius = rng.random_range(0.15..0.35) * s;
    let period = rng.random_range(3.0..8.0) * s / 32.0;
    let phase = rng.random_range(0.0..period);
    let noise = 0.04;
    let mut img = RgbImage::new(size as u32, size as u32);
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let (dx, dy) = (px - cx, py - cy);
            let d = (dx * dx + dy * dy).sqrt();
            let stripe = |v: f32| ((v + phase) / period).floor() as i64 % 2 == 0;
            // How much of the foreground colour this pixel takes.
            let t: f32 = match class {
                0 => f32::from(d < radius),
                1 => f32::from(dx.abs() < radius && dy.abs() < radius),
                2 => f32::from(dy < radius && dy > -radius && dx.abs() < (radius - dy) * 0.5),
                3 => f32::from(d < radius && d > radius * 0.6),
                4 => f32::from(
                    (dx.abs() < radius * 0.25 && dy.abs() < radius) || (dy.abs() < radius * 0.25 && dx.abs() < radius),
                ),
                5 => f32::from(stripe(py)),
                6 => f32::from(stripe(px)),
                7 => f32::from(stripe((px + py) * std::f32::consts::FRAC_1_SQRT_2)),
                8 => f32::from(stripe(px) ^ stripe(py)),
                _ => (-(d * d) / (2.0 * radius * radius * 0.5)).exp(),
            };
            let mut out = [0u8; 3];
            for c in 0..3 {
                let v = bg[c] * (1.0 - t) + fg[c] * t + rng.random_range(-noise..noise);
                out[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            img.put_pixel(x as u32, y as u32, Rgb(out));
        }
    }
    img
}

impl Dataset for Synthetic {
    fn len(&self) -> usize {
        self.len
    }

    fn channels(&self) -> usize {
        3
    }

    fn num_classes(&self) -> usize {
        CLASSES.len()
    }

    fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        // Uniform random colours: mean 0.5, std ≈ 0.29.
        (vec![0.5; 3], vec![0.29; 3])
    }

    fn get(&self, index: usize) -> Result<(DynamicImage, u32)> {
        let split_salt = if self.split == Split::Train { 0 } else { 1 << 40 };
        let class = index % CLASSES.len();
        let img = render(self.size, split_salt + index as u64, class);
        Ok((DynamicImage::ImageRgb8(img), class as u32))
    }

    fn describe(&self, index: usize) -> String {
        format!("synthetic image {index} ({})", CLASSES[index % CLASSES.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_labelled_and_not_flat() {
        let d = Synthetic::new(20, 32, Split::Train);
        for i in 0..20 {
            let (a, la) = d.get(i).unwrap();
            let (b, _) = d.get(i).unwrap();
            assert_eq!(a, b);
            assert_eq!(la as usize, i % 10);
            let px = a.to_rgb8();
            let first = px.get_pixel(0, 0);
            assert!(px.pixels().any(|p| p != first), "image {i} is one flat colour");
        }
        let test = Synthetic::new(20, 32, Split::Test);
        assert_ne!(d.get(3).unwrap().0, test.get(3).unwrap().0, "splits differ");
    }
}
