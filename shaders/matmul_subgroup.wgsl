// Rust wrapper: engine/src/kernels/matmul.rs
// Register-blocked matmul entry point for adapters whose subgroups have 8
// lanes (llvmpipe), appended to matmul_common.wgsl.
//
// The 8 lanes of a subgroup compute 8 neighbouring row blocks of the same
// 16 columns, so they need the same B values. Each lane loads 2 of the 16
// B vectors of a k step and the others get them by subgroup broadcast, which
// llvmpipe compiles to register shuffles: 10 vec4 loads per 512 FMAs instead
// of 24, about 1.8× faster on lavapipe. Row blocks per column are rounded up
// to a multiple of 8 so a subgroup never straddles two column blocks, and no
// lane returns before the broadcasts (they need every lane).

/// B vector q (0..15) of the k step at k: row-major B: q = kk·4 + j is
/// B(k+kk, col0+4j .. +3); Bᵀ: q is B(col0+q, k..k+3). Each lane loads two.
fn b_vector(base: u32, col0: u32, k: u32, q: u32) -> vec4<f32> {
    if (TRANS_B) {
        return b4(base + min(col0 + q, p.n - 1u) * p.b_row + k, min(4u, p.k - k));
    }
    let kk = k + q / 4u;
    let row = base + min(kk, p.k - 1u) * p.b_row;
    let col = col0 + (q % 4u) * 4u;
    var v: vec4<f32>;
    if (VEC) {
        v = b_vec((row + min(col, p.n - 4u)) >> 2u);
    } else {
        let last = p.n - 1u;
        v = vec4<f32>(b_at(row + min(col, last)), b_at(row + min(col + 1u, last)), b_at(row + min(col + 2u, last)), b_at(row + min(col + 3u, last)));
    }
    return select(vec4<f32>(0.0), v, kk < p.k);
}

/// B's four 4×4 blocks for k..k+3 (column kk of block j is B(k+kk, col0+4j .. +3)),
/// gathered from the lanes by broadcasts (constant lanes: register shuffles on llvmpipe).
fn b_gather(v0: vec4<f32>, v1: vec4<f32>) -> array<mat4x4<f32>, 4> {
    if (TRANS_B) {
        // Vector q is column col0+q: lane q % 8, slot q / 8.
        return array<mat4x4<f32>, 4>(
            transpose(mat4x4<f32>(subgroupBroadcast(v0, 0u), subgroupBroadcast(v0, 1u), subgroupBroadcast(v0, 2u), subgroupBroadcast(v0, 3u))),
            transpose(mat4x4<f32>(subgroupBroadcast(v0, 4u), subgroupBroadcast(v0, 5u), subgroupBroadcast(v0, 6u), subgroupBroadcast(v0, 7u))),
            transpose(mat4x4<f32>(subgroupBroadcast(v1, 0u), subgroupBroadcast(v1, 1u), subgroupBroadcast(v1, 2u), subgroupBroadcast(v1, 3u))),
            transpose(mat4x4<f32>(subgroupBroadcast(v1, 4u), subgroupBroadcast(v1, 5u), subgroupBroadcast(v1, 6u), subgroupBroadcast(v1, 7u))));
    }
    // Vector kk·4 + j: lane (kk·4 + j) % 8, slot kk / 2.
    return array<mat4x4<f32>, 4>(
        mat4x4<f32>(subgroupBroadcast(v0, 0u), subgroupBroadcast(v0, 4u), subgroupBroadcast(v1, 0u), subgroupBroadcast(v1, 4u)),
        mat4x4<f32>(subgroupBroadcast(v0, 1u), subgroupBroadcast(v0, 5u), subgroupBroadcast(v1, 1u), subgroupBroadcast(v1, 5u)),
        mat4x4<f32>(subgroupBroadcast(v0, 2u), subgroupBroadcast(v0, 6u), subgroupBroadcast(v1, 2u), subgroupBroadcast(v1, 6u)),
        mat4x4<f32>(subgroupBroadcast(v0, 3u), subgroupBroadcast(v0, 7u), subgroupBroadcast(v1, 3u), subgroupBroadcast(v1, 7u)));
}

/// The 8×16 block of C of block `bl` (every lane of the subgroup calls it,
/// live or not: the broadcasts need them all).
fn product(bl: Block, lane: u32) -> array<mat4x4<f32>, 8> {
    let rows = row_sets(bl.row0);
    var acc00 = mat4x4<f32>(); var acc01 = mat4x4<f32>(); var acc02 = mat4x4<f32>(); var acc03 = mat4x4<f32>();
    var acc10 = mat4x4<f32>(); var acc11 = mat4x4<f32>(); var acc12 = mat4x4<f32>(); var acc13 = mat4x4<f32>();
    for (var k = 0u; k < p.k; k += 4u) {
        let kv = min(4u, p.k - k);
        let am0 = a_block(bl.a_base, rows[0], k, kv);
        let am1 = a_block(bl.a_base, rows[1], k, kv);
        let bm = b_gather(b_vector(bl.b_base, bl.col0, k, lane), b_vector(bl.b_base, bl.col0, k, lane + 8u));
        let bm0 = bm[0];
        let bm1 = bm[1];
        let bm2 = bm[2];
        let bm3 = bm[3];
        acc00 = mac(acc00, bm0, am0); acc01 = mac(acc01, bm1, am0); acc02 = mac(acc02, bm2, am0); acc03 = mac(acc03, bm3, am0);
        acc10 = mac(acc10, bm0, am1); acc11 = mac(acc11, bm1, am1); acc12 = mac(acc12, bm2, am1); acc13 = mac(acc13, bm3, am1);
    }
    return array<mat4x4<f32>, 8>(acc00, acc01, acc02, acc03, acc10, acc11, acc12, acc13);
}

fn blocks_m() -> u32 {
    return ((p.m + 7u) / 8u + 7u) / 8u * 8u;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, blocks_m());
    store_block(bl, product(bl, lane));
}

@compute @workgroup_size(64, 1, 1)
fn main_gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, blocks_m());
    store_block_gelu(bl, product(bl, lane));
}

@compute @workgroup_size(64, 1, 1)
fn main_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, blocks_m());
    store_block_input(bl, product(bl, lane));
}

// main, then a_row_sums on the workgroups past the blocks (whole workgroups,
// so no subgroup mixes the two).
@compute @workgroup_size(64, 1, 1)
fn main_row_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let first_job_group = block_invocations(blocks_m()) / 64u;
    let group = wg.y * nwg.x + wg.x;
    if (group >= first_job_group) {
        a_row_sums((group - first_job_group) * 64u + lid.x);
        return;
    }
    let bl = block_of(group * 64u + lid.x, blocks_m());
    store_block(bl, product(bl, lane));
}
