// Shared part of the register-blocked matmuls for CPU-like adapters
// (matmul_register.wgsl, matmul_subgroup.wgsl are appended to it).
//
//   C[z] = alpha · op(A[z]) · op(B[z]) (+ bias[col]) (+ beta·C[z])      op(X) = X or Xᵀ
//
// On llvmpipe every storage load is a per-lane scalar loop and workgroup
// memory is no faster than storage, so these kernels use no shared memory:
// each invocation keeps an 8×16 block of C in registers (eight 4×4 matrices)
// and reads its operands with vec4 loads straight from storage. Loops over
// register arrays defeat llvmpipe's unroller (measured 8× slower), hence
// whole-matrix values and explicit fma chains instead.
//
// Blocks are numbered over the whole batch, so every lane has work even when
// each matrix is small (attention over 17 tokens), with neighbouring
// invocations on neighbouring row blocks of the same column block.
//
// Operand X at batch z (z = outer·heads + inner) starts at
//   x_off + outer·x_b0 + inner·x_b1, with rows x_row elements apart.
// NN: A(i,k) = a[base + i·a_row + k]    B(k,j) = b[base + k·b_row + j]
// NT: B(k,j) = b[base + j·b_row + k]    (x·Wᵀ, Q·Kᵀ, dO·Vᵀ)
// TN: A(i,k) = a[base + k·a_row + i]    (dYᵀ·X, Pᵀ·dO)
//
// VEC: every contiguous extent, row stride and offset is a multiple of 4, so
// whole vec4s are loaded. Otherwise elements are fetched one by one and the
// K tail is zero-filled: any shape works, more slowly.

override VEC: bool = true;
// A and B are stored as `elem`, C and the epilogue tensors as `res` (f32,
// or f16 under mixed precision: see elem_f16.wgsl), converted on load and
// store; all arithmetic is f32.
@group(0) @binding(1) var<storage, read> a: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<elem>>;
fn a_vec(i: u32) -> vec4<f32> { return vec4<f32>(a[i]); }
fn b_vec(i: u32) -> vec4<f32> { return vec4<f32>(b[i]); }
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<res>;

fn a_at(i: u32) -> f32 { return a_vec(i >> 2u)[i & 3u]; }
fn b_at(i: u32) -> f32 { return b_vec(i >> 2u)[i & 3u]; }
// 4 consecutive elements from flat index i; lanes ≥ valid are 0.
fn a4(i: u32, valid: u32) -> vec4<f32> {
    if (VEC) { return a_vec(i >> 2u); }
    return vec4<f32>(a_at(i), select(0.0, a_at(i + 1u), valid > 1u), select(0.0, a_at(i + 2u), valid > 2u), select(0.0, a_at(i + 3u), valid > 3u));
}
fn b4(i: u32, valid: u32) -> vec4<f32> {
    if (VEC) { return b_vec(i >> 2u); }
    return vec4<f32>(b_at(i), select(0.0, b_at(i + 1u), valid > 1u), select(0.0, b_at(i + 2u), valid > 2u), select(0.0, b_at(i + 3u), valid > 3u));
}

// Rows 4g..4g+3 of this block of A for k..k+3, as a matrix whose column i is row i's vec4.
fn a_block(base: u32, rows: vec4<u32>, k: u32, kv: u32) -> mat4x4<f32> {
    if (TRANS_A) {
        // A stored [K, M]: read along M for each k, then transpose.
        let kc = vec4<u32>(k, min(k + 1u, p.k - 1u), min(k + 2u, p.k - 1u), min(k + 3u, p.k - 1u));
        var m: mat4x4<f32>;
        if (VEC) {
            m = mat4x4<f32>(a_vec((base + kc.x * p.a_row + rows.x) >> 2u), a_vec((base + kc.y * p.a_row + rows.x) >> 2u),
                            a_vec((base + kc.z * p.a_row + rows.x) >> 2u), a_vec((base + kc.w * p.a_row + rows.x) >> 2u));
        } else {
            m = mat4x4<f32>(
                vec4<f32>(a_at(base + kc.x * p.a_row + rows.x), a_at(base + kc.x * p.a_row + rows.y), a_at(base + kc.x * p.a_row + rows.z), a_at(base + kc.x * p.a_row + rows.w)),
                vec4<f32>(a_at(base + kc.y * p.a_row + rows.x), a_at(base + kc.y * p.a_row + rows.y), a_at(base + kc.y * p.a_row + rows.z), a_at(base + kc.y * p.a_row + rows.w)),
                vec4<f32>(a_at(base + kc.z * p.a_row + rows.x), a_at(base + kc.z * p.a_row + rows.y), a_at(base + kc.z * p.a_row + rows.z), a_at(base + kc.z * p.a_row + rows.w)),
                vec4<f32>(a_at(base + kc.w * p.a_row + rows.x), a_at(base + kc.w * p.a_row + rows.y), a_at(base + kc.w * p.a_row + rows.z), a_at(base + kc.w * p.a_row + rows.w)));
        }
        let live = vec4<f32>(vec4<bool>(true, kv > 1u, kv > 2u, kv > 3u));
        return transpose(mat4x4<f32>(m[0] * live.x, m[1] * live.y, m[2] * live.z, m[3] * live.w));
    }
    return mat4x4<f32>(a4(base + rows.x * p.a_row + k, kv), a4(base + rows.y * p.a_row + k, kv),
                       a4(base + rows.z * p.a_row + k, kv), a4(base + rows.w * p.a_row + k, kv));
}

