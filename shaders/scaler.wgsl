// Rust wrapper: engine/src/kernels/scaler.rs
// Dynamic loss scaling for mixed precision, as PyTorch's GradScaler, kept on
// the GPU so a step never waits for the host:
//   seed:           the backward pass's starting gradient, scale × multiplier
//                   (1 unscaled; a test's huge multiplier forces an overflow);
//   find_nonfinite: raises the flag if any gradient is ±∞ or NaN (tested by
//                   its exponent bits: WGSL may assume floats are finite, so
//                   x != x and comparisons with ∞ cannot be trusted);
//   update:         after the optimizer has read the flag, halves the scale
//                   and counts a skipped step if it was raised, else doubles
//                   the scale after `growth_interval` good steps in a row;
//                   then lowers the flag.
// State (u32 words): [0] the scale's f32 bits, [1] good steps in a row,
// [2] skipped steps in all, [3] the flag.

struct Params { n: u32, growth_interval: u32, multiplier: f32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grads: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> state: array<atomic<u32>, 4>;

@group(0) @binding(3) var<storage, read_write> seed_out: array<f32>;

const EXPONENT: u32 = 0x7f800000u;

@compute @workgroup_size(1)
fn seed() {
    seed_out[0] = bitcast<f32>(atomicLoad(&state[0])) * p.multiplier;
}

@compute @workgroup_size(256)
fn find_nonfinite(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    var found = false;
    for (var i = gid.x; i < (p.n + 3u) / 4u; i += nwg.x * 256u) {
        let bad = (bitcast<vec4<u32>>(grads[i]) & vec4<u32>(EXPONENT)) == vec4<u32>(EXPONENT);
        // The last vec4 may run into padding past n.
        let live = vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.n);
        found = found || any(bad & live);
    }
    if (found) { atomicOr(&state[3], 1u); }
}

@compute @workgroup_size(1)
fn update() {
    var scale = bitcast<f32>(atomicLoad(&state[0]));
    var good = atomicLoad(&state[1]);
    if (atomicLoad(&state[3]) != 0u) {
        scale = scale * 0.5;
        good = 0u;
        atomicAdd(&state[2], 1u);
    } else {
        good = good + 1u;
        if (good >= p.growth_interval) {
            scale = scale * 2.0;
            good = 0u;
        }
    }
    atomicStore(&state[0], bitcast<u32>(scale));
    atomicStore(&state[1], good);
    atomicStore(&state[3], 0u);
}
