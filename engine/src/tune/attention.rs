//! The attention path decision for training: fused kernel or composed
//! matmuls and softmax, timed forward and backward together as a step runs them.
//!
//! Class: T bucketed to a power of two, the head dim exactly (it selects the
//! fused kernel's specialisation), batch·heads bucketed. Problem: a packed qkv
//! and an output gradient of the first shape met, its batch halved until the
//! composed path's tensors fit [`MAX_PROBLEM_BYTES`]. The composed path's
//! products run the device's default matmul family: timing them is the
//! matmul decision's business, once the composed path actually runs.

use super::{Problem, Variant, bucket};
use crate::device::Device;
use crate::device::MatmulKind;
use crate::error::Result;
use crate::kernels::attention::{
    AttentionPath, attention, attention_backward, fused_attention, fused_attention_backward,
};
use crate::tensor::{DType, Tensor, TensorMut};

/// See the matmul decision's cap.
const MAX_PROBLEM_BYTES: usize = 64 << 20;

impl Variant for AttentionPath {
    const DECISION: &'static str = "attention";
    const ALL: &'static [Self] = &[AttentionPath::Fused, AttentionPath::Composed];

    fn name(self) -> &'static str {
        match self {
            AttentionPath::Fused => "fused",
            AttentionPath::Composed => "composed",
        }
    }
}

/// The tuned path for a qkv of shape `[b, t, 3·d]` split into `heads`, where
/// both paths can run it (the caller checked the hard limits); `heuristic`
/// is the built-in choice.
pub(crate) fn path(dev: &Device, qkv: [usize; 3], heads: usize, heuristic: AttentionPath) -> Result<AttentionPath> {
    let shape = Shape { b: qkv[0], t: qkv[1], d: qkv[2] / 3, heads };
    let other = if heuristic == AttentionPath::Fused { AttentionPath::Composed } else { AttentionPath::Fused };
    dev.select(|| shape.class(), &[heuristic, other], |s| AttentionProblem::new(s, shape.shrunk()))
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
}

impl Shape {
    fn class(&self) -> String {
        format!("t{} hd{} bh{}", bucket(self.t), self.d / self.heads, bucket(self.b * self.heads))
    }

    /// qkv, its gradient, the output and its gradient, and the composed
    /// path's probabilities and their gradient.
    fn bytes(&self) -> usize {
        4 * self.b * (8 * self.t * self.d + 2 * self.heads * self.t * self.t)
    }

    fn shrunk(mut self) -> Self {
        while self.bytes() > MAX_PROBLEM_BYTES && self.b > 1 {
            self.b = self.b.div_ceil(2);
        }
        self
    }
}

struct AttentionProblem {
    shape: Shape,
    qkv: Tensor,
    dout: Tensor,
}

impl AttentionProblem {
    fn new(s: &Device, shape: Shape) -> Result<Self> {
        let Shape { b, t, d, .. } = shape;
        s.pin::<MatmulKind>(s.matmul_kind());
        Ok(Self {
            shape,
            qkv: TensorMut::uninit(s, &[b, t, 3 * d], DType::F32)?.freeze(),
            dout: TensorMut::uninit(s, &[b, t, d], DType::F32)?.freeze(),
        })
    }
}

impl Problem<AttentionPath> for AttentionProblem {
    fn describe(&self) -> String {
        let Shape { b, t, d, heads } = self.shape;
        format!("b{b} t{t} heads{heads} hd{}", d / heads)
    }

    fn run(&mut self, s: &Device, path: AttentionPath) -> Result<()> {
        let heads = self.shape.heads;
        match path {
            AttentionPath::Fused => {
                let (out, lse) = fused_attention(s, &self.qkv, heads)?;
                fused_attention_backward(s, &self.qkv, &out, &lse, &self.dout, heads)?;
            }
            AttentionPath::Composed => {
                let (_, probs) = attention(s, &self.qkv, heads)?;
                attention_backward(s, &self.qkv, &probs, &self.dout, heads)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_keep_the_head_dim_and_problems_shrink_the_batch() {
        let enc = Shape { b: 64, t: 17, d: 192, heads: 3 };
        assert_eq!(enc.class(), "t32 hd64 bh256");
        assert_eq!(enc.shrunk().b, 64, "the tiny encoder's attention is timed at full size");
        let big = Shape { b: 256, t: 197, d: 768, heads: 12 }.shrunk();
        assert!(big.bytes() <= MAX_PROBLEM_BYTES && big.b >= 1, "{big:?}");
    }
}
