//! Packs (several tensors in one buffer, each its own writable region), the
//! one-dispatch AdamW over a pack, and gradients accumulated in place into a
//! pack by backward.

mod common;

use cmae_engine::kernels::reduce::{RowView, sum_rows_accumulate};
use cmae_engine::kernels::{elementwise, matmul, optim};
use cmae_engine::{Error, Gradients, Tape, Tensor, TensorMut};
use common::reference::to64;
use common::{assert_close, dev, download, rand_vec, upload};

/// Awkward sizes: one element, not a multiple of 4, a matrix, a long vector.
fn shapes() -> Vec<Vec<usize>> {
    vec![vec![1], vec![3], vec![5, 7], vec![1031], vec![4]]
}

fn packed_with(values: &[Vec<f32>]) -> Vec<TensorMut> {
    let shapes: Vec<Vec<usize>> = values.iter().map(|v| vec![v.len()]).collect();
    let mut members = elementwise::packed_zeros(dev(), &shapes).unwrap();
    for (t, v) in members.iter_mut().zip(values) {
        t.write(dev(), bytemuck::cast_slice(v)).unwrap();
    }
    members
}

#[test]
fn pack_members_are_zeroed_and_written_independently() {
    let mut members = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    for t in &members {
        assert!(download(t).iter().all(|&x| x == 0.0), "a fresh member of {:?} is not zero", t.shape());
    }
    // A kernel writing one member (at a non-zero offset) leaves its neighbours alone.
    let inc = rand_vec(35, 3);
    elementwise::accumulate(dev(), &mut members[2], &upload(&inc, &[5, 7]), 2.0).unwrap();
    assert_eq!(download(&members[2]), inc.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
    for i in [0, 1, 3, 4] {
        assert!(download(&members[i]).iter().all(|&x| x == 0.0), "member {i} changed");
    }
    // A matmul accumulating into a member reads it at its offset too.
    let (a, b) = (rand_vec(5 * 2, 4), rand_vec(2 * 7, 5));
    let before = download(&members[2]);
    matmul::matmul_accumulate(dev(), &upload(&a, &[5, 2]), &upload(&b, &[2, 7]), false, false, &mut members[2])
        .unwrap();
    let want: Vec<f64> = (0..35)
        .map(|ij| {
            let (i, j) = (ij / 7, ij % 7);
            f64::from(before[ij]) + (0..2).map(|k| f64::from(a[i * 2 + k]) * f64::from(b[k * 7 + j])).sum::<f64>()
        })
        .collect();
    assert_close("matmul accumulated into a member", &download(&members[2]), &want, 1e-6, 1e-6);
}

/// Bias gradients accumulate into a member by row sums, in one pass (≤ 256
/// rows) and in two (a chunked pass, then the chunks added in).
#[test]
fn row_sums_accumulate_into_a_member() {
    for rows in [6, 1088] {
        let mut members = elementwise::packed_zeros(dev(), &[vec![3], vec![12]]).unwrap();
        let start = rand_vec(12, 20);
        members[1].write(dev(), bytemuck::cast_slice(&start)).unwrap();
        let x = rand_vec(rows * 12, 21);
        let xt = upload(&x, &[rows, 12]);
        sum_rows_accumulate(dev(), RowView::of(&xt, 12), None, &mut members[1]).unwrap();
        let want: Vec<f64> =
            (0..12).map(|j| f64::from(start[j]) + (0..rows).map(|r| f64::from(x[r * 12 + j])).sum::<f64>()).collect();
        // Sums of ≤ 1088 terms in [-1, 1]: f32 error ≲ 1088·2⁻²⁴·1088 ≈ 7e-2 worst case, far less in practice.
        assert_close(&format!("{rows} rows"), &download(&members[1]), &want, 1e-4, 1e-4);
        assert_eq!(download(&members[0]), vec![0.0; 3]);
    }
}

#[test]
fn a_member_shared_by_another_handle_is_not_written() {
    let mut members = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    let reader: Tensor = members[3].as_tensor().clone();
    let err = elementwise::accumulate(dev(), &mut members[3], &upload(&[1.0; 1031], &[1031]), 1.0).unwrap_err();
    assert!(matches!(err, Error::Aliased(_)), "{err}");
    // The other members are still free to write.
    elementwise::accumulate(dev(), &mut members[1], &upload(&[1.0; 3], &[3]), 1.0).unwrap();
    drop(reader);
    elementwise::accumulate(dev(), &mut members[3], &upload(&[1.0; 1031], &[1031]), 1.0).unwrap();
}

fn steps(n: usize, step: u64) -> Vec<optim::AdamWStep> {
    (0..n)
        .map(|i| optim::AdamWStep {
            lr: 1e-2 * (1.0 + i as f32),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: if i % 2 == 0 { 0.05 } else { 0.0 },
            step,
            grad_scale: 0.5,
        })
        .collect()
}

/// The packed update is the per-tensor update, bit for bit (same operations
/// in the same order), with each tensor's own lr and weight decay.
#[test]
fn packed_adamw_equals_one_adamw_per_tensor() {
    let sizes: Vec<usize> = shapes().iter().map(|s| s.iter().product()).collect();
    let init: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| rand_vec(n, 10 + i as u64)).collect();
    let mut params = packed_with(&init);
    let shapes1: Vec<Vec<usize>> = sizes.iter().map(|&n| vec![n]).collect();
    let mut m = elementwise::packed_zeros(dev(), &shapes1).unwrap();
    let mut v = elementwise::packed_zeros(dev(), &shapes1).unwrap();
    let mut single: Vec<[TensorMut; 3]> = init
        .iter()
        .map(|x| {
            let n = x.len();
            [
                TensorMut::from_f32(dev(), x, &[n]).unwrap(),
                elementwise::zeros(dev(), &[n]).unwrap(),
                elementwise::zeros(dev(), &[n]).unwrap(),
            ]
        })
        .collect();
    for step in 1..=3u64 {
        let g: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| rand_vec(n, 100 * step + i as u64)).collect();
        let grads = packed_with(&g);
        let s = steps(sizes.len(), step);
        let mut p_refs: Vec<&mut TensorMut> = params.iter_mut().collect();
        let g_refs: Vec<&Tensor> = grads.iter().map(|t| t.as_tensor()).collect();
        let mut m_refs: Vec<&mut TensorMut> = m.iter_mut().collect();
        let mut v_refs: Vec<&mut TensorMut> = v.iter_mut().collect();
        optim::adamw_packed(dev(), &mut p_refs, &g_refs, &mut m_refs, &mut v_refs, &s, None).unwrap();
        for (i, [p, mi, vi]) in single.iter_mut().enumerate() {
            optim::adamw(dev(), p, &upload(&g[i], &[sizes[i]]), mi, vi, s[i]).unwrap();
        }
    }
    for (i, [p, mi, vi]) in single.iter().enumerate() {
        assert_eq!(download(&params[i]), download(p), "param {i}");
        assert_eq!(download(&m[i]), download(mi), "m {i}");
        assert_eq!(download(&v[i]), download(vi), "v {i}");
    }
}

