// Rust wrapper: engine/src/kernels/gelu.rs
// Exact (erf) GELU, as PyTorch's nn.GELU() and timm's Mlp use.
//
// forward:  y = x · Φ(x),  Φ(x) = ½(1 + erf(x/√2))
// backward: dx = dy · (Φ(x) + x·φ(x)),  φ(x) = exp(−x²/2)/√(2π)
//
// WGSL has no erf. erfc comes from the Chebyshev fit of Numerical Recipes
// (fractional error < 1.2e-7 everywhere), so GELU is exact to f32 rounding.
// Works on vec4s (buffers are padded to 16 bytes; see elementwise.wgsl).

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

fn erfc_nr(v: vec4<f32>) -> vec4<f32> {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(poly);
    return select(2.0 - r, r, v >= vec4<f32>(0.0));
}

fn cdf(v: vec4<f32>) -> vec4<f32> { return 0.5 * erfc_nr(-v * 0.70710678118654752); }

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { out[i] = x[i] * cdf(x[i]); }
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) {
        let v = x[i];
        let pdf = 0.3989422804014327 * exp(-0.5 * v * v);
        out[i] = dy[i] * (cdf(v) + v * pdf);
    }
}
