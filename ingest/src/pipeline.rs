//! The seam between receivers and the engine: decode a payload, hand the batch to a sink,
//! and say what happened in the terms OTLP responses need.

use crate::decode::{self, DecodeConfig, DecodeError, Decoded};
use crate::metrics::{IngestMetrics, RequestOutcome, SignalKind, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use trike_engine::Batch;

mod gather;
pub use gather::Gather;

/// The sink refused a batch because its queue is full; the batch and its ack come back, so
/// the caller can offer them again without decoding again.
pub struct Overloaded {
    /// The refused batch.
    pub batch: Batch,
    /// Its ack (not run).
    pub ack: Option<Ack>,
}

impl std::fmt::Debug for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overloaded")
            .field("observations", &self.batch.len())
            .finish_non_exhaustive()
    }
}

/// Called once the engine has applied a batch (the Kafka source commits offsets on it).
pub type Ack = Box<dyn FnOnce() + Send>;

/// Where decoded batches go (the engine's input queue, in the binary).
pub trait BatchSink: Send + Sync + 'static {
    /// Hands over a batch without blocking; refuses it (giving it back) when the queue is
    /// full. `ack`, when given, runs after the batch is applied to the engine's state.
    // The refused batch comes back by value (the cold path), so it is never decoded twice.
    #[allow(clippy::result_large_err)]
    fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded>;

    /// When a refused sender should come back: how long the queue takes to drain at its
    /// current rate (at least 1 s).
    fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// What is busy when a request is refused for load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// The engine queue is full.
    Queue,
    /// Resident memory is above 80 % of `limits.memory_limit`.
    Memory,
}

impl Busy {
    /// What the client is told.
    pub const fn message(self) -> &'static str {
        match self {
            Busy::Queue => "Trike is overloaded: ingest queue is full, retry later",
            Busy::Memory => {
                "Trike is over its memory soft limit (80 % of limits.memory_limit), retry later"
            }
        }
    }
}

