//! The seam between receivers and the engine: decode a payload, hand the batch to a sink,
//! and say what happened in the terms OTLP responses need.

use crate::decode::{self, DecodeConfig, DecodeError, Decoded};
use crate::metrics::{IngestMetrics, RequestOutcome, SignalKind, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    inflight: Arc<Inflight>,
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
        Self {
            cfg,
            sink,
            metrics,
            inflight: Inflight::new(Limits::default().inflight_bytes),
        }
    }

    /// With an in-flight byte budget of `bytes` (shared by every receiver of this pipeline).
    pub fn with_inflight_budget(mut self, bytes: usize) -> Self {
        self.inflight = Inflight::new(bytes);
        self
    }

    /// The in-flight byte budget.
    pub fn inflight(&self) -> &Arc<Inflight> {
        &self.inflight
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
    /// Request bytes being read or decoded at once, across all requests (DESIGN §7
    /// `limits.inflight_bytes`).
    pub inflight_bytes: usize,
    /// Connections open at once, per listener (`limits.max_connections`).
    pub max_connections: usize,
    /// Concurrent gRPC streams per connection (`limits.max_grpc_streams`).
    pub max_grpc_streams: u32,
    /// Longest time to receive a request's headers, and a TLS handshake
    /// (`limits.header_read_timeout`).
    pub header_read_timeout: std::time::Duration,
    /// Longest time to receive a request's body (`limits.body_read_timeout`): a client that
    /// trickles its body is cut off instead of holding its in-flight bytes.
    pub body_read_timeout: std::time::Duration,
}

/// The in-flight byte budget: a request reserves its bytes *before* its body is read (HTTP:
/// its `Content-Length`, or the largest allowed body when it has none) or decoded (gRPC: the
/// message), and holds them until its observations are queued. A request that does not fit
/// is refused with 429 / `RESOURCE_EXHAUSTED` and `Retry-After`, so memory for requests stays
/// bounded however many clients send at once. One request larger than the whole budget is
/// admitted only while nothing else is in flight (so it is slow, never impossible).
#[derive(Debug)]
pub struct Inflight {
    budget: usize,
    used: AtomicUsize,
    /// Requests refused for the budget.
    pub refused: AtomicU64,
}

/// Bytes reserved from an [`Inflight`] budget; returned on drop.
#[derive(Debug)]
pub struct InflightPermit {
    inflight: Arc<Inflight>,
    bytes: usize,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.inflight.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Inflight {
    /// A budget of `budget` bytes.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self {
            budget,
            used: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Renders `trike_receiver_inflight_bytes` (and its limit) and the refusals.
    pub fn render(&self, out: &mut String) {
        use trike_engine::expo::{counter, gauge};
        gauge(
            out,
            "trike_receiver_inflight_bytes",
            "Request bytes being read or decoded now.",
            self.used() as f64,
        );
        gauge(
            out,
            "trike_receiver_inflight_limit_bytes",
            "limits.inflight_bytes: beyond it requests are refused with 429 / RESOURCE_EXHAUSTED.",
            self.budget as f64,
        );
        counter(
            out,
            "trike_receiver_inflight_refused_total",
            "Requests refused because the in-flight byte budget was spent.",
            self.refused.load(Ordering::Relaxed),
        );
    }

    /// Reserves `bytes`; None (and counted) when they do not fit.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<InflightPermit> {
        let mut cur = self.used.load(Ordering::Acquire);
        loop {
            if cur > 0 && cur.saturating_add(bytes) > self.budget {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.used.compare_exchange_weak(
                cur,
                cur + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(InflightPermit {
                        inflight: self.clone(),
                        bytes,
                    });
                }
                Err(now) => cur = now,
            }
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 8 << 20,
            max_decompressed_bytes: 32 << 20,
            inflight_bytes: 64 << 20,
            max_connections: 4096,
            max_grpc_streams: 100,
            header_read_timeout: std::time::Duration::from_secs(10),
            body_read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod inflight_tests {
    use super::*;

    /// Guarantees: reservations fit the budget or are refused (and counted); released bytes
    /// come back; one request larger than the budget passes only when nothing else is in flight.
    #[test]
    fn budget_holds() {
        let b = Inflight::new(100);
        let a = b.try_reserve(60).unwrap();
        assert!(b.try_reserve(50).is_none());
        let c = b.try_reserve(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        assert!(
            b.try_reserve(500).is_none(),
            "too big while others are in flight"
        );
        drop(c);
        let big = b.try_reserve(500).unwrap();
        assert!(b.try_reserve(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
        assert_eq!(b.refused.load(Ordering::Relaxed), 3);
    }
}