/// Under loss scaling the packed update divides the gradients by the scale
/// on the device: with a power-of-two scale that is exact, so it equals the
/// unscaled update bit for bit. A step whose gradients hold ∞ is skipped:
/// parameters and moments stay as they were, bit for bit.
#[test]
fn unscaling_packed_adamw_divides_by_the_scale_and_skips_non_finite_steps() {
    use cmae_engine::kernels::scaler::{LossScaler, ScaleState};
    use optim::adamw_packed;
    let sizes: Vec<usize> = shapes().iter().map(|s| s.iter().product()).collect();
    let shapes1: Vec<Vec<usize>> = sizes.iter().map(|&n| vec![n]).collect();
    let init: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| rand_vec(n, 40 + i as u64)).collect();
    let (mut plain, mut scaled) = (packed_with(&init), packed_with(&init));
    let zeros = || elementwise::packed_zeros(dev(), &shapes1).unwrap();
    let (mut m_plain, mut v_plain, mut m_scaled, mut v_scaled) = (zeros(), zeros(), zeros(), zeros());
    let scale = 1024.0f32;
    let state = ScaleState { scale, good_steps: 0, skipped_steps: 0, found_nonfinite: false };
    let mut scaler = LossScaler::new(dev(), state, LossScaler::GROWTH_INTERVAL).unwrap();
    // The loss scale each step's gradients carry: halved after the skipped step.
    let mut current = scale;
    for step in 1..=3u64 {
        let g: Vec<Vec<f32>> =
            sizes.iter().enumerate().map(|(i, &n)| rand_vec(n, 400 + 10 * step + i as u64)).collect();
        let mut g_scaled: Vec<Vec<f32>> = g.iter().map(|x| x.iter().map(|v| v * current).collect()).collect();
        let skip = step == 2;
        if skip {
            g_scaled[1][0] = f32::INFINITY;
        }
        let (grads, grads_scaled) = (packed_with(&g), packed_with(&g_scaled));
        let s = steps(sizes.len(), step);
        let g_refs: Vec<&Tensor> = grads.iter().map(|t| t.as_tensor()).collect();
        let gs_refs: Vec<&Tensor> = grads_scaled.iter().map(|t| t.as_tensor()).collect();
        for t in &gs_refs {
            scaler.find_nonfinite(dev(), t).unwrap();
        }
        let before: Vec<Vec<f32>> = scaled.iter().chain(&m_scaled).chain(&v_scaled).map(|t| download(t)).collect();
        adamw_packed(
            dev(),
            &mut scaled.iter_mut().collect::<Vec<_>>(),
            &gs_refs,
            &mut m_scaled.iter_mut().collect::<Vec<_>>(),
            &mut v_scaled.iter_mut().collect::<Vec<_>>(),
            &s,
            Some(&scaler),
        )
        .unwrap();
        scaler.update(dev()).unwrap();
        let after: Vec<Vec<f32>> = scaled.iter().chain(&m_scaled).chain(&v_scaled).map(|t| download(t)).collect();
        if skip {
            assert_eq!(after, before, "a step with an infinite gradient changed the model");
            current /= 2.0;
            continue;
        }
        adamw_packed(
            dev(),
            &mut plain.iter_mut().collect::<Vec<_>>(),
            &g_refs,
            &mut m_plain.iter_mut().collect::<Vec<_>>(),
            &mut v_plain.iter_mut().collect::<Vec<_>>(),
            &s,
            None,
        )
        .unwrap();
        let want: Vec<Vec<f32>> = plain.iter().chain(&m_plain).chain(&v_plain).map(|t| download(t)).collect();
        assert_eq!(after, want, "step {step}");
    }
    let state = ScaleState::from_words(&scaler.read(dev()).unwrap().wait().unwrap()).unwrap();
    assert_eq!((state.scale, state.skipped_steps), (scale / 2.0, 1));
}

