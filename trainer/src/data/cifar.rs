//! CIFAR-10/100 binary batches (`data_batch_*.bin`, `train.bin`), in memory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, RgbImage};

use super::{Dataset, Split};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cifar10,
    Cifar100,
}

impl Kind {
    pub fn classes(self) -> usize {
        match self {
            Kind::Cifar10 => 10,
            Kind::Cifar100 => 100,
        }
    }
}

const PIXELS: usize = 32 * 32 * 3;

pub struct Cifar {
    kind: Kind,
    files: Vec<PathBuf>,
    /// Records of (label, 3072 planar RGB bytes).
    labels: Vec<u8>,
    pixels: Vec<u8>,
}

impl Cifar {
    pub fn open(dir: &Path, split: Split, kind: Kind) -> Result<Self> {
        // Accept the extracted archive's folder or its parent.
        let sub = match kind {
            Kind::Cifar10 => "cifar-10-batches-bin",
            Kind::Cifar100 => "cifar-100-binary",
        };
        let dir = if dir.join(sub).is_dir() { dir.join(sub) } else { dir.to_path_buf() };
        let names: Vec<String> = match (kind, split) {
            (Kind::Cifar10, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            (Kind::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Kind::Cifar100, Split::Train) => vec!["train.bin".into()],
            (Kind::Cifar100, Split::Test) => vec!["test.bin".into()],
        };
        // CIFAR-100 records carry (coarse, fine) labels; the fine one is used.
        let label_bytes = if kind == Kind::Cifar100 { 2 } else { 1 };
        let record = label_bytes + PIXELS;
        let (mut labels, mut pixels, mut files) = (Vec::new(), Vec::new(), Vec::new());
        for name in names {
            let path = dir.join(&name);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {} (CIFAR binary batch)", path.display()))?;
            if bytes.is_empty() || bytes.len() % record != 0 {
                bail!(
                    "{} is not a CIFAR binary batch ({} bytes is not a multiple of {record})",
                    path.display(),
                    bytes.len()
                );
            }
            for r in bytes.chunks(record) {
                labels.push(r[label_bytes - 1]);
                pixels.extend_from_slice(&r[label_bytes..]);
            }
            files.push(path);
        }
        Ok(Self { kind, files, labels, pixels })
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn channels(&self) -> usize {
        3
    }

    fn num_classes(&self) -> usize {
        self.kind.classes()
    }

    fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        (vec![0.4914, 0.4822, 0.4465], vec![0.2470, 0.2435, 0.2616])
    }

    fn get(&self, index: usize) -> Result<(DynamicImage, u32)> {
        let planar = &self.pixels[index * PIXELS..(index + 1) * PIXELS];
        let mut rgb = Vec::with_capacity(PIXELS);
        for i in 0..1024 {
            rgb.extend_from_slice(&[planar[i], planar[1024 + i], planar[2048 + i]]);
        }
        let img = RgbImage::from_raw(32, 32, rgb).expect("32×32×3 bytes");
        Ok((DynamicImage::ImageRgb8(img), u32::from(self.labels[index])))
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "CIFAR record {index} of {}",
            self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cifar100_fine_labels_and_planar_pixels() {
        let dir = std::env::temp_dir().join(format!("cmae-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rec = vec![3u8, 42];
        rec.extend((0..PIXELS).map(|i| (i / 1024) as u8 * 100));
        std::fs::write(dir.join("test.bin"), [rec.clone(), rec].concat()).unwrap();
        let c = Cifar::open(&dir, Split::Test, Kind::Cifar100).unwrap();
        let (img, label) = c.get(1).unwrap();
        assert_eq!((c.len(), label), (2, 42));
        assert_eq!(img.to_rgb8().get_pixel(5, 5).0, [0, 100, 200]);
        std::fs::write(dir.join("test.bin"), [1u8, 2, 3]).unwrap();
        assert!(Cifar::open(&dir, Split::Test, Kind::Cifar100).err().unwrap().to_string().contains("not a CIFAR"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
