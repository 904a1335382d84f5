//! OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or JSON
//! bodies, optionally gzip-compressed; status codes per the OTLP specification.

use crate::auth::{IngestAuth, Surface};
use crate::kinds::{ExportKind, Logs, Metrics, RpcStatus, Traces};
use crate::metrics::{RequestOutcome, Transport};
use crate::pipeline::{Encoding, ExportError, Limits, Pipeline, export_async};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use std::io::Read;
use std::sync::Arc;

/// gRPC code numbers used in error bodies.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<Pipeline>,
    limits: Limits,
}

/// 429 with `Retry-After`: the in-flight byte budget is spent.
fn inflight_full(
    metrics: &crate::IngestMetrics,
    enc: Encoding,
    signal: crate::SignalKind,
) -> Response {
    metrics.request(Transport::Http, signal, RequestOutcome::Overloaded);
    let mut r = error(
        enc,
        StatusCode::TOO_MANY_REQUESTS,
        RESOURCE_EXHAUSTED,
        "Trike is busy: request bytes in flight are at limits.inflight_bytes, retry later".into(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// 429 with `Retry-After` (whole seconds, rounded up): the queue is full or memory is short.
fn busy(enc: Encoding, e: ExportError) -> Response {
    let after = match &e {
        ExportError::Overloaded { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0),
        ExportError::Malformed(_) => 1.0,
    };
    let mut r = error(
        enc,
        StatusCode::TOO_MANY_REQUESTS,
        RESOURCE_EXHAUSTED,
        e.to_string(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(after as u64));
    r
}

/// The OTLP/HTTP routes; with ingest tokens configured, a request without one of them is
/// refused with 401 and `WWW-Authenticate: Bearer` before its body is read.
pub fn router(pipeline: Arc<Pipeline>, limits: Limits, auth: IngestAuth) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/metrics", post(export::<Metrics>))
        .route("/v1/logs", post(export::<Logs>))
        // Our own limits apply (with our own error bodies), not axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(auth, require_token))
        .with_state(HttpState { pipeline, limits })
}

async fn require_token(
    State(auth): State<IngestAuth>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match crate::auth::check(&auth.tokens, header) {
        Ok(()) => next.run(req).await,
        Err(why) => {
            auth.stats.refused(Surface::OtlpHttp, why);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                why.message(),
            )
                .into_response()
        }
    }
}

fn encoding_of(headers: &HeaderMap) -> Option<Encoding> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = ct.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Some(Encoding::Protobuf),
        "application/json" => Some(Encoding::Json),
        _ => None,
    }
}

fn encode<M: Message + serde::Serialize>(enc: Encoding, status: StatusCode, msg: &M) -> Response {
    let (ct, body) = match enc {
        Encoding::Protobuf => ("application/x-protobuf", msg.encode_to_vec()),
        // Never a receiver's encoding (partials come from Kafka only): answered as JSON.
        Encoding::Json | Encoding::TrikePartials => (
            "application/json",
            serde_json::to_vec(msg).unwrap_or_default(),
        ),
    };
    (status, [(header::CONTENT_TYPE, ct)], body).into_response()
}

fn error(enc: Encoding, status: StatusCode, code: i32, message: String) -> Response {
    encode(enc, status, &RpcStatus { code, message })
}

enum BodyError {
    TooLarge(String),
    TooSlow(String),
    Bad(String),
    Unsupported(String),
}

/// Reads a refused request's body and throws it away, chunk by chunk (no memory is held), so
/// the client reads a clean 429 instead of a connection reset mid-upload (an HTTP/1.1 server
/// that answers without reading the body must close the connection under the sender). Bounded
/// by the request size limit and `limits.body_read_timeout`.
async fn discard(body: Body, limits: Limits) {
    use tokio_stream::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(limits.body_read_timeout, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > limits.max_request_bytes {
                break;
            }
        }
    })
    .await;
}

