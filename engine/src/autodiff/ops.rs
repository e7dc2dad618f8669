//! Differentiable ops: each runs its forward kernel(s) now and records a
//! backward that runs the matching kernels later.

use super::{Backward, Tape, Var};
use crate::error::{Result, shape_err};
use crate::kernels::reduce::{RowView, sum_rows, sum_rows_accumulate, weighted_sums};
use crate::kernels::{attention, cast, elementwise, gather, gelu, layernorm, loss, matmul};
use crate::tensor::{DType, Tensor, TensorMut};

impl Tape {
    /// `x·Wᵀ + b` over the last axis; W is `[out, in]`. The output is f32
    /// (under mixed precision too: see [`Tape::linear_compute`]).
    ///
    /// dX = dY·W,  dW = dYᵀ·X,  db = Σ_rows dY
    pub fn linear(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.linear_to(x, w, b, DType::F32)
    }

    /// [`Tape::linear`] with the output in the tape's compute precision (f16
    /// under mixed precision): for a projection only f16-reading kernels
    /// consume, such as the qkv that [`Tape::attention`] reads.
    pub fn linear_compute(&self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        self.linear_to(x, w, b, self.compute_dtype())
    }

    fn linear_to(&self, x: &Var, w: &Var, b: Option<&Var>, result: DType) -> Result<Var> {
        let (xo, wo) = (self.operand(x)?, self.operand(w)?);
        let y = matmul::linear_to(&self.dev, &xo, &wo, b.map(|b| &b.value), result)?;
        let (x_dtype, kept) = (x.value.dtype(), self.kept(x, xo));
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let bias = b.map(|_| 2);
        Ok(self.record(y, &inputs, move |bw, dy| {
            let dy2 = operand_like(bw.dev, &rows_of(dy, wo.dim(0)?)?, &wo)?;
            let xo = kept.get(bw.dev)?;
            let dx = input_grad(bw, &dy2, &wo, 0, (xo.shape(), x_dtype))?;
            let (dw, db) = weight_grads(bw, &dy2, &rows_of(&xo, xo.dim(-1)?)?, 1, bias)?;
            let mut out = vec![dx, dw];
            out.extend(bias.map(|_| db));
            Ok(out)
        }))
    }

    /// `x·Wᵀ + b + residual` in one dispatch: a projection and the residual
    /// connection after it. The residual's gradient is dY. Output and
    /// residual are f32 in either precision (the residual stream).
    pub fn linear_add(&self, x: &Var, w: &Var, b: &Var, residual: &Var) -> Result<Var> {
        let (xo, wo) = (self.operand(x)?, self.operand(w)?);
        let y = matmul::linear_add(&self.dev, &xo, &wo, Some(&b.value), &residual.value)?;
        let (x_dtype, kept) = (x.value.dtype(), self.kept(x, xo));
        Ok(self.record(y, &[x, w, b, residual], move |bw, dy| {
            let dy2 = operand_like(bw.dev, &rows_of(dy, wo.dim(0)?)?, &wo)?;
            let xo = kept.get(bw.dev)?;
            let dx = input_grad(bw, &dy2, &wo, 0, (xo.shape(), x_dtype))?;
            let (dw, db) = weight_grads(bw, &dy2, &rows_of(&xo, xo.dim(-1)?)?, 1, Some(2))?;
            Ok(vec![dx, dw, db, Some(dy.clone())])
        }))
    }

    /// `x` stored as `dtype` (f32 ↔ f16); the gradient is cast back.
    pub fn cast(&self, x: &Var, dtype: DType) -> Result<Var> {
        let from = x.value.dtype();
        let y = cast::to(&self.dev, &x.value, dtype)?;
        Ok(self.record(y, &[x], move |bw, dy| Ok(vec![Some(cast::to(bw.dev, dy, from)?)])))
    }

