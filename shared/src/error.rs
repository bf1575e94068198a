//! The error alias every layer shares. A leaf of the module graph: it imports nothing from the crate, so
//! no module reaches upward for an error type.

/// Any error, boxed: the `source` of the kit's typed errors and the error of plumbing code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
