//! Batched matmul with transposed-operand variants and an optional fused bias.
//! Kernels: `shaders/matmul_register.wgsl` and `shaders/matmul_subgroup.wgsl` (CPU adapters),
//! `shaders/matmul_tiled.wgsl` (GPUs).

use super::KernelVariant;
use crate::device::{Binding, Device, KernelSpec, MatmulKind};
use crate::error::{Result, shape_err};
use crate::shaders::Shader;
use crate::tensor::{DType, Tensor, TensorMut};
use crate::tune::Variant;

/// A strided matrix inside a tensor: batch `z = outer·heads + inner` starts at
/// `off + outer·b0 + inner·b1`, rows are `row` elements apart. This addresses
/// one head of a `[B, T, 3D]` qkv tensor without copying it.
/// The output view is `MatView<TensorMut>`: a matmul writes only a mutable tensor.
#[derive(Debug)]
pub struct MatView<'a, T = Tensor> {
    pub t: &'a T,
    pub off: usize,
    pub row: usize,
    pub b0: usize,
    pub b1: usize,
}

impl<T> Clone for MatView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for MatView<'_, T> {}

impl<'a, T> MatView<'a, T> {
    /// A contiguous `[rows, row]` matrix per batch, batches one after another.
    pub fn contiguous(t: &'a T, row: usize, batch_stride: usize) -> Self {
        Self { t, off: 0, row, b0: batch_stride, b1: 0 }
    }
}

/// One matmul: `C = alpha·op(A)·op(B) (+ bias) (+ beta·C)`, shapes `[m, k]·[k, n]` per batch.
#[derive(Debug, Clone, Copy)]
pub struct Matmul<'a> {
    pub a: MatView<'a>,
    pub b: MatView<'a>,
    pub c: MatView<'a, TensorMut>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Batch count is `outer·heads`.
    pub outer: usize,
    pub heads: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    /// Adds `beta·C` (accumulates into C in place); 0 overwrites C unread.
    pub beta: f32,
    pub bias: Option<&'a Tensor>,
    /// Also computes `Σ_k op(A)[i, k]` for every row i in the same dispatch
    /// (one unbatched product only, without a bias): the bias gradient beside
    /// a linear layer's dW = dYᵀ·X.
    pub row_sums: Option<RowSums<'a>>,
    /// What is done with each result before it is stored.
    pub epilogue: Epilogue<'a>,
    /// Profile label; None names it by its transposes (`matmul_nt`, …).
    pub label: Option<&'static str>,
}

/// A matmul's epilogue: an elementwise step fused into the store, so it
/// costs no dispatch and no pass over memory of its own. Its tensors are laid
/// out like C (the same index for the same element).
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// C keeps the result h and `activated` gets gelu(h): an MLP's fc1.
    Gelu {
        activated: &'a TensorMut,
    },
    /// C = result + input: a residual connection.
    AddInput(&'a Tensor),
    /// C = result · gelu'(pre): fc2's dX through GELU, at fc1's pre-activation.
    GeluGrad(&'a Tensor),
}

/// Where [`Matmul::row_sums`] go.
#[derive(Debug, Clone, Copy)]
pub struct RowSums<'a> {
    pub out: &'a TensorMut,
    /// Added to what `out` holds (a gradient accumulated in place).
    pub accumulate: bool,
}

/// `flags` bits of the shaders' parameters (matmul_params.wgsl).
const ADD_BIAS: u32 = 1;
const ACCUMULATE_ROW_SUMS: u32 = 2;
const INPUT_GELU_GRAD: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    heads: u32,
    a: [u32; 4],
    b: [u32; 4],
    c: [u32; 4],
    alpha: f32,
    flags: u32,
    beta: f32,
    batches: u32,
}

/// Largest flat index a view touches, or None for an empty matrix.
fn last_index<T>(v: &MatView<'_, T>, rows: usize, cols: usize, outer: usize, heads: usize) -> Option<usize> {
    if rows == 0 || cols == 0 || outer == 0 || heads == 0 {
        return None;
    }
    Some(v.off + (outer - 1) * v.b0 + (heads - 1) * v.b1 + (rows - 1) * v.row + cols - 1)
}

/// Element types of A and B (both alike), and of C and the epilogue tensors
/// (all alike): f32 and f32, f16 and f32, or f16 and f16, the pairs
/// [`MatmulKind::shader`] has a module for (checked in `run`).
const OPERAND_TYPES: &[DType] = &[DType::F32, DType::F16];
const RESULT_TYPES: &[DType] = &[DType::F32, DType::F16];

