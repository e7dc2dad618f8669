//! Datasets: IDX (MNIST / Fashion-MNIST), CIFAR binary batches, image
//! folders (`root/<class>/*.png|jpg`, the ImageNet-100 layout) and a built-in
//! synthetic set. Images come out as 8-bit `DynamicImage`s; augmentation and
//! normalisation happen in [`augment`], batching on background threads in [`loader`].

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use image::DynamicImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::ModelConfig;
use augment::Transform;

/// Train or test split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Channels of the stored images (1 or 3).
    fn channels(&self) -> usize;
    fn num_classes(&self) -> usize;
    /// Per-channel normalisation statistics of the source.
    fn mean_std(&self) -> (Vec<f32>, Vec<f32>);
    /// Image `index` and its label. Errors name the file.
    fn get(&self, index: usize) -> Result<(DynamicImage, u32)>;
    /// Human-readable source of item `index` (a path), for error messages.
    fn describe(&self, index: usize) -> String;
}

/// The first `len` items of another dataset (quick evaluations).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    len: usize,
}

impl Subset {
    /// `inner` itself when `len` is 0 or covers it.
    pub fn first(inner: Arc<dyn Dataset>, len: usize) -> Arc<dyn Dataset> {
        if len == 0 || len >= inner.len() { inner } else { Arc::new(Self { inner, len }) }
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.len
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        self.inner.mean_std()
    }
    fn get(&self, index: usize) -> Result<(DynamicImage, u32)> {
        self.inner.get(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

/// ImageNet statistics (torchvision, MAE).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A parsed `--data` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    Synthetic,
    Fmnist(PathBuf),
    Mnist(PathBuf),
    Cifar10(PathBuf),
    Cifar100(PathBuf),
    Folder(PathBuf),
}

impl DataSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "synthetic" => return Ok(Self::Synthetic),
            // Debian's dataset-fashion-mnist package.
            "fmnist" => return Ok(Self::Fmnist(PathBuf::from("/usr/share/datasets/fashion-mnist"))),
            _ => {}
        }
        let Some((kind, dir)) = spec.split_once(':') else {
            bail!(
                "data spec {spec:?} must be synthetic, fmnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR or folder:DIR"
            );
        };
        let dir = PathBuf::from(dir);
        Ok(match kind {
            "fmnist" => Self::Fmnist(dir),
            "mnist" => Self::Mnist(dir),
            "cifar10" => Self::Cifar10(dir),
            "cifar100" => Self::Cifar100(dir),
            "folder" => Self::Folder(dir),
            other => bail!(
                "unknown data kind {other:?} in {spec:?}: use synthetic, fmnist, mnist, cifar10, cifar100 or folder"
            ),
        })
    }

    /// How many classes the training split has, without loading it: fixed by
    /// the format, or the class folders of an image folder.
    pub fn num_classes(&self) -> Result<usize> {
        self.ensure_dir_exists()?;
        Ok(match self {
            Self::Synthetic => synthetic::CLASSES.len(),
            Self::Fmnist(_) | Self::Mnist(_) => idx::CLASSES,
            Self::Cifar10(_) => cifar::Kind::Cifar10.classes(),
            Self::Cifar100(_) => cifar::Kind::Cifar100.classes(),
            Self::Folder(root) => folder::class_count(root, Split::Train)?,
        })
    }

    fn ensure_dir_exists(&self) -> Result<()> {
        if let Some(dir) = self.dir()
            && !dir.is_dir()
        {
            bail!("data directory {} does not exist; check the path in --data", dir.display());
        }
        Ok(())
    }

    fn dir(&self) -> Option<&Path> {
        match self {
            Self::Synthetic => None,
            Self::Fmnist(d) | Self::Mnist(d) | Self::Cifar10(d) | Self::Cifar100(d) | Self::Folder(d) => Some(d),
        }
    }
}

