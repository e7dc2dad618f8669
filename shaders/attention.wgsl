// Rust wrapper: engine/src/kernels/attention.rs
// Fused multi-head attention (flash-attention style): no [B·H, T, T] tensor.
//
// Q, K, V are read in place from the packed qkv projection [B, T, 3·D] (timm
// layout: q|k|v, heads contiguous inside each); head h of row r of part x
// starts at (b·T + r)·3D + x·D + h·HD. One invocation owns one row (a query
// row forward and for dQ, a key row for dK and dV); the workgroup stages
// tiles of the other side's rows in workgroup memory, so each K/V (or Q/dO)
// row is read from storage once per 64 rows instead of once per row.
//
// forward:      s_ij = scale·q_i·k_j, online softmax over tiles of keys J:
//               m ← max(m, max_J s), l ← l·e^(m_old − m) + Σ_J e^(s − m), o ← o·e^(m_old − m) + Σ_J e^(s − m)·v_j
//               out_i = o / l,  lse_i = m + ln l
// backward_q:   D_i = dO_i·out_i,  p_ij = e^(s_ij − lse_i),  ds_ij = p_ij·(dO_i·v_j − D_i)
//               dq_i = scale·Σ_j ds_ij·k_j   (also writes D for backward_kv)
// backward_kv:  dv_j = Σ_i p_ij·dO_i,  dk_j = scale·Σ_i ds_ij·q_i
//
// qkv, out, dout and the result are stored as `elem` (f32, or f16 under
// mixed precision: elem_f16.wgsl) and widened on load; lse, D and all
// arithmetic are f32.
//
// Head dims are multiples of 4 from 4 to 128 (HD4 = HD/4 vec4s per row); the
// private row buffers hold 32 vec4s.

struct Params { batch: u32, t: u32, d: u32, heads: u32, scale: f32, _p0: u32, _p1: u32, _p2: u32 }

override HD4: u32 = 16u;
const WG: u32 = 64u;
const MAXV: u32 = 32u;
// vec4s of workgroup memory per staged tile: two tiles of 8 KiB fill the
// 16 KiB every adapter has; backward_kv stages two of 6 KiB plus the rows'
// lse and D (at most TILE_KV rows, for a head dim of 4).
const TILE: u32 = 512u;
// Keys per forward tile (bounds the private score buffer).
const FWD_ROWS: u32 = 64u;
const TILE_KV: u32 = 384u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<elem>>;
@group(0) @binding(2) var<storage, read> out: array<vec4<elem>>;
@group(0) @binding(3) var<storage, read> dout: array<vec4<elem>>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;      // [B·H, T]
@group(0) @binding(5) var<storage, read_write> dsum: array<f32>;     // [B·H, T]: D_i
@group(0) @binding(6) var<storage, read_write> result: array<vec4<elem>>; // out [B,T,D] or dqkv [B,T,3D]

var<workgroup> tile_a: array<vec4<f32>, TILE>;
var<workgroup> tile_b: array<vec4<f32>, TILE>;
var<workgroup> kv_a: array<vec4<f32>, TILE_KV>;
var<workgroup> kv_b: array<vec4<f32>, TILE_KV>;
var<workgroup> row_lse: array<f32, TILE_KV>;
var<workgroup> row_d: array<f32, TILE_KV>;

// vec4 index of element 0 of head h, part `part`, row r of sample b in qkv.
fn qkv_at(b: u32, r: u32, part: u32, h: u32) -> u32 {
    return ((b * p.t + r) * 3u * p.d + part * p.d + h * HD4 * 4u) / 4u;
}

// vec4 index of head h, row r of sample b in a [B, T, D] tensor.
fn row_at(b: u32, r: u32, h: u32) -> u32 {
    return ((b * p.t + r) * p.d + h * HD4 * 4u) / 4u;
}

// The workgroup's invocations copy K and V rows j0..j0+n of head h into
// tile_a and tile_b.
fn stage_keys(lane: u32, b: u32, h: u32, j0: u32, n: u32) {
    for (var e = lane; e < n * HD4; e += WG) {
        let r = e / HD4;
        let c = e % HD4;
        tile_a[e] = vec4<f32>(qkv[qkv_at(b, j0 + r, 1u, h) + c]);
        tile_b[e] = vec4<f32>(qkv[qkv_at(b, j0 + r, 2u, h) + c]);
    }
}

