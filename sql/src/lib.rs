//! History you can query: the Parquet archive of every series' seconds and of every decision
//! ([`archive`]), and DataFusion SQL over it and over live state ([`query`]).
//!
//! Arrow, Parquet and DataFusion stay in this crate: the engine speaks its own types
//! ([`trike_engine::SecondObs`]), and the binary hands control events over as JSON.

pub mod archive;
pub mod fleet;
pub mod query;

/// Errors of the archive and of queries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Arrow or Parquet refused the data.
    #[error("{0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Parquet refused the data.
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A query failed (the user's SQL, usually).
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// A statement that is not a query, or a file used as a table (refused before planning).
    #[error("{0}")]
    Refused(#[from] crate::query::guard::Refused),
    /// A query needed more memory than its limit.
    #[error("query over its memory limit: {0}")]
    OverMemory(String),
    /// A query ran past its time limit.
    #[error("query ran past its time limit of {0:?}")]
    Timeout(std::time::Duration),
    /// Live tables from another fleet member could not be read.
    #[error("live tables from a fleet member: {0}")]
    Fleet(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
