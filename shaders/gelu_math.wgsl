// Exact (erf) GELU and its derivative, shared by gelu.wgsl and the matmul
// epilogues (prepended to them).
//
//   gelu(x) = x · Φ(x),  Φ(x) = ½(1 + erf(x/√2))
//   gelu'(x) = Φ(x) + x·φ(x),  φ(x) = exp(−x²/2)/√(2π)
//
// WGSL has no erf. erfc comes from the Chebyshev fit of Numerical Recipes
// (fractional error < 1.2e-7 everywhere), so GELU is exact to f32 rounding.

fn erfc_nr(v: vec4<f32>) -> vec4<f32> {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(poly);
    return select(2.0 - r, r, v >= vec4<f32>(0.0));
}

fn cdf(v: vec4<f32>) -> vec4<f32> { return 0.5 * erfc_nr(-v * 0.70710678118654752); }

fn gelu4(v: vec4<f32>) -> vec4<f32> { return v * cdf(v); }

fn gelu_grad4(v: vec4<f32>) -> vec4<f32> {
    return cdf(v) + v * (0.3989422804014327 * exp(-0.5 * v * v));
}
