// Storage types of the kernels that have a mixed-precision form (prepended
// to them; see elem_f16.wgsl): everything f32.
alias elem = f32;
alias res = f32;
// Stores convert with these (identities here).
fn to_elem4(v: vec4<f32>) -> vec4<elem> { return v; }
fn to_res4(v: vec4<f32>) -> vec4<res> { return v; }
fn to_res(v: f32) -> res { return v; }
