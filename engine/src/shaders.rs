//! The WGSL sources, compiled into the binary so nothing is read at run time.

/// One shader module, made of one or more files from `shaders/` (a shared
/// part first, then the file with the entry point; the module is named after
/// that file unless it is given a name), and the file in
/// `engine/src/kernels/` whose typed wrapper dispatches it.
#[derive(Debug, PartialEq)]
pub struct Shader {
    pub name: &'static str,
    pub files: &'static [&'static str],
    pub wrapper: &'static str,
    /// What an adapter must have to run it: the device refuses to build it
    /// elsewhere, and the kernel selection never picks it there.
    pub needs: Needs,
    pub source: &'static str,
}

/// Adapter capabilities a shader relies on beyond core WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Subgroup operations with exactly 8 lanes (the broadcasts assume it).
    pub subgroups_of_8: bool,
    /// `enable f16;` (`SHADER_F16`).
    pub f16: bool,
}

impl Needs {
    pub const NOTHING: Needs = Needs { subgroups_of_8: false, f16: false };
    pub const SUBGROUPS_OF_8: Needs = Needs { subgroups_of_8: true, f16: false };
    pub const F16: Needs = Needs { subgroups_of_8: false, f16: true };
    pub const SUBGROUPS_OF_8_F16: Needs = Needs { subgroups_of_8: true, f16: true };
}

macro_rules! shaders {
    ($($ident:ident $(($name:literal))? => $wrapper:literal, $needs:ident, [$($file:literal),+]),* $(,)?) => {
        $(pub static $ident: Shader = Shader {
            name: shaders!(@name [$($name)?] $($file),+),
            files: &[$($file),+],
            wrapper: $wrapper,
            needs: Needs::$needs,
            source: concat!($(include_str!(concat!("../../shaders/", $file)), "\n"),+),
        };)*
        /// Every shader, for validation tests and tools.
        pub static ALL: &[&Shader] = &[$(&$ident),*];
    };
    (@name [$name:literal] $($file:literal),+) => { $name };
    (@name [] $($file:literal),+) => { shaders!(@last $($file),+) };
    (@last $only:literal) => { $only };
    (@last $first:literal, $($rest:literal),+) => { shaders!(@last $($rest),+) };
}

shaders! {
    MATMUL_REGISTER => "matmul.rs", NOTHING, ["elem_f32.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_register.wgsl"],
    MATMUL_SUBGROUP => "matmul.rs", SUBGROUPS_OF_8, ["elem_f32.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"],
    MATMUL_TILED => "matmul.rs", NOTHING, ["elem_f32.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_tiled.wgsl"],
    MATMUL_REGISTER_F16 ("matmul_register.wgsl f16") => "matmul.rs", F16, ["elem_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_register.wgsl"],
    MATMUL_SUBGROUP_F16 ("matmul_subgroup.wgsl f16") => "matmul.rs", SUBGROUPS_OF_8_F16, ["elem_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"],
    MATMUL_TILED_F16 ("matmul_tiled.wgsl f16") => "matmul.rs", F16, ["elem_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_tiled.wgsl"],
    MATMUL_REGISTER_F16_TO_F16 ("matmul_register.wgsl f16 to f16") => "matmul.rs", F16, ["elem_f16_res_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_register.wgsl"],
    MATMUL_SUBGROUP_F16_TO_F16 ("matmul_subgroup.wgsl f16 to f16") => "matmul.rs", SUBGROUPS_OF_8_F16, ["elem_f16_res_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"],
    MATMUL_TILED_F16_TO_F16 ("matmul_tiled.wgsl f16 to f16") => "matmul.rs", F16, ["elem_f16_res_f16.wgsl", "matmul_params.wgsl", "gelu_math.wgsl", "matmul_tiled.wgsl"],
    CAST => "cast.rs", F16, ["cast.wgsl"],
    SOFTMAX => "softmax.rs", NOTHING, ["softmax.wgsl"],
    ATTENTION => "attention.rs", NOTHING, ["elem_f32.wgsl", "attention.wgsl"],
    ATTENTION_F16 ("attention.wgsl f16") => "attention.rs", F16, ["elem_f16.wgsl", "attention.wgsl"],
    LAYERNORM ("layernorm.wgsl") => "layernorm.rs", NOTHING, ["elem_f32.wgsl", "layernorm_common.wgsl", "layernorm.wgsl", "layernorm_backward.wgsl"],
    LAYERNORM_CENTERED => "layernorm.rs", F16, ["elem_f32_res_f16.wgsl", "layernorm_common.wgsl", "layernorm_centered.wgsl"],
    LAYERNORM_BACKWARD_F16 ("layernorm_backward.wgsl f16") => "layernorm.rs", F16, ["elem_f16.wgsl", "layernorm_common.wgsl", "layernorm_backward.wgsl"],
    GELU => "gelu.rs", NOTHING, ["elem_f32.wgsl", "gelu_math.wgsl", "gelu.wgsl"],
    GELU_F16 ("gelu.wgsl f16") => "gelu.rs", F16, ["elem_f16.wgsl", "gelu_math.wgsl", "gelu.wgsl"],
    ELEMENTWISE => "elementwise.rs", NOTHING, ["elementwise.wgsl"],
    REDUCE => "reduce.rs", NOTHING, ["reduce.wgsl"],
    GATHER => "gather.rs", NOTHING, ["gather.wgsl"],
    PATCH => "patch.rs", NOTHING, ["patch.wgsl"],
    LOSS => "loss.rs", NOTHING, ["loss.wgsl"],
    OPTIM => "optim.rs", NOTHING, ["optim.wgsl"],
    SCALER => "scaler.rs", NOTHING, ["scaler.wgsl"],
    BATCHNORM => "batchnorm.rs", NOTHING, ["batchnorm.wgsl"],
}
