// Rust wrapper: engine/src/kernels/cast.rs
// f32 ↔ f16 for mixed precision: the f16 copies of weights and activations
// that matmuls read (elem_f16.wgsl), and reading f16 tensors back as f32.
// A vec4 per invocation; buffers are padded to 16 bytes (elementwise.wgsl),
// so the last vec4 may run past n into padding.
enable f16;

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wide_in: array<vec4<f32>>;
// f16 output as its bits, four halves in two words (see half_bits).
@group(0) @binding(2) var<storage, read_write> half_out: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read> half_in: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> wide_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { half_out[i] = half_bits(wide_in[i]); }
}

@compute @workgroup_size(256)
fn to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { wide_out[i] = vec4<f32>(half_in[i]); }
}

// The f16 bits of v, lanes 0 and 1 in the first word (low half first).
// WGSL leaves converting a value past f16's range indeterminate (an adapter
// may clamp it to ±65504), but mixed precision needs overflow to show as
// ±∞, and NaN to stay NaN, for the loss scaler to skip the step: values that
// round to ∞ under round-to-nearest-even (|x| ≥ 65520) and ∞/NaN get their
// bit patterns here, tested on bits, not by float comparisons (which WGSL
// may evaluate as if NaN did not exist); the rest convert with pack2x16float.
fn half_bits(v: vec4<f32>) -> vec2<u32> {
    let bits = bitcast<vec4<u32>>(v);
    let magnitude = bits & vec4<u32>(0x7fffffffu);
    let special = magnitude >= vec4<u32>(0x477ff000u);
    let finite = bitcast<vec4<f32>>(select(bits, vec4<u32>(0u), special));
    let nan = magnitude > vec4<u32>(0x7f800000u);
    let pattern = ((bits >> vec4<u32>(16u)) & vec4<u32>(0x8000u)) | select(vec4<u32>(0x7c00u), vec4<u32>(0x7e00u), nan);
    let words = vec2<u32>(pack2x16float(finite.xy), pack2x16float(finite.zw));
    let lo = select(words & vec2<u32>(0xffffu), pattern.xz, special.xz);
    let hi = select(words >> vec2<u32>(16u), pattern.yw, special.yw);
    return lo | (hi << vec2<u32>(16u));
}
