// Rust wrapper: engine/src/kernels/matmul.rs
// Batched matmul for real GPUs: shared-memory tiles.
//
//   C[z] = alpha · op(A[z]) · op(B[z]) (+ bias[col]) (+ beta·C[z])      op(X) = X or Xᵀ
//
// Same parameters and operand layouts as matmul_register.wgsl. A 16×16
// workgroup computes a 64×64 tile of C; each step stages a 64×16 slice of A
// and a 16×64 slice of B in workgroup memory, loaded so that neighbouring
// invocations read neighbouring addresses (coalesced) whatever the transpose.
// Each invocation accumulates a 4×4 block, strided by 16 so the shared-memory
// reads of a warp hit distinct banks.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    store_tile(wg, lid, tile(wg, lid));
}

// Epilogues, as in matmul_common.wgsl (the extra tensors are laid out like C):
//   main_gelu:  C = h, activated = gelu(h)
//   main_input: C = h + input (INPUT_OP 0) or h · gelu'(input) (INPUT_OP 1)
override INPUT_OP: u32 = 0u;
@group(0) @binding(6) var<storage, read> epilogue_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> activated: array<f32>;

@compute @workgroup_size(16, 16, 1)
fn main_gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile(wg, lid);
    for (var i = 0u; i < 4u; i++) {
        let h = row_results(wg, lid, acc, i);
        let g = gelu4(h);
        for (var j = 0u; j < 4u; j++) {
            let at = element(wg, lid, i, j);
            if (at >= 0) {
                c[at] = h[j];
                activated[at] = g[j];
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn main_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let acc = tile(wg, lid);
    for (var i = 0u; i < 4u; i++) {
        let h = row_results(wg, lid, acc, i);
        var e = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            let at = element(wg, lid, i, j);
            if (at >= 0) { e[j] = epilogue_in[at]; }
        }
        var v: vec4<f32>;
        if (INPUT_OP == 0u) { v = h + e; } else { v = h * gelu_grad4(e); }
        for (var j = 0u; j < 4u; j++) {
            let at = element(wg, lid, i, j);
            if (at >= 0) { c[at] = v[j]; }
        }
    }
}

fn c_base_of(z: u32) -> u32 {
    return p.c_off + (z / p.heads) * p.c_b0 + (z % p.heads) * p.c_b1;
}

/// Index in C of this invocation's element (i, j) (row lid.y + 16i, column
/// lid.x + 16j of the tile), or −1 outside the matrix.
fn element(wg: vec3<u32>, lid: vec3<u32>, i: u32, j: u32) -> i32 {
    let r = wg.y * BM + lid.y + 16u * i;
    let col = wg.x * BN + lid.x + 16u * j;
    if (r >= p.m || col >= p.n) { return -1; }
    return i32(c_base_of(wg.z) + r * p.c_row + col);
}

/// alpha·acc (+ bias) (+ beta·C) for the invocation's row i (4 columns).
fn row_results(wg: vec3<u32>, lid: vec3<u32>, acc: array<f32, 16>, i: u32) -> vec4<f32> {
    var v: vec4<f32>;
    for (var j = 0u; j < 4u; j++) {
        v[j] = p.alpha * acc[i * 4u + j];
        let col = min(wg.x * BN + lid.x + 16u * j, p.n - 1u);
        if ((p.flags & ADD_BIAS) != 0u) { v[j] += bias[col]; }
        let at = element(wg, lid, i, j);
        if (p.beta != 0.0 && at >= 0) { v[j] += p.beta * c[at]; }
    }
    return v;
}

fn store_tile(wg: vec3<u32>, lid: vec3<u32>, acc: array<f32, 16>) {
    for (var i = 0u; i < 4u; i++) {
        let v = row_results(wg, lid, acc, i);
        for (var j = 0u; j < 4u; j++) {
            let at = element(wg, lid, i, j);
            if (at >= 0) { c[at] = v[j]; }
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
            if (TRANS_A) { acc += a[p.a_off + k * p.a_row + i]; } else { acc += a[p.a_off + i * p.a_row + k]; }
        }
        if ((p.flags & ACCUMULATE_ROW_SUMS) != 0u) { acc += row_sums[i]; }
        row_sums[i] = acc;
    }
}

/// The invocation's 4×4 results of the tile's product (before the epilogue).
fn tile(wg: vec3<u32>, lid: vec3<u32>) -> array<f32, 16> {
    let z = wg.z;
    let outer = z / p.heads;
    let inner = z % p.heads;
    let a_base = p.a_off + outer * p.a_b0 + inner * p.a_b1;
    let b_base = p.b_off + outer * p.b_b0 + inner * p.b_b1;
    let tile_row = wg.y * BM;
    let tile_col = wg.x * BN;
    let flat = lid.y * 16u + lid.x;

    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var t = 0u; t < 4u; t++) {
            let e = flat + 256u * t;
            // A slice: element (r, kk) of the 64×16 block.
            var r: u32; var kk: u32;
            if (TRANS_A) { kk = e / BM; r = e % BM; } else { r = e / BK; kk = e % BK; }
            let gr = tile_row + r;
            let gk = k0 + kk;
            var va = 0.0;
            if (gr < p.m && gk < p.k) {
                if (TRANS_A) { va = a[a_base + gk * p.a_row + gr]; } else { va = a[a_base + gr * p.a_row + gk]; }
            }
            tile_a[kk * BM + r] = va;
            // B slice: element (kk, cc) of the 16×64 block.
            var cc: u32; var kb: u32;
            if (TRANS_B) { cc = e / BK; kb = e % BK; } else { kb = e / BN; cc = e % BN; }
            let gc = tile_col + cc;
            let gkb = k0 + kb;
            var vb = 0.0;
            if (gc < p.n && gkb < p.k) {
                if (TRANS_B) { vb = b[b_base + gc * p.b_row + gkb]; } else { vb = b[b_base + gkb * p.b_row + gc]; }
            }
            tile_b[kb * BN + cc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) { ar[i] = tile_a[kk * BM + lid.y + 16u * i]; }
            for (var j = 0u; j < 4u; j++) { br[j] = tile_b[kk * BN + lid.x + 16u * j]; }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = fma(ar[i], br[j], acc[i * 4u + j]); }
            }
        }
        workgroupBarrier();
    }

    return acc;
}
