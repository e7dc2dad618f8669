//! The matmul family decision: which [`MatmulKind`] runs a product.
//!
//! Class: both transposes plus m, n, k and the batch count bucketed to powers
//! of two. Problem: contiguous operands of the first shape met, its batch
//! (then rows) halved until the operands fit [`MAX_PROBLEM_BYTES`].

use super::{Problem, Variant, bucket};
use crate::device::{Device, MatmulKind, TileShape, lock};
use crate::error::Result;
use crate::kernels::matmul::{Epilogue, MatView, Matmul};
use crate::tensor::{DType, Tensor, TensorMut};

/// Operand bytes of a representative problem: a step's memory is not
/// doubled to time one product, and a shrunken problem still fills a GPU.
const MAX_PROBLEM_BYTES: usize = 64 << 20;

/// `tiled-` and each of [`TileShape::ALL`]'s names, in its order.
const TILED_NAMES: [&str; 6] = [
    "tiled-64x64k16",
    "tiled-64x64k32",
    "tiled-64x64k16db",
    "tiled-128x64k16",
    "tiled-128x128k16",
    "tiled-128x128k8db",
];

impl Variant for MatmulKind {
    const DECISION: &'static str = "matmul";
    const ALL: &'static [Self] = &[
        MatmulKind::Register,
        MatmulKind::Subgroup,
        MatmulKind::Tiled(TileShape::ALL[0]),
        MatmulKind::Tiled(TileShape::ALL[1]),
        MatmulKind::Tiled(TileShape::ALL[2]),
        MatmulKind::Tiled(TileShape::ALL[3]),
        MatmulKind::Tiled(TileShape::ALL[4]),
        MatmulKind::Tiled(TileShape::ALL[5]),
    ];

    fn name(self) -> &'static str {
        MatmulKind::name(self)
    }
}

impl MatmulKind {
    /// `register`, `subgroup` or `tiled-` and the tile shape: the name in
    /// the tune cache, `cmae tune`'s table and `cmae info`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKind::Register => "register",
            MatmulKind::Subgroup => "subgroup",
            MatmulKind::Tiled(shape) => {
                TileShape::ALL.iter().position(|s| *s == shape).map_or("tiled-other", |i| TILED_NAMES[i])
            }
        }
    }
}

/// The family for `mm`: forced (`CMAE_MATMUL`, [`Device::set_matmul_kind`]),
/// else tuned among the families that can run it, else the heuristic's.
pub(crate) fn family(dev: &Device, mm: &Matmul<'_>) -> Result<MatmulKind> {
    let ctx = dev.ctx();
    if let Some(kind) = *lock(&ctx.matmul_forced) {
        return Ok(kind);
    }
    let z = mm.outer * mm.heads;
    let operands = mm.a.t.dtype();
    let shape = Shape { m: mm.m, n: mm.n, k: mm.k, z, ta: mm.trans_a, tb: mm.trans_b, operands };
    let max_groups = dev.limits().max_compute_workgroups_per_dimension as usize;
    let mut valid = ctx.families.matmul_kinds();
    valid.retain(|&kind| match kind {
        MatmulKind::Tiled(tile) => shape.tiled_grid_fits(tile, max_groups),
        MatmulKind::Register | MatmulKind::Subgroup => true,
    });
    dev.select(|| shape.class(), &valid, |s| MatmulProblem::new(s, shape.shrunk()))
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    /// Batch count (outer · heads).
    z: usize,
    ta: bool,
    tb: bool,
    /// How A and B are stored (f16 operands are another class).
    operands: DType,
}

impl Shape {
    fn class(&self) -> String {
        let t = |trans| if trans { 't' } else { 'n' };
        let [m, n, k, z] = [self.m, self.n, self.k, self.z].map(bucket);
        let f16 = if self.operands == DType::F16 { " f16" } else { "" };
        format!("{}{} m{m} n{n} k{k} z{z}{f16}", t(self.ta), t(self.tb))
    }

