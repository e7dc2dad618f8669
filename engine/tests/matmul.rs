//! Matmul against an f64 CPU reference, on awkward shapes, for every transpose
//! variant and both kernel families (register-blocked and tiled), plus strided
//! batched views as attention uses them.

mod common;

use std::io::Write;

use cmae_engine::kernels::elementwise::zeros;
use cmae_engine::kernels::matmul::{
    Epilogue, MatView, Matmul, RowSums, linear, linear_add, linear_gelu, linear_to, linear_weight_grads, matmul,
    matmul_accumulate, matmul_gelu_grad,
};
use cmae_engine::{DType, Device, MatmulKind, Tensor, TensorMut, TileShape};
use common::{assert_close, rand_vec};

/// f32 products summed over k ≤ 200 terms of size ≤ 1: the rounding error of
/// a length-k f32 dot product is about k·2⁻²⁴·Σ|aᵢbᵢ| ≲ 1e-5 here, so 1e-4
/// absolute plus 1e-4 relative is a bound with margin, not a fudge.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

/// Every kernel family this adapter can run (the tiled kernel in its default
/// shape and in the largest, which has 8×8 blocks and double-buffered slices).
fn kinds() -> Vec<MatmulKind> {
    let largest = TileShape { tm: 8, tn: 8, bk: 8, double: true };
    assert!(TileShape::ALL.contains(&largest));
    let mut k = vec![MatmulKind::Register, MatmulKind::Tiled(TileShape::DEFAULT), MatmulKind::Tiled(largest)];
    if Device::from_env().unwrap().supports_subgroup_matmul() {
        k.push(MatmulKind::Subgroup);
    }
    k
}

fn device(kind: MatmulKind) -> Device {
    let dev = Device::from_env().expect("a GPU adapter (CI installs lavapipe)");
    dev.set_matmul_kind(kind);
    dev
}

/// C = op(A)·op(B) in f64 from row-major stored A and B.
fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for kk in 0..k {
                let av = if ta { a[kk * m + i] } else { a[i * k + kk] };
                let bv = if tb { b[j * k + kk] } else { b[kk * n + j] };
                acc += f64::from(av) * f64::from(bv);
            }
            c[i * n + j] = acc;
        }
    }
    c
}

/// Random A and B for op(A)·op(B) of `[m, k]·[k, n]`, as stored (`[k, m]`
/// when A is transposed, `[n, k]` when B is), on the host and the device.
fn random_operands(
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Tensor, Tensor) {
    let a = rand_vec(m * k, seed);
    let b = rand_vec(k * n, seed + 1000);
    let at = Tensor::from_f32(dev, &a, &if ta { [k, m] } else { [m, k] }).unwrap();
    let bt = Tensor::from_f32(dev, &b, &if tb { [n, k] } else { [k, n] }).unwrap();
    (a, b, at, bt)
}

fn check_all_shapes(kind: MatmulKind) {
    let dev = device(kind);
    let dims = [1usize, 3, 4, 17, 65, 197];
    let mut seed = 0;
    for &m in &dims {
        for &n in &dims {
            for &k in &[1usize, 3, 16, 17, 65] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    seed += 1;
                    let (a, b, at, bt) = random_operands(&dev, (m, n, k), (ta, tb), seed);
                    let c = matmul(&dev, &at, &bt, ta, tb).unwrap();
                    assert_eq!(c.shape(), &[m, n]);
                    let got = c.wait_f32(&dev).unwrap();
                    let want = reference(&a, &b, m, n, k, ta, tb);
                    assert_close(&format!("{kind:?} m={m} n={n} k={k} ta={ta} tb={tb}"), &got, &want, ATOL, RTOL);
                }
            }
        }
    }
}

#[test]
fn register_kernel_matches_f64_on_awkward_shapes() {
    check_all_shapes(MatmulKind::Register);
}

#[test]
fn subgroup_kernel_matches_f64_on_awkward_shapes() {
    let probe = Device::from_env().unwrap();
    if !probe.supports_subgroup_matmul() {
        // CI's lavapipe has 8-lane subgroups: there, not running is a failure.
        assert!(
            std::env::var_os("CMAE_REQUIRE_SUBGROUPS").is_none(),
            "CMAE_REQUIRE_SUBGROUPS is set but adapter {} has no 8-lane subgroups",
            probe.info().name
        );
        assert_ne!(probe.matmul_kind(), MatmulKind::Subgroup, "the subgroup kernel was chosen without subgroups");
        // Written past the test harness's capture, so the run shows it.
        let _ = writeln!(
            std::io::stderr(),
            "NOT RUN: subgroup matmul on adapter {} (no 8-lane subgroups)",
            probe.info().name
        );
        return;
    }
    check_all_shapes(MatmulKind::Subgroup);
}

