//! Bad input over OTLP/HTTP and OTLP/gRPC: each malformed request gets the specification's
//! error with a message naming the problem, the valid part of a mixed request is counted,
//! overload is answered with 429 / RESOURCE_EXHAUSTED and Retry-After, and the server keeps
//! serving throughout.

use bytes::{Buf, BufMut, Bytes};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;
use std::io::Write;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use trike_ingest::kinds::RpcStatus;
use trike_proto::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use trike_proto::common::v1::{AnyValue, KeyValue, any_value::Value};
use trike_proto::resource::v1::Resource;
use trike_proto::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use trike_tests::{metrics_text, sample, start_trike, total_requests, wait_for_requests};

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn spans(service: &str, n: usize, bad_ids: usize) -> ExportTraceServiceRequest {
    let end = now_ns();
    let mut spans: Vec<Span> = (0..n + bad_ids)
        .map(|i| Span {
            trace_id: if i < n { vec![7; 16] } else { vec![0; 16] },
            span_id: vec![3; 8],
            name: "GET /x".into(),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: end - 5_000_000,
            end_time_unix_nano: end,
            ..Default::default()
        })
        .collect();
    spans.rotate_left(1);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

async fn post(
    url: &str,
    ct: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Option<String>, Vec<u8>) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", ct)
        .body(body);
    if let Some(e) = encoding {
        r = r.header("content-encoding", e);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.bytes().await.unwrap().to_vec())
}

const LIMITS: &str = "receivers: { max_request_bytes: 4096, max_decompressed_bytes: 65536 }";

/// Table: each malformed HTTP request, its status, and a word its message must contain.
/// Guarantees: the spec's status codes, messages that name the problem, nothing applied from
/// a refused request, and a server that keeps serving good requests afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_requests() {
    let running = start_trike(LIMITS).await;
    let url = format!("http://{}/v1/traces", running.http_addr);
    let good = spans("bad-input", 3, 0).encode_to_vec();
    let truncated = good[..good.len() - 3].to_vec();
    // 1 MiB of zeros in about 1 KiB: a small gzip bomb for a 64 KiB limit.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).unwrap();
    let zeros = e.finish().unwrap();
    assert!(zeros.len() < 4096);
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "truncated protobuf",
            "application/x-protobuf",
            None,
            truncated,
            400,
            "truncated",
        ),
        (
            "wrong JSON",
            "application/json",
            None,
            b"{\"resourceSpans\": [ {".to_vec(),
            400,
            "OTLP/JSON",
        ),
        (
            "JSON of the wrong shape",
            "application/json",
            None,
            b"{\"resourceSpans\": 5}".to_vec(),
            400,
            "OTLP/JSON",
        ),
        (
            "bad gzip",
            "application/x-protobuf",
            Some("gzip"),
            b"definitely not gzip".to_vec(),
            400,
            "gzip",
        ),
        (
            "oversized body",
            "application/x-protobuf",
            None,
            vec![0x0a; 5000],
            413,
            "4096 bytes",
        ),
        (
            "decompression bomb",
            "application/x-protobuf",
            Some("gzip"),
            zeros,
            413,
            "65536 bytes",
        ),
        (
            "unknown content type",
            "text/plain",
            None,
            good.clone(),
            415,
            "application/x-protobuf",
        ),
        (
            "unknown content encoding",
            "application/x-protobuf",
            Some("br"),
            good.clone(),
            415,
            "Content-Encoding",
        ),
    ];
    for (name, ct, enc, body, want_status, want_text) in cases {
        let (status, _, body) = post(&url, ct, enc, body).await;
        assert_eq!(status, want_status, "{name}");
        let message = if ct == "application/x-protobuf" && status != 415 {
            RpcStatus::decode(&body[..])
                .map(|s| s.message)
                .unwrap_or_default()
        } else {
            String::from_utf8_lossy(&body).to_string()
        };
        assert!(
            message.contains(want_text),
            "{name}: message {message:?} should mention {want_text:?}"
        );
    }
    assert_eq!(
        total_requests(&running, "bad-input").await,
        0,
        "nothing from refused requests was applied"
    );
    // The server still serves: a good request is accepted and counted.
    let (status, _, body) = post(&url, "application/x-protobuf", Some("gzip"), gzip(&good)).await;
    assert_eq!(status, 200);
    assert_eq!(
        ExportTraceServiceResponse::decode(&body[..])
            .unwrap()
            .partial_success,
        None
    );
    assert_eq!(
        wait_for_requests(&running, "bad-input", 3, Duration::from_secs(5)).await,
        3
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_requests_total{transport="http",signal="traces",outcome="malformed"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_requests_total{transport="http",signal="traces",outcome="too_large"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_requests_total{transport="http",signal="traces",outcome="unsupported"}"#
        ),
        Some(2.0)
    );
    running.stop().await.unwrap();
}

