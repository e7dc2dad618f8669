// Rust wrapper: engine/src/kernels/layernorm.rs
// Mixed precision (elem_f32_res_f16.wgsl): y as f16 for the products that
// read it, and the centred input x − μ as f16 for the backward pass, which
// reads it as its x with μ saved as 0. Centred, its rounding error is
// relative to the row's spread, so x̂ keeps f16's relative precision even on
// rows whose mean is large next to their spread.
@group(0) @binding(13) var<storage, read_write> centered: array<vec4<res>>;

@compute @workgroup_size(64)
fn forward_centered(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let m = row_moments(r);
        if (vec_rows()) {
            let base = r * p.d / 4u;
            for (var j = 0u; j < p.d / 4u; j++) {
                let c = x4(base + j) - m.x;
                centered[base + j] = to_res4(c);
                y[base + j] = to_res4(c * m.y * gamma[j] + beta[j]);
            }
        } else {
            for (var j = 0u; j < p.d; j++) {
                let i = r * p.d + j;
                let c = x1(i) - m.x;
                centered[i >> 2u][i & 3u] = to_res(c);
                y[i >> 2u][i & 3u] = to_res(c * m.y * g1(j) + b1(j));
            }
        }
        stats[2u * r] = 0.0;
        stats[2u * r + 1u] = m.y;
    }
}
