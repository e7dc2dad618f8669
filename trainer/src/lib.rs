//! cmae: Conditional MAE pretraining, probing, fine-tuning and analysis on wgpu.

pub mod analysis;
pub mod bench;
pub mod classify;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod fixture;
pub mod info;
pub mod masking;
pub mod model;
pub mod rng;
pub mod safetensors_io;
pub mod stats;
/// The study writes its figures with plotters, native only (see `analysis::plot`).
#[cfg(not(target_arch = "wasm32"))]
pub mod study;
pub mod train;
pub mod tune;
