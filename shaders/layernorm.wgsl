// Rust wrapper: engine/src/kernels/layernorm.rs
// LayerNorm's forward in f32 (layernorm_common.wgsl comes first).
@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let m = row_moments(r);
        if (vec_rows()) {
            let base = r * p.d / 4u;
            for (var j = 0u; j < p.d / 4u; j++) { y[base + j] = to_res4((x4(base + j) - m.x) * m.y * gamma[j] + beta[j]); }
        } else {
            for (var j = 0u; j < p.d; j++) {
                let i = r * p.d + j;
                y[i >> 2u][i & 3u] = to_res((x1(i) - m.x) * m.y * g1(j) + b1(j));
            }
        }
        stats[2u * r] = m.x;
        stats[2u * r + 1u] = m.y;
    }
}
