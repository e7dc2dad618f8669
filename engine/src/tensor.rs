//! GPU tensors: pooled storage with a shape, contiguous and row-major.
//!
//! A [`Tensor`] is immutable: clones and reshapes share its storage, and the
//! tape keeps clones for the backward pass, so nothing may write it. A
//! [`TensorMut`] is the one handle that kernels write in place (parameters,
//! optimizer state, running statistics, a kernel's fresh output), as candle's
//! `Var`; a write is refused while any other handle shares its storage, so
//! changing values under a saved activation is an error, not a silent wrong
//! gradient.

use std::ops::Deref;
use std::sync::Arc;

use crate::device::{Access, Binding, Device, PendingRead, Storage};
use crate::error::{Error, Result, shape_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Indices (gather/scatter, labels).
    U32,
}

/// An immutable GPU tensor. Cloning shares the buffer; it goes back to the
/// pool when the last clone is dropped.
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
    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Self> {
        Ok(TensorMut::from_f32(dev, data, shape)?.freeze())
    }

    pub fn from_u32(dev: &Device, data: &[u32], shape: &[usize]) -> Result<Self> {
        Ok(TensorMut::upload("from_u32", dev, data, shape, DType::U32)?.freeze())
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
            return Err(shape_err("dim", format!("axis {axis} of a tensor of shape {:?}", self.shape)));
        }
        Ok(self.shape[i as usize])
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

    /// The only handle on its storage becomes writable; a shared one is an error.
    pub fn into_mut(self) -> Result<TensorMut> {
        if Arc::strong_count(&self.storage) > 1 {
            return Err(Error::Aliased(format!(
                "a tensor of shape {:?} cannot become mutable while other handles share it",
                self.shape
            )));
        }
        Ok(TensorMut(self))
    }

    pub(crate) fn bind(&self, slot: u32) -> Binding<'_> {
        Binding { slot, access: Access::Read, storage: &self.storage, shape: &self.shape, bytes: self.byte_len() }
    }

    /// Reads the values back once this stream's batch has run: `.await` it,
    /// or [`PendingRead::wait`] to block.
    pub fn read_f32(&self, dev: &Device) -> Result<PendingRead<f32>> {
        self.expect_dtype("read_f32", DType::F32)?;
        dev.read_later(&self.bind(0))
    }

    pub fn read_u32(&self, dev: &Device) -> Result<PendingRead<u32>> {
        self.expect_dtype("read_u32", DType::U32)?;
        dev.read_later(&self.bind(0))
    }

    /// The values, waiting for all work recorded on `dev`'s stream.
    pub fn wait_f32(&self, dev: &Device) -> Result<Vec<f32>> {
        self.read_f32(dev)?.wait()
    }

    pub fn wait_u32(&self, dev: &Device) -> Result<Vec<u32>> {
        self.read_u32(dev)?.wait()
    }

    fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(shape_err(op, format!("tensor {:?} is {:?}", self.shape, self.dtype)));
        }
        Ok(())
    }
}

impl AsRef<Tensor> for Tensor {
    fn as_ref(&self) -> &Tensor {
        self
    }
}

impl AsRef<Tensor> for TensorMut {
    fn as_ref(&self) -> &Tensor {
        &self.0
    }
}

/// A tensor that kernels may write in place. Not `Clone`: there is one
/// writable handle, and [`TensorMut::freeze`] turns it into a [`Tensor`].
pub struct TensorMut(Tensor);

impl std::fmt::Debug for TensorMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorMut({:?}, {:?})", self.0.dtype, self.0.shape)
    }
}

impl Deref for TensorMut {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.0
    }
}

impl TensorMut {
    /// A tensor whose contents are whatever the pooled buffer held.
    /// Kernels that write every element use this for their outputs.
    pub fn uninit(dev: &Device, shape: &[usize], dtype: DType) -> Result<Self> {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        let storage = Arc::new(dev.alloc(bytes)?);
        Ok(Self(Tensor { storage, shape: shape.to_vec(), dtype }))
    }

    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::upload("from_f32", dev, data, shape, DType::F32)
    }

    fn upload<T: bytemuck::Pod>(
        op: &'static str,
        dev: &Device,
        data: &[T],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Self> {
        check_len(op, data.len(), shape)?;
        let mut t = Self::uninit(dev, shape, dtype)?;
        t.write(dev, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Gives up writing: the values become an ordinary immutable tensor.
    pub fn freeze(self) -> Tensor {
        self.0
    }

    pub fn as_tensor(&self) -> &Tensor {
        &self.0
    }

    /// The same storage under another shape, still the only writable handle.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        check_len("reshape", self.numel(), shape)?;
        Ok(Self(Tensor { shape: shape.to_vec(), ..self.0 }))
    }

    /// Overwrites the contents with host bytes (recorded in order, like a dispatch).
    pub fn write(&mut self, dev: &Device, data: &[u8]) -> Result<()> {
        dev.write_bytes(&self.bind_mut(0), data)
    }

    /// Overwrites the start of this tensor with all of `src`.
    pub fn copy_from(&mut self, dev: &Device, src: &Tensor) -> Result<()> {
        dev.copy_bytes(&src.bind(0), &self.bind_mut(0), src.byte_len())
    }

    pub(crate) fn bind_mut(&self, slot: u32) -> Binding<'_> {
        Binding { access: Access::Write, ..self.0.bind(slot) }
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if want != len {
        return Err(shape_err(op, format!("{len} elements do not fill shape {shape:?} ({want})")));
    }
    Ok(())
}