/// Guarantees: a request mixing valid and invalid spans gets 200 with `partial_success`
/// (rejected count and reason), in protobuf and in JSON, and its valid spans are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_partial_success() {
    let running = start_trike("").await;
    let url = format!("http://{}/v1/traces", running.http_addr);
    let (status, _, body) = post(
        &url,
        "application/x-protobuf",
        None,
        spans("mixed", 5, 2).encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let ps = ExportTraceServiceResponse::decode(&body[..])
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(ps.rejected_spans, 2);
    assert!(
        ps.error_message.contains("trace_id"),
        "{}",
        ps.error_message
    );
    let json = serde_json::to_vec(&spans("mixed", 4, 1)).unwrap();
    let (status, _, body) = post(&url, "application/json", None, json).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["partialSuccess"]["rejectedSpans"]
            .to_string()
            .trim_matches('"'),
        "1",
        "{v}"
    );
    assert_eq!(
        wait_for_requests(&running, "mixed", 9, Duration::from_secs(5)).await,
        9
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_items_rejected_total{signal="traces",reason="invalid_id"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_items_received_total{signal="traces"}"#
        ),
        Some(12.0)
    );
    running.stop().await.unwrap();
}

/// Guarantees: when the engine queue is full, HTTP answers 429 with Retry-After and gRPC
/// RESOURCE_EXHAUSTED, nothing of the refused request is applied, and service resumes when
/// the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry() {
    let running = start_trike("receivers: { queue_observations: 10 }").await;
    let url = format!("http://{}/v1/traces", running.http_addr);
    let first = spans("load", 8, 0).encode_to_vec();
    let second = spans("load", 8, 0).encode_to_vec();
    {
        // Hold the engine from another thread: the worker takes the first batch and blocks on
        // the lock, so the queue stays full of it.
        let engine = running.state.worker.engine().clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _guard = engine.lock();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        let (s1, _, _) = post(&url, "application/x-protobuf", None, first).await;
        assert_eq!(s1, 200);
        let (s2, retry, body) = post(&url, "application/x-protobuf", None, second.clone()).await;
        assert_eq!(s2, 429);
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(
            RpcStatus::decode(&body[..])
                .unwrap()
                .message
                .contains("overloaded")
        );
        let mut client = raw_client(running.grpc_addr).await;
        let err = export_raw(&mut client, Bytes::from(second.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        // Retryable per OTLP only because it carries RetryInfo.
        assert!(
            !err.details().is_empty(),
            "RESOURCE_EXHAUSTED must carry RetryInfo details"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
    }
    assert_eq!(
        wait_for_requests(&running, "load", 8, Duration::from_secs(5)).await,
        8
    );
    let (s3, _, _) = post(&url, "application/x-protobuf", None, second).await;
    assert_eq!(s3, 200);
    assert_eq!(
        wait_for_requests(&running, "load", 16, Duration::from_secs(5)).await,
        16
    );
    running.stop().await.unwrap();
}

/// A gRPC codec that sends raw bytes (so a test can send what no protobuf library would).
#[derive(Clone, Default)]
struct RawBytes;
struct RawEnc;
struct RespDec;

impl Encoder for RawEnc {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RespDec {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let b = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(b)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawBytes {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEnc;
    type Decoder = RespDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RespDec {
        RespDec
    }
}

type RawClient = tonic::client::Grpc<tonic::transport::Channel>;

async fn raw_client(addr: std::net::SocketAddr) -> RawClient {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(ch)
}

async fn export_raw(
    c: &mut RawClient,
    body: Bytes,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    c.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    c.unary(tonic::Request::new(body), path, RawBytes)
        .await
        .map(|r| r.into_inner())
}

/// Guarantees: over gRPC, a truncated message is INVALID_ARGUMENT naming the problem, a mixed
/// request is a partial success, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_requests() {
    let running = start_trike("").await;
    let mut c = raw_client(running.grpc_addr).await;
    let good = spans("grpc-bad", 4, 0).encode_to_vec();
    let err = export_raw(&mut c, Bytes::copy_from_slice(&good[..good.len() - 2]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("truncated"), "{}", err.message());
    let resp = export_raw(&mut c, Bytes::from(spans("grpc-bad", 4, 1).encode_to_vec()))
        .await
        .unwrap();
    assert_eq!(resp.partial_success.unwrap().rejected_spans, 1);
    let resp = export_raw(&mut c, Bytes::from(good)).await.unwrap();
    assert_eq!(resp.partial_success, None);
    assert_eq!(
        wait_for_requests(&running, "grpc-bad", 8, Duration::from_secs(5)).await,
        8
    );
    running.stop().await.unwrap();
}

/// Guarantees: over gRPC a message larger than the decompressed-size limit is refused with a
/// status naming the limit, and smaller messages still go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversized_message() {
    let running =
        start_trike("receivers: { max_request_bytes: 2048, max_decompressed_bytes: 4096 }").await;
    let mut c = raw_client(running.grpc_addr).await;
    let big = spans("grpc-big", 200, 0).encode_to_vec();
    assert!(big.len() > 4096);
    let err = export_raw(&mut c, Bytes::from(big)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "not retryable: {err}"
    );
    assert!(err.message().contains("4096"), "{}", err.message());
    let small = spans("grpc-big", 2, 0).encode_to_vec();
    export_raw(&mut c, Bytes::from(small)).await.unwrap();
    assert_eq!(
        wait_for_requests(&running, "grpc-big", 2, Duration::from_secs(5)).await,
        2
    );
    running.stop().await.unwrap();
}
