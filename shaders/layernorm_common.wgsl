// Shared part of the LayerNorm modules (wrapper: engine/src/kernels/layernorm.rs).
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
// precision: see layernorm_centered.wgsl); statistics and arithmetic are f32.
//
// Modules (engine/src/shaders.rs): this shared part, then layernorm.wgsl
// (forward) and layernorm_backward.wgsl in f32; layernorm_centered.wgsl for
// mixed precision's forward; layernorm_backward.wgsl again over f16 inputs.
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
