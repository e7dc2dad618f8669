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
    tile(wg, lid);
}

// row_sums[i] (+)= Σ_k op(A)[i, k] of batch 0, rows strided over the
// invocations of the extra z-slice of workgroups (z = batches) past the tiles: the bias gradient
// a linear layer's dW = dYᵀ·X product computes beside it.
@group(0) @binding(5) var<storage, read_write> row_sums: array<f32>;

@compute @workgroup_size(16, 16, 1)
fn main_row_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    if (wg.z < p.batches) {
        tile(wg, lid);
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

fn tile(wg: vec3<u32>, lid: vec3<u32>) {
    let z = wg.z;
    let outer = z / p.heads;
    let inner = z % p.heads;
    let a_base = p.a_off + outer * p.a_b0 + inner * p.a_b1;
    let b_base = p.b_off + outer * p.b_b0 + inner * p.b_b1;
    let c_base = p.c_off + outer * p.c_b0 + inner * p.c_b1;
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

    for (var i = 0u; i < 4u; i++) {
        let r = tile_row + lid.y + 16u * i;
        if (r >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = tile_col + lid.x + 16u * j;
            if (col >= p.n) { continue; }
            var v = p.alpha * acc[i * 4u + j];
            if ((p.flags & ADD_BIAS) != 0u) { v += bias[col]; }
            let at = c_base + r * p.c_row + col;
            if (p.beta != 0.0) { v += p.beta * c[at]; }
            c[at] = v;
        }
    }
}