fn check_view<T: AsRef<Tensor>>(
    op: &'static str,
    (name, dtypes): (&str, &[DType]),
    v: &MatView<'_, T>,
    rows: usize,
    cols: usize,
    mm: &Matmul<'_>,
) -> Result<()> {
    let t = v.t.as_ref();
    if !dtypes.contains(&t.dtype()) {
        return Err(shape_err(op, format!("{name} must be one of {dtypes:?}, got {:?}", t.dtype())));
    }
    if let Some(last) = last_index(v, rows, cols, mm.outer, mm.heads)
        && last >= t.numel()
    {
        return Err(shape_err(
            op,
            format!(
                "{name} as {} batches of [{rows}, {cols}] (row stride {}) does not fit in tensor {:?}",
                mm.outer * mm.heads,
                v.row,
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn aligned(vals: &[usize]) -> bool {
    vals.iter().all(|v| v % 4 == 0)
}

impl Matmul<'_> {
    /// Checks shapes and records the dispatch.
    pub fn run(&self, dev: &Device) -> Result<()> {
        let op = "matmul";
        // Stored extents of A and B ([rows, cols] as laid out in memory).
        let (a_rows, a_cols) = if self.trans_a { (self.k, self.m) } else { (self.m, self.k) };
        let (b_rows, b_cols) = if self.trans_b { (self.n, self.k) } else { (self.k, self.n) };
        check_view(op, ("A", OPERAND_TYPES), &self.a, a_rows, a_cols, self)?;
        check_view(op, ("B", OPERAND_TYPES), &self.b, b_rows, b_cols, self)?;
        if self.a.t.dtype() != self.b.t.dtype() {
            let (a, b) = (self.a.t.dtype(), self.b.t.dtype());
            return Err(shape_err(op, format!("A is {a:?} but B is {b:?}: cast both to one precision")));
        }
        check_view(op, ("C", RESULT_TYPES), &self.c, self.m, self.n, self)?;
        let result_type = self.c.t.dtype();
        if MatmulKind::Register.shader((self.a.t.dtype(), result_type)).is_none() {
            return Err(shape_err(
                op,
                format!("{result_type:?} results need {result_type:?} operands, not {:?}", self.a.t.dtype()),
            ));
        }
        if self.a.row < a_cols || self.b.row < b_cols || self.c.row < self.n {
            return Err(shape_err(op, "a row stride is smaller than the row it holds"));
        }
        if let Some(bias) = self.bias
            && bias.numel() != self.n
        {
            return Err(shape_err(op, format!("bias {:?} for an output of {} columns", bias.shape(), self.n)));
        }
        match self.epilogue {
            Epilogue::None => {}
            Epilogue::Gelu { activated } => check_view(
                op,
                ("activation", &[result_type]),
                &MatView { t: activated, ..self.c },
                self.m,
                self.n,
                self,
            )?,
            Epilogue::AddInput(t) | Epilogue::GeluGrad(t) => {
                let c = self.c;
                let view = MatView { t, off: c.off, row: c.row, b0: c.b0, b1: c.b1 };
                check_view(op, ("epilogue input", &[result_type]), &view, self.m, self.n, self)?
            }
        }
        if let Some(sums) = self.row_sums {
            if self.outer * self.heads != 1 || self.bias.is_some() || !matches!(self.epilogue, Epilogue::None) {
                return Err(shape_err(op, "row sums come with one unbatched product without a bias or epilogue"));
            }
            if sums.out.numel() != self.m {
                return Err(shape_err(op, format!("row sums {:?} for {} rows", sums.out.shape(), self.m)));
            }
        }
        if self.m == 0 || self.n == 0 && self.row_sums.is_none() || self.outer * self.heads == 0 {
            return Ok(());
        }
        dev.count_matmul_flops(2 * (self.m * self.n * self.k * self.outer * self.heads) as u64);
        let to_u32 = |v: usize| -> Result<u32> {
            u32::try_from(v).map_err(|_| shape_err(op, format!("extent {v} exceeds u32 indexing")))
        };
        for t in [self.a.t, self.b.t, self.c.t.as_tensor()] {
            to_u32(t.numel())?;
        }
        let view = |[off, row, b0, b1]: [usize; 4]| -> Result<[u32; 4]> {
            Ok([to_u32(off)?, to_u32(row)?, to_u32(b0)?, to_u32(b1)?])
        };
        let params = MatmulParams {
            m: to_u32(self.m)?,
            n: to_u32(self.n)?,
            k: to_u32(self.k)?,
            heads: to_u32(self.heads)?,
            a: view([self.a.off, self.a.row, self.a.b0, self.a.b1])?,
            b: view([self.b.off, self.b.row, self.b.b0, self.b.b1])?,
            c: view([self.c.off, self.c.row, self.c.b0, self.c.b1])?,
            alpha: self.alpha,
            flags: if self.bias.is_some() { ADD_BIAS } else { 0 }
                | if self.row_sums.is_some_and(|s| s.accumulate) { ACCUMULATE_ROW_SUMS } else { 0 }
                | if matches!(self.epilogue, Epilogue::GeluGrad(_)) { INPUT_GELU_GRAD } else { 0 },
            beta: self.beta,
            batches: to_u32(self.outer * self.heads)?,
        };
        let label = self.label.unwrap_or(label(self.trans_a, self.trans_b));
        match crate::tune::matmul::family(dev, self)? {
            MatmulKind::Register => self.run_register(dev, &params, (a_cols, b_cols), label, false),
            MatmulKind::Subgroup => self.run_register(dev, &params, (a_cols, b_cols), label, true),
            kind @ MatmulKind::Tiled(shape) => {
                let (shader, entry, constants) = self.pipeline(kind, None)?;
                let spec = KernelSpec { shader, entry, constants: &constants, label, workgroup: [16, 16, 1] };
                // Row sums take one more z-slice of workgroups.
                let [tile_rows, tile_cols] = shape.tile();
                let slices = params.batches + u32::from(self.row_sums.is_some());
                let groups = [params.n.div_ceil(tile_cols).max(1), params.m.div_ceil(tile_rows), slices];
                dev.dispatch(spec, &params, &self.bindings(), groups)
            }
        }
    }

    /// What `kind` runs this product with: the module for the operands' and
    /// results' precision (a pair `run` has checked), the entry point for the
    /// epilogue, and the override constants ([`variants`] lists every
    /// combination).
    fn pipeline(&self, kind: MatmulKind, vec: Option<bool>) -> Result<(&'static Shader, &'static str, Constants)> {
        let types = (self.a.t.dtype(), self.c.t.dtype());
        let shader = kind.shader(types).ok_or_else(|| shape_err("matmul", format!("no module for {types:?}")))?;
        Ok((shader, self.entry(), constants(kind, (self.trans_a, self.trans_b), vec)))
    }

    /// The entry point (both input epilogues are `main_input`, told apart by a flag).
    fn entry(&self) -> &'static str {
        match (self.row_sums, self.epilogue) {
            (Some(_), _) => "main_row_sums",
            (None, Epilogue::None) => "main",
            (None, Epilogue::Gelu { .. }) => "main_gelu",
            (None, Epilogue::AddInput(_) | Epilogue::GeluGrad(_)) => "main_input",
        }
    }

    fn bindings(&self) -> Vec<Binding<'_>> {
        let mut b =
            vec![self.a.t.bind(1), self.b.t.bind(2), self.bias.unwrap_or(self.b.t).bind(3), self.c.t.bind_mut(4)];
        b.extend(self.row_sums.map(|s| s.out.bind_mut(5)));
        match self.epilogue {
            Epilogue::None => {}
            Epilogue::Gelu { activated } => b.push(activated.bind_mut(7)),
            Epilogue::AddInput(t) | Epilogue::GeluGrad(t) => b.push(t.bind(6)),
        }
        b
    }

    fn run_register(
        &self,
        dev: &Device,
        params: &MatmulParams,
        (a_cols, b_cols): (usize, usize),
        label: &'static str,
        subgroup: bool,
    ) -> Result<()> {
        let vec_ok = aligned(&[self.a.off, self.a.row, self.a.b0, self.a.b1, a_cols])
            && aligned(&[self.b.off, self.b.row, self.b.b0, self.b.b1, b_cols]);
        let kind = if subgroup { MatmulKind::Subgroup } else { MatmulKind::Register };
        let (shader, entry, constants) = self.pipeline(kind, Some(vec_ok))?;
        let spec = KernelSpec { shader, entry, constants: &constants, label, workgroup: [64, 1, 1] };
        // Each invocation computes an 8×16 block of C; the subgroup kernel
        // rounds row blocks up to whole 8-lane subgroups. Row sums take 4
        // rows per invocation past the blocks' whole workgroups.
        let blocks_m = if subgroup { params.m.div_ceil(8).next_multiple_of(8) } else { params.m.div_ceil(8) };
        let blocks = u64::from(blocks_m) * u64::from(params.n.div_ceil(16)) * u64::from(params.batches);
        let invocations = match self.row_sums {
            Some(_) => blocks.next_multiple_of(64) + u64::from(params.m.div_ceil(4)),
            None => blocks,
        };
        dev.dispatch(
            spec,
            params,
            &self.bindings(),
            flat_groups(dev, invocations.div_ceil(u64::from(spec.workgroup[0]))),
        )
    }
}

/// A pipeline's override constants by name.
type Constants = Vec<(&'static str, f64)>;

/// A pipeline's override constants: the transposes, the register kernels'
/// `VEC` (vector loads), and the tile shape.
fn constants(kind: MatmulKind, (trans_a, trans_b): (bool, bool), vec: Option<bool>) -> Constants {
    let flag = |b: bool| f64::from(u8::from(b));
    let mut c = vec![("TRANS_A", flag(trans_a)), ("TRANS_B", flag(trans_b))];
    c.extend(vec.map(|v| ("VEC", flag(v))));
    if let MatmulKind::Tiled(shape) = kind {
        c.extend([
            ("TM", f64::from(shape.tm)),
            ("TN", f64::from(shape.tn)),
            ("BK", f64::from(shape.bk)),
            ("DOUBLE", flag(shape.double)),
        ]);
    }
    c
}

/// Every pipeline [`Matmul::run`] may build.
pub(crate) fn variants() -> Vec<KernelVariant> {
    let entries = ["main", "main_row_sums", "main_gelu", "main_input"];
    let mut all = Vec::new();
    let precisions = [(DType::F32, DType::F32), (DType::F16, DType::F32), (DType::F16, DType::F16)];
    for (kind, types) in MatmulKind::ALL.iter().flat_map(|&k| precisions.map(|p| (k, p))) {
        let shader = kind.shader(types).expect("every listed pair has a module");
        let vecs = match kind {
            MatmulKind::Register | MatmulKind::Subgroup => vec![Some(false), Some(true)],
            MatmulKind::Tiled(_) => vec![None],
        };
        for trans in [(false, false), (false, true), (true, false), (true, true)] {
            for entry in entries {
                for &vec in &vecs {
                    let constants = constants(kind, trans, vec);
                    all.push(KernelVariant { shader, entry: entry.into(), constants });
                }
            }
        }
    }
    all
}

/// Workgroups for a flat block count, spilling into y past the per-dimension limit.
fn flat_groups(dev: &Device, groups: u64) -> [u32; 3] {
    let max = u64::from(dev.limits().max_compute_workgroups_per_dimension);
    let (x, y) = if groups <= max { (groups, 1) } else { (max, groups.div_ceil(max)) };
    [x as u32, y as u32, 1]
}

fn label(trans_a: bool, trans_b: bool) -> &'static str {
    match (trans_a, trans_b) {
        (false, false) => "matmul_nn",
        (false, true) => "matmul_nt",
        (true, false) => "matmul_tn",
        (true, true) => "matmul_tt",
    }
}

/// `op(a)·op(b)` for 2-D tensors, or batched 3-D tensors `[batch, ·, ·]`.
pub fn matmul(dev: &Device, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    matmul_to(dev, a, b, trans_a, trans_b, DType::F32)
}

/// [`matmul`] with the result stored as `result` (f16 for f16 operands
/// whose product only an f16 reader consumes).
pub fn matmul_to(dev: &Device, a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool, result: DType) -> Result<Tensor> {
    let shape = product_shape(a, b, trans_a, trans_b)?;
    let c = TensorMut::uninit(dev, &shape, result)?;
    product(a, b, trans_a, trans_b, &c, 0.0).run(dev)?;
    Ok(c.freeze())
}

/// `acc += op(a)·op(b)` in place, for any `acc` of the product's size (a
/// parameter's gradient accumulated where it lives, whatever its shape).
pub fn matmul_accumulate(
    dev: &Device,
    a: &Tensor,
    b: &Tensor,
    trans_a: bool,
    trans_b: bool,
    acc: &mut TensorMut,
) -> Result<()> {
    let shape = product_shape(a, b, trans_a, trans_b)?;
    check_accumulator(acc, &shape)?;
    product(a, b, trans_a, trans_b, acc, 1.0).run(dev)
}

/// A linear layer's parameter gradients from its output gradient `dy`
/// `[rows, out]` and input `x` `[rows, in]`: dW = dYᵀ·X and, when `db_into`
/// is given or `want_db`, db = Σ_rows dY, both in one dispatch. Each is added
/// into its `*_into` tensor when one is given (a packed parameter gradient),
/// else returned new.
pub fn linear_weight_grads(
    dev: &Device,
    dy: &Tensor,
    x: &Tensor,
    dw_into: Option<&mut TensorMut>,
    db_into: Option<&mut TensorMut>,
    want_db: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let shape = product_shape(dy, x, true, false)?;
    let mut new_dw = None;
    let (dw, beta): (&TensorMut, f32) = match dw_into {
        Some(acc) => (acc, 1.0),
        None => (new_dw.insert(TensorMut::uninit(dev, &shape, DType::F32)?), 0.0),
    };
    check_accumulator(dw, &shape)?;
    let mut new_db = None;
    let row_sums = match db_into {
        Some(acc) => Some(RowSums { out: acc, accumulate: true }),
        None if want_db => {
            Some(RowSums { out: new_db.insert(TensorMut::uninit(dev, &[shape[0]], DType::F32)?), accumulate: false })
        }
        None => None,
    };
    Matmul { row_sums, ..product(dy, x, true, false, dw, beta) }.run(dev)?;
    Ok((new_dw.map(TensorMut::freeze), new_db.map(TensorMut::freeze)))
}

/// An accumulator takes a product of its element count, whatever its shape.
fn check_accumulator(acc: &TensorMut, product: &[usize]) -> Result<()> {
    if acc.numel() != product.iter().product::<usize>() {
        return Err(shape_err("matmul", format!("an accumulator {:?} for a product {product:?}", acc.shape())));
    }
    Ok(())
}

/// The shape of `op(a)·op(b)`, or a shape error.
fn product_shape(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Vec<usize>> {
    let op = "matmul";
    let (batch, a2, b2) = match (a.shape(), b.shape()) {
        ([r, c], [r2, c2]) => (1, [*r, *c], [*r2, *c2]),
        ([n, r, c], [n2, r2, c2]) if n == n2 => (*n, [*r, *c], [*r2, *c2]),
        (sa, sb) => {
            return Err(shape_err(op, format!("A {sa:?} and B {sb:?} must both be 2-D or 3-D with the same batch")));
        }
    };
    let (m, ka) = if trans_a { (a2[1], a2[0]) } else { (a2[0], a2[1]) };
    let (kb, n) = if trans_b { (b2[1], b2[0]) } else { (b2[0], b2[1]) };
    if ka != kb {
        return Err(shape_err(
            op,
            format!(
                "A {:?}{} and B {:?}{} disagree on the inner size ({ka} vs {kb})",
                a.shape(),
                t(trans_a),
                b.shape(),
                t(trans_b)
            ),
        ));
    }
    Ok(if a.shape().len() == 3 { vec![batch, m, n] } else { vec![m, n] })
}

/// The product of two contiguous operands (shapes already checked) into `c`.
fn product<'a>(a: &'a Tensor, b: &'a Tensor, trans_a: bool, trans_b: bool, c: &'a TensorMut, beta: f32) -> Matmul<'a> {
    let [a_rows, a_cols] = last2(a);
    let [b_rows, b_cols] = last2(b);
    let (m, k) = if trans_a { (a_cols, a_rows) } else { (a_rows, a_cols) };
    let n = if trans_b { b_rows } else { b_cols };
    let batch = if a.shape().len() == 3 { a.shape()[0] } else { 1 };
    Matmul {
        a: MatView::contiguous(a, a_cols, a_rows * a_cols),
        b: MatView::contiguous(b, b_cols, b_rows * b_cols),
        c: MatView::contiguous(c, n, m * n),
        m,
        n,
        k,
        outer: batch,
        heads: 1,
        trans_a,
        trans_b,
        alpha: 1.0,
        beta,
        bias: None,
        row_sums: None,
        epilogue: Epilogue::None,
        label: None,
    }
}

fn last2(t: &Tensor) -> [usize; 2] {
    let s = t.shape();
    [s[s.len() - 2], s[s.len() - 1]]
}

fn t(trans: bool) -> &'static str {
    if trans { "ᵀ" } else { "" }
}

