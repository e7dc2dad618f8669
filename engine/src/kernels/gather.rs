//! Per-sample row gather and scatter (`shaders/gather.wgsl`): the masking primitive.

use super::{expect_f32, grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    k: u32,
    d: u32,
    n_src: u32,
    n_out: u32,
    src_off: u32,
    out_off: u32,
    add: u32,
}

/// Every entry point handles one element per invocation, 256 per workgroup.
fn spec(entry: &'static str, label: &'static str) -> KernelSpec<'static> {
    KernelSpec::new(&shaders::GATHER, entry, label, 256)
}

fn dims3(op: &'static str, name: &str, t: &Tensor) -> Result<[usize; 3]> {
    match t.shape() {
        [b, n, d] => Ok([*b, *n, *d]),
        s => Err(shape_err(op, format!("{name} {s:?} must be [batch, rows, dim]"))),
    }
}

fn index_dims(op: &'static str, idx: &Tensor, batch: usize) -> Result<usize> {
    match idx.shape() {
        [b, k] if *b == batch && idx.dtype() == DType::U32 => Ok(*k),
        s => Err(shape_err(op, format!("indices {s:?} ({:?}) must be u32 [{batch}, keep]", idx.dtype()))),
    }
}

/// `out[b, out_off + k, :] = src[b, idx[b, k], :]` into an existing `out`.
/// Index values must be `< src rows`; the wrapper cannot see them, so the
/// masking code that builds them guarantees it.
pub fn gather_rows_into(dev: &Device, src: &Tensor, idx: &Tensor, out: &mut TensorMut, out_off: usize) -> Result<()> {
    let op = "gather_rows";
    expect_f32(op, "source", src)?;
    let [b, n, d] = dims3(op, "source", src)?;
    let k = index_dims(op, idx, b)?;
    let [ob, on, od] = dims3(op, "output", out)?;
    if ob != b || od != d || out_off + k > on {
        return Err(shape_err(
            op,
            format!("{k} rows from {:?} at row {out_off} of output {:?}", src.shape(), out.shape()),
        ));
    }
    let p = Params {
        batch: u32_of(op, b)?,
        k: u32_of(op, k)?,
        d: u32_of(op, d)?,
        n_src: u32_of(op, n)?,
        n_out: u32_of(op, on)?,
        src_off: 0,
        out_off: u32_of(op, out_off)?,
        add: 0,
    };
    let spec = spec("gather_rows", "gather_rows");
    dev.dispatch(spec, &p, &[src.bind(1), idx.bind(2), out.bind_mut(3)], grid(b * k * d, spec.workgroup))
}

/// `src[b, idx[b, k], :]` for every k: shape `[B, keep, D]`.
pub fn gather_rows(dev: &Device, src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let [b, _, d] = dims3("gather_rows", "source", src)?;
    let k = index_dims("gather_rows", idx, b)?;
    let mut out = TensorMut::uninit(dev, &[b, k, d], DType::F32)?;
    gather_rows_into(dev, src, idx, &mut out, 0)?;
    Ok(out.freeze())
}

/// `out[b, idx[b, k], :] (+)= src[b, src_off + k, :]` for k < keep, in place.
/// Indices must be distinct within a sample (masking indices are).
pub fn scatter_rows(
    dev: &Device,
    src: &Tensor,
    src_off: usize,
    idx: &Tensor,
    out: &mut TensorMut,
    add: bool,
) -> Result<()> {
    let op = if add { "scatter_add_rows" } else { "scatter_rows" };
    expect_f32(op, "source", src)?;
    let [b, n, d] = dims3(op, "source", src)?;
    let k = index_dims(op, idx, b)?;
    let [ob, on, od] = dims3(op, "output", out)?;
    if ob != b || od != d || src_off + k > n {
        return Err(shape_err(op, format!("{k} rows of {:?} from row {src_off} into {:?}", src.shape(), out.shape())));
    }
    let p = Params {
        batch: u32_of(op, b)?,
        k: u32_of(op, k)?,
        d: u32_of(op, d)?,
        n_src: u32_of(op, n)?,
        n_out: u32_of(op, on)?,
        src_off: u32_of(op, src_off)?,
        out_off: 0,
        add: u32::from(add),
    };
    let spec = spec("scatter_rows", op);
    dev.dispatch(spec, &p, &[src.bind(1), idx.bind(2), out.bind_mut(3)], grid(b * k * d, spec.workgroup))
}

/// The gather's backward: zeros `[B, rows, D]` with `dy[b, k]` added at `idx[b, k]`.
pub fn scatter_add_rows(dev: &Device, dy: &Tensor, idx: &Tensor, rows: usize) -> Result<Tensor> {
    let [b, _, d] = dims3("scatter_add_rows", "gradient", dy)?;
    let mut out = super::elementwise::zeros(dev, &[b, rows, d])?;
    scatter_rows(dev, dy, 0, idx, &mut out, true)?;
    Ok(out.freeze())
}

/// `out[b, out_off + k, :] = src[b, src_off + k, :]` for k < count, in place.
pub fn copy_rows(
    dev: &Device,
    src: &Tensor,
    src_off: usize,
    out: &mut TensorMut,
    out_off: usize,
    count: usize,
) -> Result<()> {
    let op = "copy_rows";
    expect_f32(op, "source", src)?;
    let [b, n, d] = dims3(op, "source", src)?;
    let [ob, on, od] = dims3(op, "output", out)?;
    if ob != b || od != d || src_off + count > n || out_off + count > on {
        return Err(shape_err(
            op,
            format!("{count} rows from row {src_off} of {:?} to row {out_off} of {:?}", src.shape(), out.shape()),
        ));
    }
    let p = Params {
        batch: u32_of(op, b)?,
        k: u32_of(op, count)?,
        d: u32_of(op, d)?,
        n_src: u32_of(op, n)?,
        n_out: u32_of(op, on)?,
        src_off: u32_of(op, src_off)?,
        out_off: u32_of(op, out_off)?,
        add: 0,
    };
    let spec = spec("copy_rows", op);
    dev.dispatch(spec, &p, &[src.bind(1), out.bind_mut(3)], grid(b * count * d, spec.workgroup))
}

/// Swaps the last two axes: `[.., r, c]` → `[.., c, r]` (a new contiguous tensor).
pub fn transpose(dev: &Device, x: &Tensor) -> Result<Tensor> {
    let op = "transpose";
    expect_f32(op, "input", x)?;
    let s = x.shape();
    if s.len() < 2 {
        return Err(shape_err(op, format!("{s:?} has fewer than two axes")));
    }
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    let batch = x.numel() / (r * c).max(1);
    let mut shape = s.to_vec();
    let n = shape.len();
    shape.swap(n - 2, n - 1);
    let out = TensorMut::uninit(dev, &shape, DType::F32)?;
    let p = Params {
        batch: u32_of(op, batch)?,
        k: u32_of(op, r)?,
        d: u32_of(op, c)?,
        n_src: 0,
        n_out: 0,
        src_off: 0,
        out_off: 0,
        add: 0,
    };
    let spec = spec("transpose", op);
    dev.dispatch(spec, &p, &[x.bind(1), out.bind_mut(3)], grid(x.numel(), spec.workgroup))?;
    Ok(out.freeze())
}