    /// timm's `Mlp`, fc2(gelu(fc1(x))), plus `residual` when given (a block's
    /// `x + mlp(norm2(x))`, added in fc2's epilogue): two dispatches forward.
    /// Only fc1's input and pre-activation are kept for the backward pass,
    /// which recomputes the activation, so the `[rows, hidden]` activation is
    /// never held across the step.
    ///
    /// dh = (dY·W2) ⊙ gelu'(h) in one dispatch, then fc1 as a linear layer.
    /// Under mixed precision h, gelu(h) and dh are f16; the output is f32.
    pub fn mlp(&self, x: &Var, fc1: (&Var, &Var), fc2: (&Var, &Var), residual: Option<&Var>) -> Result<Var> {
        let dev = &self.dev;
        let (xv, w1, w2) = (self.operand(x)?, self.operand(fc1.0)?, self.operand(fc2.0)?);
        let (h, g) = matmul::linear_gelu(dev, &xv, &w1, Some(&fc1.1.value), self.compute_dtype())?;
        let kept = self.kept(x, xv);
        let y = match residual {
            Some(r) => matmul::linear_add(dev, &g, &w2, Some(&fc2.1.value), &r.value)?,
            None => matmul::linear(dev, &g, &w2, Some(&fc2.1.value))?,
        };
        drop(g);
        let x_dtype = x.value.dtype();
        let mut inputs = vec![x, fc1.0, fc1.1, fc2.0, fc2.1];
        inputs.extend(residual);
        let has_residual = residual.is_some();
        Ok(self.record(y, &inputs, move |bw, dy| {
            let dev = bw.dev;
            let dy2 = operand_like(dev, &rows_of(dy, w2.dim(0)?)?, &w2)?;
            let (dw2, db2) = if bw.needs(3) || bw.needs(4) {
                let g = gelu::gelu(dev, &h)?;
                weight_grads(bw, &dy2, &rows_of(&g, w1.dim(0)?)?, 3, Some(4))?
            } else {
                (None, None)
            };
            let dh = rows_of(&matmul::matmul_gelu_grad(dev, &dy2, &w2, &h)?, w1.dim(0)?)?;
            let xv = kept.get(dev)?;
            let (dw1, db1) = weight_grads(bw, &dh, &rows_of(&xv, xv.dim(-1)?)?, 1, Some(2))?;
            let dx = input_grad(bw, &dh, &w1, 0, (xv.shape(), x_dtype))?;
            let mut out = vec![dx, dw1, db1, dw2, db2];
            if has_residual {
                out.push(Some(dy.clone()));
            }
            Ok(out)
        }))
    }

    /// `op(a)·op(b)` for 2-D or batched 3-D operands.
    pub fn matmul(&self, a: &Var, b: &Var, trans_a: bool, trans_b: bool) -> Result<Var> {
        let c = matmul::matmul(&self.dev, &a.value, &b.value, trans_a, trans_b)?;
        let (av, bv) = (a.value.clone(), b.value.clone());
        Ok(self.record(c, &[a, b], move |bw, dc| {
            let dev = bw.dev;
            let da = match (bw.needs(0), trans_a) {
                (false, _) => None,
                (true, false) => Some(matmul::matmul(dev, dc, &bv, false, !trans_b)?),
                (true, true) => Some(matmul::matmul(dev, &bv, dc, trans_b, true)?),
            };
            let db = match (bw.needs(1), trans_b) {
                (false, _) => None,
                (true, false) => Some(matmul::matmul(dev, &av, dc, !trans_a, false)?),
                (true, true) => Some(matmul::matmul(dev, dc, &av, true, trans_a)?),
            };
            Ok(vec![da, db])
        }))
    }

    pub fn add(&self, a: &Var, b: &Var) -> Result<Var> {
        let y = elementwise::add(&self.dev, &a.value, &b.value)?;
        Ok(self.record(y, &[a, b], |_, dy| Ok(vec![Some(dy.clone()), Some(dy.clone())])))
    }

