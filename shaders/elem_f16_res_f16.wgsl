// Mixed precision with f16 results too (needs SHADER_F16): as
// elem_f16.wgsl, but a matmul also stores C and its epilogue tensors as f16,
// for products only an f16 reader consumes (the qkv projection that
// attention reads, an MLP's hidden activation, gradients flowing into them).
// Results are rounded to f16 once, when stored.
enable f16;
alias elem = f16;
alias res = f16;
// Stores convert with these. Past f16's range WGSL leaves the result
// indeterminate; Vulkan, Metal and D3D convert to ±∞ (IEEE), which the loss
// scaler then sees. Gradients enter f16 through cast.wgsl, which builds ±∞
// from bits whatever the adapter.
fn to_elem4(v: vec4<f32>) -> vec4<elem> { return vec4<f16>(v); }
fn to_res4(v: vec4<f32>) -> vec4<res> { return vec4<f16>(v); }
fn to_res(v: f32) -> res { return f16(v); }
