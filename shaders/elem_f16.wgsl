// Mixed precision (needs SHADER_F16): `elem`, the operands a kernel reads
// (matmul A and B, attention's qkv, output and its gradient), is f16, half
// the bytes of f32; `res`, what a matmul stores (C and its epilogue
// tensors), stays f32 here, for results that accumulate (gradients) or
// feed f32 kernels (the residual stream). Values are widened to f32 on load:
// all arithmetic is f32.
enable f16;
alias elem = f16;
alias res = f32;
// Stores convert with these. Past f16's range WGSL leaves the result
// indeterminate; Vulkan, Metal and D3D convert to ±∞ (IEEE), which the loss
// scaler then sees. Gradients enter f16 through cast.wgsl, which builds ±∞
// from bits whatever the adapter.
fn to_elem4(v: vec4<f32>) -> vec4<elem> { return vec4<f16>(v); }
fn to_res4(v: vec4<f32>) -> vec4<res> { return v; }
fn to_res(v: f32) -> res { return v; }
