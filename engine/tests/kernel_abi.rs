//! The kernel ABI in one place: every WGSL entry point is dispatched once
//! through its Rust wrapper on a fresh device, and the device checks each new
//! pipeline against naga's reflection of the shader (uniform size against
//! `size_of` of the wrapper's `Params`, bindings and their access against
//! what the wrapper binds, `@workgroup_size` against the size the wrapper
//! computes its grid for). This test makes sure no entry point escapes that
//! check, and that each shader and its wrapper name each other.

use cmae_engine::device::reflect;
use cmae_engine::kernels::matmul::{
    Epilogue, MatView, Matmul, RowSums, linear, linear_add, linear_gelu, linear_weight_grads, matmul, matmul_gelu_grad,
    matmul_to,
};
use cmae_engine::kernels::patch::{PatchOrder, norm_pix_in_place, patchify};
use cmae_engine::kernels::reduce::{RowView, sum_rows, weighted_sums};
use cmae_engine::kernels::{
    attention, batchnorm, cast, elementwise, gather, gelu, layernorm, loss, optim, scaler, softmax,
};
use cmae_engine::shaders::ALL;
use cmae_engine::{DType, Device, MatmulKind, Tensor, TensorMut, TileShape};

/// Calls every kernel wrapper once on small shapes.
fn dispatch_every_wrapper(d: &Device) {
    let t = |v: &[f32], s: &[usize]| Tensor::from_f32(d, v, s).unwrap();
    let x = t(&[0.5, -1.0, 2.0, 0.25, 1.5, -0.5], &[2, 3]);
    let row = t(&[1.0, 2.0, 3.0], &[3]);
    let pair = t(&[1.0, 2.0], &[2]);

    elementwise::axpby(d, 1.0, &x, 2.0, &x).unwrap();
    elementwise::add_broadcast(d, &x, &row, 1.0).unwrap();
    elementwise::mul(d, &x, &x).unwrap();
    elementwise::scale_rows(d, &x, &pair).unwrap();
    elementwise::broadcast(d, &row, &[2, 3]).unwrap();
    let mut acc = elementwise::zeros(d, &[2, 3]).unwrap();
    elementwise::accumulate(d, &mut acc, &x, 1.0).unwrap();

    let tokens = t(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], &[2, 2, 2]);
    let idx = Tensor::from_u32(d, &[1, 0], &[2, 1]).unwrap();
    gather::gather_rows(d, &tokens, &idx).unwrap();
    gather::scatter_add_rows(d, &gather::gather_rows(d, &tokens, &idx).unwrap(), &idx, 2).unwrap();
    let mut out = elementwise::zeros(d, &[2, 2, 2]).unwrap();
    gather::copy_rows(d, &tokens, 0, &mut out, 1, 1).unwrap();
    gather::transpose(d, &x).unwrap();

    gelu::gelu_backward(d, &x, &gelu::gelu(d, &x).unwrap()).unwrap();
    let (y, stats) = layernorm::layer_norm(d, &x, &row, &row, 1e-6).unwrap();
    layernorm::layer_norm_backward(d, &x, &row, &stats, &y, None, layernorm::ParamGrads::New).unwrap();

    let weights = t(&[1.0, 1.0], &[2]);
    let one = t(&[1.0], &[1]);
    loss::mse_rows(d, &x, &y).unwrap();
    loss::mse_rows_backward(d, &x, &y, &weights, &one).unwrap();
    loss::xent_rows(d, &x, &y).unwrap();
    loss::xent_rows_backward(d, &x, &y, &weights, &one).unwrap();

    let mut probs = TensorMut::from_f32(d, &[0.0, 1.0, 2.0, 3.0], &[2, 2]).unwrap();
    softmax::softmax_in_place(d, &mut probs).unwrap();
    let probs = probs.freeze();
    let mut dp = TensorMut::from_f32(d, &[1.0, 0.0, 0.0, 1.0], &[2, 2]).unwrap();
    softmax::softmax_backward_in_place(d, &probs, &mut dp).unwrap();

    let imgs = t(&[0.5; 16], &[1, 1, 4, 4]);
    let mut patches = patchify(d, &imgs, 2, PatchOrder::ChannelLast).unwrap().into_mut().unwrap();
    norm_pix_in_place(d, &mut patches).unwrap();

    sum_rows(d, RowView::of(&x, 3), Some(&weights)).unwrap();
    weighted_sums(d, &row, &t(&[1.0, 1.0, 1.0], &[1, 3])).unwrap();

    let mut mean = TensorMut::from_f32(d, &[0.0; 3], &[3]).unwrap();
    let mut var = TensorMut::from_f32(d, &[1.0; 3], &[3]).unwrap();
    batchnorm::batch_norm_train(d, &x, (&mut mean, &mut var), 1e-6, 0.1).unwrap();
    batchnorm::batch_norm_eval(d, &x, (&mean, &var), 1e-6).unwrap();

    let grad = t(&[0.1, 0.2], &[2]);
    let mut param = TensorMut::from_f32(d, &[1.0, 2.0], &[2]).unwrap();
    let (mut m, mut v) = (elementwise::zeros(d, &[2]).unwrap(), elementwise::zeros(d, &[2]).unwrap());
    let adamw =
        optim::AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0, step: 1, grad_scale: 1.0 };
    optim::adamw(d, &mut param, &grad, &mut m, &mut v, adamw).unwrap();
    let pack = || elementwise::packed_zeros(d, &[vec![2], vec![3]]).unwrap();
    let (mut params, grads, mut ms, mut vs) = (pack(), pack(), pack(), pack());
    let fresh = scaler::ScaleState { scale: 1024.0, good_steps: 0, skipped_steps: 0, found_nonfinite: false };
    let mut loss_scaler = scaler::LossScaler::new(d, fresh, 2).unwrap();
    loss_scaler.find_nonfinite(d, &x).unwrap();
    for unscale in [None, Some(&loss_scaler)] {
        let mut p_refs = params.iter_mut().collect::<Vec<_>>();
        let g_refs = grads.iter().map(|t| t.as_tensor()).collect::<Vec<_>>();
        let mut m_refs = ms.iter_mut().collect::<Vec<_>>();
        let mut v_refs = vs.iter_mut().collect::<Vec<_>>();
        optim::adamw_packed(d, &mut p_refs, &g_refs, &mut m_refs, &mut v_refs, &[adamw; 2], unscale).unwrap();
    }
    loss_scaler.update(d).unwrap();
    let lars =
        optim::LarsStep { lr: 0.1, momentum: 0.9, weight_decay: 0.0, trust: 0.001, scaled: true, grad_scale: 1.0 };
    optim::lars(d, &mut param, &grad, &mut m, lars).unwrap();

    let qkv = t(&[0.1; 2 * 3 * 6], &[2, 3, 6]);
    attention::attention(d, &qkv, 1).unwrap();
    let qkv = t(&[0.1; 2 * 3 * 48], &[2, 3, 48]);
    for layout in [attention::FusedLayout::Tiles, attention::FusedLayout::Rows] {
        let (out, lse) = attention::fused_attention_in(d, &qkv, 1, layout).unwrap();
        attention::fused_attention_backward_in(d, &qkv, &out, &lse, &out, 1, layout).unwrap();
    }

    let mut kinds = vec![MatmulKind::Register, MatmulKind::Tiled(TileShape::DEFAULT)];
    if d.supports_subgroup_matmul() {
        kinds.push(MatmulKind::Subgroup);
    }
    // f16 operands run the same entry points in the f16 modules.
    let mut operands = vec![x.clone()];
    if d.kernel_families().shader_f16 {
        let half = cast::to_f16(d, &x).unwrap();
        cast::to_f32(d, &half).unwrap();
        operands.push(half);
    }
    for kind in kinds {
        d.set_matmul_kind(kind);
        for x in &operands {
            matmul(d, x, x, false, true).unwrap();
            linear(d, x, x, Some(&pair)).unwrap();
            linear_weight_grads(d, x, x, None, None, true).unwrap();
            let (h, _) = linear_gelu(d, x, x, Some(&pair), DType::F32).unwrap();
            linear_add(d, x, x, Some(&pair), &h).unwrap();
            let h16 = if x.dtype() == cmae_engine::DType::F16 { cast::to_f16(d, &h).unwrap() } else { h.clone() };
            matmul_gelu_grad(d, &h16, x, &operands[0]).unwrap();
        }
        if let [_, half] = operands.as_slice() {
            dispatch_f16_results(d, half, &pair);
        }
    }
    if d.kernel_families().shader_f16 {
        dispatch_f16_kernels(d, &x, &row, &qkv);
        loss_scaler.seed(d, 1.0).unwrap();
    }
    d.sync().unwrap();
}

