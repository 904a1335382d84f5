//! The seam between receivers and the engine: decode a payload, hand the batch to a sink,
//! and say what happened in the terms OTLP responses need.

use crate::decode::{self, DecodeConfig, DecodeError, Decoded};
use crate::metrics::{IngestMetrics, RequestOutcome, SignalKind, Transport};
use std::sync::Arc;
use trike_engine::Batch;

/// The sink refused the batch because its queue is full; the client should retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ingest queue is full")]
pub struct Overloaded;

/// Called once the engine has applied a batch (the Kafka source commits offsets on it).
pub type Ack = Box<dyn FnOnce() + Send>;

/// Where decoded batches go (the engine's input queue, in the binary).
pub trait BatchSink: Send + Sync + 'static {
    /// Hands over a batch without blocking; refuses it when the queue is full. `ack`, when
    /// given, runs after the batch is applied to the engine's state.
    fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded>;
}

/// Payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf` (and gRPC).
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

/// An accepted export request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Items rejected (partial success); 0 means full success.
    pub rejected: u64,
    /// Why, for the partial-success `error_message`.
    pub message: String,
}

/// A refused export request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The payload could not be decoded: nothing was applied.
    #[error("{0}")]
    Malformed(String),
    /// The engine queue is full: nothing was applied; retry.
    #[error("Trike is overloaded: ingest queue is full, retry later")]
    Overloaded,
}

/// Decodes exports and feeds the sink.
pub struct Pipeline {
    cfg: Arc<DecodeConfig>,
    sink: Arc<dyn BatchSink>,
    metrics: Arc<IngestMetrics>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline decoding with `cfg` into `sink`.
    pub fn new(
        cfg: Arc<DecodeConfig>,
        sink: Arc<dyn BatchSink>,
        metrics: Arc<IngestMetrics>,
    ) -> Self {
        Self { cfg, sink, metrics }
    }

    /// The ingestion counters.
    pub fn metrics(&self) -> &Arc<IngestMetrics> {
        &self.metrics
    }

    /// Decodes one export request and submits its observations.
    pub fn export(
        &self,
        transport: Transport,
        signal: SignalKind,
        encoding: Encoding,
        body: &[u8],
    ) -> Result<Accepted, ExportError> {
        self.export_acked(transport, signal, encoding, body, None)
    }

    /// Like [`Pipeline::export`]; `ack` runs once the observations are applied (at once when
    /// there are none). Not run when the export is refused.
    pub fn export_acked(
        &self,
        transport: Transport,
        signal: SignalKind,
        encoding: Encoding,
        body: &[u8],
        ack: Option<Ack>,
    ) -> Result<Accepted, ExportError> {
        let decoded: Result<Decoded, DecodeError> = match (signal, encoding) {
            (SignalKind::Traces, Encoding::Protobuf) => decode::traces_proto(body, &self.cfg),
            (SignalKind::Traces, Encoding::Json) => decode::traces_json(body, &self.cfg),
            (SignalKind::Metrics, Encoding::Protobuf) => decode::metrics_proto(body, &self.cfg),
            (SignalKind::Metrics, Encoding::Json) => decode::metrics_json(body, &self.cfg),
            (SignalKind::Logs, Encoding::Protobuf) => decode::logs_proto(body),
            (SignalKind::Logs, Encoding::Json) => decode::logs_json(body),
        };
        let d = match decoded {
            Ok(d) => d,
            Err(e) => {
                self.metrics
                    .request(transport, signal, RequestOutcome::Malformed);
                return Err(ExportError::Malformed(e.to_string()));
            }
        };
        let observations = d.batch.len() as u64;
        if d.batch.is_empty() {
            if let Some(a) = ack {
                a();
            }
        } else if self.sink.submit(d.batch, ack).is_err() {
            self.metrics
                .request(transport, signal, RequestOutcome::Overloaded);
            return Err(ExportError::Overloaded);
        }
        self.metrics
            .items(signal, d.received, d.rejected_by, observations);
        let outcome = if d.rejected > 0 {
            RequestOutcome::Partial
        } else {
            RequestOutcome::Ok
        };
        self.metrics.request(transport, signal, outcome);
        Ok(Accepted {
            rejected: d.rejected,
            message: d.first_rejection.map_or_else(String::new, |m| {
                if d.rejected > 1 {
                    format!("{} items rejected; first: {m}", d.rejected)
                } else {
                    m
                }
            }),
        })
    }
}

/// Bodies at least this large are decoded on the blocking pool, so a big request cannot stall
/// the async workers that serve everyone else (and the API reads that measure freshness).
pub const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// [`Pipeline::export`] from async code: small bodies inline, large ones on the blocking pool.
pub async fn export_async(
    pipeline: &Arc<Pipeline>,
    transport: Transport,
    signal: SignalKind,
    encoding: Encoding,
    body: bytes::Bytes,
) -> Result<Accepted, ExportError> {
    if body.len() < BLOCKING_DECODE_BYTES {
        return pipeline.export(transport, signal, encoding, &body);
    }
    let p = pipeline.clone();
    match tokio::task::spawn_blocking(move || p.export(transport, signal, encoding, &body)).await {
        Ok(r) => r,
        // Only on runtime shutdown: tell the client to come back.
        Err(_) => Err(ExportError::Overloaded),
    }
}

/// Limits on request bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted request body on the wire (compressed), in bytes.
    pub max_request_bytes: usize,
    /// Largest accepted body after decompression, in bytes.
    pub max_decompressed_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
        }
    }
}
