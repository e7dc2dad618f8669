// Rust wrapper: engine/src/kernels/reduce.rs
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
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

fn x1(i: u32) -> f32 { return x[i >> 2u][i & 3u]; }

// Four columns per invocation as one vec4 when the view is vec4-aligned
// (cols, stride, offset multiples of 4), else one column per invocation.
@compute @workgroup_size(64)
fn sum_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let chunks = (p.rows + p.chunk - 1u) / p.chunk;
    let vec = p.cols % 4u == 0u && p.stride % 4u == 0u && p.offset % 4u == 0u;
    let per_row = select(p.cols, p.cols / 4u, vec);
    for (var t = gid.x; t < chunks * per_row; t += nwg.x * 64u) {
        let c = t / per_row;
        let j = t % per_row;
        let end = min(p.rows, (c + 1u) * p.chunk);
        if (vec) {
            var acc = vec4<f32>(0.0);
            for (var r = c * p.chunk; r < end; r++) {
                var v = x[(p.offset + r * p.stride) / 4u + j];
                if (p.weighted != 0u) { v *= w[r]; }
                acc += v;
            }
            out[c * per_row + j] = acc;
        } else {
            var acc = 0.0;
            for (var r = c * p.chunk; r < end; r++) {
                var v = x1(p.offset + r * p.stride + j);
                if (p.weighted != 0u) { v *= w[r]; }
                acc += v;
            }
            let o = c * p.cols + j;
            out[o >> 2u][o & 3u] = acc;
        }
    }
}

var<workgroup> partial: array<f32, 256>;

// Params reuse: rows = n (elements of x), cols = number of sums.
@compute @workgroup_size(256)
fn weighted_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let s = wg.x;
    var acc = 0.0;
    for (var i = lid.x; i < p.rows; i += 256u) { acc += w[s * p.rows + i] * x1(i); }
    partial[lid.x] = acc;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half >>= 1u) {
        if (lid.x < half) { partial[lid.x] += partial[lid.x + half]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { out[s >> 2u][s & 3u] = partial[0]; }
}