    /// `x + v` with `v` repeated over the leading axes (`v`'s shape is a suffix of `x`'s).
    pub fn add_broadcast(&self, x: &Var, v: &Var) -> Result<Var> {
        let y = elementwise::add_broadcast(&self.dev, &x.value, &v.value, 1.0)?;
        let vshape = v.shape().to_vec();
        Ok(self.record(y, &[x, v], move |bw, dy| {
            let dev = bw.dev;
            let dv = if bw.needs(1) {
                let n = vshape.iter().product();
                Some(sum_rows(dev, RowView::of(dy, n), None)?.reshape(&vshape)?)
            } else {
                None
            };
            Ok(vec![Some(dy.clone()), dv])
        }))
    }

    pub fn scale(&self, x: &Var, alpha: f32) -> Result<Var> {
        let y = elementwise::scale(&self.dev, &x.value, alpha)?;
        Ok(self.record(y, &[x], move |bw, dy| Ok(vec![Some(elementwise::scale(bw.dev, dy, alpha)?)])))
    }

    pub fn mul(&self, a: &Var, b: &Var) -> Result<Var> {
        let y = elementwise::mul(&self.dev, &a.value, &b.value)?;
        let (av, bv) = (a.value.clone(), b.value.clone());
        Ok(self.record(y, &[a, b], move |bw, dy| {
            let dev = bw.dev;
            let da = if bw.needs(0) { Some(elementwise::mul(dev, dy, &bv)?) } else { None };
            let db = if bw.needs(1) { Some(elementwise::mul(dev, dy, &av)?) } else { None };
            Ok(vec![da, db])
        }))
    }

    /// Multiplies sample `b` (leading axis) by the constant `s[b]` (drop path).
    pub fn scale_rows(&self, x: &Var, s: &Tensor) -> Result<Var> {
        let y = elementwise::scale_rows(&self.dev, &x.value, s)?;
        let s = s.clone();
        Ok(self.record(y, &[x], move |bw, dy| Ok(vec![Some(elementwise::scale_rows(bw.dev, dy, &s)?)])))
    }

    pub fn gelu(&self, x: &Var) -> Result<Var> {
        let y = gelu::gelu(&self.dev, &x.value)?;
        let xv = x.value.clone();
        Ok(self.record(y, &[x], move |bw, dy| Ok(vec![Some(gelu::gelu_backward(bw.dev, &xv, dy)?)])))
    }

    /// LayerNorm with an f32 output.
    pub fn layer_norm(&self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let (y, stats) = layernorm::layer_norm(&self.dev, &x.value, &gamma.value, &beta.value, eps)?;
        self.record_layer_norm(y, (x, gamma, beta), x.value.clone(), stats)
    }

    /// [`Tape::layer_norm`] with the output in the tape's compute precision,
    /// for a norm only products read (a block's norm1 and norm2). Under
    /// mixed precision the output is f16 and the backward keeps the centred
    /// input in f16 instead of the f32 input.
    /// The products that read the output do not keep it: their backward
    /// recomputes it from what the norm keeps anyway (its input, or the
    /// centred input), one cheap pass instead of a `[rows, D]` tensor held
    /// through the step.
    pub fn layer_norm_compute(&self, x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
        let (g, b) = (gamma.value.clone(), beta.value.clone());
        if self.precision() == super::Precision::F32 {
            let y = self.layer_norm(x, gamma, beta, eps)?;
            self.recomputable(&y, super::Recompute::Norm { x: x.value.clone(), gamma: g, beta: b, eps });
            return Ok(y);
        }
        let (y, centered, stats) = layernorm::layer_norm_centered(&self.dev, &x.value, &gamma.value, &beta.value, eps)?;
        let recipe = super::Recompute::Centered { centered: centered.clone(), gamma: g, beta: b, stats: stats.clone() };
        let y = self.record_layer_norm(y, (x, gamma, beta), centered, stats)?;
        self.recomputable(&y, recipe);
        Ok(y)
    }

