// Rust wrapper: engine/src/kernels/layernorm.rs
// Backward bindings: 1 x, 2 γ, 6 dy, 7 saved stats, 8 dx, 9 partial sums.
@group(0) @binding(6) var<storage, read> dy: array<vec4<elem>>;
@group(0) @binding(7) var<storage, read> saved: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> partial: array<vec4<f32>>;

fn dy4(i: u32) -> vec4<f32> { return vec4<f32>(dy[i]); }
fn dy1(i: u32) -> f32 { return f32(dy[i >> 2u][i & 3u]); }

fn input_gradient(r: u32) {
    let mean = saved[2u * r];
    let rstd = saved[2u * r + 1u];
    if (vec_rows()) {
        let base = r * p.d / 4u;
        var g4 = vec4<f32>(0.0);
        var gx4 = vec4<f32>(0.0);
        for (var j = 0u; j < p.d / 4u; j++) {
            let g = dy4(base + j) * gamma[j];
            g4 += g;
            gx4 += g * (x4(base + j) - mean) * rstd;
        }
        let g_mean = (g4.x + g4.y + g4.z + g4.w) / f32(p.d);
        let gx_mean = (gx4.x + gx4.y + gx4.z + gx4.w) / f32(p.d);
        for (var j = 0u; j < p.d / 4u; j++) {
            let xhat = (x4(base + j) - mean) * rstd;
            var v = rstd * (dy4(base + j) * gamma[j] - g_mean - xhat * gx_mean);
            if (p.accumulate_input != 0u) { v += dx[base + j]; }
            dx[base + j] = v;
        }
    } else {
        let base = r * p.d;
        var g_mean = 0.0;
        var gx_mean = 0.0;
        for (var j = 0u; j < p.d; j++) {
            let g = dy1(base + j) * g1(j);
            g_mean += g;
            gx_mean += g * (x1(base + j) - mean) * rstd;
        }
        g_mean /= f32(p.d);
        gx_mean /= f32(p.d);
        for (var j = 0u; j < p.d; j++) {
            let i = base + j;
            let xhat = (x1(i) - mean) * rstd;
            var v = rstd * (dy1(i) * g1(j) - g_mean - xhat * gx_mean);
            if (p.accumulate_input != 0u) { v += dx[i >> 2u][i & 3u]; }
            dx[i >> 2u][i & 3u] = v;
        }
    }
}

// One pass over a chunk of 64 rows per workgroup: each invocation writes the
// input gradient of one row, then the workgroup sums dy·x̂ and dy over the
// chunk's rows for 4 columns per invocation (partial[c, 0, j] and
// partial[c, 1, j], d padded to a multiple of 4). backward_params_finish adds
// up the chunks.
@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let chunks = (p.rows + 63u) / 64u;
    let d4 = (p.d + 3u) / 4u;
    for (var c = wg.x; c < chunks; c += nwg.x) {
        let r0 = c * 64u;
        if (r0 + lid.x < p.rows) { input_gradient(r0 + lid.x); }
        let end = min(p.rows, r0 + 64u);
        for (var j4 = lid.x; j4 < d4; j4 += 64u) {
            var sg = vec4<f32>(0.0);
            var sb = vec4<f32>(0.0);
            for (var r = r0; r < end; r++) {
                var g: vec4<f32>;
                var xv: vec4<f32>;
                if (vec_rows()) {
                    g = dy4(r * d4 + j4);
                    xv = x4(r * d4 + j4);
                } else {
                    for (var k = 0u; k < 4u; k++) {
                        let j = min(j4 * 4u + k, p.d - 1u);
                        g[k] = dy1(r * p.d + j);
                        xv[k] = x1(r * p.d + j);
                    }
                }
                sg += g * (xv - saved[2u * r]) * saved[2u * r + 1u];
                sb += g;
            }
            partial[(2u * c) * d4 + j4] = sg;
            partial[(2u * c + 1u) * d4 + j4] = sb;
        }
    }
}

// dγ[j] = Σ_c partial[c, 0, j] and dβ[j] = Σ_c partial[c, 1, j], in chunk
// order; with accumulate ≠ 0 added to what dγ and dβ hold (gradients
// accumulated in place). Bindings: 10 partial sums, 11 dγ, 12 dβ.
@group(0) @binding(10) var<storage, read> sums: array<f32>;
@group(0) @binding(11) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(12) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(64)
fn backward_params_finish(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let chunks = (p.rows + 63u) / 64u;
    let d_pad = (p.d + 3u) / 4u * 4u;
    for (var j = gid.x; j < p.d; j += nwg.x * 64u) {
        var sg = 0.0;
        var sb = 0.0;
        for (var c = 0u; c < chunks; c++) {
            sg += sums[2u * c * d_pad + j];
            sb += sums[(2u * c + 1u) * d_pad + j];
        }
        if (p.accumulate_params != 0u) {
            sg += dgamma[j];
            sb += dbeta[j];
        }
        dgamma[j] = sg;
        dbeta[j] = sb;
    }
}