/// Every tile shape the autotuner may pick.
#[test]
fn tiled_kernel_matches_f64_on_awkward_shapes() {
    for shape in TileShape::ALL {
        check_all_shapes(MatmulKind::Tiled(shape));
    }
}

#[test]
fn linear_with_fused_bias_matches_f64() {
    for kind in kinds() {
        let dev = device(kind);
        for (rows, inp, out) in [(1088, 192, 576), (65, 17, 3), (130, 48, 192)] {
            let x = rand_vec(rows * inp, 1);
            let w = rand_vec(out * inp, 2);
            let b = rand_vec(out, 3);
            let xt = Tensor::from_f32(&dev, &x, &[2, rows / 2, inp])
                .unwrap_or_else(|_| Tensor::from_f32(&dev, &x, &[rows, inp]).unwrap());
            let y = linear(
                &dev,
                &xt,
                &Tensor::from_f32(&dev, &w, &[out, inp]).unwrap(),
                Some(&Tensor::from_f32(&dev, &b, &[out]).unwrap()),
            )
            .unwrap();
            let mut want = reference(&x, &w, rows, out, inp, false, true);
            for (i, v) in want.iter_mut().enumerate() {
                *v += f64::from(b[i % out]);
            }
            assert_close(
                &format!("{kind:?} linear {rows}x{inp}->{out}"),
                &y.wait_f32(&dev).unwrap(),
                &want,
                ATOL,
                RTOL,
            );
        }
    }
}

/// `C += op(A)·op(B)` in place (a parameter gradient accumulated where it
/// lives), on every family and transpose, into an accumulator whose shape is
/// not the product's (a patch embedding's `[D, C, p, p]` weight).
#[test]
fn accumulating_products_add_to_what_is_there() {
    for kind in kinds() {
        let dev = device(kind);
        for (m, n, k) in [(13, 12, 1088), (3, 65, 17), (64, 48, 5)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = rand_vec(m * k, 11);
                let b = rand_vec(k * n, 12);
                let before = rand_vec(m * n, 13);
                let at = Tensor::from_f32(&dev, &a, &if ta { [k, m] } else { [m, k] }).unwrap();
                let bt = Tensor::from_f32(&dev, &b, &if tb { [n, k] } else { [k, n] }).unwrap();
                let mut acc = TensorMut::from_f32(&dev, &before, &[m * n]).unwrap();
                matmul_accumulate(&dev, &at, &bt, ta, tb, &mut acc).unwrap();
                let want: Vec<f64> =
                    reference(&a, &b, m, n, k, ta, tb).iter().zip(&before).map(|(p, &c)| p + f64::from(c)).collect();
                // k = 1088 terms: the f32 dot product's error grows like k·2⁻²⁴ (≈ 6.5e-5 relative).
                let label = format!("{kind:?} C += A·B m={m} n={n} k={k} ta={ta} tb={tb}");
                assert_close(&label, &acc.wait_f32(&dev).unwrap(), &want, 1e-3, RTOL);
            }
        }
        let mut wrong = zeros(&dev, &[5]).unwrap();
        let a = zeros(&dev, &[2, 3]).unwrap().freeze();
        let err = matmul_accumulate(&dev, &a, &a, true, false, &mut wrong).unwrap_err().to_string();
        assert!(err.contains("[5]") && err.contains("[3, 3]"), "{err}");
    }
}

