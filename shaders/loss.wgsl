// Rust wrapper: engine/src/kernels/loss.rs
// Per-row losses and their gradients. The weighted total is formed by
// reduce.wgsl (weighted_sums), so masking, per-shot means and loss weights are
// all just row weights w computed on the host from the mask plan.
//
// mse_rows:           out[r] = mean_j (pred[r,j] − t[r,j])²
// mse_rows_backward:  dpred[r,j] = g · w[r] · 2(pred[r,j] − t[r,j]) / cols
// xent_rows:          out[r] = −Σ_j t[r,j] · log softmax(z[r,:])_j   (soft targets:
//                     label smoothing and mixup are just other targets)
// xent_rows_backward: dz[r,j] = g · w[r] · (softmax(z[r,:])_j − t[r,j])
// (g is the upstream gradient of the scalar loss, read from a buffer so the
// backward never needs the host.)

struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pred: array<f32>;
@group(0) @binding(2) var<storage, read> tgt: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;

@compute @workgroup_size(64)
fn mse_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        var acc = 0.0;
        for (var j = 0u; j < p.cols; j++) {
            let d = pred[r * p.cols + j] - tgt[r * p.cols + j];
            acc += d * d;
        }
        out[r] = acc / f32(p.cols);
    }
}

@compute @workgroup_size(256)
fn mse_rows_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let scale = 2.0 * g[0] / f32(p.cols);
    for (var e = gid.x; e < p.rows * p.cols; e += nwg.x * 256u) {
        out[e] = scale * w[e / p.cols] * (pred[e] - tgt[e]);
    }
}

fn row_logsumexp(base: u32) -> f32 {
    var mx = -3.402823e38;
    for (var j = 0u; j < p.cols; j++) { mx = max(mx, pred[base + j]); }
    var sum = 0.0;
    for (var j = 0u; j < p.cols; j++) { sum += exp(pred[base + j] - mx); }
    return mx + log(sum);
}

@compute @workgroup_size(64)
fn xent_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.cols;
        let lse = row_logsumexp(base);
        var acc = 0.0;
        for (var j = 0u; j < p.cols; j++) { acc -= tgt[base + j] * (pred[base + j] - lse); }
        out[r] = acc;
    }
}

@compute @workgroup_size(64)
fn xent_rows_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.cols;
        let lse = row_logsumexp(base);
        let scale = g[0] * w[r];
        for (var j = 0u; j < p.cols; j++) {
            out[base + j] = scale * (exp(pred[base + j] - lse) - tgt[base + j]);
        }
    }
}