#[test]
fn packed_adamw_refuses_what_is_not_a_whole_pack() {
    let mut params = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    let grads = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    let mut m = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    let mut v = elementwise::packed_zeros(dev(), &shapes()).unwrap();
    let s = steps(4, 1);
    // Four of the five members: the kernel would run over a member it was not given.
    let mut p_refs: Vec<&mut TensorMut> = params.iter_mut().take(4).collect();
    let g_refs: Vec<&Tensor> = grads.iter().take(4).map(|t| t.as_tensor()).collect();
    let mut m_refs: Vec<&mut TensorMut> = m.iter_mut().take(4).collect();
    let mut v_refs: Vec<&mut TensorMut> = v.iter_mut().take(4).collect();
    let err = optim::adamw_packed(dev(), &mut p_refs, &g_refs, &mut m_refs, &mut v_refs, &s, None).unwrap_err();
    assert!(err.to_string().contains("not every member of one pack"), "{err}");
    // Separate tensors are not a pack either.
    let mut loose: Vec<TensorMut> = shapes().iter().map(|s| elementwise::zeros(dev(), s).unwrap()).collect();
    let mut p_refs: Vec<&mut TensorMut> = loose.iter_mut().collect();
    let g_refs: Vec<&Tensor> = grads.iter().map(|t| t.as_tensor()).collect();
    let mut m_refs: Vec<&mut TensorMut> = m.iter_mut().collect();
    let mut v_refs: Vec<&mut TensorMut> = v.iter_mut().collect();
    let err =
        optim::adamw_packed(dev(), &mut p_refs, &g_refs, &mut m_refs, &mut v_refs, &steps(5, 1), None).unwrap_err();
    assert!(err.to_string().contains("not every member of one pack"), "{err}");
    // A parameter someone else still reads is not updated under them.
    let held = params[0].as_tensor().clone();
    let mut p_refs: Vec<&mut TensorMut> = params.iter_mut().collect();
    let mut m_refs: Vec<&mut TensorMut> = m.iter_mut().collect();
    let mut v_refs: Vec<&mut TensorMut> = v.iter_mut().collect();
    let err =
        optim::adamw_packed(dev(), &mut p_refs, &g_refs, &mut m_refs, &mut v_refs, &steps(5, 1), None).unwrap_err();
    assert!(matches!(err, Error::Aliased(_)), "{err}");
    drop(held);
}