    /// Records a LayerNorm whose backward reads `saved` as its input.
    fn record_layer_norm(
        &self,
        y: Tensor,
        (x, gamma, beta): (&Var, &Var, &Var),
        saved: Tensor,
        stats: Tensor,
    ) -> Result<Var> {
        let (xv, gv) = (saved, gamma.value.clone());
        Ok(self.record(y, &[x, gamma, beta], move |bw, dy| {
            let dev = bw.dev;
            let [dx_sink, dg_sink, db_sink] = bw.sinks([0, 1, 2]);
            let param_grads = match (dg_sink, db_sink) {
                (Some(dg), Some(db)) => layernorm::ParamGrads::AddTo(dg, db),
                _ => layernorm::ParamGrads::New,
            };
            let dy = cast::to(dev, dy, xv.dtype())?;
            let grads = layernorm::layer_norm_backward(dev, &xv, &gv, &stats, &dy, dx_sink, param_grads)?;
            let (dg, db) = grads.params.map_or((None, None), |(g, b)| (Some(g), Some(b)));
            Ok(vec![grads.dx, dg, db])
        }))
    }

    /// Multi-head self-attention core on a packed qkv `[B, T, 3D]` → `[B, T, D]`,
    /// by the fused kernel (it keeps no `[B·H, T, T]` tensor) or the composed
    /// path, as [`attention::training_path`] chooses.
    /// The output is stored like qkv (f16 from [`Tape::linear_compute`] under
    /// mixed precision).
    pub fn attention(&self, qkv: &Var, heads: usize) -> Result<Var> {
        if attention::training_path(&self.dev, &qkv.value, heads)? == attention::AttentionPath::Composed {
            return Ok(self.attention_with_probs(qkv, heads)?.0);
        }
        let (out, lse) = attention::fused_attention(&self.dev, &qkv.value, heads)?;
        let (qv, ov) = (qkv.value.clone(), out.clone());
        Ok(self.record(out, &[qkv], move |bw, dout| {
            let dev = bw.dev;
            let dout = cast::to(dev, dout, qv.dtype())?;
            Ok(vec![Some(attention::fused_attention_backward(dev, &qv, &ov, &lse, &dout, heads)?)])
        }))
    }

    /// Like [`Tape::attention`], also returning the probabilities `[B·H, T, T]`
    /// (for attention maps; they carry no gradient). The composed kernels
    /// are f32: an f16 qkv is widened first (and the output is f32).
    pub fn attention_with_probs(&self, qkv: &Var, heads: usize) -> Result<(Var, Tensor)> {
        if qkv.value.dtype() != DType::F32 {
            return self.attention_with_probs(&self.cast(qkv, DType::F32)?, heads);
        }
        let (out, probs) = attention::attention(&self.dev, &qkv.value, heads)?;
        let (qv, saved) = (qkv.value.clone(), probs.clone());
        let var = self.record(out, &[qkv], move |bw, dout| {
            let dev = bw.dev;
            Ok(vec![Some(attention::attention_backward(dev, &qv, &saved, dout, heads)?)])
        });
        Ok((var, probs))
    }

    /// Per-sample row gather `x[b, idx[b, k], :]`; backward scatter-adds.
    pub fn gather_rows(&self, x: &Var, idx: &Tensor) -> Result<Var> {
        let y = gather::gather_rows(&self.dev, &x.value, idx)?;
        let (idx, rows) = (idx.clone(), x.value.dim(1)?);
        Ok(self.record(y, &[x], move |bw, dy| Ok(vec![Some(gather::scatter_add_rows(bw.dev, dy, &idx, rows)?)])))
    }