/// How long a client refused for memory waits: memory falls as windows age, not at once.
pub const MEMORY_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Payload encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf` (and gRPC).
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
    /// A gateway's `trike.partials` record (the fleet's processors read these from Kafka).
    TrikePartials,
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
    /// The engine queue is full, or memory is short: nothing was applied; retry after
    /// `retry_after`.
    #[error("{}", .why.message())]
    Overloaded {
        /// What is busy.
        why: Busy,
        /// When to come back.
        retry_after: Duration,
    },
}

/// A decoded request the sink had no room for: offer it again with [`Pipeline::offer`]
/// (nothing is decoded twice).
pub struct Pending {
    transport: Transport,
    signal: SignalKind,
    decoded: Box<Decoded>,
    ack: Option<Ack>,
    /// Export requests decoded into it, and how many of them had items rejected.
    requests: u64,
    partial: u64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("observations", &self.decoded.batch.len())
            .finish_non_exhaustive()
    }
}

/// Why [`Pipeline::export_or_hold`] did not accept a request.
#[derive(Debug)]
pub enum Held {
    /// Undecodable: nothing was applied (and nothing will be).
    Malformed(String),
    /// Refused for memory before decoding: offer the payload again later.
    Memory,
    /// Decoded, but the queue is full: offer it again later.
    Full(Pending),
}

/// Decodes exports and feeds the sink.
pub struct Pipeline {
    cfg: Arc<DecodeConfig>,
    sink: Arc<dyn BatchSink>,
    metrics: Arc<IngestMetrics>,
    inflight: Arc<Inflight>,
    memory: Option<Arc<crate::memory::MemoryLimiter>>,
    durable: bool,
    forward: Option<Arc<dyn Forward>>,
}

/// Where the receivers' accepted requests also go (`forward:`, the next hops): called once per
/// request Trike accepted, with its message bytes as received (decompressed). It must not
/// block: the SLI path waits for it.
pub trait Forward: Send + Sync {
    /// Queues `body` (a `signal` request in `encoding`) for the next hops.
    fn forward(&self, signal: SignalKind, encoding: Encoding, body: &bytes::Bytes);
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
            memory: None,
            durable: false,
            forward: None,
        }
    }

    /// Sends every accepted receiver request on to `forward` as well.
    pub fn with_forward(mut self, forward: Arc<dyn Forward>) -> Self {
        self.forward = Some(forward);
        self
    }

    /// Receivers answer a request only once the sink has made its data durable (its ack ran:
    /// a gateway's partials acknowledged by the broker, `fleet.ack: durable`); without it they
    /// answer once the data is queued.
    pub fn with_durable_ack(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// With a memory limiter: above its soft limit, new data is refused before decoding.
    pub fn with_memory_limiter(mut self, limiter: Arc<crate::memory::MemoryLimiter>) -> Self {
        self.memory = Some(limiter);
        self
    }

    /// The memory limiter, when configured.
    pub fn memory_limiter(&self) -> Option<&Arc<crate::memory::MemoryLimiter>> {
        self.memory.as_ref()
    }

    /// The refusal for a request arriving now, when memory is short (checked before its body
    /// is read or decoded); counted as an overloaded request of `transport` and `signal`.
    pub fn memory_refusal(&self, transport: Transport, signal: SignalKind) -> Option<ExportError> {
        let m = self.memory.as_ref()?;
        if m.admit() {
            return None;
        }
        self.metrics
            .request(transport, signal, RequestOutcome::Overloaded);
        Some(ExportError::Overloaded {
            why: Busy::Memory,
            retry_after: MEMORY_RETRY_AFTER,
        })
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
        match self.export_or_hold(transport, signal, encoding, body, ack) {
            Ok(a) => Ok(a),
            Err(Held::Malformed(m)) => Err(ExportError::Malformed(m)),
            Err(Held::Memory) => Err(ExportError::Overloaded {
                why: Busy::Memory,
                retry_after: MEMORY_RETRY_AFTER,
            }),
            Err(Held::Full(_)) => Err(ExportError::Overloaded {
                why: Busy::Queue,
                retry_after: self.sink.retry_after(),
            }),
        }
    }

    /// Like [`Pipeline::export_acked`], but a decoded request that found the queue full comes
    /// back as [`Held::Full`], to be offered again with [`Pipeline::offer`].
    pub fn export_or_hold(
        &self,
        transport: Transport,
        signal: SignalKind,
        encoding: Encoding,
        body: &[u8],
        ack: Option<Ack>,
    ) -> Result<Accepted, Held> {
        if self.memory_refusal(transport, signal).is_some() {
            return Err(Held::Memory);
        }
        match decode_one(signal, encoding, body, &self.cfg) {
            Ok(decoded) => self
                .offer(Pending {
                    transport,
                    signal,
                    partial: u64::from(decoded.rejected > 0),
                    requests: 1,
                    decoded: Box::new(decoded),
                    ack,
                })
                .map_err(Held::Full),
            Err(e) => {
                self.metrics
                    .request(transport, signal, RequestOutcome::Malformed);
                Err(Held::Malformed(e.to_string()))
            }
        }
    }

    /// Offers a decoded request to the sink; when the queue is still full it comes back.
    pub fn offer(&self, p: Pending) -> Result<Accepted, Pending> {
        let Pending {
            transport,
            signal,
            mut decoded,
            ack,
            requests,
            partial,
        } = p;
        let observations = decoded.batch.len() as u64;
        if decoded.batch.is_empty() {
            if let Some(a) = ack {
                a();
            }
        } else {
            let batch = std::mem::take(&mut decoded.batch);
            if let Err(refused) = self.sink.submit(batch, ack) {
                self.metrics.count_requests(
                    transport,
                    signal,
                    RequestOutcome::Overloaded,
                    requests,
                );
                decoded.batch = refused.batch;
                return Err(Pending {
                    transport,
                    signal,
                    decoded,
                    ack: refused.ack,
                    requests,
                    partial,
                });
            }
        }
        let d = *decoded;
        self.metrics
            .items(signal, d.received, d.rejected_by, observations);
        self.metrics
            .attributes_dropped(signal, d.attributes_dropped);
        self.metrics
            .count_requests(transport, signal, RequestOutcome::Partial, partial);
        self.metrics
            .count_requests(transport, signal, RequestOutcome::Ok, requests - partial);
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

/// Decodes one export request of `signal` in `encoding`.
fn decode_one(
    signal: SignalKind,
    encoding: Encoding,
    body: &[u8],
    cfg: &DecodeConfig,
) -> Result<Decoded, DecodeError> {
    match (signal, encoding) {
        (_, Encoding::TrikePartials) => decode::partials(body),
        (SignalKind::Traces, Encoding::Protobuf) => decode::traces_proto(body, cfg),
        (SignalKind::Traces, Encoding::Json) => decode::traces_json(body, cfg),
        (SignalKind::Metrics, Encoding::Protobuf) => decode::metrics_proto(body, cfg),
        (SignalKind::Metrics, Encoding::Json) => decode::metrics_json(body, cfg),
        (SignalKind::Logs, Encoding::Protobuf) => decode::logs_proto(body, cfg),
        (SignalKind::Logs, Encoding::Json) => decode::logs_json(body, cfg),
    }
}

/// Bodies at least this large are decoded on the blocking pool, so a big request cannot stall
/// the async workers that serve everyone else (and the API reads that measure freshness).
pub const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// [`Pipeline::export`] from async code: small bodies inline, large ones on the blocking pool.
/// With [`Pipeline::with_durable_ack`] it returns only once the sink's ack for the data ran.
pub async fn export_async(
    pipeline: &Arc<Pipeline>,
    transport: Transport,
    signal: SignalKind,
    encoding: Encoding,
    body: bytes::Bytes,
) -> Result<Accepted, ExportError> {
    let (ack, durable) = if pipeline.durable {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ack: Ack = Box::new(move || {
            let _ = tx.send(());
        });
        (Some(ack), Some(rx))
    } else {
        (None, None)
    };
    let forward = pipeline.forward.as_ref().map(|f| (f.clone(), body.clone()));
    let accepted = if body.len() < BLOCKING_DECODE_BYTES {
        pipeline.export_acked(transport, signal, encoding, &body, ack)?
    } else {
        let p = pipeline.clone();
        match tokio::task::spawn_blocking(move || {
            p.export_acked(transport, signal, encoding, &body, ack)
        })
        .await
        {
            Ok(r) => r?,
            // Only on runtime shutdown: tell the client to come back.
            Err(_) => {
                return Err(ExportError::Overloaded {
                    why: Busy::Queue,
                    retry_after: Duration::from_secs(1),
                });
            }
        }
    };
    if let Some(rx) = durable
        && rx.await.is_err()
    {
        // The ack was dropped unrun: the data was not made durable (the process is stopping).
        return Err(ExportError::Overloaded {
            why: Busy::Queue,
            retry_after: Duration::from_secs(1),
        });
    }
    if let Some((f, body)) = forward {
        f.forward(signal, encoding, &body);
    }
    Ok(accepted)
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

#[cfg(test)]
mod hold_tests {
    use super::*;
    use crate::decode::tests::{kv, request, s, span};
    use parking_lot::Mutex;
    use prost::Message;
    use trike_proto::trace::v1::span::SpanKind;

    /// A sink that refuses its first `refuse` batches, then keeps them.
    pub(super) struct Stubborn {
        pub(super) refuse: Mutex<usize>,
        pub(super) kept: Mutex<Vec<Batch>>,
    }

    impl Stubborn {
        /// A sink refusing its first `refuse` batches, the metrics, and a pipeline over both.
        pub(super) fn pipeline(refuse: usize) -> (Arc<Stubborn>, Arc<IngestMetrics>, Pipeline) {
            let sink = Arc::new(Stubborn {
                refuse: Mutex::new(refuse),
                kept: Mutex::new(Vec::new()),
            });
            let metrics = Arc::new(IngestMetrics::default());
            let p = Pipeline::new(
                Arc::new(DecodeConfig::default()),
                sink.clone(),
                metrics.clone(),
            );
            (sink, metrics, p)
        }
    }

    impl BatchSink for Stubborn {
        fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded> {
            let mut r = self.refuse.lock();
            if *r > 0 {
                *r -= 1;
                return Err(Overloaded { batch, ack });
            }
            self.kept.lock().push(batch);
            if let Some(a) = ack {
                a();
            }
            Ok(())
        }
    }

    /// Guarantees: a request the queue has no room for comes back decoded, with its ack; it is
    /// offered again without its payload until it fits, then applied once, its ack run once,
    /// and its items counted once (each refusal counted as an overloaded attempt).
    #[test]
    fn a_held_request_is_offered_again_without_decoding() {
        let (sink, metrics, p) = Stubborn::pipeline(3);
        let body = request(
            vec![kv("service.name", s("checkout"))],
            (0..5)
                .map(|_| {
                    span(
                        "GET /",
                        SpanKind::Server,
                        1_800_000_000_000_000_000,
                        3,
                        vec![],
                        false,
                    )
                })
                .collect(),
        )
        .encode_to_vec();
        let acks = Arc::new(AtomicU64::new(0));
        let a = acks.clone();
        let ack: Ack = Box::new(move || {
            a.fetch_add(1, Ordering::Relaxed);
        });
        let held = p.export_or_hold(
            Transport::Kafka,
            SignalKind::Traces,
            Encoding::Protobuf,
            &body,
            Some(ack),
        );
        let Err(Held::Full(mut pending)) = held else {
            panic!("the first offer is refused")
        };
        drop(body);
        let mut offers = 1;
        let accepted = loop {
            match p.offer(pending) {
                Ok(a) => break a,
                Err(back) => {
                    offers += 1;
                    pending = back;
                }
            }
        };
        assert_eq!(offers, 3);
        assert_eq!(accepted.rejected, 0);
        assert_eq!(acks.load(Ordering::Relaxed), 1);
        let kept = sink.kept.lock();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].requests.len(), 5);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("trike_receiver_items_received_total{signal=\"traces\"} 5"),
            "{out}"
        );
        assert!(
            out.contains("trike_receiver_requests_total{transport=\"kafka\",signal=\"traces\",outcome=\"overloaded\"} 3"),
            "{out}"
        );
    }

    /// Guarantees: with memory over the soft limit, a request is refused before it is decoded
    /// (a payload that is not even OTLP is not looked at), with a retry hint of 5 s.
    #[test]
    fn memory_pressure_refuses_before_decoding() {
        let sink = Arc::new(Stubborn {
            refuse: Mutex::new(0),
            kept: Mutex::new(Vec::new()),
        });
        let limiter = Arc::new(crate::memory::MemoryLimiter::new(100));
        limiter.update(90);
        let p = Pipeline::new(
            Arc::new(DecodeConfig::default()),
            sink,
            Arc::new(IngestMetrics::default()),
        )
        .with_memory_limiter(limiter.clone());
        let r = p.export(
            Transport::Http,
            SignalKind::Traces,
            Encoding::Protobuf,
            b"\xff\xff not protobuf",
        );
        assert_eq!(
            r,
            Err(ExportError::Overloaded {
                why: Busy::Memory,
                retry_after: MEMORY_RETRY_AFTER
            })
        );
        limiter.update(10);
        assert!(matches!(
            p.export(
                Transport::Http,
                SignalKind::Traces,
                Encoding::Protobuf,
                b"\xff\xff"
            ),
            Err(ExportError::Malformed(_))
        ));
    }
}
