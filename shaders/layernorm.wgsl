// LayerNorm over the last axis of x [rows, d], one invocation per row.
//
// forward:  μ = mean(x), σ⁻¹ = 1/sqrt(mean((x−μ)²) + eps), x̂ = (x−μ)σ⁻¹, y = γ·x̂ + β
//           (μ and σ⁻¹ are saved for the backward)
// backward: g = dy·γ
//           dx = σ⁻¹ · (g − mean(g) − x̂·mean(g·x̂))
//           dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy   (partial sums per chunk of rows,
//           finished by reduce.wgsl, so the order of additions is fixed)

struct Params { rows: u32, d: u32, eps: f32, chunk: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>; // [rows, 2]: μ, σ⁻¹

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.d;
        var sum = 0.0;
        for (var j = 0u; j < p.d; j++) { sum += x[base + j]; }
        let mean = sum / f32(p.d);
        var sq = 0.0;
        for (var j = 0u; j < p.d; j++) { let c = x[base + j] - mean; sq += c * c; }
        let rstd = inverseSqrt(sq / f32(p.d) + p.eps);
        for (var j = 0u; j < p.d; j++) { y[base + j] = (x[base + j] - mean) * rstd * gamma[j] + beta[j]; }
        stats[2u * r] = mean;
        stats[2u * r + 1u] = rstd;
    }
}

// Backward bindings: 1 x, 2 γ, 6 dy, 7 saved stats, 8 dx.
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read> saved: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.d;
        let mean = saved[2u * r];
        let rstd = saved[2u * r + 1u];
        var g_mean = 0.0;
        var gx_mean = 0.0;
        for (var j = 0u; j < p.d; j++) {
            let g = dy[base + j] * gamma[j];
            g_mean += g;
            gx_mean += g * (x[base + j] - mean) * rstd;
        }
        g_mean /= f32(p.d);
        gx_mean /= f32(p.d);
        for (var j = 0u; j < p.d; j++) {
            let xhat = (x[base + j] - mean) * rstd;
            dx[base + j] = rstd * (dy[base + j] * gamma[j] - g_mean - xhat * gx_mean);
        }
    }
}

// Partial parameter gradients: out[c, 0, j] = Σ dy·x̂, out[c, 1, j] = Σ dy over
// the rows of chunk c. Bindings: 1 x, 6 dy, 7 saved stats, 8 out.
@compute @workgroup_size(64)
fn backward_params(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let chunks = (p.rows + p.chunk - 1u) / p.chunk;
    for (var t = gid.x; t < chunks * p.d; t += nwg.x * 64u) {
        let c = t / p.d;
        let j = t % p.d;
        var sg = 0.0;
        var sb = 0.0;
        let end = min(p.rows, (c + 1u) * p.chunk);
        for (var r = c * p.chunk; r < end; r++) {
            let g = dy[r * p.d + j];
            sg += g * (x[r * p.d + j] - saved[2u * r]) * saved[2u * r + 1u];
            sb += g;
        }
        dx[(2u * c) * p.d + j] = sg;
        dx[(2u * c + 1u) * p.d + j] = sb;
    }
}
