//! The runtime's errors.

use std::path::PathBuf;

/// What can go wrong starting or restoring a runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint file could not be read.
    #[error("reading checkpoint {path}: {source}")]
    ReadCheckpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A checkpoint file is not one this build can read.
    #[error("checkpoint {path} {problem}; move it away to start with empty state")]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A file or thread could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
