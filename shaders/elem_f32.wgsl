// Matmul operands stored as f32 (prepended to the matmul shaders; see
// elem_f16.wgsl for the mixed-precision form).
alias elem = f32;
