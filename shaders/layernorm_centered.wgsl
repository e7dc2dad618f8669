// Rust wrapper: engine/src/kernels/layernorm.rs
// Mixed precision (elem_f32_res_f16.wgsl): y as f16 for the products that
// read it, and the centred input x − μ as f16 for the backward pass, which
// reads it as its x with μ saved as 0. Centred, its rounding error is
// relative to the row's spread, so x̂ keeps f16's relative precision even on
// rows whose mean is large next to their spread. y is computed from the
// rounded x − μ, so forward_from_centered recomputes it exactly for the
// backward pass, which then need not keep it.
@group(0) @binding(13) var<storage, read_write> centered: array<vec4<res>>;

@compute @workgroup_size(64)
fn forward_centered(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let m = row_moments(r);
        if (vec_rows()) {
            let base = r * p.d / 4u;
            for (var j = 0u; j < p.d / 4u; j++) {
                let c = to_res4(x4(base + j) - m.x);
                centered[base + j] = c;
                y[base + j] = to_res4(vec4<f32>(c) * m.y * gamma[j] + beta[j]);
            }
        } else {
            for (var j = 0u; j < p.d; j++) {
                let i = r * p.d + j;
                let c = to_res(x1(i) - m.x);
                centered[i >> 2u][i & 3u] = c;
                y[i >> 2u][i & 3u] = to_res(f32(c) * m.y * g1(j) + b1(j));
            }
        }
        stats[2u * r] = 0.0;
        stats[2u * r + 1u] = m.y;
    }
}

// y again from the kept x − μ and σ⁻¹ (stats), as forward_centered made it.
@compute @workgroup_size(64)
fn forward_from_centered(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let rstd = stats[2u * r + 1u];
        if (vec_rows()) {
            let base = r * p.d / 4u;
            for (var j = 0u; j < p.d / 4u; j++) {
                y[base + j] = to_res4(vec4<f32>(centered[base + j]) * rstd * gamma[j] + beta[j]);
            }
        } else {
            for (var j = 0u; j < p.d; j++) {
                let i = r * p.d + j;
                y[i >> 2u][i & 3u] = to_res(f32(centered[i >> 2u][i & 3u]) * rstd * g1(j) + b1(j));
            }
        }
    }
}
