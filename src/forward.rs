//! Inline forwarding (DESIGN §10, `forward:`): every OTLP request the receivers accept is also
//! sent, unchanged, to each next hop (another Collector or a backend) over OTLP/gRPC or
//! OTLP/HTTP, so Trike can sit in a pipeline without a second fan-out.
//!
//! Each hop has a bounded queue (`queue_bytes`): a request that does not fit is dropped and
//! counted, so a slow or dead hop never slows the SLI path nor grows memory. Four senders per
//! hop retry a failed send with exponential backoff (100 ms doubling to 5 s, 5 attempts, each
//! bounded by the hop's `timeout`, which covers connecting and the TLS handshake too) when
//! the failure is retryable, then drop it and count it. Retryable, as OTLP's exporters have
//! it: a connection error or a timeout, HTTP 429/502/503/504, gRPC CANCELLED,
//! DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS, and RESOURCE_EXHAUSTED
//! only when the hop says when to come back (`RetryInfo`). A hop's own delay (gRPC
//! `RetryInfo`, HTTP `Retry-After` in seconds) is waited out when it is longer than the
//! backoff, up to [`MAX_HOP_DELAY`]. The message sent is the message as received, gzipped
//! again for the hop unless its `compression` is `none` (the HTTP hop gets the same content
//! type). An OTLP/JSON request goes to a gRPC hop re-encoded as protobuf, gRPC's only
//! encoding (off the runtime's threads); one that cannot be is counted as `unsupported`. Header values are secrets: `check-config` and logs show them as `***`.

use bytes::{Buf, BufMut, Bytes};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;
use trike_ingest::metrics::SignalKind;
use trike_ingest::pipeline::{Encoding, Forward};

/// Senders per hop.
const SENDERS: usize = 4;
/// Attempts per request.
const ATTEMPTS: u32 = 5;
/// The longest wait a hop's `RetryInfo` or `Retry-After` can ask of a sender (the Collector's
/// exporters wait up to their `max_interval`, 30 s by default).
pub const MAX_HOP_DELAY: Duration = Duration::from_secs(30);

/// How a hop is spoken to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP.
    Http,
}

/// How a hop's requests are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the default, as the Collector's OTLP exporters have it): HTTP
    /// `Content-Encoding: gzip`, gRPC's `grpc-encoding: gzip`.
    #[default]
    Gzip,
    /// As they are.
    None,
}

/// One `forward:` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port`.
    pub endpoint: String,
    /// `grpc` (default) or `http`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every request, e.g. `authorization`; their values
    /// are secrets (printed as `***`).
    #[serde(default)]
    pub headers: BTreeMap<String, trike_sinks::Secret>,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Bytes queued for the hop at most (default 64 MiB).
    #[serde(default)]
    pub queue_bytes: Option<crate::config::bytes::ByteSize>,
    /// TLS to the hop (`{ca_file, cert_file, key_file, server_name_override}`, the
    /// Collector exporter's fields; `tls: {}` trusts the system's roots); absent: plaintext.
    #[serde(default)]
    pub tls: Option<trike_ingest::tls::HopTls>,
    /// Time one attempt may take: connecting, the TLS handshake and the request (default 10s;
    /// the Collector exporter's `timeout`). A hop that accepts and then stalls costs a
    /// sender this long per attempt.
    #[serde(default)]
    pub timeout: Option<trike_engine::Span>,
}

/// Default queue per hop.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Default time of one attempt, and the longest allowed.
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

