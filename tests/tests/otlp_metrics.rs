//! The OpenTelemetry SDK's metrics exporter sends `http.server.request.duration` (seconds,
//! cumulative) over OTLP/gRPC; Trike must count requests from the histogram deltas, convert
//! seconds to milliseconds, and mark 5xx as errors.

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use std::time::Duration;
use trike_tests::{slis, start_trike, wait_for_requests};

/// Scenario: 100 requests of 10..1000 ms (10 of them 500s) flushed, then 50 more.
/// Guarantees: cumulative points become deltas (100, then 150 in total, never 250), latency
/// is in ms, 5xx are errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_histograms_over_grpc() {
    let running = start_trike("").await;
    let provider = trike_tests::sdk_meter_provider(&running, "metrics-svc");
    let meter = provider.meter("e2e");
    let h = meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
        ])
        .build();
    let record = move |from: usize, to: usize| {
        for i in from..to {
            let status: i64 = if i % 10 == 0 { 500 } else { 200 };
            h.record(
                0.01 * ((i % 100) + 1) as f64,
                &[
                    KeyValue::new("http.route", "/m"),
                    KeyValue::new("http.response.status_code", status),
                ],
            );
        }
    };
    let p = provider.clone();
    let rec = record.clone();
    tokio::task::spawn_blocking(move || {
        rec(0, 100);
        p.force_flush().unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        wait_for_requests(&running, "metrics-svc", 100, Duration::from_secs(10)).await,
        100
    );
    let doc = slis(&running, "metrics-svc", "5m").await;
    let s = &doc["series"][0];
    assert_eq!(s["operation"], "/m");
    assert_eq!(s["errors"], 10);
    let p50 = s["latency_ms"]["p50"].as_f64().unwrap();
    assert!(
        (250.0..=750.0).contains(&p50),
        "p50 {p50} ms (true value 500 ms)"
    );
    let p = provider.clone();
    tokio::task::spawn_blocking(move || {
        record(100, 150);
        p.force_flush().unwrap();
        p.shutdown().unwrap();
    })
    .await
    .unwrap();
    assert_eq!(
        wait_for_requests(&running, "metrics-svc", 150, Duration::from_secs(10)).await,
        150
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let doc = slis(&running, "metrics-svc", "5m").await;
    assert_eq!(
        doc["series"][0]["requests"], 150,
        "deltas, not cumulative totals"
    );
    assert_eq!(doc["series"][0]["errors"], 15);
    running.stop().await.unwrap();
}
