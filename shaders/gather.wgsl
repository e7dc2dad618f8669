// Rust wrapper: engine/src/kernels/gather.rs
// Row gather and scatter per sample: the masking primitive.
//
// gather_rows:  out[b, out_off + k, :] = src[b, idx[b, k], :]
//               (drop tokens at a masking shot; prepend a token with out_off = 1)
// scatter_rows: out[b, idx[b, k], :] = src[b, src_off + k, :]        (add == 0)
//               out[b, idx[b, k], :] += src[b, src_off + k, :]       (add == 1)
//               (the gather's backward; the decoder's un-shuffle)
//
// copy_rows:    out[b, out_off + k, :] = src[b, src_off + k, :]          (no indices:
//               prepend a token, drop it again in the backward)
//
// Indices must be distinct within a sample. Masking indices always are, which
// is what lets the scatter-add run without atomics and stay deterministic.

struct Params {
    batch: u32, k: u32, d: u32, n_src: u32,
    n_out: u32, src_off: u32, out_off: u32, add: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.batch * p.k * p.d;
    for (var e = gid.x; e < total; e += nwg.x * 256u) {
        let j = e % p.d;
        let bk = e / p.d;
        let b = bk / p.k;
        let k = bk % p.k;
        let row = idx[bk];
        out[(b * p.n_out + p.out_off + k) * p.d + j] = src[(b * p.n_src + row) * p.d + j];
    }
}

@compute @workgroup_size(256)
fn scatter_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.batch * p.k * p.d;
    for (var e = gid.x; e < total; e += nwg.x * 256u) {
        let j = e % p.d;
        let bk = e / p.d;
        let b = bk / p.k;
        let k = bk % p.k;
        let dst = (b * p.n_out + idx[bk]) * p.d + j;
        let v = src[(b * p.n_src + p.src_off + k) * p.d + j];
        if (p.add != 0u) { out[dst] += v; } else { out[dst] = v; }
    }
}

@compute @workgroup_size(256)
fn copy_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.batch * p.k * p.d;
    for (var e = gid.x; e < total; e += nwg.x * 256u) {
        let j = e % p.d;
        let bk = e / p.d;
        let b = bk / p.k;
        let k = bk % p.k;
        out[(b * p.n_out + p.out_off + k) * p.d + j] = src[(b * p.n_src + p.src_off + k) * p.d + j];
    }
}

// transpose: out[b, j, i] = src[b, i, j] for src [batch, k (rows), d (cols)]
// (an explicit layout change; the matmuls read transposed operands in place).
@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = p.batch * p.k * p.d;
    for (var e = gid.x; e < total; e += nwg.x * 256u) {
        let i = (e / p.d) % p.k;
        let j = e % p.d;
        let b = e / (p.k * p.d);
        out[(b * p.d + j) * p.k + i] = src[e];
    }
}