@compute @workgroup_size(64)
fn forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.y;
    let b = z / p.heads;
    let h = z % p.heads;
    let i = wid.x * WG + lid.x;
    let live = i < p.t;
    var q: array<vec4<f32>, MAXV>;
    var o: array<vec4<f32>, MAXV>;
    if live {
        let at = qkv_at(b, i, 0u, h);
        for (var c = 0u; c < HD4; c++) {
            q[c] = vec4<f32>(qkv[at + c]) * p.scale;
            o[c] = vec4<f32>(0.0);
        }
    }
    var m = -3.0e38;
    var l = 0.0;
    // Scores of one tile are kept so the running max moves (and o is
    // rescaled) once per tile, not once per key.
    var scores: array<f32, FWD_ROWS>;
    let rows = min(TILE / HD4, FWD_ROWS);
    for (var j0 = 0u; j0 < p.t; j0 += rows) {
        let n = min(rows, p.t - j0);
        stage_keys(lid.x, b, h, j0, n);
        workgroupBarrier();
        if live {
            var top = m;
            for (var j = 0u; j < n; j++) {
                var s = 0.0;
                for (var c = 0u; c < HD4; c++) {
                    s += dot(q[c], tile_a[j * HD4 + c]);
                }
                scores[j] = s;
                top = max(top, s);
            }
            let shrink = exp(m - top);
            l *= shrink;
            for (var c = 0u; c < HD4; c++) {
                o[c] *= shrink;
            }
            m = top;
            for (var j = 0u; j < n; j++) {
                let w = exp(scores[j] - m);
                l += w;
                for (var c = 0u; c < HD4; c++) {
                    o[c] += w * tile_b[j * HD4 + c];
                }
            }
        }
        workgroupBarrier();
    }
    if live {
        let at = row_at(b, i, h);
        let inv = 1.0 / l;
        for (var c = 0u; c < HD4; c++) {
            result[at + c] = to_elem4(o[c] * inv);
        }
        lse[z * p.t + i] = m + log(l);
    }
}

@compute @workgroup_size(64)
fn backward_q(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.y;
    let b = z / p.heads;
    let h = z % p.heads;
    let i = wid.x * WG + lid.x;
    let live = i < p.t;
    var q: array<vec4<f32>, MAXV>;
    var g: array<vec4<f32>, MAXV>;
    var dq: array<vec4<f32>, MAXV>;
    var d_i = 0.0;
    var lse_i = 0.0;
    if live {
        let at_q = qkv_at(b, i, 0u, h);
        let at_o = row_at(b, i, h);
        for (var c = 0u; c < HD4; c++) {
            q[c] = vec4<f32>(qkv[at_q + c]) * p.scale;
            g[c] = vec4<f32>(dout[at_o + c]);
            dq[c] = vec4<f32>(0.0);
            d_i += dot(g[c], vec4<f32>(out[at_o + c]));
        }
        lse_i = lse[z * p.t + i];
        dsum[z * p.t + i] = d_i;
    }
    let rows = TILE / HD4;
    for (var j0 = 0u; j0 < p.t; j0 += rows) {
        let n = min(rows, p.t - j0);
        stage_keys(lid.x, b, h, j0, n);
        workgroupBarrier();
        if live {
            for (var j = 0u; j < n; j++) {
                var s = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < HD4; c++) {
                    s += dot(q[c], tile_a[j * HD4 + c]);
                    dp += dot(g[c], tile_b[j * HD4 + c]);
                }
                let ds = exp(s - lse_i) * (dp - d_i);
                for (var c = 0u; c < HD4; c++) {
                    dq[c] += ds * tile_a[j * HD4 + c];
                }
            }
        }
        workgroupBarrier();
    }
    if live {
        let at = qkv_at(b, i, 0u, h);
        for (var c = 0u; c < HD4; c++) {
            result[at + c] = to_elem4(dq[c] * p.scale);
        }
    }
}

