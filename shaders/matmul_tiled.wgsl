// Rust wrapper: engine/src/kernels/matmul.rs
// Batched matmul for real GPUs: shared-memory tiles.
//
//   C[z] = alpha · op(A[z]) · op(B[z]) (+ bias[col]) (+ beta·C[z])      op(X) = X or Xᵀ
//
// Same parameters and operand layouts as matmul_register.wgsl. A 16×16
// workgroup computes a (16·TM)×(16·TN) tile of C; each step stages a
// (16·TM)×BK slice of A and a BK×(16·TN) slice of B in workgroup memory,
// loaded so that neighbouring invocations read neighbouring addresses
// (coalesced) whatever the transpose. Each invocation accumulates a TM×TN
// block, strided by 16 so the shared-memory reads of a warp hit distinct
// banks. With DOUBLE, two slices alternate: the next one is loaded while the
// current one is multiplied, one barrier per step instead of two.
// The shapes (TileShape in matmul.rs) keep each staging array within 2048
// floats, so both fit WebGPU's 16 KiB of workgroup memory.

// A and B are stored as `elem`, C and the epilogue tensors as `res` (f32,
// or f16 under mixed precision: see elem_f16.wgsl), converted on load and
// store; tiles and arithmetic are f32.
@group(0) @binding(1) var<storage, read> a: array<elem>;
@group(0) @binding(2) var<storage, read> b: array<elem>;
fn a_el(i: u32) -> f32 { return f32(a[i]); }
fn b_el(i: u32) -> f32 { return f32(b[i]); }
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<res>;

override TM: u32 = 4u;
override TN: u32 = 4u;
override BK: u32 = 16u;
override DOUBLE: bool = false;

var<workgroup> tile_a: array<f32, 2048>; // [slice][BK][16·TM]
var<workgroup> tile_b: array<f32, 2048>; // [slice][BK][16·TN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    store_tile(wg, lid, tile(wg, lid));
}

// Epilogues, as in matmul_common.wgsl (the extra tensors are laid out like C):
//   main_gelu:  C = h, activated = gelu(h)
//   main_input: C = h + input, or h · gelu'(input) with INPUT_GELU_GRAD
@group(0) @binding(6) var<storage, read> epilogue_in: array<res>;
@group(0) @binding(7) var<storage, read_write> activated: array<res>;

@compute @workgroup_size(16, 16, 1)
fn main_gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile(wg, lid);
    for (var i = 0u; i < TM; i++) {
        for (var j4 = 0u; j4 < TN / 4u; j4++) {
            let h = row_results(wg, lid, acc, i, j4);
            let g = gelu4(h);
            for (var t = 0u; t < 4u; t++) {
                let at = element(wg, lid, i, j4 * 4u + t);
                if (at >= 0) {
                    c[at] = to_res(h[t]);
                    activated[at] = to_res(g[t]);
                }
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn main_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile(wg, lid);
    for (var i = 0u; i < TM; i++) {
        for (var j4 = 0u; j4 < TN / 4u; j4++) {
            let h = row_results(wg, lid, acc, i, j4);
            var e = vec4<f32>(0.0);
            for (var t = 0u; t < 4u; t++) {
                let at = element(wg, lid, i, j4 * 4u + t);
                if (at >= 0) { e[t] = f32(epilogue_in[at]); }
            }
            var v: vec4<f32>;
            if ((p.flags & INPUT_GELU_GRAD) == 0u) { v = h + e; } else { v = h * gelu_grad4(e); }
            for (var t = 0u; t < 4u; t++) {
                let at = element(wg, lid, i, j4 * 4u + t);
                if (at >= 0) { c[at] = to_res(v[t]); }
            }
        }
    }
}

fn c_base_of(z: u32) -> u32 {
    return p.c_off + (z / p.heads) * p.c_b0 + (z % p.heads) * p.c_b1;
}

/// Index in C of this invocation's element (i, j) (row lid.y + 16i, column
/// lid.x + 16j of the tile), or −1 outside the matrix.
fn element(wg: vec3<u32>, lid: vec3<u32>, i: u32, j: u32) -> i32 {
    let r = wg.y * 16u * TM + lid.y + 16u * i;
    let col = wg.x * 16u * TN + lid.x + 16u * j;
    if (r >= p.m || col >= p.n) { return -1; }
    return i32(c_base_of(wg.z) + r * p.c_row + col);
}

/// alpha·acc (+ bias) (+ beta·C) for the invocation's elements (i, 4·j4 .. 4·j4+3).
fn row_results(wg: vec3<u32>, lid: vec3<u32>, acc: array<f32, 64>, i: u32, j4: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var t = 0u; t < 4u; t++) {
        let j = j4 * 4u + t;
        v[t] = p.alpha * acc[i * TN + j];
        let col = min(wg.x * 16u * TN + lid.x + 16u * j, p.n - 1u);
        if ((p.flags & ADD_BIAS) != 0u) { v[t] += bias[col]; }
        let at = element(wg, lid, i, j);
        if (p.beta != 0.0 && at >= 0) { v[t] += p.beta * f32(c[at]); }
    }
    return v;
}

fn store_tile(wg: vec3<u32>, lid: vec3<u32>, acc: array<f32, 64>) {
    for (var i = 0u; i < TM; i++) {
        for (var j4 = 0u; j4 < TN / 4u; j4++) {
            let v = row_results(wg, lid, acc, i, j4);
            for (var t = 0u; t < 4u; t++) {
                let at = element(wg, lid, i, j4 * 4u + t);
                if (at >= 0) { c[at] = to_res(v[t]); }
            }
        }
    }
}

// row_sums[i] (+)= Σ_k op(A)[i, k] of batch 0, rows strided over the
// invocations of the extra z-slice of workgroups (z = batches) past the tiles: the bias gradient
// a linear layer's dW = dYᵀ·X product computes beside it.
@group(0) @binding(5) var<storage, read_write> row_sums: array<f32>;

@compute @workgroup_size(16, 16, 1)
fn main_row_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    if (wg.z < p.batches) {
        store_tile(wg, lid, tile(wg, lid));
        return;
    }
    for (var i = (wg.y * nwg.x + wg.x) * 256u + lid.y * 16u + lid.x; i < p.m; i += nwg.x * nwg.y * 256u) {
        var acc = 0.0;
        for (var k = 0u; k < p.k; k++) {
            if (TRANS_A) { acc += a_el(p.a_off + k * p.a_row + i); } else { acc += a_el(p.a_off + i * p.a_row + k); }
        }
        if ((p.flags & ACCUMULATE_ROW_SUMS) != 0u) { acc += row_sums[i]; }
        row_sums[i] = acc;
    }
}

