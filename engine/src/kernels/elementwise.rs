//! Elementwise kernels (`shaders/elementwise.wgsl`).

use super::{expect_f32, grid, same_shape, u32_of};
use crate::device::{Binding, Device, KernelSpec};
use crate::error::{Error, Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    period: u32,
    alpha: f32,
    beta: f32,
}

/// The kernels work on vec4s: `n.div_ceil(4)` items, 256 per workgroup.
fn run(dev: &Device, entry: &'static str, p: Params, bindings: &[Binding<'_>]) -> Result<()> {
    let spec = KernelSpec::new(&shaders::ELEMENTWISE, entry, entry, 256);
    dev.dispatch(spec, &p, bindings, grid((p.n as usize).div_ceil(4), spec.workgroup))
}

/// A fresh output of `shape`, written by `entry` from `x` (binding 1) and `y` (binding 2).
fn map(
    dev: &Device,
    entry: &'static str,
    p: Params,
    shape: &[usize],
    x: &Tensor,
    y: Option<&Tensor>,
) -> Result<Tensor> {
    let out = TensorMut::uninit(dev, shape, DType::F32)?;
    match y {
        Some(y) => run(dev, entry, p, &[x.bind(1), y.bind(2), out.bind_mut(3)])?,
        None => run(dev, entry, p, &[x.bind(1), out.bind_mut(3)])?,
    }
    Ok(out.freeze())
}

/// `alpha·x + beta·y`.
pub fn axpby(dev: &Device, alpha: f32, x: &Tensor, beta: f32, y: &Tensor) -> Result<Tensor> {
    same_shape("axpby", x, y)?;
    expect_f32("axpby", "x", x)?;
    let p = Params { n: u32_of("axpby", x.numel())?, period: 1, alpha, beta };
    map(dev, "axpby", p, x.shape(), x, Some(y))
}

pub fn add(dev: &Device, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    axpby(dev, 1.0, x, 1.0, y)
}

pub fn scale(dev: &Device, x: &Tensor, alpha: f32) -> Result<Tensor> {
    axpby(dev, alpha, x, 0.0, x)
}

/// `x + alpha·v` with `v` repeated along the leading axes: `v`'s shape must be
/// a suffix of `x`'s (a bias row `[d]`, position embeddings `[t, d]`).
pub fn add_broadcast(dev: &Device, x: &Tensor, v: &Tensor, alpha: f32) -> Result<Tensor> {
    let op = "add_broadcast";
    if !x.shape().ends_with(v.shape()) || v.numel() == 0 {
        return Err(shape_err(op, format!("{:?} is not a suffix of {:?}", v.shape(), x.shape())));
    }
    let p = Params { n: u32_of(op, x.numel())?, period: u32_of(op, v.numel())?, alpha, beta: 0.0 };
    map(dev, "add_bcast", p, x.shape(), x, Some(v))
}

pub fn mul(dev: &Device, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("mul", x, y)?;
    let p = Params { n: u32_of("mul", x.numel())?, period: 1, alpha: 0.0, beta: 0.0 };
    map(dev, "mul", p, x.shape(), x, Some(y))
}

/// Multiplies each leading-axis slice `x[b, ..]` by `s[b]`.
pub fn scale_rows(dev: &Device, x: &Tensor, s: &Tensor) -> Result<Tensor> {
    let op = "scale_rows";
    if x.shape().first() != Some(&s.numel()) {
        return Err(shape_err(op, format!("scales {:?} for {:?}", s.shape(), x.shape())));
    }
    let period = x.numel() / s.numel().max(1);
    let p = Params { n: u32_of(op, x.numel())?, period: u32_of(op, period)?, alpha: 0.0, beta: 0.0 };
    map(dev, "scale_rows", p, x.shape(), x, Some(s))
}

/// A tensor of `shape` whose trailing elements repeat `v` (e.g. a mask token in every row).
pub fn broadcast(dev: &Device, v: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let op = "broadcast";
    if !shape.ends_with(v.shape()) || v.numel() == 0 {
        return Err(shape_err(op, format!("{:?} is not a suffix of {shape:?}", v.shape())));
    }
    let p = Params { n: u32_of(op, shape.iter().product())?, period: u32_of(op, v.numel())?, alpha: 0.0, beta: 0.0 };
    map(dev, "broadcast", p, shape, v, None)
}

pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
    Ok(filled(dev, shape, value)?.freeze())
}

/// A writable tensor of zeros (optimizer state, gradient scatter targets).
pub fn zeros(dev: &Device, shape: &[usize]) -> Result<TensorMut> {
    filled(dev, shape, 0.0)
}

/// Zero-filled f32 tensors of `shapes` side by side in one buffer, each
/// starting at an offset the adapter can bind, with zeros between them.
/// Each member is a writable tensor of its own; a multi-tensor kernel given
/// every member at once treats them as one span (see `optim::adamw_packed`).
pub fn packed_zeros(dev: &Device, shapes: &[Vec<usize>]) -> Result<Vec<TensorMut>> {
    // Twice the binding alignment, so the pack's f16 mirror (half the bytes,
    // `cast::to_f16_packed`) still starts every member at an aligned offset.
    let align = 2 * u64::from(dev.limits().min_storage_buffer_offset_alignment).max(16);
    let mut offsets = Vec::with_capacity(shapes.len());
    let mut end = 0u64;
    for shape in shapes {
        offsets.push(end);
        end = (end + shape.iter().product::<usize>() as u64 * 4).next_multiple_of(align);
    }
    // One-dispatch kernels bind the whole pack: it must fit one binding.
    let max_binding = dev.limits().max_storage_buffer_binding_size;
    if end > max_binding {
        let elements: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        return Err(Error::Limit(format!(
            "a pack of {} tensors ({elements} values, {} MiB: a model's parameters, gradients or optimizer moments) exceeds this adapter's {} MiB storage binding limit; use a smaller model or an adapter with a larger limit",
            shapes.len(),
            end >> 20,
            max_binding >> 20
        )));
    }
    Ok(zeros(dev, &[(end / 4) as usize])?.into_pack(shapes, &offsets))
}

fn filled(dev: &Device, shape: &[usize], value: f32) -> Result<TensorMut> {
    let out = TensorMut::uninit(dev, shape, DType::F32)?;
    let p = Params { n: u32_of("full", out.numel())?, period: 1, alpha: value, beta: 0.0 };
    run(dev, "fill", p, &[out.bind_mut(3)])?;
    Ok(out)
}

/// `acc += alpha·inc`, in place (gradient accumulation).
pub fn accumulate(dev: &Device, acc: &mut TensorMut, inc: &Tensor, alpha: f32) -> Result<()> {
    same_shape("accumulate", acc, inc)?;
    let p = Params { n: u32_of("accumulate", acc.numel())?, period: 1, alpha, beta: 0.0 };
    run(dev, "accumulate", p, &[inc.bind(2), acc.bind_mut(3)])
}
