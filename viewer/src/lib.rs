//! The viewer's UI and model side, shared by the desktop app
//! (`cmae-viewer`) and the page (`cmae-web`).

// On wasm32 wgpu's handles are neither Send nor Sync (a page has one thread).
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod app;
#[cfg(not(target_arch = "wasm32"))]
pub mod headless;
pub mod training;
pub mod worker;

use eframe::wgpu;

/// The device eframe opens, which the model then shares: the adapter's full
/// limits and the features the engine's kernels use.
pub fn device_descriptor(adapter: &wgpu::Adapter) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("cmae-viewer"),
        required_features: cmae_engine::device::wanted_features(adapter),
        required_limits: adapter.limits(),
        ..Default::default()
    }
}