/// `x·Wᵀ + b` over the last axis: x `[.., k]`, W `[n, k]` (PyTorch layout), b `[n]`.
pub fn linear(dev: &Device, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_to(dev, x, w, b, DType::F32)
}

/// [`linear`] with the output stored as `result` (see [`matmul_to`]).
pub fn linear_to(dev: &Device, x: &Tensor, w: &Tensor, b: Option<&Tensor>, result: DType) -> Result<Tensor> {
    let y = linear_output(dev, x, w, result)?;
    linear_into(dev, x, w, b, &y, Epilogue::None)?;
    Ok(y.freeze())
}

/// `x·Wᵀ + b + residual` in one dispatch (a residual connection after a projection).
pub fn linear_add(dev: &Device, x: &Tensor, w: &Tensor, b: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    let y = linear_output(dev, x, w, DType::F32)?;
    if residual.shape() != y.shape() {
        return Err(shape_err("linear", format!("residual {:?} for an output {:?}", residual.shape(), y.shape())));
    }
    linear_into(dev, x, w, b, &y, Epilogue::AddInput(residual))?;
    Ok(y.freeze())
}

/// `(h, gelu(h))` for `h = x·Wᵀ + b`, in one dispatch: an MLP's fc1, with the
/// pre-activation its backward needs. Both are stored as `result` (f16
/// under mixed precision: fc2 reads gelu(h) as an f16 operand).
pub fn linear_gelu(
    dev: &Device,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    result: DType,
) -> Result<(Tensor, Tensor)> {
    let h = linear_output(dev, x, w, result)?;
    let g = TensorMut::uninit(dev, h.shape(), result)?;
    linear_into(dev, x, w, b, &h, Epilogue::Gelu { activated: &g })?;
    Ok((h.freeze(), g.freeze()))
}

