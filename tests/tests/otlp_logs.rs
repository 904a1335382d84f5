//! Logs as a signal (`logs: { errors_as: bad_events }`), end to end with the real
//! OpenTelemetry SDK's log exporters (`opentelemetry-otlp`, gRPC and HTTP/protobuf): a batch
//! job that sends only logs gets an SLI and its SLO burns; a service that sends spans too is
//! counted from its spans alone.

use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_otlp::{LogExporter, Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use rand::SeedableRng;
use std::time::{Duration, Instant, SystemTime};
use trike_tests::{post_spans, slis, start_trike};

fn provider(exporter: LogExporter, service: &str) -> SdkLoggerProvider {
    SdkLoggerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.version", "7.0"))
                .build(),
        )
        .build()
}

/// `n` records, every tenth an ERROR (the rest INFO), then flushed and shut down.
fn emit(provider: SdkLoggerProvider, n: usize) {
    let logger = provider.logger("e2e");
    for i in 0..n {
        let mut r = logger.create_log_record();
        let (number, text) = if i % 10 == 0 {
            (Severity::Error, "ERROR")
        } else {
            (Severity::Info, "INFO")
        };
        r.set_severity_number(number);
        r.set_severity_text(text);
        r.set_body(format!("step {i}").into());
        r.set_timestamp(SystemTime::now());
        logger.emit(r);
    }
    provider.force_flush().expect("flush");
    provider.shutdown().expect("shutdown");
}

/// Scenario: `nightly-batch` sends 200 log records over gRPC, 20 of them ERROR; `api` sends
/// 50 spans and then 100 log records (10 ERROR) over HTTP. Both have a 95 % availability SLO.
/// Guarantees: nightly-batch's SLI is its log records: 200 events, 20 bad, on one series
/// (operation `logs`, version 7.0), and its SLO reads an error ratio of 10 % (burn 2× over
/// 5 m); api's SLI counts its 50 spans only, its log records deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_logs_are_bad_events() {
    let running = start_trike(
        "logs: { errors_as: bad_events }\nslos:\n  - { name: batch-availability, service: nightly-batch, objective: 0.95, sli: availability }\n  - { name: api-availability, service: api, objective: 0.95, sli: availability }\n",
    )
    .await;
    let grpc = LogExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", running.grpc_addr))
        .build()
        .unwrap();
    let batch = provider(grpc, "nightly-batch");
    tokio::task::spawn_blocking(move || emit(batch, 200))
        .await
        .unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let client = reqwest::Client::new();
    let api_spans = trike::synth::Service {
        name: "api".into(),
        ..trike_tests::checkout("7.0", 0.0)
    };
    post_spans(&client, &running, &api_spans, 50, 100_000_000, &mut rng).await;
    let http = LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/logs", running.http_addr))
        .build()
        .unwrap();
    let api = provider(http, "api");
    tokio::task::spawn_blocking(move || emit(api, 100))
        .await
        .unwrap();

    let waited = Instant::now();
    let doc = loop {
        let doc = slis(&running, "nightly-batch", "5m").await;
        if doc["series"][0]["requests"] == 200 {
            break doc;
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let series = doc["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{doc}");
    assert_eq!(series[0]["operation"], "logs");
    assert_eq!(series[0]["version"], "7.0");
    assert_eq!(series[0]["errors"], 20);
    let slos: serde_json::Value =
        trike_tests::get_json(&running, "/api/v1/slos?service=nightly-batch").await;
    let burn = slos["slos"][0]["burn_rates"]["5m"].as_f64().unwrap();
    assert!((burn - 2.0).abs() < 1e-9, "{slos}");

    // api sent spans: its log records are not counted (waited for: every record is through
    // the engine, 200 applied, 100 deduplicated).
    let waited = Instant::now();
    loop {
        let text = trike_tests::metrics_text(&running).await;
        let applied = trike_tests::sample(&text, "trike_engine_log_records_applied_total");
        let dropped = trike_tests::sample(&text, "trike_engine_signal_deduplicated_total");
        if applied == Some(200.0) && dropped == Some(100.0) {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "{applied:?} {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = slis(&running, "api", "5m").await;
    let total: u64 = api["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 50, "{api}");
    assert!(
        api["series"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["operation"] != "logs"),
        "{api}"
    );
    running.stop().await.unwrap();
}
