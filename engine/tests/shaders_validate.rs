//! Every WGSL file in shaders/ parses and validates with naga, so a broken
//! shader fails `cargo test` before it reaches a GPU.

use cmae_engine::device::reflect;
use cmae_engine::shaders::ALL;

#[test]
fn every_shader_validates_with_naga() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shaders");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    on_disk.sort();
    let mut registered: Vec<String> = ALL.iter().flat_map(|s| s.files.iter().map(|f| f.to_string())).collect();
    registered.sort();
    registered.dedup();
    assert_eq!(on_disk, registered, "every file in shaders/ is part of a shader in engine/src/shaders.rs");

    // The engine's own reflection parses and validates each shader, as the
    // device does before building a pipeline from it.
    for shader in ALL {
        if let Err(e) = reflect(shader) {
            panic!("{e}");
        }
    }
}