/// A linear layer's dW = dYᵀ·X and db = Σ_rows dY from one dispatch, on
/// every family, new and accumulated in place, and row sums of a
/// non-transposed A (the other branch of the kernels' row-sum job).
#[test]
fn weight_and_bias_gradients_come_from_one_product() {
    for kind in kinds() {
        let dev = device(kind);
        for (rows, out, inp) in [(1088, 192, 48), (65, 13, 17), (7, 64, 5), (130, 3, 1)] {
            let dy = rand_vec(rows * out, 21);
            let x = rand_vec(rows * inp, 22);
            let dyt = Tensor::from_f32(&dev, &dy, &[rows, out]).unwrap();
            let xt = Tensor::from_f32(&dev, &x, &[rows, inp]).unwrap();
            let want_dw = reference(&dy, &x, out, inp, rows, true, false);
            let want_db: Vec<f64> = (0..out).map(|j| (0..rows).map(|r| f64::from(dy[r * out + j])).sum()).collect();
            let label = format!("{kind:?} rows={rows} out={out} in={inp}");
            // k = rows ≤ 1088 terms: f32 rounding ≲ 1e-3 absolute on sums of that many products of size ≤ 1.
            let (dw, db) = linear_weight_grads(&dev, &dyt, &xt, None, None, true).unwrap();
            assert_close(&format!("{label} dW"), &dw.unwrap().wait_f32(&dev).unwrap(), &want_dw, 1e-3, RTOL);
            assert_close(&format!("{label} db"), &db.unwrap().wait_f32(&dev).unwrap(), &want_db, 1e-3, RTOL);
            let (w0, b0) = (rand_vec(out * inp, 23), rand_vec(out, 24));
            let mut dw_acc = TensorMut::from_f32(&dev, &w0, &[out * inp]).unwrap();
            let mut db_acc = TensorMut::from_f32(&dev, &b0, &[out]).unwrap();
            let (none_w, none_b) =
                linear_weight_grads(&dev, &dyt, &xt, Some(&mut dw_acc), Some(&mut db_acc), false).unwrap();
            assert!(none_w.is_none() && none_b.is_none(), "{label}: accumulated gradients were also returned");
            let plus = |want: &[f64], start: &[f32]| -> Vec<f64> {
                want.iter().zip(start).map(|(w, s)| w + f64::from(*s)).collect()
            };
            assert_close(&format!("{label} dW += "), &dw_acc.wait_f32(&dev).unwrap(), &plus(&want_dw, &w0), 1e-3, RTOL);
            assert_close(&format!("{label} db += "), &db_acc.wait_f32(&dev).unwrap(), &plus(&want_db, &b0), 1e-3, RTOL);
        }
        // Row sums of A as stored (no transpose): Σ_k A[i, k].
        let (m, n, k) = (19, 6, 33);
        let (a, b) = (rand_vec(m * k, 25), rand_vec(k * n, 26));
        let (at, bt) = (Tensor::from_f32(&dev, &a, &[m, k]).unwrap(), Tensor::from_f32(&dev, &b, &[k, n]).unwrap());
        let c = zeros(&dev, &[m, n]).unwrap();
        let sums = zeros(&dev, &[m]).unwrap();
        Matmul {
            a: MatView::contiguous(&at, k, 0),
            b: MatView::contiguous(&bt, n, 0),
            c: MatView::contiguous(&c, n, 0),
            m,
            n,
            k,
            outer: 1,
            heads: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            row_sums: Some(RowSums { out: &sums, accumulate: false }),
            epilogue: Epilogue::None,
            label: None,
        }
        .run(&dev)
        .unwrap();
        let want: Vec<f64> = (0..m).map(|i| (0..k).map(|kk| f64::from(a[i * k + kk])).sum()).collect();
        assert_close(&format!("{kind:?} row sums of A"), &sums.wait_f32(&dev).unwrap(), &want, 1e-5, RTOL);
        assert_close(
            &format!("{kind:?} C beside row sums"),
            &c.wait_f32(&dev).unwrap(),
            &reference(&a, &b, m, n, k, false, false),
            ATOL,
            RTOL,
        );
    }
}

fn gelu64(x: f64) -> f64 {
    common::reference::gelu(&[x])[0]
}

/// GELU'(x) by a central difference of the f64 reference (h = 1e-5: error ~1e-10).
fn gelu_grad64(x: f64) -> f64 {
    (gelu64(x + 1e-5) - gelu64(x - 1e-5)) / 2e-5
}