    /// `Matmul::run`'s tiled grid, `[n/cols, m/rows, batches]` workgroups.
    fn tiled_grid_fits(&self, tile: TileShape, max_groups: usize) -> bool {
        let [rows, cols] = tile.tile().map(|t| t as usize);
        self.n.div_ceil(cols) <= max_groups && self.m.div_ceil(rows) <= max_groups && self.z <= max_groups
    }

    fn bytes(&self) -> usize {
        let operand = self.operands.size();
        self.z * (operand * (self.m * self.k + self.k * self.n) + 4 * self.m * self.n)
    }

    /// Halves the batch, then the rows, until the operands fit the cap.
    fn shrunk(mut self) -> Self {
        while self.bytes() > MAX_PROBLEM_BYTES && self.z > 1 {
            self.z = self.z.div_ceil(2);
        }
        while self.bytes() > MAX_PROBLEM_BYTES && self.m > 1 {
            self.m = self.m.div_ceil(2);
        }
        self
    }
}

struct MatmulProblem {
    shape: Shape,
    a: Tensor,
    b: Tensor,
    c: TensorMut,
}

impl MatmulProblem {
    /// Operands as stored: A `[z, m, k]` (`[z, k, m]` transposed), B likewise.
    fn new(s: &Device, shape: Shape) -> Result<Self> {
        let Shape { m, n, k, z, .. } = shape;
        Ok(Self {
            shape,
            a: TensorMut::uninit(s, &[z * m * k], shape.operands)?.freeze(),
            b: TensorMut::uninit(s, &[z * k * n], shape.operands)?.freeze(),
            c: TensorMut::uninit(s, &[z * m * n], DType::F32)?,
        })
    }
}

impl Problem<MatmulKind> for MatmulProblem {
    fn describe(&self) -> String {
        let Shape { m, n, k, z, .. } = self.shape;
        format!("m{m} n{n} k{k} z{z}")
    }

    fn run(&mut self, s: &Device, _: MatmulKind) -> Result<()> {
        let Shape { m, n, k, z, ta, tb, .. } = self.shape;
        let a_cols = if ta { m } else { k };
        let b_cols = if tb { k } else { n };
        Matmul {
            a: MatView::contiguous(&self.a, a_cols, m * k),
            b: MatView::contiguous(&self.b, b_cols, k * n),
            c: MatView::contiguous(&self.c, n, m * n),
            m,
            n,
            k,
            outer: z,
            heads: 1,
            trans_a: ta,
            trans_b: tb,
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            row_sums: None,
            epilogue: Epilogue::None,
            label: Some("autotune"),
        }
        .run(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_are_distinct_and_round_trip() {
        for (i, shape) in TileShape::ALL.iter().enumerate() {
            assert_eq!(TILED_NAMES[i], format!("tiled-{}", shape.name()));
        }
        for &kind in MatmulKind::ALL {
            assert_eq!(MatmulKind::from_name(kind.name()), Some(kind));
        }
    }

    #[test]
    fn classes_bucket_and_problems_shrink_to_the_cap() {
        let s = Shape { m: 1088, n: 576, k: 192, z: 1, ta: false, tb: true, operands: DType::F32 };
        assert_eq!(s.class(), "nt m2048 n1024 k256 z1");
        let half = Shape { operands: DType::F16, ..s };
        assert_eq!(half.class(), "nt m2048 n1024 k256 z1 f16", "precision is part of the class");
        assert_eq!(Shape { m: 1025, n: 768, ..s }.class(), s.class(), "same buckets");
        let big = Shape { m: 197, n: 197, k: 64, z: 3072, ta: false, tb: true, operands: DType::F32 };
        let small = big.shrunk();
        assert!(small.bytes() <= MAX_PROBLEM_BYTES && small.bytes() > MAX_PROBLEM_BYTES / 2, "{small:?}");
        assert_eq!((small.m, small.n, small.k), (197, 197, 64), "the batch shrinks first");
        let wide = Shape { m: 1 << 20, n: 4096, k: 1024, z: 1, ta: false, tb: false, operands: DType::F32 }.shrunk();
        assert!(wide.bytes() <= MAX_PROBLEM_BYTES && wide.m >= 1024, "{wide:?}");
    }
}
