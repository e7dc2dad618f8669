// Mixed precision, f32 in and f16 out (needs SHADER_F16): a kernel reads f32
// (`elem`: LayerNorm's residual-stream input) and stores f16 (`res`: its
// output, which only products read, and what its backward keeps).
enable f16;
alias elem = f32;
alias res = f16;
// Stores convert with these. Past f16's range WGSL leaves the result
// indeterminate; Vulkan, Metal and D3D convert to ±∞ (IEEE), which the loss
// scaler then sees. Gradients enter f16 through cast.wgsl, which builds ±∞
// from bits whatever the adapter.
fn to_elem4(v: vec4<f32>) -> vec4<elem> { return v; }
fn to_res4(v: vec4<f32>) -> vec4<res> { return vec4<f16>(v); }
fn to_res(v: f32) -> res { return f16(v); }