    /// `[tok; x[b]]` for every sample: `[B, n, D]` → `[B, n+1, D]` (the cls token).
    pub fn prepend_token(&self, x: &Var, tok: &Var) -> Result<Var> {
        let [b, n, d] = *x.shape() else {
            return Err(shape_err("prepend_token", format!("tokens {:?} must be [batch, n, dim]", x.shape())));
        };
        if tok.value.numel() != d {
            return Err(shape_err("prepend_token", format!("token {:?} for tokens {:?}", tok.shape(), x.shape())));
        }
        let mut out = elementwise::broadcast(&self.dev, &tok.value.reshape(&[d])?, &[b, n + 1, d])?.into_mut()?;
        gather::copy_rows(&self.dev, &x.value, 0, &mut out, 1, n)?;
        let out = out.freeze();
        let tok_shape = tok.shape().to_vec();
        Ok(self.record(out, &[x, tok], move |bw, dy| {
            let dev = bw.dev;
            let dx = if bw.needs(0) {
                let mut dx = TensorMut::uninit(dev, &[b, n, d], DType::F32)?;
                gather::copy_rows(dev, dy, 1, &mut dx, 0, n)?;
                Some(dx.freeze())
            } else {
                None
            };
            let dtok = if bw.needs(1) {
                let rows = RowView { t: dy, rows: b, cols: d, stride: (n + 1) * d, offset: 0 };
                Some(sum_rows(dev, rows, None)?.reshape(&tok_shape)?)
            } else {
                None
            };
            Ok(vec![dx, dtok])
        }))
    }

    /// Puts row k of `x [B, K, D]` at row `idx[b, k]` of a `[B, rows, D]`
    /// output and fills every other row with `fill [D]` (the decoder's mask
    /// token). `fill_rows` `[B·rows]` is 1 on the filled rows, 0 elsewhere: it
    /// routes the fill token's gradient.
    pub fn unshuffle(&self, x: &Var, idx: &Tensor, fill: &Var, rows: usize, fill_rows: &Tensor) -> Result<Var> {
        let [b, _, d] = *x.shape() else {
            return Err(shape_err("unshuffle", format!("tokens {:?} must be [batch, n, dim]", x.shape())));
        };
        if fill_rows.numel() != b * rows {
            return Err(shape_err("unshuffle", format!("fill mask {:?} for {b}×{rows} rows", fill_rows.shape())));
        }
        let mut out = elementwise::broadcast(&self.dev, &fill.value.reshape(&[d])?, &[b, rows, d])?.into_mut()?;
        gather::scatter_rows(&self.dev, &x.value, 0, idx, &mut out, false)?;
        let out = out.freeze();
        let (idx, mask, fill_shape) = (idx.clone(), fill_rows.clone(), fill.shape().to_vec());
        Ok(self.record(out, &[x, fill], move |bw, dy| {
            let dev = bw.dev;
            let dx = if bw.needs(0) { Some(gather::gather_rows(dev, dy, &idx)?) } else { None };
            let dfill = if bw.needs(1) {
                Some(sum_rows(dev, RowView::of(dy, d), Some(&mask))?.reshape(&fill_shape)?)
            } else {
                None
            };
            Ok(vec![dx, dfill])
        }))
    }

    /// `Σ_r w_r · mean_j (pred[r, j] − target[r, j])²` over rows of the last
    /// axis, as a one-element loss. Also returns the per-row losses `[rows]`
    /// (per-shot reporting), which carry no gradient.
    pub fn weighted_mse(&self, pred: &Var, target: &Tensor, w: &Tensor) -> Result<(Var, Tensor)> {
        let rows_loss = loss::mse_rows(&self.dev, &pred.value, target)?;
        let total = weighted_sums(&self.dev, &rows_loss, &w.reshape(&[1, w.numel()])?)?;
        let (pv, tv, wv) = (pred.value.clone(), target.clone(), w.clone());
        let var = self
            .record(total, &[pred], move |bw, g| Ok(vec![Some(loss::mse_rows_backward(bw.dev, &pv, &tv, &wv, g)?)]));
        Ok((var, rows_loss))
    }