/// Stages the slice of A and B at k0 in workgroup-memory slice `slot`.
fn stage(k0: u32, slot: u32, a_base: u32, b_base: u32, tile_row: u32, tile_col: u32, flat: u32) {
    let bm = 16u * TM;
    let bn = 16u * TN;
    for (var e = flat; e < bm * BK; e += 256u) {
        // Element (r, kk) of the bm×BK slice of A.
        var r: u32; var kk: u32;
        if (TRANS_A) { kk = e / bm; r = e % bm; } else { r = e / BK; kk = e % BK; }
        let gr = tile_row + r;
        let gk = k0 + kk;
        var va = 0.0;
        if (gr < p.m && gk < p.k) {
            if (TRANS_A) { va = a_el(a_base + gk * p.a_row + gr); } else { va = a_el(a_base + gr * p.a_row + gk); }
        }
        tile_a[(slot * BK + kk) * bm + r] = va;
    }
    for (var e = flat; e < BK * bn; e += 256u) {
        // Element (kk, cc) of the BK×bn slice of B.
        var cc: u32; var kb: u32;
        if (TRANS_B) { cc = e / BK; kb = e % BK; } else { kb = e / bn; cc = e % bn; }
        let gc = tile_col + cc;
        let gkb = k0 + kb;
        var vb = 0.0;
        if (gc < p.n && gkb < p.k) {
            if (TRANS_B) { vb = b_el(b_base + gc * p.b_row + gkb); } else { vb = b_el(b_base + gkb * p.b_row + gc); }
        }
        tile_b[(slot * BK + kb) * bn + cc] = vb;
    }
}

/// The invocation's TM×TN results of the tile's product (before the epilogue).
fn tile(wg: vec3<u32>, lid: vec3<u32>) -> array<f32, 64> {
    let z = wg.z;
    let outer = z / p.heads;
    let inner = z % p.heads;
    let a_base = p.a_off + outer * p.a_b0 + inner * p.a_b1;
    let b_base = p.b_off + outer * p.b_b0 + inner * p.b_b1;
    let bm = 16u * TM;
    let bn = 16u * TN;
    let tile_row = wg.y * bm;
    let tile_col = wg.x * bn;
    let flat = lid.y * 16u + lid.x;

    var acc: array<f32, 64>;
    for (var i = 0u; i < TM * TN; i++) { acc[i] = 0.0; }

    let steps = (p.k + BK - 1u) / BK;
    if (DOUBLE) { stage(0u, 0u, a_base, b_base, tile_row, tile_col, flat); workgroupBarrier(); }
    for (var s = 0u; s < steps; s++) {
        var slot = 0u;
        if (DOUBLE) {
            slot = s % 2u;
            // The other slice was last read in step s − 1, which the barrier closed.
            if (s + 1u < steps) { stage((s + 1u) * BK, 1u - slot, a_base, b_base, tile_row, tile_col, flat); }
        } else {
            stage(s * BK, 0u, a_base, b_base, tile_row, tile_col, flat);
            workgroupBarrier();
        }
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 8>;
            var br: array<f32, 8>;
            for (var i = 0u; i < TM; i++) { ar[i] = tile_a[(slot * BK + kk) * bm + lid.y + 16u * i]; }
            for (var j = 0u; j < TN; j++) { br[j] = tile_b[(slot * BK + kk) * bn + lid.x + 16u * j]; }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) { acc[i * TN + j] = fma(ar[i], br[j], acc[i * TN + j]); }
            }
        }
        workgroupBarrier();
    }
    return acc;
}