impl Target {
    /// Why the entry cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let (host, port) = self
            .endpoint
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint: {:?} is not host:port", self.endpoint))?;
        if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
            return Err(format!("endpoint: {:?} is not host:port", self.endpoint));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value.expose()).is_err()
            {
                return Err(format!("headers: {name:?} is not a valid header"));
            }
            // gRPC metadata: ASCII values only (a `-bin` key carries binary ones).
            if self.protocol == Protocol::Grpc
                && (tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()).is_err()
                    || value
                        .expose()
                        .parse::<tonic::metadata::AsciiMetadataValue>()
                        .is_err())
            {
                return Err(format!(
                    "headers: {name:?} is not valid gRPC metadata (ASCII values; not a -bin key)"
                ));
            }
        }
        if let Some(tls) = &self.tls {
            trike_ingest::tls::hop_client_config(tls, &[]).map_err(|e| format!("tls: {e}"))?;
        }
        if self.attempt_timeout() > MAX_TIMEOUT {
            return Err(format!(
                "timeout: {}s is longer than {}s",
                self.attempt_timeout().as_secs(),
                MAX_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }

    /// Time one attempt may take.
    pub fn attempt_timeout(&self) -> Duration {
        self.timeout
            .map_or(TIMEOUT, |t| Duration::from_secs(t.secs()))
    }
}

/// Counters of one hop.
#[derive(Debug, Default)]
pub struct HopStats {
    /// Requests delivered.
    pub sent: AtomicU64,
    /// Send attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Requests dropped: the queue was full.
    pub dropped_full: AtomicU64,
    /// Requests dropped: every attempt failed, or the hop refused them for good.
    pub dropped_failed: AtomicU64,
    /// JSON requests that could not be re-encoded for a gRPC hop.
    pub unsupported: AtomicU64,
    /// Bytes queued now.
    pub queued_bytes: AtomicUsize,
}

struct Item {
    signal: SignalKind,
    encoding: Encoding,
    body: Bytes,
}

struct Hop {
    target: Target,
    limit: usize,
    tx: mpsc::UnboundedSender<Item>,
    stats: Arc<HopStats>,
}

/// Every hop; the receivers' [`Forward`].
pub struct Forwarder {
    hops: Vec<Hop>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hops.iter().map(|h| &h.target.endpoint))
            .finish()
    }
}

impl Forwarder {
    /// Starts the senders of every target (on the current Tokio runtime).
    pub fn start(targets: &[Target]) -> anyhow::Result<Arc<Self>> {
        let mut hops = Vec::new();
        for t in targets {
            let (tx, rx) = mpsc::unbounded_channel::<Item>();
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let stats = Arc::new(HopStats::default());
            let sender = Sender::new(t)?;
            for _ in 0..SENDERS {
                let (rx, stats, sender) = (rx.clone(), stats.clone(), sender.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(item) = rx.lock().await.recv().await else {
                            return;
                        };
                        let len = item.body.len();
                        sender.deliver(&item, &stats).await;
                        stats.queued_bytes.fetch_sub(len, Relaxed);
                    }
                });
            }
            hops.push(Hop {
                target: t.clone(),
                limit: t.queue_bytes.map_or(QUEUE_BYTES, |b| b.0 as usize),
                tx,
                stats,
            });
        }
        Ok(Arc::new(Self { hops }))
    }

    /// Each hop's endpoint and counters.
    pub fn stats(&self) -> Vec<(&str, &HopStats)> {
        self.hops
            .iter()
            .map(|h| (h.target.endpoint.as_str(), h.stats.as_ref()))
            .collect()
    }

    /// `trike_forward_requests_total{endpoint,outcome}` and `trike_forward_queued_bytes`.
    pub fn render(&self, out: &mut String) {
        use trike_engine::expo::{escape, header};
        header(
            out,
            "trike_forward_requests_total",
            "Requests forwarded to a next hop, by outcome (sent, retried attempts, dropped because the queue was full or every attempt failed, JSON that could not be re-encoded for a gRPC hop).",
            "counter",
        );
        for (endpoint, s) in self.stats() {
            for (outcome, v) in [
                ("sent", &s.sent),
                ("retried", &s.retried),
                ("dropped_full", &s.dropped_full),
                ("dropped_failed", &s.dropped_failed),
                ("unsupported", &s.unsupported),
            ] {
                let _ = writeln!(
                    out,
                    "trike_forward_requests_total{{endpoint=\"{}\",outcome=\"{outcome}\"}} {}",
                    escape(endpoint),
                    v.load(Relaxed)
                );
            }
        }
        header(
            out,
            "trike_forward_queued_bytes",
            "Bytes waiting for a next hop.",
            "gauge",
        );
        for (endpoint, s) in self.stats() {
            let _ = writeln!(
                out,
                "trike_forward_queued_bytes{{endpoint=\"{}\"}} {}",
                escape(endpoint),
                s.queued_bytes.load(Relaxed)
            );
        }
    }
}