// Columns 4g..4g+3 of B for k..k+3, as a matrix whose column kk is B(k+kk, cols).
fn b_block(base: u32, cols: vec4<u32>, k: u32, kv: u32) -> mat4x4<f32> {
    if (TRANS_B) {
        return transpose(mat4x4<f32>(b4(base + cols.x * p.b_row + k, kv), b4(base + cols.y * p.b_row + k, kv),
                                     b4(base + cols.z * p.b_row + k, kv), b4(base + cols.w * p.b_row + k, kv)));
    }
    let kc = vec4<u32>(k, min(k + 1u, p.k - 1u), min(k + 2u, p.k - 1u), min(k + 3u, p.k - 1u));
    var m: mat4x4<f32>;
    if (VEC) {
        m = mat4x4<f32>(b_vec((base + kc.x * p.b_row + cols.x) >> 2u), b_vec((base + kc.y * p.b_row + cols.x) >> 2u),
                        b_vec((base + kc.z * p.b_row + cols.x) >> 2u), b_vec((base + kc.w * p.b_row + cols.x) >> 2u));
    } else {
        m = mat4x4<f32>(
            vec4<f32>(b_at(base + kc.x * p.b_row + cols.x), b_at(base + kc.x * p.b_row + cols.y), b_at(base + kc.x * p.b_row + cols.z), b_at(base + kc.x * p.b_row + cols.w)),
            vec4<f32>(b_at(base + kc.y * p.b_row + cols.x), b_at(base + kc.y * p.b_row + cols.y), b_at(base + kc.y * p.b_row + cols.z), b_at(base + kc.y * p.b_row + cols.w)),
            vec4<f32>(b_at(base + kc.z * p.b_row + cols.x), b_at(base + kc.z * p.b_row + cols.y), b_at(base + kc.z * p.b_row + cols.z), b_at(base + kc.z * p.b_row + cols.w)),
            vec4<f32>(b_at(base + kc.w * p.b_row + cols.x), b_at(base + kc.w * p.b_row + cols.y), b_at(base + kc.w * p.b_row + cols.z), b_at(base + kc.w * p.b_row + cols.w)));
    }
    let live = vec4<f32>(vec4<bool>(true, kv > 1u, kv > 2u, kv > 3u));
    return mat4x4<f32>(m[0] * live.x, m[1] * live.y, m[2] * live.z, m[3] * live.w);
}

// acc + bm·am with fused multiply-adds (a plain matrix product would compile
// to separate multiplies and adds on CPU adapters).
fn mac(acc: mat4x4<f32>, bm: mat4x4<f32>, am: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(vec4(am[0].w), bm[3], fma(vec4(am[0].z), bm[2], fma(vec4(am[0].y), bm[1], fma(vec4(am[0].x), bm[0], acc[0])))),
        fma(vec4(am[1].w), bm[3], fma(vec4(am[1].z), bm[2], fma(vec4(am[1].y), bm[1], fma(vec4(am[1].x), bm[0], acc[1])))),
        fma(vec4(am[2].w), bm[3], fma(vec4(am[2].z), bm[2], fma(vec4(am[2].y), bm[1], fma(vec4(am[2].x), bm[0], acc[2])))),
        fma(vec4(am[3].w), bm[3], fma(vec4(am[3].z), bm[2], fma(vec4(am[3].y), bm[1], fma(vec4(am[3].x), bm[0], acc[3])))));
}

