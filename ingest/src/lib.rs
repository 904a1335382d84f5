//! OTLP receivers (gRPC and HTTP) and the decoding of OTLP into engine observations.
//!
//! Receivers hand decoded batches to a [`pipeline::BatchSink`]; they never touch engine
//! state themselves, so overload is answered at the door (429 / `RESOURCE_EXHAUSTED`).

pub mod decode;