/// Backward into packed gradients (linear layers accumulate dW and db in
/// place, LayerNorm dγ and dβ; a parameter used twice, and one that no
/// kernel sinks, go through the generic path) equals backward into ordinary gradients, and a second
/// backward accumulates on top.
#[test]
fn packed_gradients_equal_ordinary_ones() {
    const NAMES: [&str; 5] = ["w", "b", "s", "ln.w", "ln.b"];
    let (b, k, n) = (6, 5, 7);
    let x = upload(&rand_vec(b * k, 1), &[b, k]);
    let w = upload(&rand_vec(n * k, 2), &[n, k]);
    let bias = upload(&rand_vec(n, 3), &[n]);
    let scale = upload(&rand_vec(n, 4), &[n]);
    let (ln_w, ln_b) = (upload(&rand_vec(n, 5), &[n]), upload(&rand_vec(n, 6), &[n]));
    let run = |grads: &mut Gradients| {
        let tape = Tape::new(dev());
        let xv = tape.constant(x.clone());
        let (wv, bv, sv) = (tape.param("w", &w), tape.param("b", &bias), tape.param("s", &scale));
        let h = tape.linear(&xv, &wv, Some(&bv)).unwrap();
        // W as the input of a product (its dX flows back as a tensor) and as a weight.
        let wwt = tape.linear(&wv, &tape.constant(w.clone()), None).unwrap();
        let h2 = tape.linear(&h, &wwt, Some(&bv)).unwrap();
        let normed = tape.layer_norm(&h2, &tape.param("ln.w", &ln_w), &tape.param("ln.b", &ln_b), 1e-6).unwrap();
        let y = tape.add_broadcast(&normed, &sv).unwrap();
        let loss = tape.mean(&tape.mul(&y, &y).unwrap()).unwrap();
        tape.backward(&loss, grads).unwrap();
    };
    let mut plain = Gradients::default();
    run(&mut plain);
    let layout: [(&str, &[usize]); 5] = [("w", &[n, k]), ("b", &[n]), ("s", &[n]), ("ln.w", &[n]), ("ln.b", &[n])];
    let mut packed = Gradients::packed(dev(), &layout).unwrap();
    run(&mut packed);
    for name in NAMES {
        let want = to64(&download(plain.get(name).unwrap()));
        assert_close(name, &download(packed.get(name).unwrap()), &want, 1e-6, 1e-5);
    }
    run(&mut packed);
    for name in NAMES {
        let want: Vec<f64> = to64(&download(plain.get(name).unwrap())).iter().map(|g| 2.0 * g).collect();
        assert_close(name, &download(packed.get(name).unwrap()), &want, 1e-6, 1e-5);
    }
    assert_eq!(packed.len(), NAMES.len());
}

/// Mixed precision's per-step weight copy: a whole pack cast to f16 in one
/// dispatch gives, member by member, exactly what casting each member alone
/// gives (same rounding kernel), with the members' shapes; a list that is
/// not one whole pack is refused.
#[test]
fn a_pack_casts_to_f16_in_one_dispatch_member_by_member() {
    use cmae_engine::DType;
    use cmae_engine::kernels::cast::{to_f16, to_f16_packed, to_f32};
    if !common::has_f16(dev()) {
        return;
    }
    // A device of its own: the dispatch count is this test's alone.
    let d = &common::untuned_dev();
    let mut pack = elementwise::packed_zeros(d, &shapes()).unwrap();
    for (i, t) in pack.iter_mut().enumerate() {
        t.write(d, bytemuck::cast_slice(&rand_vec(t.numel(), 60 + i as u64))).unwrap();
    }
    let members: Vec<&Tensor> = pack.iter().map(|t| t.as_tensor()).collect();
    let before = d.dispatches();
    let halves = to_f16_packed(d, &members).unwrap();
    assert_eq!(d.dispatches() - before, 1, "one dispatch for the whole pack");
    assert_eq!(halves.len(), members.len());
    for (half, member) in halves.iter().zip(&members) {
        assert_eq!((half.dtype(), half.shape()), (DType::F16, member.shape()));
        let alone = to_f32(d, &to_f16(d, member).unwrap()).unwrap().wait_f32(d).unwrap();
        assert_eq!(to_f32(d, half).unwrap().wait_f32(d).unwrap(), alone);
    }
    let e = to_f16_packed(d, &members[1..]).unwrap_err().to_string();
    assert!(e.contains("not every member of one pack"), "{e}");
}

/// A pack that cannot fit one storage binding (a model too large for the
/// adapter: vit-b16's 425 MiB of parameters on lavapipe's 128 MiB) is refused
/// before anything is allocated, naming what it is and the way out.
#[test]
fn a_pack_past_the_binding_limit_is_refused_naming_the_limit() {
    let limit = dev().limits().max_storage_buffer_binding_size;
    let members = (limit / 4 / (1 << 20) + 2) as usize;
    let shapes = vec![vec![1 << 20]; members];
    let e = elementwise::packed_zeros(dev(), &shapes).unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(&format!("{} MiB storage binding limit", limit >> 20)) && e.contains("smaller model"), "{e}");
}