/// Opens a dataset split. `synthetic` is sized by `synthetic_len` and drawn at `img_size`.
pub fn open(spec: &DataSpec, split: Split, synthetic_len: usize, img_size: usize) -> Result<Arc<dyn Dataset>> {
    spec.ensure_dir_exists()?;
    Ok(match spec {
        DataSpec::Synthetic => {
            let len = if split == Split::Train { synthetic_len } else { (synthetic_len / 5).max(1) };
            Arc::new(synthetic::Synthetic::new(len, img_size.max(8), split))
        }
        DataSpec::Fmnist(dir) => Arc::new(idx::Idx::open(dir, split, idx::Kind::FashionMnist)?),
        DataSpec::Mnist(dir) => Arc::new(idx::Idx::open(dir, split, idx::Kind::Mnist)?),
        DataSpec::Cifar10(dir) => Arc::new(cifar::Cifar::open(dir, split, cifar::Kind::Cifar10)?),
        DataSpec::Cifar100(dir) => Arc::new(cifar::Cifar::open(dir, split, cifar::Kind::Cifar100)?),
        DataSpec::Folder(dir) => Arc::new(folder::Folder::open(dir, split)?),
    })
}

/// The first `n` test images (all of them when `n` is 0): the set every
/// evaluation of a run scores, so that later evaluations compare with it.
pub fn test_subset(spec: &DataSpec, synthetic_len: usize, img_size: usize, n: usize) -> Result<Arc<dyn Dataset>> {
    Ok(Subset::first(open(spec, Split::Test, synthetic_len, img_size)?, n))
}

/// The first `n` test images (fewer if the split is smaller), normalised for
/// `model` without augmentation, their count and the transform: the fixed
/// images that reconstruction grids and analyses show.
pub fn first_test_images(
    spec: &DataSpec,
    synthetic_len: usize,
    model: &ModelConfig,
    n: usize,
) -> Result<(Vec<f32>, usize, Transform)> {
    let set = open(spec, Split::Test, synthetic_len, model.img_size)?;
    let t = Transform::new(model.img_size, model.in_chans, set.mean_std(), false);
    let n = n.min(set.len());
    let mut images = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for i in 0..n {
        let (img, _) = set.get(i).with_context(|| set.describe(i))?;
        images.extend(t.apply(&img, &mut rng));
    }
    Ok((images, n, t))
}

/// A photo from a file (PNG/JPEG), cropped to its centre square; the model's
/// transform then resizes it without distortion.
pub fn open_centre_cropped(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    centre_cropped(&bytes, &path.display().to_string())
}

/// [`open_centre_cropped`] for an image held in memory; `name` names it in errors.
pub fn centre_cropped(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("cannot decode image {name}: the file is corrupt or not PNG/JPEG"))?;
    let side = img.width().min(img.height());
    Ok(img.crop_imm((img.width() - side) / 2, (img.height() - side) / 2, side, side))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_is_valid() {
        assert_eq!(DataSpec::parse("synthetic").unwrap(), DataSpec::Synthetic);
        assert_eq!(DataSpec::parse("fmnist:/a/b").unwrap(), DataSpec::Fmnist("/a/b".into()));
        let err = DataSpec::parse("imagenet:/x").unwrap_err().to_string();
        assert!(err.contains("imagenet") && err.contains("folder"), "{err}");
        let err = DataSpec::parse("cifar10").unwrap_err().to_string();
        assert!(err.contains("cifar10:DIR"), "{err}");
        let err = open(&DataSpec::Folder("/no/such/dir".into()), Split::Train, 1, 32).err().unwrap().to_string();
        assert!(err.contains("/no/such/dir") && err.contains("does not exist"), "{err}");
        let err = DataSpec::Fmnist("/no/such/dir".into()).num_classes().unwrap_err().to_string();
        assert!(err.contains("/no/such/dir") && err.contains("does not exist"), "{err}");
    }

    #[test]
    fn class_counts_without_loading_match_the_opened_sets() {
        let root = std::env::temp_dir().join(format!("cmae-classes-{}", std::process::id()));
        for class in ["cat", "dog", "owl"] {
            std::fs::create_dir_all(root.join("train").join(class)).unwrap();
            image::RgbImage::new(4, 4).save(root.join("train").join(class).join("a.png")).unwrap();
        }
        std::fs::create_dir_all(root.join("val").join("cat")).unwrap();
        for spec in [DataSpec::Synthetic, DataSpec::Folder(root.clone())] {
            let opened = open(&spec, Split::Train, 8, 16).unwrap().num_classes();
            assert_eq!(spec.num_classes().unwrap(), opened, "{spec:?}");
        }
        assert_eq!(DataSpec::Folder(root.clone()).num_classes().unwrap(), 3, "the train split's classes, not val's");
        let _ = std::fs::remove_dir_all(&root);
    }
}