/// The epilogues, on every family, on shapes whose rows and columns are not
/// whole blocks: fc1 with GELU (pre-activation and activation), a projection
/// plus a residual, and fc2's dX through GELU's derivative.
#[test]
fn epilogues_match_f64() {
    for kind in kinds() {
        let dev = device(kind);
        for (rows, inp, out) in [(130, 48, 192), (65, 17, 3), (1088, 192, 64)] {
            let x = rand_vec(rows * inp, 31);
            let w = rand_vec(out * inp, 32);
            let b = rand_vec(out, 33);
            let res = rand_vec(rows * out, 34);
            let xt = Tensor::from_f32(&dev, &x, &[rows, inp]).unwrap();
            let wt = Tensor::from_f32(&dev, &w, &[out, inp]).unwrap();
            let bt = Tensor::from_f32(&dev, &b, &[out]).unwrap();
            let mut pre = reference(&x, &w, rows, out, inp, false, true);
            for (i, v) in pre.iter_mut().enumerate() {
                *v += f64::from(b[i % out]);
            }
            let label = format!("{kind:?} rows={rows} in={inp} out={out}");
            let (h, g) = linear_gelu(&dev, &xt, &wt, Some(&bt), DType::F32).unwrap();
            assert_close(&format!("{label} fc1 h"), &h.wait_f32(&dev).unwrap(), &pre, ATOL, RTOL);
            let want_g: Vec<f64> = pre.iter().map(|&v| gelu64(v)).collect();
            assert_close(&format!("{label} fc1 gelu"), &g.wait_f32(&dev).unwrap(), &want_g, ATOL, RTOL);
            let y =
                linear_add(&dev, &xt, &wt, Some(&bt), &Tensor::from_f32(&dev, &res, &[rows, out]).unwrap()).unwrap();
            let want_y: Vec<f64> = pre.iter().zip(&res).map(|(p, r)| p + f64::from(*r)).collect();
            assert_close(&format!("{label} proj + residual"), &y.wait_f32(&dev).unwrap(), &want_y, ATOL, RTOL);
            // fc2's dX through GELU: dy [rows, out] · W [out, in], times gelu'(pre_in) [rows, in].
            let dy = rand_vec(rows * out, 35);
            let pre_in = rand_vec(rows * inp, 36);
            let dh = matmul_gelu_grad(
                &dev,
                &Tensor::from_f32(&dev, &dy, &[rows, out]).unwrap(),
                &wt,
                &Tensor::from_f32(&dev, &pre_in, &[rows, inp]).unwrap(),
            )
            .unwrap();
            let want_dh: Vec<f64> = reference(&dy, &w, rows, inp, out, false, false)
                .iter()
                .zip(&pre_in)
                .map(|(v, &p)| v * gelu_grad64(f64::from(p)))
                .collect();
            assert_close(&format!("{label} dX ⊙ gelu'"), &dh.wait_f32(&dev).unwrap(), &want_dh, ATOL, RTOL);
        }
    }
}

/// Q·Kᵀ per (batch, head) straight out of a packed `[B, T, 3·H·hd]` qkv tensor,
/// written with a row stride into a wider output: the views attention uses.
#[test]
fn strided_batched_views_address_heads_inside_qkv() {
    for kind in kinds() {
        let dev = device(kind);
        let (b, t, h, hd) = (3, 17, 3, 8);
        let d = h * hd;
        let qkv = rand_vec(b * t * 3 * d, 7);
        let qkv_t = Tensor::from_f32(&dev, &qkv, &[b, t, 3 * d]).unwrap();
        let scores = zeros(&dev, &[b * h, t, t]).unwrap();
        Matmul {
            a: MatView { t: &qkv_t, off: 0, row: 3 * d, b0: t * 3 * d, b1: hd },
            b: MatView { t: &qkv_t, off: d, row: 3 * d, b0: t * 3 * d, b1: hd },
            c: MatView { t: &scores, off: 0, row: t, b0: h * t * t, b1: t * t },
            m: t,
            n: t,
            k: hd,
            outer: b,
            heads: h,
            trans_a: false,
            trans_b: true,
            alpha: 0.5,
            beta: 0.0,
            bias: None,
            row_sums: None,
            epilogue: Epilogue::None,
            label: None,
        }
        .run(&dev)
        .unwrap();
        let got = scores.wait_f32(&dev).unwrap();
        let mut want = vec![0.0f64; b * h * t * t];
        for bi in 0..b {
            for hi in 0..h {
                for i in 0..t {
                    for j in 0..t {
                        let mut acc = 0.0;
                        for c in 0..hd {
                            let q = qkv[(bi * t + i) * 3 * d + hi * hd + c];
                            let k = qkv[(bi * t + j) * 3 * d + d + hi * hd + c];
                            acc += f64::from(q) * f64::from(k);
                        }
                        want[((bi * h + hi) * t + i) * t + j] = 0.5 * acc;
                    }
                }
            }
        }
        assert_close(&format!("{kind:?} strided QKᵀ"), &got, &want, ATOL, RTOL);
    }
}