impl Forward for Forwarder {
    fn forward(&self, signal: SignalKind, encoding: Encoding, body: &Bytes) {
        for h in &self.hops {
            let len = body.len();
            let fits = h
                .stats
                .queued_bytes
                .fetch_update(Relaxed, Relaxed, |q| {
                    (q + len <= h.limit).then_some(q + len)
                })
                .is_ok();
            if !fits {
                h.stats.dropped_full.fetch_add(1, Relaxed);
                continue;
            }
            let item = Item {
                signal,
                encoding,
                body: body.clone(),
            };
            if h.tx.send(item).is_err() {
                h.stats.queued_bytes.fetch_sub(len, Relaxed);
                h.stats.dropped_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// How one request goes out.
#[derive(Clone)]
enum Sender {
    Http {
        client: reqwest::Client,
        base: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
    Grpc {
        channel: tonic::transport::Channel,
        headers: tonic::metadata::MetadataMap,
        gzip: bool,
    },
}

/// What a failed attempt means.
#[derive(Debug, PartialEq)]
enum Failure {
    /// Worth another attempt; after at least the hop's own delay, if it gave one.
    Retry(String, Option<Duration>),
    GiveUp(String),
}

/// `plain`, gzipped (the fast level: a hop's bytes cost more than this CPU).
fn gzip(plain: &[u8]) -> Bytes {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    z.write_all(plain).expect("writing to memory");
    z.finish().expect("writing to memory").into()
}

/// The wait before the next attempt: the backoff, or the hop's delay when that is longer
/// (never over [`MAX_HOP_DELAY`]).
fn wait_before_retry(backoff: Duration, asked: Option<Duration>) -> Duration {
    asked.map_or(backoff, |a| a.min(MAX_HOP_DELAY).max(backoff))
}

/// What an OTLP/HTTP answer's status means (the spec's retryable codes), with the wait its
/// `Retry-After` asks for (delay-seconds; an HTTP date is not read, the backoff applies).
fn http_failure(status: u16, retry_after: Option<&str>) -> Failure {
    match status {
        429 | 502 | 503 | 504 => Failure::Retry(
            format!("HTTP {status}"),
            retry_after
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        ),
        s => Failure::GiveUp(format!("HTTP {s}")),
    }
}

/// What a gRPC status means (OTLP/gRPC's retryable codes), with the wait its `RetryInfo` asks
/// for. RESOURCE_EXHAUSTED is retried only with `RetryInfo`: without it the hop has not said
/// it can recover, and the spec says not to retry.
fn grpc_failure(s: &tonic::Status) -> Failure {
    use tonic_types::StatusExt;
    let asked = s.get_details_retry_info().map(|r| r.retry_delay);
    match s.code() {
        // CANCELLED is also what tonic reports when an attempt runs past `timeout`.
        tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::OutOfRange
        | tonic::Code::Unavailable
        | tonic::Code::DataLoss => Failure::Retry(s.to_string(), asked.flatten()),
        tonic::Code::ResourceExhausted => match asked {
            Some(delay) => Failure::Retry(s.to_string(), delay),
            None => Failure::GiveUp(format!("{s} (without RetryInfo: not retried)")),
        },
        // A failure to reach the hop that tonic reports as UNKNOWN (the TLS handshake timing
        // out): retried as a connection error is.
        _ if std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>()) => {
            Failure::Retry(s.to_string(), None)
        }
        _ => Failure::GiveUp(s.to_string()),
    }
}

impl Sender {
    fn new(t: &Target) -> anyhow::Result<Self> {
        let host = t.endpoint.rsplit_once(':').map_or("", |(h, _)| h);
        let tls = |alpn: &[&[u8]]| {
            t.tls
                .as_ref()
                .map(|tls| trike_ingest::tls::hop_client_config(tls, alpn))
                .transpose()
        };
        Ok(match t.protocol {
            Protocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &t.headers {
                    let mut value = reqwest::header::HeaderValue::from_str(v.expose())?;
                    value.set_sensitive(true);
                    headers.insert(
                        reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                        value,
                    );
                }
                let builder = reqwest::Client::builder()
                    .timeout(t.attempt_timeout())
                    .connect_timeout(t.attempt_timeout());
                // HTTP/1.1 (as the plaintext hop speaks it): the client is built without HTTP/2.
                let (builder, scheme) = match tls(&[b"http/1.1"])? {
                    Some(cfg) => (builder.tls_backend_preconfigured(cfg), "https"),
                    None => (builder, "http"),
                };
                Sender::Http {
                    client: builder.build()?,
                    base: format!("{scheme}://{}", t.endpoint),
                    headers,
                    gzip: t.compression == Compression::Gzip,
                }
            }
            Protocol::Grpc => {
                // The connect timeout covers the TCP connection and the TLS handshake (a hop
                // that accepts and then stalls must not hold the senders forever).
                let endpoint =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", t.endpoint))?
                        .timeout(t.attempt_timeout())
                        .connect_timeout(t.attempt_timeout());
                let channel = match tls(&[b"h2"])? {
                    // TLS under the channel: the URI stays http://, the connector does the
                    // handshake (checking the endpoint's host, or the override).
                    Some(cfg) => {
                        let name = t
                            .tls
                            .as_ref()
                            .and_then(|x| x.server_name_override.as_deref())
                            .unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
                        let connector = trike_ingest::tls::HopConnector::new(cfg, name)
                            .map_err(anyhow::Error::msg)?;
                        // Requests say `:scheme https`, as they travel over TLS.
                        let origin = format!("https://{}", t.endpoint).parse::<http::Uri>()?;
                        endpoint
                            .origin(origin)
                            .connect_with_connector_lazy(connector)
                    }
                    None => endpoint.connect_lazy(),
                };
                let mut headers = tonic::metadata::MetadataMap::new();
                for (k, v) in &t.headers {
                    let mut value: tonic::metadata::AsciiMetadataValue = v.expose().parse()?;
                    value.set_sensitive(true);
                    headers.insert(
                        tonic::metadata::MetadataKey::from_bytes(k.as_bytes())?,
                        value,
                    );
                }
                Sender::Grpc {
                    channel,
                    headers,
                    gzip: t.compression == Compression::Gzip,
                }
            }
        })
    }

    async fn deliver(&self, item: &Item, stats: &HopStats) {
        // An HTTP hop's body is gzipped once, off the runtime's threads, for every attempt
        // (tonic gzips a gRPC message as it sends it); a JSON request for a gRPC hop is
        // re-encoded as protobuf once.
        let body = match self {
            Sender::Grpc { .. } if item.encoding == Encoding::Json => {
                let (signal, json) = (item.signal, item.body.clone());
                let converted = tokio::task::spawn_blocking(move || {
                    trike_ingest::decode::json_to_protobuf(signal, &json)
                })
                .await;
                match converted {
                    Ok(Ok(b)) => Bytes::from(b),
                    Ok(Err(e)) => {
                        stats.unsupported.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "a JSON request not forwarded to a gRPC hop");
                        return;
                    }
                    Err(e) => {
                        stats.dropped_failed.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "forwarding failed: re-encoding the request");
                        return;
                    }
                }
            }
            Sender::Http { gzip: true, .. } => {
                let plain = item.body.clone();
                match tokio::task::spawn_blocking(move || gzip(&plain)).await {
                    Ok(b) => b,
                    Err(e) => {
                        stats.dropped_failed.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, "forwarding failed: gzipping the request");
                        return;
                    }
                }
            }
            _ => item.body.clone(),
        };
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            match self.send(item, &body).await {
                Ok(()) => {
                    stats.sent.fetch_add(1, Relaxed);
                    return;
                }
                Err(Failure::Retry(why, asked)) if attempt < ATTEMPTS => {
                    stats.retried.fetch_add(1, Relaxed);
                    let wait = wait_before_retry(backoff, asked);
                    tracing::debug!(%why, attempt, ?wait, "forwarding failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(Failure::Retry(why, _) | Failure::GiveUp(why)) => {
                    stats.dropped_failed.fetch_add(1, Relaxed);
                    tracing::warn!(%why, attempt, "forwarding failed; request dropped");
                    return;
                }
            }
        }
    }