/// Row r's results at columns col..col+3: alpha·acc (+ bias) (+ beta·C).
/// Lanes past the last column are never written.
fn results(acc_row: vec4<f32>, c_base: u32, r: u32, col: u32) -> vec4<f32> {
    var out = acc_row * p.alpha;
    for (var t = 0u; t < 4u; t++) {
        let cc = min(col + t, p.n - 1u);
        if ((p.flags & ADD_BIAS) != 0u) { out[t] += bias[cc]; }
        if (p.beta != 0.0) { out[t] += p.beta * f32(c[c_base + r * p.c_row + cc]); }
    }
    return out;
}

fn write_c(v: vec4<f32>, c_base: u32, r: u32, col: u32) {
    for (var t = 0u; t < 4u; t++) {
        if (col + t < p.n) { c[c_base + r * p.c_row + col + t] = to_res(v[t]); }
    }
}

fn store(acc: mat4x4<f32>, c_base: u32, rows: u32, col: u32) {
    for (var i = 0u; i < 4u; i++) {
        let r = rows + i;
        if (r >= p.m) { return; }
        write_c(results(acc[i], c_base, r, col), c_base, r, col);
    }
}

// Epilogues (main_gelu, main_input). The extra tensors are laid out like C
// (same index for the same element).
//   main_gelu:  C = h, activated = gelu(h): an MLP's fc1, keeping the
//               pre-activation h for the backward pass.
//   main_input: C = h + input (a residual connection), or with the
//               INPUT_GELU_GRAD flag C = h · gelu'(input) (fc2's dX times
//               GELU's derivative at fc1's pre-activation).
@group(0) @binding(6) var<storage, read> epilogue_in: array<res>;
@group(0) @binding(7) var<storage, read_write> activated: array<res>;

fn store_gelu(acc: mat4x4<f32>, c_base: u32, rows: u32, col: u32) {
    for (var i = 0u; i < 4u; i++) {
        let r = rows + i;
        if (r >= p.m) { return; }
        let h = results(acc[i], c_base, r, col);
        write_c(h, c_base, r, col);
        let g = gelu4(h);
        for (var t = 0u; t < 4u; t++) {
            if (col + t < p.n) { activated[c_base + r * p.c_row + col + t] = to_res(g[t]); }
        }
    }
}

fn store_input(acc: mat4x4<f32>, c_base: u32, rows: u32, col: u32) {
    for (var i = 0u; i < 4u; i++) {
        let r = rows + i;
        if (r >= p.m) { return; }
        let h = results(acc[i], c_base, r, col);
        var e: vec4<f32>;
        for (var t = 0u; t < 4u; t++) { e[t] = f32(epilogue_in[c_base + r * p.c_row + min(col + t, p.n - 1u)]); }
        if ((p.flags & INPUT_GELU_GRAD) == 0u) { write_c(h + e, c_base, r, col); } else { write_c(h * gelu_grad4(e), c_base, r, col); }
    }
}

/// Where invocation `g`'s 8×16 block of C lies; `blocks_m` row blocks per column.
struct Block {
    live: bool,
    row0: u32,
    col0: u32,
    a_base: u32,
    b_base: u32,
    c_base: u32,
}

fn block_of(g: u32, blocks_m: u32) -> Block {
    let per_batch = blocks_m * ((p.n + 15u) / 16u);
    let z = min(g / per_batch, p.batches - 1u);
    let r = g % per_batch;
    var out: Block;
    out.row0 = (r % blocks_m) * 8u;
    out.col0 = (r / blocks_m) * 16u;
    out.live = g / per_batch < p.batches && out.row0 < p.m && out.col0 < p.n;
    let outer = z / p.heads;
    let inner = z % p.heads;
    out.a_base = p.a_off + outer * p.a_b0 + inner * p.a_b1;
    out.b_base = p.b_off + outer * p.b_b0 + inner * p.b_b1;
    out.c_base = p.c_off + outer * p.c_b0 + inner * p.c_b1;
    return out;
}

