// Rust wrapper: engine/src/kernels/cast.rs
// f32 ↔ f16 for mixed precision: the f16 copies of weights and activations
// that matmuls read (elem_f16.wgsl), and reading f16 tensors back as f32.
// A vec4 per invocation; buffers are padded to 16 bytes (elementwise.wgsl),
// so the last vec4 may run past n into padding.
enable f16;

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wide_in: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> half_out: array<vec4<f16>>;
@group(0) @binding(3) var<storage, read> half_in: array<vec4<f16>>;
@group(0) @binding(4) var<storage, read_write> wide_out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn to_f16(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { half_out[i] = vec4<f16>(wide_in[i]); }
}

@compute @workgroup_size(256)
fn to_f32(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { wide_out[i] = vec4<f32>(half_in[i]); }
}
