//! Models: the Conditional MAE and its parameters.

pub mod encoder;
pub mod mae;
pub mod params;
pub mod posembed;
pub mod vit;

pub use encoder::{LoadedEncoder, PosEmbed, Route, VitEncoder};
pub use mae::{Mae, MaeOutput, param_specs};
pub use params::{ParamSpec, ParamStore, decays};