/// Rows row0..row0+7 clamped into the matrix (results of clamped rows are not stored).
fn row_sets(row0: u32) -> array<vec4<u32>, 2> {
    let last_r = p.m - 1u;
    var lo = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last_r));
    var hi = min(vec4<u32>(row0) + vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(last_r));
    // Aᵀ read as vec4s along M (M % 4 == 0): row0 ≤ M−4, and a clamped upper
    // half belongs to rows that are never stored.
    if (VEC && TRANS_A) { hi = vec4<u32>(min(row0 + 4u, p.m - 4u)); lo = vec4<u32>(row0); }
    return array<vec4<u32>, 2>(lo, hi);
}

fn store_block(bl: Block, acc: array<mat4x4<f32>, 8>) {
    if (!bl.live) { return; }
    store(acc[0], bl.c_base, bl.row0, bl.col0); store(acc[1], bl.c_base, bl.row0, bl.col0 + 4u);
    store(acc[2], bl.c_base, bl.row0, bl.col0 + 8u); store(acc[3], bl.c_base, bl.row0, bl.col0 + 12u);
    store(acc[4], bl.c_base, bl.row0 + 4u, bl.col0); store(acc[5], bl.c_base, bl.row0 + 4u, bl.col0 + 4u);
    store(acc[6], bl.c_base, bl.row0 + 4u, bl.col0 + 8u); store(acc[7], bl.c_base, bl.row0 + 4u, bl.col0 + 12u);
}

fn store_block_gelu(bl: Block, acc: array<mat4x4<f32>, 8>) {
    if (!bl.live) { return; }
    store_gelu(acc[0], bl.c_base, bl.row0, bl.col0); store_gelu(acc[1], bl.c_base, bl.row0, bl.col0 + 4u);
    store_gelu(acc[2], bl.c_base, bl.row0, bl.col0 + 8u); store_gelu(acc[3], bl.c_base, bl.row0, bl.col0 + 12u);
    store_gelu(acc[4], bl.c_base, bl.row0 + 4u, bl.col0); store_gelu(acc[5], bl.c_base, bl.row0 + 4u, bl.col0 + 4u);
    store_gelu(acc[6], bl.c_base, bl.row0 + 4u, bl.col0 + 8u); store_gelu(acc[7], bl.c_base, bl.row0 + 4u, bl.col0 + 12u);
}

fn store_block_input(bl: Block, acc: array<mat4x4<f32>, 8>) {
    if (!bl.live) { return; }
    store_input(acc[0], bl.c_base, bl.row0, bl.col0); store_input(acc[1], bl.c_base, bl.row0, bl.col0 + 4u);
    store_input(acc[2], bl.c_base, bl.row0, bl.col0 + 8u); store_input(acc[3], bl.c_base, bl.row0, bl.col0 + 12u);
    store_input(acc[4], bl.c_base, bl.row0 + 4u, bl.col0); store_input(acc[5], bl.c_base, bl.row0 + 4u, bl.col0 + 4u);
    store_input(acc[6], bl.c_base, bl.row0 + 4u, bl.col0 + 8u); store_input(acc[7], bl.c_base, bl.row0 + 4u, bl.col0 + 12u);
}

// row_sums[i] (+)= Σ_k op(A)[i, k] for rows 4·job .. 4·job+3 of batch 0: the
// bias gradient Σ_rows dY that a linear layer's dW = dYᵀ·X product computes
// beside it (main_row_sums), so it costs no dispatch of its own.
@group(0) @binding(5) var<storage, read_write> row_sums: array<f32>;

fn a_row_sums(job: u32) {
    let i0 = job * 4u;
    if (i0 >= p.m) { return; }
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        if (VEC && TRANS_A) {
            acc += a_vec((p.a_off + k * p.a_row + i0) >> 2u);
        } else {
            for (var t = 0u; t < 4u; t++) {
                let i = min(i0 + t, p.m - 1u);
                if (TRANS_A) { acc[t] += a_at(p.a_off + k * p.a_row + i); } else { acc[t] += a_at(p.a_off + i * p.a_row + k); }
            }
        }
    }
    for (var t = 0u; t < 4u; t++) {
        let i = i0 + t;
        if (i < p.m) {
            var v = acc[t];
            if ((p.flags & ACCUMULATE_ROW_SUMS) != 0u) { v += row_sums[i]; }
            row_sums[i] = v;
        }
    }
}

/// Invocations the matmul blocks take (whole workgroups of 64), before the row-sum jobs.
fn block_invocations(blocks_m: u32) -> u32 {
    return (blocks_m * ((p.n + 15u) / 16u) * p.batches + 63u) / 64u * 64u;
}
