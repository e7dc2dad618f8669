//! The WGSL sources, compiled into the binary so nothing is read at run time.

/// One shader module, made of one or more files from `shaders/` (a shared
/// part first, then the file with the entry point), and the file in
/// `engine/src/kernels/` whose typed wrapper dispatches it.
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub files: &'static [&'static str],
    pub wrapper: &'static str,
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => $wrapper:literal, [$($file:literal),+]),* $(,)?) => {
        $(pub static $ident: Shader = Shader {
            name: shaders!(@last $($file),+),
            files: &[$($file),+],
            wrapper: $wrapper,
            source: concat!($(include_str!(concat!("../../shaders/", $file)), "\n"),+),
        };)*
        /// Every shader, for validation tests and tools.
        pub static ALL: &[&Shader] = &[$(&$ident),*];
    };
    (@last $only:literal) => { $only };
    (@last $first:literal, $($rest:literal),+) => { shaders!(@last $($rest),+) };
}

shaders! {
    MATMUL_REGISTER => "matmul.rs", ["matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_register.wgsl"],
    MATMUL_SUBGROUP => "matmul.rs", ["matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"],
    MATMUL_TILED => "matmul.rs", ["matmul_params.wgsl", "gelu_math.wgsl", "matmul_tiled.wgsl"],
    SOFTMAX => "softmax.rs", ["softmax.wgsl"],
    ATTENTION => "attention.rs", ["attention.wgsl"],
    LAYERNORM => "layernorm.rs", ["layernorm.wgsl"],
    GELU => "gelu.rs", ["gelu_math.wgsl", "gelu.wgsl"],
    ELEMENTWISE => "elementwise.rs", ["elementwise.wgsl"],
    REDUCE => "reduce.rs", ["reduce.wgsl"],
    GATHER => "gather.rs", ["gather.wgsl"],
    PATCH => "patch.rs", ["patch.wgsl"],
    LOSS => "loss.rs", ["loss.wgsl"],
    OPTIM => "optim.rs", ["optim.wgsl"],
    BATCHNORM => "batchnorm.rs", ["batchnorm.wgsl"],
}
