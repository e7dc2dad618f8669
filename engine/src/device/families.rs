//! Which kernel families an adapter may run, decided from its features,
//! subgroup sizes and device type alone. The device, the autotuner and
//! `cmae info` all ask this one place, and the shader translation test asks
//! it for every backend's possible adapters: a module that some backend
//! cannot express must be one this never allows there.

use super::{MatmulKind, TileShape};
use crate::kernels::attention::FusedLayout;
use crate::shaders::{Needs, Shader};
use crate::tensor::DType;
use crate::tune::Variant;

/// What the kernel selection looks at on an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFamilies {
    /// Subgroups of exactly 8 lanes: the subgroup matmul.
    pub subgroups_of_8: bool,
    /// `SHADER_F16`: kernels that store f16.
    pub shader_f16: bool,
    /// A CPU rasteriser (lavapipe, llvmpipe, SwiftShader): workgroup memory
    /// does not pay there, so register kernels and row layouts are preferred.
    pub cpu: bool,
}

impl KernelFamilies {
    /// The families for a device with `features` on the adapter `info` describes.
    pub fn of(features: wgpu::Features, info: &wgpu::AdapterInfo) -> Self {
        Self::of_parts(features, (info.subgroup_min_size, info.subgroup_max_size), info.device_type)
    }

    /// [`KernelFamilies::of`] from the parts it reads, for adapters described
    /// rather than opened (the backend translation test).
    pub fn of_parts(features: wgpu::Features, (min, max): (u32, u32), device_type: wgpu::DeviceType) -> Self {
        Self {
            subgroups_of_8: features.contains(wgpu::Features::SUBGROUP) && min == 8 && max == 8,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            cpu: device_type == wgpu::DeviceType::Cpu,
        }
    }

    /// Whether this adapter has everything `shader` needs.
    pub fn can_run(&self, shader: &Shader) -> bool {
        self.missing(shader.needs).is_none()
    }

    /// The first thing `needs` asks for that this adapter lacks, in words.
    pub fn missing(&self, needs: Needs) -> Option<&'static str> {
        if needs.subgroups_of_8 && !self.subgroups_of_8 {
            Some("8-lane subgroups (wgpu feature SUBGROUP with subgroup size 8)")
        } else if needs.f16 && !self.shader_f16 {
            Some("the SHADER_F16 feature")
        } else {
            None
        }
    }

    /// The matmul family used untuned (the autotuner's fallback).
    pub fn matmul_heuristic(&self) -> MatmulKind {
        match (self.cpu, self.subgroups_of_8) {
            (true, true) => MatmulKind::Subgroup,
            (true, false) => MatmulKind::Register,
            (false, _) => MatmulKind::Tiled(TileShape::DEFAULT),
        }
    }

    /// Every matmul family the autotuner may pick, the heuristic's first:
    /// the subgroup kernel only with 8-lane subgroups, and on CPU adapters
    /// only the default tile shape (which bounds the tuning time there).
    pub fn matmul_kinds(&self) -> Vec<MatmulKind> {
        let heuristic = self.matmul_heuristic();
        let allowed = |kind: MatmulKind| match kind {
            MatmulKind::Register => true,
            MatmulKind::Subgroup => self.subgroups_of_8,
            MatmulKind::Tiled(shape) => !self.cpu || shape == TileShape::DEFAULT,
        };
        let others = MatmulKind::ALL.iter().copied().filter(|&k| k != heuristic && allowed(k));
        std::iter::once(heuristic).chain(others).collect()
    }

    /// The fused attention layout.
    pub fn attention_layout(&self) -> FusedLayout {
        if self.cpu { FusedLayout::Rows } else { FusedLayout::Tiles }
    }

    /// One line for `cmae info`.
    pub fn describe(&self) -> String {
        let matmul: Vec<&str> = self.matmul_kinds().iter().map(|k| k.name()).collect();
        let attention = match self.attention_layout() {
            FusedLayout::Rows => "rows",
            FusedLayout::Tiles => "tiles",
        };
        let f16 = if self.shader_f16 { "f16 mixed precision" } else { "f32 only (no SHADER_F16)" };
        format!("matmul {}; attention fused {attention}; {f16}", matmul.join(", "))
    }
}

impl MatmulKind {
    /// The shader module that runs this family on operands stored as
    /// `operands` with results stored as `results`: f32 and f32, f16 and
    /// f32, or f16 and f16 (f16 results come only from f16 operands); None
    /// for any other pair.
    pub fn shader(self, (operands, results): (DType, DType)) -> Option<&'static Shader> {
        use crate::shaders::*;
        use DType::{F16, F32};
        Some(match (self, operands, results) {
            (MatmulKind::Register, F32, F32) => &MATMUL_REGISTER,
            (MatmulKind::Subgroup, F32, F32) => &MATMUL_SUBGROUP,
            (MatmulKind::Tiled(_), F32, F32) => &MATMUL_TILED,
            (MatmulKind::Register, F16, F32) => &MATMUL_REGISTER_F16,
            (MatmulKind::Subgroup, F16, F32) => &MATMUL_SUBGROUP_F16,
            (MatmulKind::Tiled(_), F16, F32) => &MATMUL_TILED_F16,
            (MatmulKind::Register, F16, F16) => &MATMUL_REGISTER_F16_TO_F16,
            (MatmulKind::Subgroup, F16, F16) => &MATMUL_SUBGROUP_F16_TO_F16,
            (MatmulKind::Tiled(_), F16, F16) => &MATMUL_TILED_F16_TO_F16,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(cpu: bool, subgroups_of_8: bool) -> KernelFamilies {
        KernelFamilies { subgroups_of_8, shader_f16: false, cpu }
    }

    #[test]
    fn matmul_kinds_are_runnable_and_the_heuristic_comes_first() {
        use MatmulKind::*;
        let default = Tiled(TileShape::DEFAULT);
        assert_eq!(families(true, true).matmul_kinds(), [Subgroup, Register, default], "one tile shape on a CPU");
        assert_eq!(families(true, false).matmul_kinds(), [Register, default]);
        let gpu = families(false, false).matmul_kinds();
        assert_eq!(gpu[0], default);
        assert_eq!(gpu.len(), 1 + TileShape::ALL.len(), "every shape and the register kernel, no subgroup kernel");
        for f in [families(true, true), families(false, false), families(false, true)] {
            assert!(f.matmul_kinds().iter().all(|k| f.can_run(k.shader((DType::F32, DType::F32)).unwrap())), "{f:?}");
        }
    }

    #[test]
    fn missing_needs_are_named() {
        let f = families(false, false);
        assert!(!f.can_run(&crate::shaders::MATMUL_SUBGROUP));
        assert!(f.missing(Needs::SUBGROUPS_OF_8).unwrap().contains("SUBGROUP"));
        assert!(f.missing(Needs { f16: true, ..Needs::NOTHING }).unwrap().contains("SHADER_F16"));
        assert_eq!(f.missing(Needs::NOTHING), None);
    }
}
