// Rust wrapper: engine/src/kernels/patch.rs
// Patches of square images [B, C, H, W] (H = W = grid·p).
//
// patchify: out[b, i, :] = the pixels of patch i = row·grid + col, ordered
//   order 0: (channel, pixel row, pixel col) — matches a conv weight [D, C, p, p]
//            flattened, so the patch embedding is a plain matmul;
//   order 1: (pixel row, pixel col, channel) — MAE's reconstruction target.
// norm_pix: each row t ← (t − mean) / sqrt(var + 1e-6), var unbiased (MAE's
//   norm_pix_loss), in place.

struct Params { batch: u32, chans: u32, grid: u32, psize: u32, order: u32, rows: u32, cols: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> imgs: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn patchify(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let pp = p.psize * p.psize;
    let per_patch = pp * p.chans;
    let patches = p.grid * p.grid;
    let side = p.grid * p.psize;
    let total = p.batch * patches * per_patch;
    for (var e = gid.x; e < total; e += nwg.x * 256u) {
        let v = e % per_patch;
        let bi = e / per_patch;
        let b = bi / patches;
        let i = bi % patches;
        var c: u32; var py: u32; var px: u32;
        if (p.order == 0u) {
            c = v / pp; py = (v % pp) / p.psize; px = v % p.psize;
        } else {
            c = v % p.chans; py = (v / p.chans) / p.psize; px = (v / p.chans) % p.psize;
        }
        let y = (i / p.grid) * p.psize + py;
        let x = (i % p.grid) * p.psize + px;
        out[e] = imgs[((b * p.chans + c) * side + y) * side + x];
    }
}

@compute @workgroup_size(64)
fn norm_pix(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = gid.x; r < p.rows; r += nwg.x * 64u) {
        let base = r * p.cols;
        var sum = 0.0;
        for (var j = 0u; j < p.cols; j++) { sum += out[base + j]; }
        let mean = sum / f32(p.cols);
        var sq = 0.0;
        for (var j = 0u; j < p.cols; j++) { let c = out[base + j] - mean; sq += c * c; }
        let inv = inverseSqrt(sq / f32(max(p.cols, 2u) - 1u) + 1e-6);
        for (var j = 0u; j < p.cols; j++) { out[base + j] = (out[base + j] - mean) * inv; }
    }
}