    /// `Σ_r w_r · CE(logits_r, target_r)` for soft targets `[rows, classes]`.
    pub fn weighted_cross_entropy(&self, logits: &Var, target: &Tensor, w: &Tensor) -> Result<Var> {
        let rows_loss = loss::xent_rows(&self.dev, &logits.value, target)?;
        let total = weighted_sums(&self.dev, &rows_loss, &w.reshape(&[1, w.numel()])?)?;
        let (lv, tv, wv) = (logits.value.clone(), target.clone(), w.clone());
        Ok(self.record(total, &[logits], move |bw, g| {
            let dev = bw.dev;
            Ok(vec![Some(loss::xent_rows_backward(dev, &lv, &tv, &wv, g)?)])
        }))
    }

    /// Mean of all elements, as a one-element tensor.
    pub fn mean(&self, x: &Var) -> Result<Var> {
        let n = x.value.numel();
        let w = elementwise::full(&self.dev, &[1, n], 1.0 / n as f32)?;
        let y = weighted_sums(&self.dev, &x.value.reshape(&[n])?, &w)?;
        let shape = x.shape().to_vec();
        Ok(self.record(y, &[x], move |bw, g| {
            let dev = bw.dev;
            let ones = elementwise::full(dev, &shape, 1.0 / n as f32)?;
            let g1 = g.reshape(&[1])?;
            Ok(vec![Some(elementwise::scale_rows(dev, &ones.reshape(&[1, n])?, &g1)?.reshape(&shape)?)])
        }))
    }
}

impl Tape {
    /// `x[:, 1:, :]`: drops the leading (cls) token of `[B, n, D]`.
    pub fn drop_first_token(&self, x: &Var) -> Result<Var> {
        let [b, n, d] = *x.shape() else {
            return Err(shape_err("drop_first_token", format!("tokens {:?} must be [batch, n, dim]", x.shape())));
        };
        if n == 0 {
            return Err(shape_err("drop_first_token", format!("tokens {:?} have no first token", x.shape())));
        }
        let mut out = TensorMut::uninit(&self.dev, &[b, n - 1, d], DType::F32)?;
        gather::copy_rows(&self.dev, &x.value, 1, &mut out, 0, n - 1)?;
        Ok(self.record(out.freeze(), &[x], move |bw, dy| {
            let dev = bw.dev;
            let mut dx = elementwise::zeros(dev, &[b, n, d])?;
            gather::copy_rows(dev, dy, 0, &mut dx, 1, n - 1)?;
            Ok(vec![Some(dx.freeze())])
        }))
    }
}

impl Tape {
    /// The same values under another shape (the gradient is reshaped back).
    pub fn reshape(&self, x: &Var, shape: &[usize]) -> Result<Var> {
        let y = x.value.reshape(shape)?;
        let back = x.shape().to_vec();
        Ok(self.record(y, &[x], move |_, dy| Ok(vec![Some(dy.reshape(&back)?)])))
    }
}

impl Tape {
    /// Mean over tokens `from..T` of `[B, T, D]` → `[B, D]` (global average
    /// pooling of the patch tokens), as batched products with a ones vector.
    pub fn mean_tokens(&self, x: &Var, from: usize) -> Result<Var> {
        let [b, t, d] = *x.shape() else {
            return Err(shape_err("mean_tokens", format!("tokens {:?} must be [batch, n, dim]", x.shape())));
        };
        if from >= t {
            return Err(shape_err("mean_tokens", format!("no tokens after {from} in {:?}", x.shape())));
        }
        let n = t - from;
        let ones = elementwise::full(&self.dev, &[n], 1.0)?;
        let out = TensorMut::uninit(&self.dev, &[b, d], DType::F32)?;
        let ones_row = matmul::MatView { t: &ones, off: 0, row: n, b0: 0, b1: 0 };
        let tokens = matmul::MatView { t: &x.value, off: from * d, row: d, b0: t * d, b1: 0 };
        let out_view = matmul::MatView { t: &out, off: 0, row: d, b0: d, b1: 0 };
        pooling(ones_row, tokens, out_view, (1, d, n), b, 1.0 / n as f32).run(&self.dev)?;
        Ok(self.record(out.freeze(), &[x], move |bw, dy| {
            let dev = bw.dev;
            // Each pooled token gets dy/n: a [n, 1]·[1, D] product per sample.
            let dx = elementwise::zeros(dev, &[b, t, d])?;
            let ones_col = matmul::MatView { t: &ones, off: 0, row: 1, b0: 0, b1: 0 };
            let dy_row = matmul::MatView { t: dy, off: 0, row: d, b0: d, b1: 0 };
            let dx_view = matmul::MatView { t: &dx, off: from * d, row: d, b0: t * d, b1: 0 };
            pooling(ones_col, dy_row, dx_view, (n, d, 1), b, 1.0 / n as f32).run(dev)?;
            Ok(vec![Some(dx.freeze())])
        }))
    }
}

