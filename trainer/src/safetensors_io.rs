//! Reading and writing `.safetensors` files (checkpoints, fixtures), with
//! atomic writes: a temp file in the same directory, fsync, rename.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensors, serialize};

/// A named f32 tensor on the host: `(name, shape, values)`.
pub type NamedF32 = (String, Vec<usize>, Vec<f32>);
/// f32 tensors by name: `name → (shape, values)`.
pub type F32Map = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// A tensor read from a file, converted to a host type.
#[derive(Debug, Clone)]
pub enum HostTensor {
    F32(Vec<usize>, Vec<f32>),
    F64(Vec<usize>, Vec<f64>),
    I64(Vec<usize>, Vec<i64>),
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            HostTensor::F32(s, _) | HostTensor::F64(s, _) | HostTensor::I64(s, _) => s,
        }
    }

    /// Float data as f64 (for comparisons).
    pub fn to_f64(&self) -> Result<Vec<f64>> {
        match self {
            HostTensor::F32(_, v) => Ok(v.iter().map(|&x| f64::from(x)).collect()),
            HostTensor::F64(_, v) => Ok(v.clone()),
            HostTensor::I64(..) => bail!("expected a float tensor, found i64"),
        }
    }
}

/// All tensors and the metadata of a safetensors file.
pub struct SafetensorsFile {
    pub tensors: HashMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

pub fn read(path: &Path) -> Result<SafetensorsFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes, &path.display().to_string())
}

/// A safetensors file held in memory; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<SafetensorsFile> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{what} is not a safetensors file: {e}"))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{what} is not a safetensors file: {e}"))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            Dtype::F32 => HostTensor::F32(shape, bytemuck::pod_collect_to_vec(data)),
            Dtype::F64 => HostTensor::F64(shape, bytemuck::pod_collect_to_vec(data)),
            Dtype::I64 => HostTensor::I64(shape, bytemuck::pod_collect_to_vec(data)),
            other => bail!("{what}: tensor {name} has unsupported dtype {other:?}"),
        };
        tensors.insert(name, t);
    }
    Ok(SafetensorsFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
}

/// f32 tensors and string metadata, written atomically.
pub fn write_f32(path: &Path, tensors: &[NamedF32], metadata: HashMap<String, String>) -> Result<()> {
    let bytes = f32_bytes(tensors, metadata).with_context(|| format!("serialising {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// f32 tensors and string metadata as the bytes of a safetensors file.
pub fn f32_bytes(tensors: &[NamedF32], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map_err(|e| anyhow!("tensor {name}: {e}"))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    serialize(views, Some(metadata)).map_err(|e| anyhow!("{e}"))
}

/// Writes to `path.tmp`, syncs, renames over `path`: a reader (or a crash)
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Writes a file read with [`read`] back out (tests use it to tamper with fixtures).
pub fn write_host(path: &Path, file: &SafetensorsFile) -> Result<()> {
    let mut names: Vec<&String> = file.tensors.keys().collect();
    names.sort();
    let views: Vec<(String, TensorView<'_>)> = names
        .into_iter()
        .map(|name| {
            let t = &file.tensors[name];
            let (dtype, bytes): (Dtype, &[u8]) = match t {
                HostTensor::F32(_, v) => (Dtype::F32, bytemuck::cast_slice(v)),
                HostTensor::F64(_, v) => (Dtype::F64, bytemuck::cast_slice(v)),
                HostTensor::I64(_, v) => (Dtype::I64, bytemuck::cast_slice(v)),
            };
            let view = TensorView::new(dtype, t.shape().to_vec(), bytes).map_err(|e| anyhow!("tensor {name}: {e}"))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    let bytes =
        serialize(views, Some(file.metadata.clone())).map_err(|e| anyhow!("serialising {}: {e}", path.display()))?;
    write_atomic(path, &bytes)
}