/// The matmul entry points of the f16-result modules, through the wrappers
/// and the public `Matmul` (every combination `Matmul::run` accepts).
fn dispatch_f16_results(d: &Device, half: &Tensor, bias: &Tensor) {
    let f16 = DType::F16;
    matmul_to(d, half, half, false, true, f16).unwrap();
    let (h, _) = linear_gelu(d, half, half, Some(bias), f16).unwrap();
    matmul_gelu_grad(d, &h, half, half).unwrap();
    let c = TensorMut::uninit(d, &[2, 2], f16).unwrap();
    let view = |t| MatView::contiguous(t, 3, 0);
    let product = Matmul {
        a: view(half),
        b: view(half),
        c: MatView::contiguous(&c, 2, 0),
        m: 2,
        n: 2,
        k: 3,
        outer: 1,
        heads: 1,
        trans_a: false,
        trans_b: true,
        alpha: 1.0,
        beta: 0.0,
        bias: None,
        row_sums: None,
        epilogue: Epilogue::AddInput(&h),
        label: None,
    };
    product.run(d).unwrap();
    let sums = TensorMut::uninit(d, &[2], DType::F32).unwrap();
    let row_sums = Some(RowSums { out: &sums, accumulate: false });
    Matmul { row_sums, epilogue: Epilogue::None, ..product }.run(d).unwrap();
}

