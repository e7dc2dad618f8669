//! `cmae info`: the adapter, its backend and driver, the kernel families it
//! may run, and the limits that matter.

use cmae_engine::Device;
use serde_json::json;

/// Everything `cmae info` reports, as JSON.
pub fn describe(dev: &Device) -> serde_json::Value {
    let info = dev.info();
    let l = dev.limits();
    let families = dev.kernel_families();
    let features: Vec<String> = [
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
        (wgpu::Features::SUBGROUP, "SUBGROUP"),
        (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        (wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES, "TIMESTAMP_QUERY_INSIDE_PASSES"),
    ]
    .iter()
    .filter(|(f, _)| dev.features().contains(*f))
    .map(|(_, n)| n.to_string())
    .collect();
    json!({
        "adapter": info.name,
        "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "vendor": format!("{:#06x}", info.vendor),
        "matmul_kernel": format!("{:?}", dev.matmul_kind()),
        "autotune": dev.autotune(),
        "tune_cache": dev.tune_cache_path().map(|p| p.display().to_string()),
        "tune_entries": dev.tune_entries().len(),
        "features": features,
        "distributed": {
            "mpi": cfg!(feature = "mpi"),
            "ranks": crate::distributed::world().size(),
        },
        "kernels": {
            "matmul": families.matmul_kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
            "attention": format!("fused {:?}", families.attention_layout()),
            "subgroup_matmul": families.subgroups_of_8,
            "f16_mixed_precision": families.shader_f16,
            "summary": families.describe(),
        },
        "limits": {
            "max_buffer_size": l.max_buffer_size,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_size": [l.max_compute_workgroup_size_x, l.max_compute_workgroup_size_y, l.max_compute_workgroup_size_z],
            "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
            "min_uniform_buffer_offset_alignment": l.min_uniform_buffer_offset_alignment,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        },
    })
}

/// Human-readable form of [`describe`].
pub fn print(dev: &Device) {
    let v = describe(dev);
    println!(
        "adapter:  {} ({}, {})",
        v["adapter"].as_str().unwrap_or(""),
        v["backend"].as_str().unwrap_or(""),
        v["device_type"].as_str().unwrap_or("")
    );
    println!("driver:   {} {}", v["driver"].as_str().unwrap_or(""), v["driver_info"].as_str().unwrap_or(""));
    let tuned =
        if v["autotune"].as_bool() == Some(true) { " (the default; autotune picks per shape class)" } else { "" };
    println!("matmul:   {} kernel{tuned}", v["matmul_kernel"].as_str().unwrap_or(""));
    match (v["autotune"].as_bool(), v["tune_cache"].as_str()) {
        (Some(false), _) => println!("autotune: off (CMAE_AUTOTUNE=off): the built-in choices"),
        (_, Some(path)) => println!("autotune: on, cache {path} ({} entries for this adapter)", v["tune_entries"]),
        _ => println!("autotune: on, in memory only (no cache directory: set CMAE_CACHE_DIR)"),
    }
    let feats: Vec<&str> = v["features"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
    println!("features: {}", if feats.is_empty() { "none of the optional ones".to_string() } else { feats.join(", ") });
    println!("kernels:  {}", v["kernels"]["summary"].as_str().unwrap_or(""));
    println!("multi-GPU: {}", crate::distributed::World::support());
    println!("limits:");
    if let Some(limits) = v["limits"].as_object() {
        for (k, val) in limits {
            println!("  {k}: {val}");
        }
    }
}