async fn read_body(headers: &HeaderMap, body: Body, limits: Limits) -> Result<Vec<u8>, BodyError> {
    let too_large = |what: &str, n: usize| {
        BodyError::TooLarge(format!("{what} exceeds the limit of {n} bytes"))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limits.max_request_bytes
    {
        return Err(too_large("request body", limits.max_request_bytes));
    }
    let raw = tokio::time::timeout(
        limits.body_read_timeout,
        axum::body::to_bytes(body, limits.max_request_bytes),
    )
    .await
    .map_err(|_| {
        BodyError::TooSlow(format!(
            "the request body was not received within limits.body_read_timeout ({} s)",
            limits.body_read_timeout.as_secs_f64()
        ))
    })?
    .map_err(|_| too_large("request body", limits.max_request_bytes))?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let max = limits.max_decompressed_bytes;
            let mut out = Vec::with_capacity((raw.len() * 4).min(max));
            flate2::read::MultiGzDecoder::new(&raw[..])
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    BodyError::Bad(format!(
                        "Content-Encoding gzip: body is not valid gzip: {e}"
                    ))
                })?;
            if out.len() > max {
                return Err(too_large("decompressed body", max));
            }
            Ok(out)
        }
        other => Err(BodyError::Unsupported(format!(
            "Content-Encoding {other:?} is not supported: use gzip or none"
        ))),
    }
}

async fn export<K: ExportKind>(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let metrics = s.pipeline.metrics().clone();
    let Some(enc) = encoding_of(&headers) else {
        metrics.request(Transport::Http, K::SIGNAL, RequestOutcome::Unsupported);
        let got = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("Content-Type {got:?} is not supported: use application/x-protobuf or application/json\n"),
        )
            .into_response();
    };
    // Admission before a byte is read: the declared length (or the largest allowed body).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(s.limits.max_request_bytes)
        .min(s.limits.max_request_bytes);
    if let Some(e) = s.pipeline.memory_refusal(Transport::Http, K::SIGNAL) {
        discard(body, s.limits).await;
        return busy(enc, e);
    }
    let Some(_read) = s.pipeline.inflight().try_reserve(declared) else {
        discard(body, s.limits).await;
        return inflight_full(&metrics, enc, K::SIGNAL);
    };
    let bytes = match read_body(&headers, body, s.limits).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(m)) => {
            metrics.request(Transport::Http, K::SIGNAL, RequestOutcome::TooLarge);
            return error(enc, StatusCode::PAYLOAD_TOO_LARGE, INVALID_ARGUMENT, m);
        }
        Err(BodyError::TooSlow(m)) => {
            metrics.request(Transport::Http, K::SIGNAL, RequestOutcome::TimedOut);
            return error(enc, StatusCode::REQUEST_TIMEOUT, UNAVAILABLE, m);
        }
        Err(BodyError::Bad(m)) => {
            metrics.request(Transport::Http, K::SIGNAL, RequestOutcome::Malformed);
            return error(enc, StatusCode::BAD_REQUEST, INVALID_ARGUMENT, m);
        }
        Err(BodyError::Unsupported(m)) => {
            metrics.request(Transport::Http, K::SIGNAL, RequestOutcome::Unsupported);
            return error(enc, StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_ARGUMENT, m);
        }
    };
    // Decompressed beyond what was reserved: reserve the rest before decoding.
    let _decoded = match bytes.len().checked_sub(declared) {
        Some(more) if more > 0 => match s.pipeline.inflight().try_reserve(more) {
            Some(p) => Some(p),
            None => return inflight_full(&metrics, enc, K::SIGNAL),
        },
        _ => None,
    };
    match export_async(&s.pipeline, Transport::Http, K::SIGNAL, enc, bytes.into()).await {
        Ok(accepted) => encode(enc, StatusCode::OK, &K::response(&accepted)),
        Err(e @ ExportError::Malformed(_)) => error(
            enc,
            StatusCode::BAD_REQUEST,
            INVALID_ARGUMENT,
            e.to_string(),
        ),
        Err(e @ ExportError::Overloaded { .. }) => busy(enc, e),
    }
}
