//! `cmae bench ...`: speed figures as JSON lines, medians after warm-up.

pub mod kernels;
mod overhead;
pub mod pretrain;
