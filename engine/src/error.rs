//! Engine errors: every failure is a value with a sentence a user can act on.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// No usable adapter: the message says how to get one.
    #[error("{0}")]
    NoAdapter(String),
    /// Operands whose shapes do not fit the operation.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A tensor or dispatch beyond what this adapter allows.
    #[error("{0}")]
    Limit(String),
    /// An error reported by the GPU driver or wgpu itself.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A write into storage that another handle still reads.
    #[error("{0}")]
    Aliased(String),
    /// A `CMAE_*` environment variable with a value the engine does not know.
    #[error("{0}")]
    Env(String),
    /// Misuse of the autodiff tape (e.g. backward from a non-scalar).
    #[error("autodiff: {0}")]
    Autodiff(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a shape error naming the operation and both shapes.
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Shape { op, detail: detail.into() }
}
