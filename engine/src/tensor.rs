//! GPU tensors: pooled storage with a shape, contiguous and row-major.
//!
//! A [`Tensor`] is immutable: clones and reshapes share its storage, and the
//! tape keeps clones for the backward pass, so nothing may write it. A
//! [`TensorMut`] is the one handle that kernels write in place (parameters,
//! optimizer state, running statistics, a kernel's fresh output), as candle's
//! `Var`; a write is refused while any other handle shares its storage, so
//! changing values under a saved activation is an error, not a silent wrong
//! gradient.
//!
//! A tensor is a byte range (a [`Region`]) of a pooled buffer: usually the
//! whole buffer, or one member of a pack ([`crate::kernels::elementwise::packed_zeros`]) that
//! lays several tensors side by side so one kernel can update them all at
//! once (the optimizer's multi-tensor step). Aliasing is tracked per region,
//! so the members of a pack are written independently.

use std::ops::Deref;
use std::sync::Arc;

use crate::device::{Access, Binding, Device, PendingRead, Storage};
use crate::error::{Error, Result, shape_err};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Half precision (mixed-precision matmul operands): made and read back
    /// through `kernels::cast`, on adapters with `SHADER_F16`.
    F16,
    /// Indices (gather/scatter, labels).
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::U32 => 4,
        }
    }
}

/// The byte range of a buffer that a tensor's elements occupy. Handles that
/// share one region see the same elements, so a write is refused while more
/// than one handle holds it.
struct Region {
    storage: Arc<Storage>,
    offset: u64,
}

/// An immutable GPU tensor. Cloning shares the buffer; it goes back to the
/// pool when the last clone (and the last member of its pack) is dropped.
#[derive(Clone)]
pub struct Tensor {
    region: Arc<Region>,
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
        (self.numel() * self.dtype.size()) as u64
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
        Ok(Self { region: self.region.clone(), shape: shape.to_vec(), dtype: self.dtype })
    }

    /// True when both tensors are the same elements (clones and reshapes of one tensor).
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.region, &other.region)
    }

    /// The only handle on its elements becomes writable; a shared one is an error.
    pub fn into_mut(self) -> Result<TensorMut> {
        if self.is_shared() {
            return Err(Error::Aliased(format!(
                "a tensor of shape {:?} cannot become mutable while other handles share it",
                self.shape
            )));
        }
        Ok(TensorMut(self))
    }

    /// The storage this tensor lives in and its byte offset there.
    pub(crate) fn region_of(&self) -> (&Arc<Storage>, u64) {
        (&self.region.storage, self.region.offset)
    }

    fn is_shared(&self) -> bool {
        Arc::strong_count(&self.region) > 1
    }

    /// Like [`Tensor::into_mut`], handing a shared tensor back instead of an error.
    pub(crate) fn try_into_mut(self) -> std::result::Result<TensorMut, Tensor> {
        if self.is_shared() { Err(self) } else { Ok(TensorMut(self)) }
    }

    pub(crate) fn bind(&self, slot: u32) -> Binding<'_> {
        Binding {
            slot,
            access: Access::Read,
            storage: &self.region.storage,
            offset: self.region.offset,
            shape: &self.shape,
            bytes: self.byte_len(),
            shared: self.is_shared(),
        }
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
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        let storage = Arc::new(dev.alloc(bytes)?);
        Ok(Self(Tensor { region: Arc::new(Region { storage, offset: 0 }), shape: shape.to_vec(), dtype }))
    }

    /// This tensor's buffer split into the members of a pack: tensors of its
    /// element type, of `shapes`, starting at byte `offsets` (see
    /// `elementwise::packed_zeros`).
    pub(crate) fn into_pack(self, shapes: &[Vec<usize>], offsets: &[u64]) -> Vec<TensorMut> {
        let dtype = self.0.dtype;
        let storage = self.0.region.storage.clone();
        storage.set_regions(shapes.len());
        shapes
            .iter()
            .zip(offsets)
            .map(|(shape, &offset)| {
                let region = Arc::new(Region { storage: storage.clone(), offset });
                Self(Tensor { region, shape: shape.clone(), dtype })
            })
            .collect()
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

/// Every member of one pack ([`crate::kernels::elementwise::packed_zeros`]) seen as one range
/// of elements, for a kernel that handles them all in one dispatch. Member i
/// starts at element `starts[i]` of the span.
pub(crate) struct Span<'a> {
    storage: &'a Arc<Storage>,
    offset: u64,
    shape: [usize; 1],
    shared: bool,
    pub(crate) starts: Vec<usize>,
}

impl<'a> Span<'a> {
    /// The span of `members`, which must be all the members of one pack, in order.
    pub(crate) fn of(op: &'static str, members: &[&'a Tensor]) -> Result<Self> {
        let (Some(first), Some(last)) = (members.first(), members.last()) else {
            return Err(shape_err(op, "no tensors to update"));
        };
        let storage = &first.region.storage;
        let whole_pack = storage.regions() == members.len()
            && members.iter().all(|t| Arc::ptr_eq(&t.region.storage, storage) && t.dtype == DType::F32)
            && members.windows(2).all(|w| w[0].region.offset + w[0].byte_len() <= w[1].region.offset);
        if !whole_pack {
            return Err(shape_err(
                op,
                format!(
                    "the {} tensors are not every member of one pack in order (make them with elementwise::packed_zeros)",
                    members.len()
                ),
            ));
        }
        let offset = first.region.offset;
        let end = last.region.offset + last.byte_len();
        Ok(Self {
            storage,
            offset,
            shape: [((end - offset) / 4) as usize],
            shared: members.iter().any(|t| t.is_shared()),
            starts: members.iter().map(|t| ((t.region.offset - offset) / 4) as usize).collect(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.shape[0]
    }

    /// Reads every member; `shared` makes a write refused if any member is.
    pub(crate) fn bind(&self, slot: u32, access: Access) -> Binding<'_> {
        Binding {
            slot,
            access,
            storage: self.storage,
            offset: self.offset,
            shape: &self.shape,
            bytes: self.shape[0] as u64 * 4,
            shared: self.shared,
        }
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if want != len {
        return Err(shape_err(op, format!("{len} elements do not fill shape {shape:?} ({want})")));
    }
    Ok(())
}
