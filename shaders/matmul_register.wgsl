// Rust wrapper: engine/src/kernels/matmul.rs
// Register-blocked matmul entry point without subgroup operations (appended
// to matmul_common.wgsl): every lane loads its own A rows and B columns,
// 24 vec4 loads per 512 FMAs.

/// The 8×16 block of C of a live block, in registers.
fn product(bl: Block) -> array<mat4x4<f32>, 8> {
    let rows = row_sets(bl.row0);
    let last_c = p.n - 1u;
    let c0 = min(vec4<u32>(bl.col0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last_c));
    let c1 = min(vec4<u32>(bl.col0) + vec4<u32>(4u, 5u, 6u, 7u), vec4<u32>(last_c));
    let c2 = min(vec4<u32>(bl.col0) + vec4<u32>(8u, 9u, 10u, 11u), vec4<u32>(last_c));
    let c3 = min(vec4<u32>(bl.col0) + vec4<u32>(12u, 13u, 14u, 15u), vec4<u32>(last_c));
    var acc00 = mat4x4<f32>(); var acc01 = mat4x4<f32>(); var acc02 = mat4x4<f32>(); var acc03 = mat4x4<f32>();
    var acc10 = mat4x4<f32>(); var acc11 = mat4x4<f32>(); var acc12 = mat4x4<f32>(); var acc13 = mat4x4<f32>();
    for (var k = 0u; k < p.k; k += 4u) {
        let kv = min(4u, p.k - k);
        let am0 = a_block(bl.a_base, rows[0], k, kv);
        let am1 = a_block(bl.a_base, rows[1], k, kv);
        let bm0 = b_block(bl.b_base, c0, k, kv);
        let bm1 = b_block(bl.b_base, c1, k, kv);
        let bm2 = b_block(bl.b_base, c2, k, kv);
        let bm3 = b_block(bl.b_base, c3, k, kv);
        acc00 = mac(acc00, bm0, am0); acc01 = mac(acc01, bm1, am0); acc02 = mac(acc02, bm2, am0); acc03 = mac(acc03, bm3, am0);
        acc10 = mac(acc10, bm0, am1); acc11 = mac(acc11, bm1, am1); acc12 = mac(acc12, bm2, am1); acc13 = mac(acc13, bm3, am1);
    }
    return array<mat4x4<f32>, 8>(acc00, acc01, acc02, acc03, acc10, acc11, acc12, acc13);
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, (p.m + 7u) / 8u);
    if (!bl.live) { return; }
    store_block(bl, product(bl));
}

@compute @workgroup_size(64, 1, 1)
fn main_gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, (p.m + 7u) / 8u);
    if (!bl.live) { return; }
    store_block_gelu(bl, product(bl));
}

@compute @workgroup_size(64, 1, 1)
fn main_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let bl = block_of((wg.y * nwg.x + wg.x) * 64u + lid.x, (p.m + 7u) / 8u);
    if (!bl.live) { return; }
    store_block_input(bl, product(bl));
}

// main, then a_row_sums on the invocations past the blocks.
@compute @workgroup_size(64, 1, 1)
fn main_row_sums(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = (wg.y * nwg.x + wg.x) * 64u + lid.x;
    let blocks_m = (p.m + 7u) / 8u;
    let first_job = block_invocations(blocks_m);
    if (g >= first_job) {
        a_row_sums(g - first_job);
        return;
    }
    let bl = block_of(g, blocks_m);
    if (!bl.live) { return; }
    store_block(bl, product(bl));
}
