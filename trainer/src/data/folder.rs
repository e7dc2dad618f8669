//! An image folder: `root/<class>/*.{png,jpg,jpeg}` (the ImageNet-100 layout).
//! With `root/train` and `root/val` (or `root/test`) the splits come from those.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::DynamicImage;

use super::{Dataset, IMAGENET_MEAN, IMAGENET_STD, Split};

pub struct Folder {
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The directory that holds `split`'s class folders under `root`.
fn split_dir(root: &Path, split: Split) -> PathBuf {
    match split {
        Split::Train if root.join("train").is_dir() => root.join("train"),
        Split::Test if root.join("val").is_dir() => root.join("val"),
        Split::Test if root.join("test").is_dir() => root.join("test"),
        _ => root.to_path_buf(),
    }
}

/// The sorted class folder names in `dir`: label i is the i-th name.
fn class_names(dir: &Path) -> Result<Vec<String>> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    Ok(classes)
}

/// How many classes `split` has, without listing their images.
pub fn class_count(root: &Path, split: Split) -> Result<usize> {
    Ok(class_names(&split_dir(root, split))?.len())
}

impl Folder {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let dir = split_dir(root, split);
        let classes = class_names(&dir)?;
        let mut items = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(class))
                .with_context(|| format!("cannot list {}", dir.join(class).display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|p| (p, label as u32)));
        }
        if items.is_empty() {
            bail!("{} has no images in class folders (expected {}/<class>/*.png|jpg)", dir.display(), dir.display());
        }
        Ok(Self { classes, items })
    }
}

impl Dataset for Folder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn channels(&self) -> usize {
        3
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn mean_std(&self) -> (Vec<f32>, Vec<f32>) {
        (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
    }

    fn get(&self, index: usize) -> Result<(DynamicImage, u32)> {
        let (path, label) = &self.items[index];
        let img = image::ImageReader::open(path)
            .with_context(|| format!("cannot open image {}", path.display()))?
            .with_guessed_format()
            .with_context(|| format!("cannot read image {}", path.display()))?
            .decode()
            .with_context(|| format!("corrupt image {}", path.display()))?;
        Ok((DynamicImage::ImageRgb8(img.to_rgb8()), *label))
    }

    fn describe(&self, index: usize) -> String {
        self.items[index].0.display().to_string()
    }
}
