// Sums over rows, in a fixed order (no atomics), so results are bit-for-bit
// reproducible from run to run.
//
// sum_rows:      out[c, j] = Σ_{r in chunk c} w_r · x[off + r·stride + j]
//                (w_r = 1 without weights). Applied repeatedly until one row is
//                left: bias gradients, the LayerNorm parameter gradients, the
//                mask-token gradient (weights = which rows were mask tokens).
// weighted_sums: out[s] = Σ_i w[s·n + i] · x[i], one workgroup per s, tree
//                reduction in workgroup memory (per-shot losses).

struct Params { rows: u32, cols: u32, chunk: u32, stride: u32, offset: u32, weighted: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn sum_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let chunks = (p.rows + p.chunk - 1u) / p.chunk;
    for (var t = gid.x; t < chunks * p.cols; t += nwg.x * 64u) {
        let c = t / p.cols;
        let j = t % p.cols;
        var acc = 0.0;
        let end = min(p.rows, (c + 1u) * p.chunk);
        for (var r = c * p.chunk; r < end; r++) {
            var v = x[p.offset + r * p.stride + j];
            if (p.weighted != 0u) { v *= w[r]; }
            acc += v;
        }
        out[c * p.cols + j] = acc;
    }
}

var<workgroup> partial: array<f32, 256>;

// Params reuse: rows = n (elements of x), cols = number of sums.
@compute @workgroup_size(256)
fn weighted_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = wg.x;
    var acc = 0.0;
    for (var i = lid.x; i < p.rows; i += 256u) { acc += w[s * p.rows + i] * x[i]; }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lid.x < half) { partial[lid.x] += partial[lid.x + half]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { out[s] = partial[0]; }
}