    /// One attempt: `item` whose body, as the hop gets it, is `body`.
    async fn send(&self, item: &Item, body: &Bytes) -> Result<(), Failure> {
        match self {
            Sender::Http {
                client,
                base,
                headers,
                gzip,
            } => {
                let path = match item.signal {
                    SignalKind::Traces => "/v1/traces",
                    SignalKind::Metrics => "/v1/metrics",
                    SignalKind::Logs => "/v1/logs",
                };
                let content_type = match item.encoding {
                    Encoding::Json => "application/json",
                    _ => "application/x-protobuf",
                };
                let mut request = client
                    .post(format!("{base}{path}"))
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, content_type);
                if *gzip {
                    request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                let r = request
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| Failure::Retry(e.to_string(), None))?;
                match r.status().as_u16() {
                    200..=299 => Ok(()),
                    s => Err(http_failure(
                        s,
                        r.headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()),
                    )),
                }
            }
            Sender::Grpc {
                channel,
                headers,
                gzip,
            } => {
                let path = match item.signal {
                    SignalKind::Traces => {
                        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                    }
                    SignalKind::Metrics => {
                        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
                    }
                    SignalKind::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                };
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if *gzip {
                    grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                grpc.ready()
                    .await
                    .map_err(|e| Failure::Retry(e.to_string(), None))?;
                let mut req = tonic::Request::new(body.clone());
                *req.metadata_mut() = headers.clone();
                let path = http::uri::PathAndQuery::from_static(path);
                match grpc.unary(req, path, BytesCodec).await {
                    Ok(_) => Ok(()),
                    Err(s) => Err(grpc_failure(&s)),
                }
            }
        }
    }
}