#[test]
fn shape_mismatches_are_errors_naming_both_shapes() {
    let dev = device(MatmulKind::Register);
    let a = zeros(&dev, &[4, 5]).unwrap().freeze();
    let b = zeros(&dev, &[6, 7]).unwrap();
    let err = matmul(&dev, &a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("[4, 5]") && err.contains("[6, 7]"), "{err}");
    let w = zeros(&dev, &[3, 4]).unwrap().freeze();
    let err = linear(&dev, &a, &w, None).unwrap_err().to_string();
    assert!(err.contains("[4, 5]") && err.contains("[3, 4]"), "{err}");
    let view_err = Matmul {
        a: MatView::contiguous(&a, 5, 0),
        b: MatView::contiguous(&a, 5, 0),
        c: MatView::contiguous(&b, 7, 0),
        m: 4,
        n: 4,
        k: 9,
        outer: 1,
        heads: 1,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
        bias: None,
        row_sums: None,
        epilogue: Epilogue::None,
        label: None,
    }
    .run(&dev)
    .unwrap_err()
    .to_string();
    assert!(view_err.contains("[4, 5]"), "{view_err}");
}

/// Relative rounding error of f32 → f16: WGSL lets the conversion pick
/// either neighbour, so one ulp (2⁻¹⁰ of the value), not half of one.
const F16_U: f64 = 1.0 / 1024.0;

/// `kind`'s device when the adapter has SHADER_F16 (see `common::has_f16`).
fn half_device(kind: MatmulKind) -> Option<Device> {
    let dev = device(kind);
    common::has_f16(&dev).then_some(dev)
}

/// f16 values as f32 (what the kernels read) and the f16 tensor.
fn rounded(dev: &Device, v: &[f32], shape: &[usize]) -> (Vec<f32>, Tensor) {
    use cmae_engine::kernels::cast::{to_f16, to_f32};
    let half = to_f16(dev, &Tensor::from_f32(dev, v, shape).unwrap()).unwrap();
    (to_f32(dev, &half).unwrap().wait_f32(dev).unwrap(), half)
}

/// An f16 result against the f64 reference computed from the same f16
/// inputs: the f32 kernels' tolerance for the arithmetic, plus one rounding
/// to f16 when stored (F16_U of the value).
fn assert_stored_f16_close(what: &str, dev: &Device, got: &Tensor, want: &[f64]) {
    assert_eq!(got.dtype(), DType::F16, "{what}: stored as f16");
    let got = cmae_engine::kernels::cast::to_f32(dev, got).unwrap().wait_f32(dev).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = ATOL + (RTOL + F16_U) * w.abs();
        assert!(
            (f64::from(*g) - w).abs() <= bound,
            "{what}: element {i} is {g}, the f64 reference {w} (bound {bound})"
        );
    }
}

/// Mixed precision's f16 results (the qkv projection, an MLP's hidden
/// activation and its gradient) on every family: each is the f32 result
/// rounded once when stored.
#[test]
fn f16_results_are_rounded_once_when_stored() {
    for kind in kinds() {
        let Some(dev) = half_device(kind) else { return };
        for (rows, inp, out) in [(65, 17, 3), (130, 48, 192)] {
            let label = format!("{kind:?} rows={rows} in={inp} out={out}");
            let (x, xt) = rounded(&dev, &rand_vec(rows * inp, 41), &[rows, inp]);
            let (w, wt) = rounded(&dev, &rand_vec(out * inp, 42), &[out, inp]);
            let b = rand_vec(out, 43);
            let bt = Tensor::from_f32(&dev, &b, &[out]).unwrap();
            let mut pre = reference(&x, &w, rows, out, inp, false, true);
            for (i, v) in pre.iter_mut().enumerate() {
                *v += f64::from(b[i % out]);
            }
            let y = linear_to(&dev, &xt, &wt, Some(&bt), DType::F16).unwrap();
            assert_stored_f16_close(&format!("{label} linear"), &dev, &y, &pre);
            let (h, g) = linear_gelu(&dev, &xt, &wt, Some(&bt), DType::F16).unwrap();
            assert_stored_f16_close(&format!("{label} fc1 h"), &dev, &h, &pre);
            let want_g: Vec<f64> = pre.iter().map(|&v| gelu64(v)).collect();
            assert_stored_f16_close(&format!("{label} fc1 gelu"), &dev, &g, &want_g);
            let (dy, dyt) = rounded(&dev, &rand_vec(rows * out, 44), &[rows, out]);
            let (pre_in, pre_t) = rounded(&dev, &rand_vec(rows * inp, 45), &[rows, inp]);
            let dh = matmul_gelu_grad(&dev, &dyt, &wt, &pre_t).unwrap();
            let want_dh: Vec<f64> = reference(&dy, &w, rows, inp, out, false, false)
                .iter()
                .zip(&pre_in)
                .map(|(v, &p)| v * gelu_grad64(f64::from(p)))
                .collect();
            assert_stored_f16_close(&format!("{label} dX ⊙ gelu'"), &dev, &dh, &want_dh);
            // f16 results come from f16 operands only.
            let wide = Tensor::from_f32(&dev, &x, &[rows, inp]).unwrap();
            let e = linear_to(&dev, &wide, &wide, None, DType::F16).unwrap_err().to_string();
            assert!(e.contains("F16 results need F16 operands"), "{e}");
        }
    }
}

