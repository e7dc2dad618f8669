// Rust wrapper: engine/src/kernels/gelu.rs
// Exact (erf) GELU, as PyTorch's nn.GELU() and timm's Mlp use.
//
// forward:  y = gelu(x);  backward: dx = dy · gelu'(x)   (gelu_math.wgsl)
// Works on vec4s (buffers are padded to 16 bytes; see elementwise.wgsl) of
// `elem` (f32, or f16 under mixed precision: elem_f16.wgsl); math in f32.

struct Params { n: u32, _pad0: u32, _pad1: u32, _pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<elem>>;

@compute @workgroup_size(256)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) { out[i] = to_elem4(gelu4(vec4<f32>(x[i]))); }
}

@compute @workgroup_size(256)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) {
        out[i] = to_elem4(vec4<f32>(dy[i]) * gelu_grad4(vec4<f32>(x[i])));
    }
}
