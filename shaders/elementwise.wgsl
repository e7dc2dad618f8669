// Elementwise kernels. Every entry point walks its elements with a grid-stride
// loop, so one dispatch of at most 65535 workgroups covers any tensor size.
//
//   axpby:      out[i] = alpha·x[i] + beta·y[i]        (add, sub, scale, copy)
//   add_bcast:  out[i] = x[i] + alpha·y[i mod period]   (bias rows, position embeddings)
//   mul:        out[i] = x[i]·y[i]
//   scale_rows: out[i] = x[i]·y[i / period]             (per-sample scaling, drop path)
//   broadcast:  out[i] = x[i mod period]                 (fill rows with a token)
//   fill:       out[i] = alpha
//   accumulate: out[i] += alpha·y[i]                     (gradient accumulation, in place)

struct Params {
    n: u32, period: u32, alpha: f32, beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn stride(nwg: vec3<u32>) -> u32 { return nwg.x * 256u; }

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = p.alpha * x[i] + p.beta * y[i]; }
}

@compute @workgroup_size(256)
fn add_bcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = x[i] + p.alpha * y[i % p.period]; }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = x[i] * y[i]; }
}

@compute @workgroup_size(256)
fn scale_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = x[i] * y[i / p.period]; }
}

// The entry points below use a subset of the bindings: broadcast reads x and
// writes out, fill only writes out, accumulate reads y into out.

@compute @workgroup_size(256)
fn broadcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = x[i % p.period]; }
}

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] = p.alpha; }
}

@compute @workgroup_size(256)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.n; i += stride(nwg)) { out[i] += p.alpha * y[i]; }
}