/// f16 operands, as mixed precision stores them. Two bounds:
/// - Against the f64 product of the f16 values themselves: a product of two
///   f16 values (11-bit significands) is exact in f32 (24 bits), so the only
///   error is the f32 accumulation, and the f32 tolerances above apply as is.
/// - Against the f64 product of the original f32 values: each operand is off
///   by at most u·|x| after rounding to f16, with u = 2⁻¹⁰ (WGSL lets the
///   conversion pick either neighbour, so not 2⁻¹¹), so each term aᵢbᵢ is off
///   by at most (2u + u²)·|aᵢ||bᵢ|, and the sum by that times Σ|aᵢ||bᵢ|.
#[test]
fn f16_operands_accumulate_in_f32_on_every_family() {
    use cmae_engine::kernels::cast::{to_f16, to_f32};
    let u = F16_U;
    for kind in kinds() {
        let Some(dev) = half_device(kind) else { return };
        let mut seed = 5000;
        let mut rounded_somewhere = false;
        for &(m, n, k) in &[(1usize, 1usize, 1usize), (3, 17, 65), (17, 4, 16), (65, 65, 17), (197, 3, 65)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                seed += 1;
                let (a, b, at, bt) = random_operands(&dev, (m, n, k), (ta, tb), seed);
                let (a16, b16) = (to_f16(&dev, &at).unwrap(), to_f16(&dev, &bt).unwrap());
                let ar = to_f32(&dev, &a16).unwrap().wait_f32(&dev).unwrap();
                let br = to_f32(&dev, &b16).unwrap().wait_f32(&dev).unwrap();
                rounded_somewhere |= ar != a;
                let got = matmul(&dev, &a16, &b16, ta, tb).unwrap().wait_f32(&dev).unwrap();
                let what = format!("{kind:?} f16 m={m} n={n} k={k} ta={ta} tb={tb}");
                assert_close(&what, &got, &reference(&ar, &br, m, n, k, ta, tb), ATOL, RTOL);
                let exact = reference(&a, &b, m, n, k, ta, tb);
                let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
                let abs_b: Vec<f32> = b.iter().map(|x| x.abs()).collect();
                let magnitude = reference(&abs_a, &abs_b, m, n, k, ta, tb);
                for ((g, e), mag) in got.iter().zip(&exact).zip(&magnitude) {
                    let bound = (2.0 * u + u * u) * mag + ATOL + RTOL * e.abs();
                    assert!((f64::from(*g) - e).abs() <= bound, "{what}: {g} vs {e}, bound {bound}");
                }
            }
        }
        assert!(rounded_somewhere, "{kind:?}: no operand changed when rounded to f16");
    }
}

#[test]
fn operands_of_two_precisions_are_refused() {
    use cmae_engine::kernels::cast::to_f16;
    let Some(dev) = half_device(MatmulKind::Register) else { return };
    let a = Tensor::from_f32(&dev, &[1.0; 6], &[2, 3]).unwrap();
    let e = matmul(&dev, &to_f16(&dev, &a).unwrap(), &a, false, true).unwrap_err().to_string();
    assert!(e.contains("F16") && e.contains("F32") && e.contains("cast"), "{e}");
}
