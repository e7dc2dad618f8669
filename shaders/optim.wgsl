// Optimizer updates, one dispatch per parameter tensor.
//
// adamw (PyTorch's AdamW, in its order of operations):
//   p ← p·(1 − lr·wd)
//   m ← m + (1−β1)(g − m);  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1ᵗ)) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
// g is scaled by grad_scale first (1 / accumulation steps when averaging).
// Works on vec4s (buffers are padded to 16 bytes; see elementwise.wgsl).

struct AdamW {
    n: u32, _pad0: u32, _pad1: u32, _pad2: u32,
    lr: f32, beta1: f32, beta2: f32, eps: f32,
    weight_decay: f32, bias_c1: f32, bias_c2_sqrt: f32, grad_scale: f32,
}

@group(0) @binding(0) var<uniform> a: AdamW;
@group(0) @binding(1) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> v: array<vec4<f32>>;

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let step = a.lr / a.bias_c1;
    for (var i = gid.x; i < (a.n + 3u) / 4u; i += nwg.x * 256u) {
        let g = grad[i] * a.grad_scale;
        var w = param[i] * (1.0 - a.lr * a.weight_decay);
        let mi = m[i] + (1.0 - a.beta1) * (g - m[i]);
        let vi = a.beta2 * v[i] + (1.0 - a.beta2) * g * g;
        w -= step * mi / (sqrt(vi) / a.bias_c2_sqrt + a.eps);
        param[i] = w;
        m[i] = mi;
        v[i] = vi;
    }
}
