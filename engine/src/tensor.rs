//! GPU tensors: a pooled buffer with a shape. Contiguous, row-major, immutable
//! by convention; layout changes are explicit kernels.

use std::sync::{Arc, Weak};

use crate::device::{Device, Inner, lock};
use crate::error::{Result, shape_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Indices (gather/scatter, labels).
    U32,
}

struct Storage {
    buffer: Option<wgpu::Buffer>,
    owner: Weak<Inner>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let (Some(buf), Some(owner)) = (self.buffer.take(), self.owner.upgrade()) {
            lock(&owner.pool).give_back(buf);
        }
    }
}

/// A GPU tensor. Cloning shares the buffer; it goes back to the pool when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    /// A tensor whose contents are whatever the pooled buffer held.
    /// Kernels that write every element use this for their outputs.
    pub fn uninit(dev: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        let buffer = dev.alloc(bytes)?;
        Ok(Self {
            storage: Arc::new(Storage { buffer: Some(buffer), owner: dev.downgrade() }),
            shape: shape.to_vec(),
            dtype,
        })
    }

    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Self> {
        check_len("from_f32", data.len(), shape)?;
        dev.upload(bytemuck::cast_slice(data), shape, DType::F32)
    }

    pub fn from_u32(dev: &Device, data: &[u32], shape: &[usize]) -> Result<Self> {
        check_len("from_u32", data.len(), shape)?;
        dev.upload(bytemuck::cast_slice(data), shape, DType::U32)
    }

    pub fn zeros(dev: &Device, shape: &[usize]) -> Result<Self> {
        crate::kernels::elementwise::full(dev, shape, 0.0)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * 4
    }

    /// Size of one axis; negative counts from the end. An axis the tensor
    /// does not have (any axis of a 0-d tensor) is a shape error.
    pub fn dim(&self, axis: isize) -> Result<usize> {
        let rank = self.shape.len() as isize;
        let i = if axis < 0 { rank + axis } else { axis };
        if !(0..rank).contains(&i) {
            return Err(crate::error::shape_err("dim", format!("axis {axis} of a tensor of shape {:?}", self.shape)));
        }
        Ok(self.shape[i as usize])
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("buffer lives until drop")
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        check_len("reshape", self.numel(), shape)?;
        Ok(Self { storage: self.storage.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// True when both tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub fn to_vec_f32(&self, dev: &Device) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&dev.read_bytes(self)?))
    }

    pub fn to_vec_u32(&self, dev: &Device) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&dev.read_bytes(self)?))
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if want != len {
        return Err(shape_err(op, format!("{len} elements do not fill shape {shape:?} ({want})")));
    }
    Ok(())
}
