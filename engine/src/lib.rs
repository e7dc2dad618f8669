//! cmae-engine: GPU tensors, WGSL compute kernels and a tape-based reverse-mode
//! autodiff on wgpu, for training vision transformers on any GPU (Vulkan,
//! Metal, DX12) and on software Vulkan (lavapipe) in CI.
// On wasm32 wgpu's handles are neither Send nor Sync (a page runs on one
// thread); the Arcs that share them between native threads are then plain
// shared ownership.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

pub mod autodiff;
pub mod device;
pub mod error;
pub mod kernels;
pub mod shaders;
pub mod tensor;
pub mod tune;

pub use autodiff::{Gradients, Precision, Tape, Var};
pub use device::{Device, MatmulKind, MemoryStats, PendingRead, TileShape};
pub use error::{Error, Result};
pub use tensor::{DType, Tensor, TensorMut};
pub use tune::{CandidateTime, TuneConfig, TuneEntry};
