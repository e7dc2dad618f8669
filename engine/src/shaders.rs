//! The WGSL sources, compiled into the binary so nothing is read at run time.

/// One shader module, made of one or more files from `shaders/` (a shared
/// part first, then the file with the entry point).
#[derive(Debug)]
pub struct Shader {
    pub name: &'static str,
    pub files: &'static [&'static str],
    pub source: &'static str,
}

macro_rules! shaders {
    ($($ident:ident => [$($file:literal),+]),* $(,)?) => {
        $(pub static $ident: Shader = Shader {
            name: shaders!(@last $($file),+),
            files: &[$($file),+],
            source: concat!($(include_str!(concat!("../../shaders/", $file)), "\n"),+),
        };)*
        /// Every shader, for validation tests and tools.
        pub static ALL: &[&Shader] = &[$(&$ident),*];
    };
    (@last $only:literal) => { $only };
    (@last $first:literal, $($rest:literal),+) => { shaders!(@last $($rest),+) };
}

shaders! {
    MATMUL_REGISTER => ["matmul_params.wgsl", "matmul_common.wgsl", "matmul_register.wgsl"],
    MATMUL_SUBGROUP => ["matmul_params.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"],
    MATMUL_TILED => ["matmul_params.wgsl", "matmul_tiled.wgsl"],
    SOFTMAX => ["softmax.wgsl"],
    LAYERNORM => ["layernorm.wgsl"],
    GELU => ["gelu.wgsl"],
    ELEMENTWISE => ["elementwise.wgsl"],
    REDUCE => ["reduce.wgsl"],
    GATHER => ["gather.wgsl"],
    PATCH => ["patch.wgsl"],
    LOSS => ["loss.wgsl"],
    OPTIM => ["optim.wgsl"],
    BATCHNORM => ["batchnorm.wgsl"],
}