/// One product per sample for [`Tape::mean_tokens`].
fn pooling<'a>(
    a: matmul::MatView<'a>,
    b: matmul::MatView<'a>,
    c: matmul::MatView<'a, TensorMut>,
    (m, n, k): (usize, usize, usize),
    outer: usize,
    alpha: f32,
) -> matmul::Matmul<'a> {
    let label = Some("mean_tokens");
    matmul::Matmul {
        a,
        b,
        c,
        m,
        n,
        k,
        outer,
        heads: 1,
        trans_a: false,
        trans_b: false,
        alpha,
        beta: 0.0,
        bias: None,
        row_sums: None,
        epilogue: matmul::Epilogue::None,
        label,
    }
}

/// `t` as a matrix of rows of `cols` (the leading axes flattened).
fn rows_of(t: &Tensor, cols: usize) -> Result<Tensor> {
    t.reshape(&[t.numel() / cols.max(1), cols])
}

/// A linear layer's input gradient dY·W (`dy2` `[rows, out]`, W `[out, in]`)
/// for input `x` of the given shape and element type (the gradient is
/// stored like the value), added into its sink when it has one.
fn input_grad(
    bw: &mut Backward<'_>,
    dy2: &Tensor,
    w: &Tensor,
    x: usize,
    (shape, dtype): (&[usize], DType),
) -> Result<Option<Tensor>> {
    let dev = bw.dev;
    let need = bw.needs(x);
    match bw.sink(x) {
        Some(acc) => matmul::matmul_accumulate(dev, dy2, w, false, false, acc).map(|()| None),
        None if need => Ok(Some(matmul::matmul_to(dev, dy2, w, false, false, dtype)?.reshape(shape)?)),
        None => Ok(None),
    }
}

/// A gradient as a product reads it beside `operand`: cast to f16 under
/// mixed precision (the loss scale keeps it inside f16's range), as is otherwise.
fn operand_like(dev: &crate::device::Device, grad: &Tensor, operand: &Tensor) -> Result<Tensor> {
    cast::to(dev, grad, operand.dtype())
}

/// A linear layer's dW = dYᵀ·X (input `w`) and db = Σ_rows dY (input `b`,
/// when it has one) from `dy2` `[rows, out]` and `x2` `[rows, in]`, in one
/// dispatch when both are wanted, added into their sinks when they have them.
fn weight_grads(
    bw: &mut Backward<'_>,
    dy2: &Tensor,
    x2: &Tensor,
    w: usize,
    b: Option<usize>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dev = bw.dev;
    let (need_w, need_b) = (bw.needs(w), b.is_some_and(|b| bw.needs(b)));
    let cols = dy2.dim(-1)?;
    let [dw_sink, db_sink] = match b {
        Some(b) => bw.sinks([w, b]),
        None => [bw.sink(w), None],
    };
    match (need_w, db_sink) {
        (true, db_sink) => matmul::linear_weight_grads(dev, dy2, x2, dw_sink, db_sink, need_b),
        (false, Some(acc)) => sum_rows_accumulate(dev, RowView::of(dy2, cols), None, acc).map(|()| (None, None)),
        (false, None) if need_b => Ok((None, Some(sum_rows(dev, RowView::of(dy2, cols), None)?))),
        (false, None) => Ok((None, None)),
    }
}
