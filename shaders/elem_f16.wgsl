// Matmul operands stored as f16 (mixed precision): half the bytes read per
// product. They are widened to f32 on load, so products accumulate and
// results are stored in f32 as in the f32 kernels. Needs SHADER_F16.
enable f16;
alias elem = f16;
