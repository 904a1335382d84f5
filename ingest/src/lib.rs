//! OTLP receivers (gRPC and HTTP) and the decoding of OTLP into engine observations.
//!
//! Receivers hand decoded batches to a [`pipeline::BatchSink`]; they never touch engine
//! state themselves, so overload is answered at the door (429 / `RESOURCE_EXHAUSTED`).

pub mod auth;
pub mod decode;
pub mod grpc;
pub mod http;
pub mod kafka;
pub mod kinds;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod serve_http;
pub mod tls;

pub use metrics::{IngestMetrics, RequestOutcome, SignalKind, Transport};
pub use pipeline::{BatchSink, Busy, Encoding, Limits, Overloaded, Pipeline};
