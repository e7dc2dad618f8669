//! The kernel ABI check: what a Rust wrapper binds must be what its WGSL entry
//! point declares. naga reflects each shader once; each new pipeline is
//! checked before it is built, so a wrapper whose parameter struct, bindings,
//! access or workgroup size drifted from its shader fails with an error that
//! names both sides, on every adapter, instead of computing garbage.

use naga::valid::{Capabilities, GlobalUse, ModuleInfo, ValidationFlags, Validator};

use super::{Access, KernelSpec};
use crate::error::{Error, Result};
use crate::shaders::Shader;

/// One shader as naga sees it.
pub(crate) struct Reflection {
    module: naga::Module,
    info: ModuleInfo,
}

/// What one entry point declares and uses.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryAbi {
    pub entry: String,
    pub workgroup_size: [u32; 3],
    /// Byte size of the uniform parameter block at binding 0.
    pub params_size: Option<u32>,
    /// Storage bindings the entry point uses, sorted, with whether it writes them.
    pub storage: Vec<(u32, Access)>,
}

impl Reflection {
    pub(crate) fn of(shader: &Shader) -> Result<Self> {
        let fail = |what: String| Error::Gpu(format!("shader {}: {what}", shader.name));
        let module = naga::front::wgsl::parse_str(shader.source).map_err(|e| fail(e.emit_to_string(shader.source)))?;
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .map_err(|e| fail(e.emit_to_string(shader.source)))?;
        Ok(Self { module, info })
    }

    /// Every compute entry point of the shader.
    pub(crate) fn entries(&self) -> Vec<EntryAbi> {
        (0..self.module.entry_points.len()).map(|i| self.entry(i)).collect()
    }

    fn entry(&self, index: usize) -> EntryAbi {
        let ep = &self.module.entry_points[index];
        let uses = self.info.get_entry_point(index);
        let mut params_size = None;
        let mut storage = Vec::new();
        for (handle, var) in self.module.global_variables.iter() {
            let (Some(binding), use_) = (&var.binding, uses[handle]) else { continue };
            if use_.is_empty() {
                continue;
            }
            match var.space {
                naga::AddressSpace::Uniform if binding.binding == 0 => {
                    params_size = Some(self.module.types[var.ty].inner.size(self.module.to_ctx()));
                }
                naga::AddressSpace::Storage { .. } => {
                    let access = if use_.contains(GlobalUse::WRITE) { Access::Write } else { Access::Read };
                    storage.push((binding.binding, access));
                }
                _ => {}
            }
        }
        storage.sort_unstable();
        EntryAbi { entry: ep.name.clone(), workgroup_size: ep.workgroup_size, params_size, storage }
    }
}

/// Reflects every entry point of `shader` (for tests and tools).
pub fn reflect(shader: &Shader) -> Result<Vec<EntryAbi>> {
    Ok(Reflection::of(shader)?.entries())
}

/// Compares one dispatch's Rust side with its entry point.
pub(crate) fn check(r: &Reflection, spec: &KernelSpec<'_>, params_size: usize, bound: &[(u32, Access)]) -> Result<()> {
    let name = format!("{} ({}::{})", spec.label, spec.shader.name, spec.entry);
    let mismatch = |what: String| Error::Gpu(format!("kernel ABI mismatch in {name}: {what}"));
    let index = r
        .module
        .entry_points
        .iter()
        .position(|e| e.name == spec.entry && e.stage == naga::ShaderStage::Compute)
        .ok_or_else(|| mismatch("the shader has no such compute entry point".into()))?;
    let abi = r.entry(index);
    if abi.workgroup_size != spec.workgroup {
        return Err(mismatch(format!(
            "the wrapper computes its grid for workgroups of {:?}, the shader declares {:?}",
            spec.workgroup, abi.workgroup_size
        )));
    }
    if abi.params_size != Some(params_size as u32) {
        return Err(mismatch(format!(
            "the Rust parameter struct is {params_size} bytes, the WGSL uniform at binding 0 is {:?}",
            abi.params_size
        )));
    }
    let mut bound = bound.to_vec();
    bound.sort_unstable();
    if bound != abi.storage {
        return Err(mismatch(format!(
            "the wrapper binds {bound:?} (binding, access), the entry point uses {:?}",
            abi.storage
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaders::{ALL, SOFTMAX};

    #[test]
    fn every_entry_point_has_its_parameter_block_at_binding_0() {
        for shader in ALL {
            for e in reflect(shader).unwrap() {
                assert!(e.params_size.is_some_and(|s| s > 0), "{}::{} has no uniform at 0", shader.name, e.entry);
                assert!(e.workgroup_size.iter().all(|&w| w > 0), "{}::{}", shader.name, e.entry);
                assert!(!e.storage.is_empty(), "{}::{} binds no storage", shader.name, e.entry);
            }
        }
    }

    /// Each kind of drift between a wrapper and its WGSL is caught, naming both sides.
    #[test]
    fn mismatches_are_errors_naming_both_sides() {
        let r = Reflection::of(&SOFTMAX).unwrap();
        let spec =
            KernelSpec { shader: &SOFTMAX, entry: "forward", constants: &[], label: "softmax", workgroup: [64, 1, 1] };
        let write1 = [(1, Access::Write)];
        check(&r, &spec, 16, &write1).unwrap();
        let err = |spec: &KernelSpec<'_>, size: usize, bound: &[(u32, Access)]| {
            check(&r, spec, size, bound).unwrap_err().to_string()
        };
        let e = err(&spec, 32, &write1);
        assert!(e.contains("32 bytes") && e.contains("Some(16)"), "{e}");
        let e = err(&spec, 16, &[(1, Access::Read)]);
        assert!(e.contains("Read") && e.contains("Write"), "{e}");
        let e = err(&spec, 16, &[(1, Access::Write), (2, Access::Read)]);
        assert!(e.contains("(2, Read)"), "{e}");
        let e = err(&KernelSpec { workgroup: [256, 1, 1], ..spec }, 16, &write1);
        assert!(e.contains("[256, 1, 1]") && e.contains("[64, 1, 1]"), "{e}");
        let e = err(&KernelSpec { entry: "sideways", ..spec }, 16, &write1);
        assert!(e.contains("no such compute entry point"), "{e}");
    }
}
