// Rust wrapper: engine/src/kernels/batchnorm.rs
// BatchNorm1d without affine parameters over x [rows, d] (features in
// columns), one invocation per feature. The linear probe's head uses it on
// frozen features, so no backward is needed.
//
// train: μ_j, σ²_j over the rows (biased), y = (x − μ)/sqrt(σ² + eps);
//        running_mean ← (1 − momentum)·running_mean + momentum·μ
//        running_var  ← (1 − momentum)·running_var + momentum·σ²·n/(n−1)
// eval:  y = (x − running_mean)/sqrt(running_var + eps)

struct Params { rows: u32, d: u32, eps: f32, momentum: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> running_mean: array<f32>; // [d]
@group(0) @binding(4) var<storage, read_write> running_var: array<f32>; // [d]

@compute @workgroup_size(64)
fn train(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var j = gid.x; j < p.d; j += nwg.x * 64u) {
        var sum = 0.0;
        for (var r = 0u; r < p.rows; r++) { sum += x[r * p.d + j]; }
        let mean = sum / f32(p.rows);
        var sq = 0.0;
        for (var r = 0u; r < p.rows; r++) { let c = x[r * p.d + j] - mean; sq += c * c; }
        let var_b = sq / f32(p.rows);
        let inv = inverseSqrt(var_b + p.eps);
        for (var r = 0u; r < p.rows; r++) { y[r * p.d + j] = (x[r * p.d + j] - mean) * inv; }
        let unbiased = sq / f32(max(p.rows, 2u) - 1u);
        running_mean[j] = (1.0 - p.momentum) * running_mean[j] + p.momentum * mean;
        running_var[j] = (1.0 - p.momentum) * running_var[j] + p.momentum * unbiased;
    }
}

@compute @workgroup_size(64)
fn eval(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var e = gid.x; e < p.rows * p.d; e += nwg.x * 64u) {
        let j = e % p.d;
        y[e] = (x[e] - running_mean[j]) * inverseSqrt(running_var[j] + p.eps);
    }
}