/// The f16 forms of GELU, LayerNorm and fused attention (mixed precision).
fn dispatch_f16_kernels(d: &Device, x: &Tensor, row: &Tensor, qkv: &Tensor) {
    let half = cast::to_f16(d, x).unwrap();
    gelu::gelu_backward(d, &half, &gelu::gelu(d, &half).unwrap()).unwrap();
    let (y, centered, stats) = layernorm::layer_norm_centered(d, x, row, row, 1e-6).unwrap();
    layernorm::layer_norm_from_centered(d, &centered, row, row, &stats).unwrap();
    layernorm::layer_norm_backward(d, &centered, row, &stats, &y, None, layernorm::ParamGrads::New).unwrap();
    let qkv = cast::to_f16(d, qkv).unwrap();
    for layout in [attention::FusedLayout::Tiles, attention::FusedLayout::Rows] {
        let (out, lse) = attention::fused_attention_in(d, &qkv, 1, layout).unwrap();
        attention::fused_attention_backward_in(d, &qkv, &out, &lse, &out, 1, layout).unwrap();
    }
}

#[test]
fn every_entry_point_passes_the_abi_check_through_its_wrapper() {
    // A private device: its record of checked kernels is this test's alone.
    let d = Device::from_env().expect("a GPU adapter (CI installs lavapipe)");
    dispatch_every_wrapper(&d);
    let checked = d.checked_kernels();
    let mut missed = Vec::new();
    for shader in ALL {
        if let Some(missing) = d.kernel_families().missing(shader.needs) {
            for (need, required) in
                [(shader.needs.subgroups_of_8, "CMAE_REQUIRE_SUBGROUPS"), (shader.needs.f16, "CMAE_REQUIRE_F16")]
            {
                if need && std::env::var_os(required).is_some() {
                    panic!("{required} is set but {} lacks {missing}", d.info().name);
                }
            }
            eprintln!("NOT RUN: {} lacks {missing}, so {} was not checked", d.info().name, shader.name);
            continue;
        }
        for entry in reflect(shader).unwrap() {
            if !checked.iter().any(|&(s, e)| s == shader.name && e == entry.entry) {
                missed.push(format!("{}::{}", shader.name, entry.entry));
            }
        }
    }
    assert!(missed.is_empty(), "entry points no wrapper dispatched (so never ABI-checked): {missed:?}");

    // The catalog the backend translation test walks holds every pipeline
    // the wrappers built, constants and all.
    let catalog = cmae_engine::kernels::catalog().unwrap();
    for built in d.built_kernels() {
        assert!(catalog.contains(&built), "{built:?} is not in kernels::catalog()");
    }
}

#[test]
fn each_shader_and_its_wrapper_name_each_other() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for shader in ALL {
        let wrapper = format!("engine/src/kernels/{}", shader.wrapper);
        let rust = std::fs::read_to_string(root.join("..").join(&wrapper))
            .unwrap_or_else(|e| panic!("{}: wrapper {wrapper}: {e}", shader.name));
        // The file with the entry points (the module's last) names the wrapper.
        let file = shader.files.last().unwrap();
        assert!(rust.contains(&format!("shaders/{file}")), "{wrapper} does not name shaders/{file}");
        let wgsl = std::fs::read_to_string(root.join("../shaders").join(file)).unwrap();
        assert!(
            wgsl.lines().next().is_some_and(|l| l == format!("// Rust wrapper: {wrapper}")),
            "shaders/{file} does not start by naming {wrapper}"
        );
    }
}
