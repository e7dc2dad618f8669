//! Image patches (`shaders/patch.wgsl`).

use super::{grid, u32_of};
use crate::device::{Device, KernelSpec};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    chans: u32,
    grid: u32,
    psize: u32,
    order: u32,
    rows: u32,
    cols: u32,
    _pad: u32,
}

/// Element order inside one patch vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOrder {
    /// (channel, row, col): a conv weight `[D, C, p, p]` flattened.
    ChannelFirst,
    /// (row, col, channel): MAE's `patchify` and `decoder_pred` layout.
    ChannelLast,
}

/// `[B, C, H, W]` → `[B, (H/p)·(W/p), p·p·C]`.
pub fn patchify(dev: &Device, imgs: &Tensor, psize: usize, order: PatchOrder) -> Result<Tensor> {
    let op = "patchify";
    let [b, c, h, w] = imgs.shape() else {
        return Err(shape_err(op, format!("images {:?} must be [B, C, H, W]", imgs.shape())));
    };
    if h != w || psize == 0 || h % psize != 0 {
        return Err(shape_err(op, format!("images {:?} are not square multiples of patch {psize}", imgs.shape())));
    }
    let g = h / psize;
    let out = TensorMut::uninit(dev, &[*b, g * g, psize * psize * c], DType::F32)?;
    let p = Params {
        batch: u32_of(op, *b)?,
        chans: u32_of(op, *c)?,
        grid: u32_of(op, g)?,
        psize: u32_of(op, psize)?,
        order: u32::from(order == PatchOrder::ChannelLast),
        rows: 0,
        cols: 0,
        _pad: 0,
    };
    let spec = KernelSpec::new(&shaders::PATCH, "patchify", "patchify", 256);
    dev.dispatch(spec, &p, &[imgs.bind(1), out.bind_mut(2)], grid(out.numel(), spec.workgroup))?;
    Ok(out.freeze())
}

/// Normalises each patch (last axis) by its mean and unbiased variance, in place.
pub fn norm_pix_in_place(dev: &Device, patches: &mut TensorMut) -> Result<()> {
    let op = "norm_pix";
    let (rows, cols) = super::rows_cols(op, patches)?;
    let p = Params {
        batch: 0,
        chans: 0,
        grid: 0,
        psize: 0,
        order: 0,
        rows: u32_of(op, rows)?,
        cols: u32_of(op, cols)?,
        _pad: 0,
    };
    let spec = KernelSpec::new(&shaders::PATCH, "norm_pix", "norm_pix", 64);
    dev.dispatch(spec, &p, &[patches.bind_mut(2)], grid(rows, spec.workgroup))
}