@compute @workgroup_size(64)
fn backward_kv(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let z = wid.y;
    let b = z / p.heads;
    let h = z % p.heads;
    let j = wid.x * WG + lid.x;
    let live = j < p.t;
    var k: array<vec4<f32>, MAXV>;
    var v: array<vec4<f32>, MAXV>;
    var dk: array<vec4<f32>, MAXV>;
    var dv: array<vec4<f32>, MAXV>;
    if live {
        let at_k = qkv_at(b, j, 1u, h);
        let at_v = qkv_at(b, j, 2u, h);
        for (var c = 0u; c < HD4; c++) {
            k[c] = vec4<f32>(qkv[at_k + c]) * p.scale;
            v[c] = vec4<f32>(qkv[at_v + c]);
            dk[c] = vec4<f32>(0.0);
            dv[c] = vec4<f32>(0.0);
        }
    }
    let rows = TILE_KV / HD4;
    for (var i0 = 0u; i0 < p.t; i0 += rows) {
        let n = min(rows, p.t - i0);
        for (var e = lid.x; e < n * HD4; e += WG) {
            let r = e / HD4;
            let c = e % HD4;
            kv_a[e] = vec4<f32>(qkv[qkv_at(b, i0 + r, 0u, h) + c]);
            kv_b[e] = vec4<f32>(dout[row_at(b, i0 + r, h) + c]);
        }
        for (var r = lid.x; r < n; r += WG) {
            row_lse[r] = lse[z * p.t + i0 + r];
            row_d[r] = dsum[z * p.t + i0 + r];
        }
        workgroupBarrier();
        if live {
            for (var i = 0u; i < n; i++) {
                var s = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < HD4; c++) {
                    s += dot(kv_a[i * HD4 + c], k[c]);
                    dp += dot(kv_b[i * HD4 + c], v[c]);
                }
                let pij = exp(s - row_lse[i]);
                let ds = pij * (dp - row_d[i]);
                for (var c = 0u; c < HD4; c++) {
                    dv[c] += pij * kv_b[i * HD4 + c];
                    dk[c] += ds * kv_a[i * HD4 + c];
                }
            }
        }
        workgroupBarrier();
    }
    if live {
        let at_k = qkv_at(b, j, 1u, h);
        let at_v = qkv_at(b, j, 2u, h);
        for (var c = 0u; c < HD4; c++) {
            result[at_k + c] = to_elem4(dk[c] * p.scale);
            result[at_v + c] = to_elem4(dv[c]);
        }
    }
}

// The same three passes with one invocation per row over a flat grid of
// B·H·T rows and no workgroup memory (entry points *_rows). On CPU
// adapters workgroup memory is no faster than storage, and the tiled
// entry points leave most of a 64-wide workgroup idle when T is small (17
// live rows of 64 at T = 17); here every lane has a row. (Several rows per
// invocation, sharing each K/V row read, measured no faster on lavapipe and
// took minutes to compile.)

fn flat_row(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.y * nwg.x * WG + gid.x;
}

@compute @workgroup_size(64)
fn forward_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = flat_row(gid, nwg);
    if (g >= p.batch * p.heads * p.t) { return; }
    let z = g / p.t;
    let i = g % p.t;
    let b = z / p.heads;
    let h = z % p.heads;
    var q: array<vec4<f32>, MAXV>;
    var o: array<vec4<f32>, MAXV>;
    let at_q = qkv_at(b, i, 0u, h);
    for (var c = 0u; c < HD4; c++) {
        q[c] = vec4<f32>(qkv[at_q + c]) * p.scale;
        o[c] = vec4<f32>(0.0);
    }
    var m = -3.0e38;
    var l = 0.0;
    var scores: array<f32, FWD_ROWS>;
    for (var j0 = 0u; j0 < p.t; j0 += FWD_ROWS) {
        let n = min(FWD_ROWS, p.t - j0);
        var top = m;
        for (var j = 0u; j < n; j++) {
            let at_k = qkv_at(b, j0 + j, 1u, h);
            var s = 0.0;
            for (var c = 0u; c < HD4; c++) { s += dot(q[c], vec4<f32>(qkv[at_k + c])); }
            scores[j] = s;
            top = max(top, s);
        }
        let shrink = exp(m - top);
        l *= shrink;
        for (var c = 0u; c < HD4; c++) { o[c] *= shrink; }
        m = top;
        for (var j = 0u; j < n; j++) {
            let w = exp(scores[j] - m);
            l += w;
            let at_v = qkv_at(b, j0 + j, 2u, h);
            for (var c = 0u; c < HD4; c++) { o[c] += w * vec4<f32>(qkv[at_v + c]); }
        }
    }
    let at = row_at(b, i, h);
    let inv = 1.0 / l;
    for (var c = 0u; c < HD4; c++) { result[at + c] = to_elem4(o[c] * inv); }
    lse[z * p.t + i] = m + log(l);
}

