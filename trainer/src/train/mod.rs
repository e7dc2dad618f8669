//! Training machinery: schedules, AdamW, checkpoints, metrics, reconstruction
//! grids and the pretraining loop.

pub mod checkpoint;
pub mod lifecycle;
pub mod metrics;
pub mod optimizer;
pub mod precision;
pub mod pretrain;
pub mod recon;
pub mod runner;
pub mod schedule;
