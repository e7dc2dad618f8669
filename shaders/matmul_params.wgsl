// The parameters every matmul shader takes, prepended to each of them:
// same shapes, strides and transposes whatever the kernel (MatmulParams in
// engine/src/kernels/matmul.rs mirrors them). beta ≠ 0 adds beta·C to the
// result (a gradient accumulated in place); with beta = 0, C is never read.
// flags: ADD_BIAS adds bias[col]; ACCUMULATE_ROW_SUMS makes the *_row_sums
// entry points add their row sums to what row_sums holds; INPUT_GELU_GRAD
// makes main_input multiply by GELU's derivative at its input instead of
// adding it (a flag, not an override: one pipeline for both epilogues, since
// a CPU adapter compiles each pipeline for seconds).

override TRANS_A: bool = false;
override TRANS_B: bool = false;
struct Params {
    m: u32, n: u32, k: u32, heads: u32,
    a_off: u32, a_row: u32, a_b0: u32, a_b1: u32,
    b_off: u32, b_row: u32, b_b0: u32, b_b1: u32,
    c_off: u32, c_row: u32, c_b0: u32, c_b1: u32,
    alpha: f32, flags: u32, beta: f32, batches: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
const ADD_BIAS: u32 = 1u;
const ACCUMULATE_ROW_SUMS: u32 = 2u;
const INPUT_GELU_GRAD: u32 = 4u;
