// Rust wrapper: engine/src/kernels/elementwise.rs
// Elementwise kernels over vec4s. Tensor buffers are padded to 16 bytes, so
// every kernel walks ceil(n/4) whole vec4s (the padding past n holds nothing
// anyone reads); on llvmpipe one vec4 load costs about what one f32 load
// does, so this is ~4× fewer loads. Grid-stride loops: one dispatch of at
// most 16384 workgroups covers any size.
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
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> y: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

fn count4() -> u32 { return (p.n + 3u) / 4u; }
fn stride(nwg: vec3<u32>) -> u32 { return nwg.x * 256u; }

fn x_at(j: u32) -> f32 { return x[j >> 2u][j & 3u]; }
fn y_at(j: u32) -> f32 { return y[j >> 2u][j & 3u]; }

/// Elements 4i..4i+3 of `y` repeated with `period` (vector reads when period % 4 == 0).
fn y_periodic(i: u32) -> vec4<f32> {
    if (p.period % 4u == 0u) { return y[i % (p.period / 4u)]; }
    let j = 4u * i;
    return vec4<f32>(y_at(j % p.period), y_at((j + 1u) % p.period), y_at((j + 2u) % p.period), y_at((j + 3u) % p.period));
}

@compute @workgroup_size(256)
fn axpby(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) { out[i] = p.alpha * x[i] + p.beta * y[i]; }
}

@compute @workgroup_size(256)
fn add_bcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) { out[i] = x[i] + p.alpha * y_periodic(i); }
}

@compute @workgroup_size(256)
fn mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) { out[i] = x[i] * y[i]; }
}

@compute @workgroup_size(256)
fn scale_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) {
        let j = 4u * i;
        let s = vec4<f32>(y_at(j / p.period), y_at((j + 1u) / p.period), y_at((j + 2u) / p.period), y_at((j + 3u) / p.period));
        out[i] = x[i] * s;
    }
}

// The entry points below use a subset of the bindings: broadcast reads x and
// writes out, fill only writes out, accumulate reads y into out.

@compute @workgroup_size(256)
fn broadcast(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) {
        if (p.period % 4u == 0u) {
            out[i] = x[i % (p.period / 4u)];
        } else {
            let j = 4u * i;
            out[i] = vec4<f32>(x_at(j % p.period), x_at((j + 1u) % p.period), x_at((j + 2u) % p.period), x_at((j + 3u) % p.period));
        }
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) { out[i] = vec4<f32>(p.alpha); }
}

@compute @workgroup_size(256)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < count4(); i += stride(nwg)) { out[i] += p.alpha * y[i]; }
}