/// Sends a message's bytes as they are; reads the answer's and ignores them.
#[derive(Clone, Copy, Debug, Default)]
struct BytesCodec;

struct BytesEncoder;
struct BytesDecoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::codec::Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn retried_after(f: &Failure) -> Option<Option<Duration>> {
        match f {
            Failure::Retry(_, asked) => Some(*asked),
            Failure::GiveUp(_) => None,
        }
    }

    #[test]
    fn http_answers_and_their_retry_after() {
        let secs = Duration::from_secs;
        assert_eq!(
            retried_after(&http_failure(429, Some("3"))),
            Some(Some(secs(3)))
        );
        assert_eq!(
            retried_after(&http_failure(503, Some(" 0 "))),
            Some(Some(secs(0)))
        );
        assert_eq!(retried_after(&http_failure(502, None)), Some(None));
        // A date is not read: the backoff applies.
        let date = Some("Wed, 21 Oct 2026 07:28:00 GMT");
        assert_eq!(retried_after(&http_failure(504, date)), Some(None));
        for s in [400, 401, 404, 413, 500] {
            assert_eq!(retried_after(&http_failure(s, Some("1"))), None, "{s}");
        }
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info() {
        let two = Duration::from_secs(2);
        let with_info = |code| {
            tonic::Status::with_error_details(
                code,
                "busy",
                ErrorDetails::with_retry_info(Some(two)),
            )
        };
        let exhausted = tonic::Code::ResourceExhausted;
        assert_eq!(
            retried_after(&grpc_failure(&tonic::Status::new(exhausted, "busy"))),
            None
        );
        assert_eq!(
            retried_after(&grpc_failure(&with_info(exhausted))),
            Some(Some(two))
        );
        // RetryInfo without a delay: retryable, on the backoff.
        let no_delay = tonic::Status::with_error_details(
            exhausted,
            "busy",
            ErrorDetails::with_retry_info(None),
        );
        assert_eq!(retried_after(&grpc_failure(&no_delay)), Some(None));
        let unavailable = tonic::Code::Unavailable;
        assert_eq!(
            retried_after(&grpc_failure(&with_info(unavailable))),
            Some(Some(two))
        );
        assert_eq!(
            retried_after(&grpc_failure(&tonic::Status::new(unavailable, "down"))),
            Some(None)
        );
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::Unimplemented,
            tonic::Code::Internal,
        ] {
            assert_eq!(
                retried_after(&grpc_failure(&with_info(code))),
                None,
                "{code:?}"
            );
        }
        assert!(with_info(exhausted).get_details_retry_info().is_some());
    }

    #[test]
    fn the_hop_delay_is_waited_when_longer_than_the_backoff_and_capped() {
        let ms = Duration::from_millis;
        assert_eq!(wait_before_retry(ms(100), None), ms(100));
        assert_eq!(wait_before_retry(ms(100), Some(ms(2000))), ms(2000));
        assert_eq!(wait_before_retry(ms(5000), Some(ms(1000))), ms(5000));
        assert_eq!(wait_before_retry(ms(100), Some(ms(0))), ms(100));
        assert_eq!(
            wait_before_retry(ms(100), Some(Duration::from_secs(600))),
            MAX_HOP_DELAY
        );
    }
}
