//! Typed wrappers around the WGSL kernels: each checks shapes (an `Err` naming
//! both shapes, never a GPU validation failure) and records one or more dispatches.

pub mod attention;
pub mod batchnorm;
pub mod cast;
pub mod elementwise;
pub mod gather;
pub mod gelu;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod patch;
pub mod reduce;
pub mod scaler;
pub mod softmax;

use crate::device::reflect;
use crate::error::{Result, shape_err};
use crate::shaders::{self, Shader};
use crate::tensor::{DType, Tensor};

/// One pipeline the kernel wrappers may build: an entry point of a shader
/// with the override constants they pass it.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelVariant {
    pub shader: &'static Shader,
    pub entry: String,
    pub constants: Vec<(&'static str, f64)>,
}

/// Every pipeline the wrappers may build on some adapter: each entry point
/// of each shader with every combination of override constants its wrapper
/// passes (matmul: family, tile shape, transposes, vector loads, epilogue;
/// attention: head dim). Tests translate each for every backend.
pub fn catalog() -> Result<Vec<KernelVariant>> {
    let mut all = matmul::variants();
    all.extend(attention::variants()?);
    for &shader in shaders::ALL {
        if all.iter().any(|v| std::ptr::eq(v.shader, shader)) {
            continue;
        }
        for e in reflect(shader)? {
            all.push(KernelVariant { shader, entry: e.entry, constants: Vec::new() });
        }
    }
    Ok(all)
}

/// Upper bound on workgroups for grid-stride kernels: enough to fill any GPU,
/// few enough that CPU adapters do not pay per-workgroup overhead.
const MAX_GROUPS: usize = 16384;

/// Workgroups for a grid-stride loop over `n` items, one per invocation of a
/// one-dimensional `workgroup` (the size its `KernelSpec` declares).
pub(crate) fn grid(n: usize, workgroup: [u32; 3]) -> [u32; 3] {
    [n.div_ceil(workgroup[0] as usize).min(MAX_GROUPS) as u32, 1, 1]
}

pub(crate) fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape_err(op, format!("extent {v} exceeds u32 indexing")))
}

pub(crate) fn expect_f32(op: &'static str, name: &str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(shape_err(op, format!("{name} {:?} must be f32", t.shape())));
    }
    Ok(())
}

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(shape_err(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}

/// Splits `[.., d]` into (rows, d).
pub(crate) fn rows_cols(op: &'static str, t: &Tensor) -> Result<(usize, usize)> {
    let Some(&d) = t.shape().last() else {
        return Err(shape_err(op, "a scalar has no rows"));
    };
    Ok((t.numel().checked_div(d).unwrap_or(0), d))
}
