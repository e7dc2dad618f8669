// Rust wrapper: engine/src/kernels/optim.rs
// Optimizer updates: AdamW per tensor or over a whole pack of tensors in one
// dispatch (adamw_packed), LARS per tensor.
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

/// One AdamW hyper-parameter set: per tensor (adamw) or per pack member (adamw_packed).
struct Hyper { lr: f32, weight_decay: f32, beta1: f32, beta2: f32, eps: f32, grad_scale: f32, bias_c1: f32, bias_c2_sqrt: f32 }

/// The update of vec4 i of param, m and v from grad.
fn adamw_at(i: u32, h: Hyper) {
    let g = grad[i] * h.grad_scale;
    var w = param[i] * (1.0 - h.lr * h.weight_decay);
    let mi = m[i] + (1.0 - h.beta1) * (g - m[i]);
    let vi = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
    w -= (h.lr / h.bias_c1) * mi / (sqrt(vi) / h.bias_c2_sqrt + h.eps);
    param[i] = w;
    m[i] = mi;
    v[i] = vi;
}

@compute @workgroup_size(256)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let h = Hyper(a.lr, a.weight_decay, a.beta1, a.beta2, a.eps, a.grad_scale, a.bias_c1, a.bias_c2_sqrt);
    for (var i = gid.x; i < (a.n + 3u) / 4u; i += nwg.x * 256u) { adamw_at(i, h); }
}

// adamw_packed: the same update over every member of a pack (parameters,
// gradients, m and v packed alike, see elementwise::packed_zeros), one
// dispatch for the whole model like a multi-tensor apply. Member s covers
// vec4s [start, end) of the span with its own lr and weight decay; vec4s
// between members (alignment padding) belong to none and are left alone.

struct Segment { start: u32, end: u32, lr: f32, weight_decay: f32 }
struct AdamWPacked {
    segments: u32, n4: u32, _pad0: u32, _pad1: u32,
    beta1: f32, beta2: f32, eps: f32, grad_scale: f32,
    bias_c1: f32, bias_c2_sqrt: f32, _pad2: f32, _pad3: f32,
}

@group(0) @binding(0) var<uniform> ap: AdamWPacked;
@group(0) @binding(5) var<storage, read> segments: array<Segment>;

/// The member holding vec4 i: the last whose start is ≤ i (binary search).
fn segment_of(i: u32) -> u32 {
    var lo = 0u;
    var hi = ap.segments;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (segments[mid].start <= i) { lo = mid; } else { hi = mid; }
    }
    return lo;
}

/// The packed update of vec4 i, gradients multiplied by grad_scale.
fn adamw_packed_at(i: u32, grad_scale: f32) {
    let seg = segments[segment_of(i)];
    if (i < seg.end) {
        adamw_at(i, Hyper(seg.lr, seg.weight_decay, ap.beta1, ap.beta2, ap.eps, grad_scale, ap.bias_c1, ap.bias_c2_sqrt));
    }
}

@compute @workgroup_size(256)
fn adamw_packed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < ap.n4; i += nwg.x * 256u) { adamw_packed_at(i, ap.grad_scale); }
}

// adamw_packed_unscale: adamw_packed under dynamic loss scaling (scaler.wgsl).
// The gradients carry the loss scale, so they are divided by it here; and
// when the scaler's flag says some gradient was not finite, the step is
// skipped: parameters and moments stay as they were.
@group(0) @binding(6) var<storage, read> scale_state: array<u32, 4>;

@compute @workgroup_size(256)
fn adamw_packed_unscale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    if (scale_state[3] != 0u) { return; }
    let grad_scale = ap.grad_scale / bitcast<f32>(scale_state[0]);
    for (var i = gid.x; i < ap.n4; i += nwg.x * 256u) { adamw_packed_at(i, grad_scale); }
}

// lars (MAE's util/lars.py), for the linear probe:
//   dp = g + wd·p;  for weights (not 1-D): dp ← dp · trust·‖p‖/‖dp‖ (1 when a norm is 0)
//   μ ← momentum·μ + dp;  p ← p − lr·μ
// ‖p‖² and ‖dp‖² come from reduce.wgsl (weighted_sums) in the same batch.

struct Lars {
    n: u32, scaled: u32, _pad0: u32, _pad1: u32,
    lr: f32, momentum: f32, weight_decay: f32, trust: f32,
    grad_scale: f32, _pad2: f32, _pad3: f32, _pad4: f32,
}

@group(0) @binding(0) var<uniform> l: Lars;
@group(0) @binding(5) var<storage, read> norms_p: array<f32>;
@group(0) @binding(6) var<storage, read> norms_dp: array<f32>;

@compute @workgroup_size(256)
fn lars(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    var q = 1.0;
    if (l.scaled != 0u) {
        let pn = sqrt(norms_p[0]);
        let un = sqrt(norms_dp[0]);
        if (pn > 0.0 && un > 0.0) { q = l.trust * pn / un; }
    }
    for (var i = gid.x; i < (l.n + 3u) / 4u; i += nwg.x * 256u) {
        var dp = grad[i] * l.grad_scale;
        if (l.scaled != 0u) { dp = (dp + l.weight_decay * param[i]) * q; }
        let mu = l.momentum * m[i] + dp;
        m[i] = mu;
        param[i] = param[i] - l.lr * mu;
    }
}
