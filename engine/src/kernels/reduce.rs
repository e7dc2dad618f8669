//! Fixed-order reductions (`shaders/reduce.wgsl`).

use super::{grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    offset: u32,
    weighted: u32,
    accumulate: u32,
    _pad: [u32; 2],
}

/// Column units (a vec4 or one column) per `sum_rows` workgroup.
const UNITS_PER_GROUP: usize = 16;

/// Rows `r` of a strided view of `x`: element `(r, j)` at `offset + r·stride + j`.
#[derive(Debug, Clone, Copy)]
pub struct RowView<'a> {
    pub t: &'a Tensor,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub offset: usize,
}

impl<'a> RowView<'a> {
    /// All rows of a tensor viewed as `[numel / cols, cols]`.
    pub fn of(t: &'a Tensor, cols: usize) -> Self {
        Self { t, rows: t.numel() / cols.max(1), cols, stride: cols, offset: 0 }
    }
}

/// `out[j] = Σ_r w_r · x(r, j)` (w = 1 when `weights` is None), shape `[cols]`.
pub fn sum_rows(dev: &Device, x: RowView<'_>, weights: Option<&Tensor>) -> Result<Tensor> {
    check(x, weights)?;
    if x.rows == 0 {
        return super::elementwise::full(dev, &[x.cols], 0.0);
    }
    let out = TensorMut::uninit(dev, &[x.cols], DType::F32)?;
    sum_into(dev, x, weights, &out, false)?;
    Ok(out.freeze())
}

/// `acc[j] += Σ_r w_r · x(r, j)` in place, for an `acc` of `cols` elements
/// (a bias gradient accumulated where it lives).
pub fn sum_rows_accumulate(dev: &Device, x: RowView<'_>, weights: Option<&Tensor>, acc: &mut TensorMut) -> Result<()> {
    check(x, weights)?;
    if acc.numel() != x.cols {
        return Err(shape_err("sum_rows", format!("an accumulator {:?} for {} columns", acc.shape(), x.cols)));
    }
    if x.rows == 0 {
        return Ok(());
    }
    sum_into(dev, x, weights, acc, true)
}

fn check(x: RowView<'_>, weights: Option<&Tensor>) -> Result<()> {
    let op = "sum_rows";
    if x.rows > 0 && x.offset + (x.rows - 1) * x.stride + x.cols > x.t.numel() {
        return Err(shape_err(
            op,
            format!("{} rows of {} (stride {}) exceed {:?}", x.rows, x.cols, x.stride, x.t.shape()),
        ));
    }
    if let Some(w) = weights
        && w.numel() != x.rows
    {
        return Err(shape_err(op, format!("{} row weights for {} rows", w.numel(), x.rows)));
    }
    Ok(())
}

/// Sums `x`'s rows (at least one) into `out`, in one dispatch.
fn sum_into(dev: &Device, x: RowView<'_>, weights: Option<&Tensor>, out: &TensorMut, accumulate: bool) -> Result<()> {
    let op = "sum_rows";
    let p = Params {
        rows: u32_of(op, x.rows)?,
        cols: u32_of(op, x.cols)?,
        stride: u32_of(op, x.stride)?,
        offset: u32_of(op, x.offset)?,
        weighted: u32::from(weights.is_some()),
        accumulate: u32::from(accumulate),
        _pad: [0; 2],
    };
    let vec = [x.cols, x.stride, x.offset].iter().all(|v| v.is_multiple_of(4));
    let units = if vec { x.cols / 4 } else { x.cols };
    let spec = KernelSpec::new(&shaders::REDUCE, "sum_rows", "sum_rows", 256);
    let bindings = [x.t.bind(1), weights.unwrap_or(x.t).bind(2), out.bind_mut(3)];
    dev.dispatch(spec, &p, &bindings, grid(units.div_ceil(UNITS_PER_GROUP), [1, 1, 1]))
}

/// `out[s] = Σ_i w[s, i] · x[i]` for weights `[S, n]` and `x` of n elements.
pub fn weighted_sums(dev: &Device, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let op = "weighted_sums";
    let n = x.numel();
    let [s, wn] = w.shape() else {
        return Err(shape_err(op, format!("weights {:?} must be [sums, n]", w.shape())));
    };
    if *wn != n {
        return Err(shape_err(op, format!("weights {:?} for {n} values {:?}", w.shape(), x.shape())));
    }
    let out = TensorMut::uninit(dev, &[*s], DType::F32)?;
    let p = Params {
        rows: u32_of(op, n)?,
        cols: u32_of(op, *s)?,
        stride: 0,
        offset: 0,
        weighted: 1,
        accumulate: 0,
        _pad: [0; 2],
    };
    // One workgroup per sum: its invocations stride over the n values.
    let spec = KernelSpec::new(&shaders::REDUCE, "weighted_sums", "weighted_sums", 256);
    dev.dispatch(spec, &p, &[x.bind(1), w.bind(2), out.bind_mut(3)], [u32_of(op, *s)?, 1, 1])?;
    Ok(out.freeze())
}
