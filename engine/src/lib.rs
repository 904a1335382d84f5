//! Trike's pure core: series, event-time windows, latency sketches and SLIs.
//!
//! Everything here is synchronous and deterministic. Time is an argument (`now`, in Unix
//! nanoseconds); nothing reads a clock, spawns a task, or touches the network. Wire formats
//! (protobuf, JSON, Arrow) stay outside: callers decode into [`observation::Batch`].

pub mod anomaly;
pub mod attribution;
pub mod canary;
pub mod canary_seq;
pub mod causes;
pub mod config;
pub mod cost;
pub mod delta;
pub mod engine;
pub mod expo;
pub mod facts;
pub mod forecast;
pub mod graph;
pub mod minutes;
pub mod observation;
pub mod onset;
pub mod partials;
pub mod policy;
pub mod regions;
pub mod rollout;
pub mod saved;
pub mod sketch;
pub mod sli;
pub mod slo;
pub mod stats;
pub mod time;
pub mod usage;
pub mod window;

pub use config::{EngineConfig, SignalSource};
pub use engine::{Engine, IngestReport, Snapshot, Stats};
pub use observation::{
    Batch, CallObs, CallSide, CounterObs, EdgeObs, Exemplar, HistogramObs, LogObs, PartialObs,
    RequestObs, SecondObs, SeriesKey, Signal, Temporality,
};
pub use sli::{Quantiles, ServiceSli, SliQuery, SliRow};
pub use time::{Span, UnixNanos};
pub use usage::{UsageKind, UsageObs};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query or configuration the engine cannot answer; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// A snapshot from an incompatible version.
    #[error("snapshot version {found} is not supported (expected {expected})")]
    SnapshotVersion {
        /// Version found.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
