// Rust wrapper: engine/src/kernels/layernorm.rs
// LayerNorm over the last axis of x [rows, d], one invocation per row.
//
// forward:  μ = mean(x), σ⁻¹ = 1/sqrt(mean((x−μ)²) + eps), x̂ = (x−μ)σ⁻¹, y = γ·x̂ + β
//           (μ and σ⁻¹ are saved for the backward)
// backward: g = dy·γ
//           dx = σ⁻¹ · (g − mean(g) − x̂·mean(g·x̂))   (added to dx's contents
//           with accumulate_input: the residual stream's gradient summed in place)
//           dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy   (partial sums per chunk of rows
//           in the same pass, then one pass adding the chunks in order, so the
//           order of additions is fixed)
//
// x and dy are stored as `elem`, y as `res` (f32, or f16 under mixed
// precision: see forward_centered); statistics and arithmetic are f32.
//
// Rows are read as vec4s (d % 4 == 0, the usual case: 4× fewer loads on
// llvmpipe) or element by element otherwise.

struct Params { rows: u32, d: u32, eps: f32, accumulate_params: u32, accumulate_input: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<res>>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>; // [rows, 2]: μ, σ⁻¹

fn x4(i: u32) -> vec4<f32> { return vec4<f32>(x[i]); }
fn x1(i: u32) -> f32 { return f32(x[i >> 2u][i & 3u]); }
fn g1(i: u32) -> f32 { return gamma[i >> 2u][i & 3u]; }
fn b1(i: u32) -> f32 { return beta[i >> 2u][i & 3u]; }

fn vec_rows() -> bool { return p.d % 4u == 0u; }

/// (μ, σ⁻¹) of row r.
fn row_moments(r: u32) -> vec2<f32> {
    var mean = 0.0;
    var sq = 0.0;
    if (vec_rows()) {
        let base = r * p.d / 4u;
        var s4 = vec4<f32>(0.0);
        for (var j = 0u; j < p.d / 4u; j++) { s4 += x4(base + j); }
        mean = (s4.x + s4.y + s4.z + s4.w) / f32(p.d);
        var q4 = vec4<f32>(0.0);
        for (var j = 0u; j < p.d / 4u; j++) { let c = x4(base + j) - mean; q4 += c * c; }
        sq = q4.x + q4.y + q4.z + q4.w;
    } else {
        let base = r * p.d;
        for (var j = 0u; j < p.d; j++) { mean += x1(base + j); }
        mean /= f32(p.d);
        for (var j = 0u; j < p.d; j++) { let c = x1(base + j) - mean; sq += c * c; }
    }
    return vec2<f32>(mean, inverseSqrt(sq / f32(p.d) + p.eps));
}

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