@compute @workgroup_size(64)
fn backward_q_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g_row = flat_row(gid, nwg);
    if (g_row >= p.batch * p.heads * p.t) { return; }
    let z = g_row / p.t;
    let i = g_row % p.t;
    let b = z / p.heads;
    let h = z % p.heads;
    var q: array<vec4<f32>, MAXV>;
    var g: array<vec4<f32>, MAXV>;
    var dq: array<vec4<f32>, MAXV>;
    var d_i = 0.0;
    let at_q = qkv_at(b, i, 0u, h);
    let at_o = row_at(b, i, h);
    for (var c = 0u; c < HD4; c++) {
        q[c] = vec4<f32>(qkv[at_q + c]) * p.scale;
        g[c] = vec4<f32>(dout[at_o + c]);
        dq[c] = vec4<f32>(0.0);
        d_i += dot(g[c], vec4<f32>(out[at_o + c]));
    }
    let lse_i = lse[z * p.t + i];
    dsum[z * p.t + i] = d_i;
    for (var j = 0u; j < p.t; j++) {
        let at_k = qkv_at(b, j, 1u, h);
        let at_v = qkv_at(b, j, 2u, h);
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < HD4; c++) {
            s += dot(q[c], vec4<f32>(qkv[at_k + c]));
            dp += dot(g[c], vec4<f32>(qkv[at_v + c]));
        }
        let ds = exp(s - lse_i) * (dp - d_i);
        for (var c = 0u; c < HD4; c++) { dq[c] += ds * vec4<f32>(qkv[at_k + c]); }
    }
    for (var c = 0u; c < HD4; c++) { result[at_q + c] = to_elem4(dq[c] * p.scale); }
}

@compute @workgroup_size(64)
fn backward_kv_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = flat_row(gid, nwg);
    if (g >= p.batch * p.heads * p.t) { return; }
    let z = g / p.t;
    let j = g % p.t;
    let b = z / p.heads;
    let h = z % p.heads;
    var k: array<vec4<f32>, MAXV>;
    var v: array<vec4<f32>, MAXV>;
    var dk: array<vec4<f32>, MAXV>;
    var dv: array<vec4<f32>, MAXV>;
    let at_k = qkv_at(b, j, 1u, h);
    let at_v = qkv_at(b, j, 2u, h);
    for (var c = 0u; c < HD4; c++) {
        k[c] = vec4<f32>(qkv[at_k + c]) * p.scale;
        v[c] = vec4<f32>(qkv[at_v + c]);
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    for (var i = 0u; i < p.t; i++) {
        let at_q = qkv_at(b, i, 0u, h);
        let at_o = row_at(b, i, h);
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < HD4; c++) {
            s += dot(vec4<f32>(qkv[at_q + c]), k[c]);
            dp += dot(vec4<f32>(dout[at_o + c]), v[c]);
        }
        let pij = exp(s - lse[z * p.t + i]);
        let ds = pij * (dp - dsum[z * p.t + i]);
        for (var c = 0u; c < HD4; c++) {
            dv[c] += pij * vec4<f32>(dout[at_o + c]);
            dk[c] += ds * vec4<f32>(qkv[at_q + c]);
        }
    }
    for (var c = 0u; c < HD4; c++) {
        result[at_k + c] = to_elem4(dk[c] * p.scale);
        result[at_v + c] = to_elem4(dv[c]);
    }
}
