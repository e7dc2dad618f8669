//! The WGSL sources, compiled into the binary so nothing is read at run time.

/// One WGSL file from `shaders/`.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $file:literal),* $(,)?) => {
        $(pub static $ident: Shader = Shader {
            name: $file,
            source: include_str!(concat!("../../shaders/", $file)),
        };)*
        /// Every shader, for validation tests and tools.
        pub static ALL: &[&Shader] = &[$(&$ident),*];
    };
}

shaders! {
    MATMUL_REGISTER => "matmul_register.wgsl",
    MATMUL_TILED => "matmul_tiled.wgsl",
    SOFTMAX => "softmax.wgsl",
    LAYERNORM => "layernorm.wgsl",
    GELU => "gelu.wgsl",
    ELEMENTWISE => "elementwise.wgsl",
    REDUCE => "reduce.wgsl",
    GATHER => "gather.wgsl",
    PATCH => "patch.wgsl",
    LOSS => "loss.wgsl",
    OPTIM => "optim.wgsl",
}
