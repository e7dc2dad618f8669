//! cmae: Conditional MAE pretraining, probing, fine-tuning and analysis on wgpu.

pub mod bench;
pub mod info;
pub mod stats;
