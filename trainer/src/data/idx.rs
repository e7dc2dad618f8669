//! IDX files (MNIST, Fashion-MNIST), gzipped or not, held in memory.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::{DynamicImage, GrayImage};

use super::{Dataset, Split};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mnist,
    FashionMnist,
}

/// Both MNISTs have ten classes.
pub const CLASSES: usize = 10;

pub struct Idx {
    kind: Kind,
    images_path: PathBuf,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

/// `name` or `name.gz` inside `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [dir.join(name), dir.join(format!("{name}.gz"))] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("{} has no {name} or {name}.gz (the IDX layout of MNIST/Fashion-MNIST)", dir.display())
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not valid gzip", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of u8 data: returns the dimensions and the payload.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        bail!("{} is not an IDX file of unsigned bytes", path.display());
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        bail!("{} is truncated (header)", path.display());
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() < header + n {
        bail!("{} is truncated: {} of {} data bytes", path.display(), bytes.len() - header, n);
    }
    Ok((dims, bytes[header..header + n].to_vec()))
}

impl Idx {
    pub fn open(dir: &Path, split: Split, kind: Kind) -> Result<Self> {
        let prefix = if split == Split::Train { "train" } else { "t10k" };
        let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (dims, pixels) = parse(&images_path, &read_maybe_gz(&images_path)?)?;
        let (ldims, labels) = parse(&labels_path, &read_maybe_gz(&labels_path)?)?;
        let [n, rows, cols] = dims[..] else {
            bail!("{} holds a {}-D array, not [n, rows, cols]", images_path.display(), dims.len());
        };
        if ldims != [n] {
            bail!("{} has {:?} labels for {n} images", labels_path.display(), ldims);
        }
        Ok(Self { kind, images_path, rows, cols, pixels, labels })
    }
}

impl Dataset for Idx {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn channels(&self) -> usize {
        1
    }

    fn num_classes(&self) -> usize {
        CLASSES
    }

    fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        match self.kind {
            Kind::Mnist => (vec![0.1307], vec![0.3081]),
            Kind::FashionMnist => (vec![0.2860], vec![0.3530]),
        }
    }

    fn get(&self, index: usize) -> Result<(DynamicImage, u32)> {
        let size = self.rows * self.cols;
        let data = self.pixels[index * size..(index + 1) * size].to_vec();
        let img = GrayImage::from_raw(self.cols as u32, self.rows as u32, data).expect("sizes checked at open");
        Ok((DynamicImage::ImageLuma8(img), u32::from(self.labels[index])))
    }

    fn describe(&self, index: usize) -> String {
        format!("{} image {index}", self.images_path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a tiny IDX pair (optionally gzipped) for tests.
    pub fn write_idx(dir: &Path, prefix: &str, n: usize, side: usize, gz: bool) {
        let mut img = vec![0, 0, 8, 3];
        for d in [n, side, side] {
            img.extend_from_slice(&(d as u32).to_be_bytes());
        }
        img.extend((0..n * side * side).map(|i| (i % 251) as u8));
        let mut lab = vec![0, 0, 8, 1];
        lab.extend_from_slice(&(n as u32).to_be_bytes());
        lab.extend((0..n).map(|i| (i % 10) as u8));
        for (name, bytes) in
            [(format!("{prefix}-images-idx3-ubyte"), img), (format!("{prefix}-labels-idx1-ubyte"), lab)]
        {
            if gz {
                use std::io::Write;
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&bytes).unwrap();
                std::fs::write(dir.join(format!("{name}.gz")), enc.finish().unwrap()).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_plain_and_gzipped_idx_and_rejects_truncated() {
        let dir = std::env::temp_dir().join(format!("cmae-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_idx(&dir, "train", 5, 4, true);
        write_idx(&dir, "t10k", 3, 4, false);
        let train = Idx::open(&dir, Split::Train, Kind::FashionMnist).unwrap();
        let test = Idx::open(&dir, Split::Test, Kind::FashionMnist).unwrap();
        assert_eq!((train.len(), test.len()), (5, 3));
        let (img, label) = train.get(2).unwrap();
        assert_eq!((img.width(), img.height(), label), (4, 4, 2));
        assert_eq!(img.to_luma8().as_raw()[0], 32);
        let bytes = std::fs::read(dir.join("t10k-images-idx3-ubyte")).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), &bytes[..bytes.len() - 3]).unwrap();
        let err = Idx::open(&dir, Split::Test, Kind::Mnist).err().unwrap().to_string();
        assert!(err.contains("truncated") && err.contains("t10k-images"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