/// `(dy·W) ⊙ gelu'(pre)` in one dispatch: the gradient at an MLP's fc1
/// pre-activation `pre` `[.., k]` from fc2's output gradient `dy` `[.., n]`
/// and weight W `[n, k]`, stored like `pre` (f16 under mixed precision,
/// where it feeds fc1's f16 gradient products).
pub fn matmul_gelu_grad(dev: &Device, dy: &Tensor, w: &Tensor, pre: &Tensor) -> Result<Tensor> {
    let op = "matmul_gelu_grad";
    let [n, k] = w.shape() else {
        return Err(shape_err(op, format!("weight {:?} must be 2-D [out, in]", w.shape())));
    };
    let rows = dy.numel() / (*n).max(1);
    if dy.dim(-1)? != *n || pre.numel() != rows * k {
        return Err(shape_err(
            op,
            format!("gradient {:?}, weight {:?}, pre-activation {:?}", dy.shape(), w.shape(), pre.shape()),
        ));
    }
    let dh = TensorMut::uninit(dev, pre.shape(), pre.dtype())?;
    Matmul {
        epilogue: Epilogue::GeluGrad(pre),
        label: Some("matmul_nn_gelu_grad"),
        ..product(&dy.reshape(&[rows, *n])?, w, false, false, &dh, 0.0)
    }
    .run(dev)?;
    Ok(dh.freeze())
}

