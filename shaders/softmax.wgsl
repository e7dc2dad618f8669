// Rust wrapper: engine/src/kernels/softmax.rs
// Row softmax, in place, one invocation per row (rows are short: attention
// scores have T ≤ a few hundred columns, and a row per invocation needs no
// barriers, which matters on CPU adapters).
//
// forward:  p_j = exp(s_j − max_k s_k) / Σ_k exp(s_k − max_k s_k)
// backward: ds_j = p_j · (dp_j − Σ_k p_k·dp_k)      (dp is overwritten by ds)

struct Params { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> s: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.cols;
        var mx = -3.402823e38;
        for (var j = 0u; j < p.cols; j++) { mx = max(mx, s[base + j]); }
        var sum = 0.0;
        for (var j = 0u; j < p.cols; j++) {
            let e = exp(s[base + j] - mx);
            s[base + j] = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for (var j = 0u; j < p.cols; j++) { s[base + j] *= inv; }
    }
}

@group(0) @binding(2) var<storage, read> probs: array<f32>;

@compute @workgroup_size(64)
fn backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // Binding 1 holds dp on entry and ds on exit; binding 2 the forward's p.
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.cols;
        var dot = 0.0;
        for (var j = 0u; j < p.cols; j++) { dot += probs[base + j] * s[base + j]; }
        for (var j = 0u; j < p.cols; j++) { s[base + j] = probs[base + j] * (s[base + j] - dot); }
    }
}
