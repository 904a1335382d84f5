//! Real OpenTelemetry SDK exporters (`opentelemetry-otlp`) send spans of known latency and
//! status to `trike run` over gRPC, HTTP/protobuf and HTTP/JSON (gzip where the exporter
//! supports it); the admin API must then report exactly the expected counts, and quantiles
//! within the sketch tolerance.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{
    Compression, Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::{Duration, SystemTime};
use trike_tests::{slis, start_trike, wait_for_requests};

const N: usize = 200;

/// Latency (ms), route, status error, HTTP status of span `i`.
fn plan(i: usize) -> (u64, &'static str, bool, i64) {
    let latency = (i % 100) as u64 + 1;
    let route = if i.is_multiple_of(2) { "/a" } else { "/b" };
    let status_error = i.is_multiple_of(10);
    let http = if i % 25 == 1 { 503 } else { 200 };
    (latency, route, status_error, http)
}

fn emit(provider: &SdkTracerProvider) {
    let tracer = provider.tracer("trike-e2e");
    let now = SystemTime::now();
    for i in 0..N {
        let (latency, route, status_error, http) = plan(i);
        let start = now - Duration::from_millis(500);
        let mut span = tracer
            .span_builder(format!("GET {route}"))
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(vec![
                KeyValue::new("http.route", route),
                KeyValue::new("http.response.status_code", http),
            ])
            .start(&tracer);
        if status_error {
            span.set_status(Status::error("boom"));
        }
        span.end_with_timestamp(start + Duration::from_millis(latency));
    }
    // A client span: not an entry span, never counted.
    let mut client = tracer
        .span_builder("SELECT")
        .with_kind(SpanKind::Client)
        .start(&tracer);
    client.end();
    provider.force_flush().expect("flush");
    provider.shutdown().expect("shutdown");
}

fn provider(exporter: SpanExporter, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.version", "2.1.0"))
                .build(),
        )
        .build()
}

/// Checks the SLI document against the plan.
async fn assert_slis(running: &trike::app::Running, service: &str) {
    let got = wait_for_requests(running, service, N as u64, Duration::from_secs(10)).await;
    assert_eq!(
        got, N as u64,
        "{service}: all {N} server spans counted, the client span not"
    );
    let doc = slis(running, service, "5m").await;
    let series = doc["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{doc}");
    for route in ["/a", "/b"] {
        let s = series.iter().find(|s| s["operation"] == route).unwrap();
        let mine: Vec<_> = (0..N).map(plan).filter(|p| p.1 == route).collect();
        let errors = mine.iter().filter(|p| p.2 || p.3 >= 500).count() as u64;
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(
            s["requests"].as_u64().unwrap(),
            mine.len() as u64,
            "{route}"
        );
        assert_eq!(s["errors"].as_u64().unwrap(), errors, "{route}");
        let mut lat: Vec<f64> = mine.iter().map(|p| p.0 as f64).collect();
        lat.sort_by(f64::total_cmp);
        for (q, field) in [(0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")] {
            let v = s["latency_ms"][field].as_f64().unwrap();
            // Rank of the reported value within the sent latencies: within 2 % of q.
            let lo = lat.partition_point(|&x| x < v - 1e-6) as f64 / lat.len() as f64;
            let hi = lat.partition_point(|&x| x <= v + 1e-6) as f64 / lat.len() as f64;
            let err = if q < lo {
                lo - q
            } else if q > hi {
                q - hi
            } else {
                0.0
            };
            assert!(
                err <= 0.02,
                "{service} {route} {field}={v}: rank [{lo}, {hi}]"
            );
        }
    }
}

/// Scenario: the SDK's tonic exporter with gzip. Guarantees: OTLP/gRPC end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exporter() {
    let running = start_trike("").await;
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.grpc_addr))
        .with_compression(Compression::Gzip)
        .build()
        .unwrap();
    let p = provider(exporter, "grpc-svc");
    tokio::task::spawn_blocking(move || emit(&p)).await.unwrap();
    assert_slis(&running, "grpc-svc").await;
    running.stop().await.unwrap();
}

fn http_exporter(addr: std::net::SocketAddr, protocol: Protocol, gzip: bool) -> SpanExporter {
    let mut b = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("http://{addr}/v1/traces"));
    if gzip {
        b = b.with_compression(Compression::Gzip);
    }
    b.build().unwrap()
}

/// Scenario: the SDK's HTTP exporter, protobuf, gzip. Guarantees: OTLP/HTTP protobuf end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_exporter() {
    let running = start_trike("").await;
    let addr = running.http_addr;
    // The blocking HTTP client must be built and used off the async runtime.
    tokio::task::spawn_blocking(move || {
        emit(&provider(
            http_exporter(addr, Protocol::HttpBinary, true),
            "http-svc",
        ))
    })
    .await
    .unwrap();
    assert_slis(&running, "http-svc").await;
    running.stop().await.unwrap();
}

/// Scenario: the SDK's HTTP exporter, JSON. Guarantees: OTLP/HTTP JSON end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_exporter() {
    let running = start_trike("").await;
    let addr = running.http_addr;
    tokio::task::spawn_blocking(move || {
        emit(&provider(
            http_exporter(addr, Protocol::HttpJson, false),
            "json-svc",
        ))
    })
    .await
    .unwrap();
    assert_slis(&running, "json-svc").await;
    running.stop().await.unwrap();
}