/// The uninitialised output `[.., n]` of `x·Wᵀ`, after checking the shapes.
fn linear_output(dev: &Device, x: &Tensor, w: &Tensor, result: DType) -> Result<TensorMut> {
    let op = "linear";
    let k = x.dim(-1)?;
    let [n, wk] = w.shape() else {
        return Err(shape_err(op, format!("weight {:?} must be 2-D [out, in]", w.shape())));
    };
    if *wk != k {
        return Err(shape_err(op, format!("input {:?} does not match weight {:?} (in = {wk})", x.shape(), w.shape())));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has an axis") = *n;
    TensorMut::uninit(dev, &shape, result)
}

fn linear_into(
    dev: &Device,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &TensorMut,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    let (k, n) = (x.dim(-1)?, w.dim(0)?);
    let label = match epilogue {
        Epilogue::Gelu { .. } => Some("matmul_nt_gelu"),
        Epilogue::AddInput(_) => Some("matmul_nt_add"),
        Epilogue::None | Epilogue::GeluGrad(_) => None,
    };
    Matmul {
        a: MatView::contiguous(x, k, 0),
        b: MatView::contiguous(w, k, 0),
        c: MatView::contiguous(y, n, 0),
        m: x.numel() / k.max(1),
        n,
        k,
        outer: 1,
        heads: 1,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
        bias: b,
        row_sums: None,
        epilogue,
        label,
    }
    .run(dev)
}
