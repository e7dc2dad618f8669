// Rust wrapper: engine/src/kernels/reduce.rs
// Sums over rows, in a fixed order (no atomics), so results are bit-for-bit
// reproducible from run to run.
//
// sum_rows:      out[j] = Σ_r w_r · x[off + r·stride + j] (w_r = 1 without
//                weights), in one pass: bias gradients, the cls and
//                mask-token gradients (weights = which rows were mask tokens).
//                With accumulate ≠ 0 the sums are added to out (a gradient
//                accumulated in place).
// weighted_sums: out[s] = Σ_i w[s·n + i] · x[i], one workgroup per s, tree
//                reduction in workgroup memory (per-shot losses).

struct Params { rows: u32, cols: u32, stride: u32, offset: u32, weighted: u32, accumulate: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

fn x1(i: u32) -> f32 { return x[i >> 2u][i & 3u]; }

var<workgroup> column_sums: array<vec4<f32>, 256>;

// One dispatch whatever the row count. A workgroup of 16×16 invocations owns
// 16 units of columns (a vec4 of 4 columns when the view is vec4-aligned:
// cols, stride, offset multiples of 4; else one column) so neighbouring
// invocations read neighbouring addresses of a row; its 16 row lanes each
// sum every 16th row, then a tree in workgroup memory adds the lanes.
@compute @workgroup_size(256)
fn sum_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let vec = p.cols % 4u == 0u && p.stride % 4u == 0u && p.offset % 4u == 0u;
    let units = select(p.cols, p.cols / 4u, vec);
    let unit_lane = lid.x % 16u;
    let row_lane = lid.x / 16u;
    for (var first = wg.x * 16u; first < units; first += nwg.x * 16u) {
        let u = first + unit_lane;
        var acc = vec4<f32>(0.0);
        if (u < units) {
            for (var r = row_lane; r < p.rows; r += 16u) {
                var v: vec4<f32>;
                if (vec) {
                    v = x[(p.offset + r * p.stride) / 4u + u];
                } else {
                    v = vec4<f32>(x1(p.offset + r * p.stride + u), 0.0, 0.0, 0.0);
                }
                if (p.weighted != 0u) { v *= w[r]; }
                acc += v;
            }
        }
        column_sums[lid.x] = acc;
        workgroupBarrier();
        for (var half = 8u; half > 0u; half >>= 1u) {
            if (row_lane < half) { column_sums[lid.x] += column_sums[lid.x + half * 16u]; }
            workgroupBarrier();
        }
        if (row_lane == 0u && u < units) {
            var total = column_sums[unit_lane];
            if (vec) {
                if (p.accumulate != 0u) { total += out[u]; }
                out[u] = total;
            } else {
                var one = total.x;
                if (p.accumulate != 0u) { one += out[u >> 2u][u & 3u]; }
                out[u >> 2u][u & 3u] = one;
            }
        }
        workgroupBarrier();
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
