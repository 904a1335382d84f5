//! The service graph and root-cause inhibition end to end (DESIGN §10): checkout → payments →
//! db, traced with the real OpenTelemetry SDK (W3C trace context propagated from checkout's
//! client span to payments' server span); checkout exports over OTLP/gRPC, payments over
//! OTLP/HTTP; db sends nothing. db starts failing half its calls.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use trike_tests::start_trike;

fn provider(exporter: SpanExporter, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("service.version", "1.0"))
                .build(),
        )
        .build()
}

/// Requests `from..to` through the three services: request `i` fails when `fails(i)` (db
/// fails the call, and the failure travels up). Latencies (ms): checkout 40, its call 30,
/// payments 28, its db call 5 + i % 10.
fn traffic(
    checkout: &SdkTracerProvider,
    payments: &SdkTracerProvider,
    range: std::ops::Range<u64>,
    fails: impl Fn(u64) -> bool,
) {
    let ct = checkout.tracer("e2e");
    let pt = payments.tracer("e2e");
    let propagator = TraceContextPropagator::new();
    let ms = |t: SystemTime, n: u64| t + Duration::from_millis(n);
    for i in range {
        let bad = fails(i);
        let t0 = SystemTime::now() - Duration::from_millis(100);
        let server = ct
            .span_builder("POST /checkout")
            .with_kind(SpanKind::Server)
            .with_start_time(t0)
            .with_attributes([KeyValue::new("http.route", "/checkout")])
            .start(&ct);
        let cx = Context::current_with_span(server);
        let call = ct
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_start_time(ms(t0, 5))
            // The address the call went to, not the service's name: pairing names the edge.
            .with_attributes([KeyValue::new("server.address", "payments.internal")])
            .start_with_context(&ct, &cx);
        let call_cx = cx.with_span(call);
        let mut headers: HashMap<String, String> = HashMap::new();
        propagator.inject_context(&call_cx, &mut headers);

        let parent = propagator.extract(&headers);
        let pserver = pt
            .span_builder("POST /charge")
            .with_kind(SpanKind::Server)
            .with_start_time(ms(t0, 6))
            .with_attributes([KeyValue::new("http.route", "/charge")])
            .start_with_context(&pt, &parent);
        let pcx = parent.with_span(pserver);
        let mut db = pt
            .span_builder("SELECT ledger")
            .with_kind(SpanKind::Client)
            .with_start_time(ms(t0, 7))
            .with_attributes([
                KeyValue::new("db.system", "postgresql"),
                KeyValue::new("peer.service", "db"),
            ])
            .start_with_context(&pt, &pcx);
        if bad {
            db.set_status(Status::error("connection reset"));
        }
        db.end_with_timestamp(ms(t0, 12 + i % 10));
        let pserver = pcx.span();
        if bad {
            pserver.set_attribute(KeyValue::new("http.response.status_code", 500));
            pserver.set_status(Status::error("ledger unavailable"));
        }
        pserver.end_with_timestamp(ms(t0, 34));
        let call = call_cx.span();
        if bad {
            call.set_status(Status::error("502 from payments"));
        }
        call.end_with_timestamp(ms(t0, 35));
        let server = cx.span();
        if bad {
            server.set_status(Status::error("payment failed"));
        }
        server.end_with_timestamp(ms(t0, 40));
    }
}

/// Scenario: 100 clean requests, then 200 of which db fails every other one (100 failures).
/// Both services have a 99 % availability SLO and a rule paging on a fast burn; the graph
/// waits 1 s for a call's other half. payments' spans are flushed before checkout's, as its
/// calls end first. Guarantees:
/// - `/api/v1/graph` has exactly the edges checkout→payments (named by payments' server
///   spans, not the client's `server.address`) and payments→db (named by `peer.service`),
///   each with 300 calls and 100 errors, and their callers' p99;
/// - exactly one page reaches the sink: db's, whose reason names db and the path, with
///   `evidence.root_cause` {db, payments→db};
/// - checkout's and payments' pages are listed at `/api/v1/decisions` with `inhibited_by`
///   db's page and the root cause in their evidence, and are not sent;
/// - `/metrics` (parsed by the Prometheus text parser) counts 2 inhibited decisions, 2
///   edges, 300 paired calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dependency_is_paged_once() {
    let dir = std::env::temp_dir().join(format!("trike-graph-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sink = dir.join("control.jsonl");
    let mut slos = String::new();
    for svc in ["checkout", "payments"] {
        slos.push_str(&format!(
            "  - {{ name: {svc}-availability, service: {svc}, objective: 0.99, sli: availability, tiers: [{{ name: page_fast, factor: 14.4, long: 1h, short: 5m, severity: page, min_coverage: 0 }}] }}\n"
        ));
    }
    let running = start_trike(&format!(
        "slos:\n{slos}policies: [{{ name: page-fast-burn, when: burn_rate.page, action: page }}]\ngraph: {{ wait: 1s }}\nsinks: [{{ type: file, path: \"{}\" }}]\n",
        sink.display()
    ))
    .await;
    let admin = format!("http://{}", running.admin_addr);
    let checkout = provider(
        SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", running.grpc_addr))
            .build()
            .unwrap(),
        "checkout",
    );
    let payments = provider(
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("http://{}/v1/traces", running.http_addr))
            .build()
            .unwrap(),
        "payments",
    );
    let get = |path: String| async move {
        reqwest::get(path)
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let (checkout, payments) = tokio::task::spawn_blocking(move || {
        traffic(&checkout, &payments, 0..100, |_| false);
        payments.force_flush().unwrap();
        checkout.force_flush().unwrap();
        (checkout, payments)
    })
    .await
    .unwrap();
    // db's calls wait out the 1 s for a server span that never comes: db sends no spans.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(move || {
        traffic(&checkout, &payments, 100..300, |i| i.is_multiple_of(2));
        payments.force_flush().unwrap();
        checkout.force_flush().unwrap();
        payments.shutdown().unwrap();
        checkout.shutdown().unwrap();
    })
    .await
    .unwrap();

    let waited = Instant::now();
    let edges = loop {
        let doc = get(format!("{admin}/api/v1/graph?window=5m")).await;
        assert_eq!(doc["window"], "5m");
        let edges = doc["edges"].as_array().unwrap().clone();
        let done = edges.len() == 2 && edges.iter().all(|e| e["requests"] == 300);
        if done {
            break edges;
        }
        assert!(waited.elapsed() < Duration::from_secs(15), "{doc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pairs: Vec<(&str, &str, u64, u64)> = edges
        .iter()
        .map(|e| {
            (
                e["client"].as_str().unwrap(),
                e["server"].as_str().unwrap(),
                e["requests"].as_u64().unwrap(),
                e["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("checkout", "payments", 300, 100),
            ("payments", "db", 300, 100)
        ]
    );
    assert!((edges[0]["error_ratio"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let p99 = |e: &Value| e["p99_ms"].as_f64().unwrap();
    assert!((p99(&edges[0]) - 30.0).abs() < 0.5, "{}", edges[0]);
    assert!((13.0..=14.5).contains(&p99(&edges[1])), "{}", edges[1]);

    let decisions = loop {
        let doc = get(format!("{admin}/api/v1/decisions")).await;
        let pages: Vec<Value> = doc["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["data"]["action"] == "page")
            .cloned()
            .collect();
        if pages.len() >= 3 {
            break pages;
        }
        assert!(waited.elapsed() < Duration::from_secs(20), "{doc}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(decisions.len(), 3, "{decisions:#?}");
    let by = |svc: &str| decisions.iter().find(|d| d["subject"] == svc).unwrap();
    let db = by("db");
    assert!(db["data"].get("inhibited_by").is_none(), "{db}");
    let reason = db["data"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("db is the likely cause"), "{reason}");
    assert!(reason.contains("payments→db"), "{reason}");
    assert_eq!(db["data"]["evidence"]["root_cause"]["service"], "db");
    assert_eq!(db["data"]["evidence"]["root_cause"]["edge"], "payments→db");
    for svc in ["checkout", "payments"] {
        let d = by(svc);
        assert_eq!(d["data"]["inhibited_by"], db["id"], "{d}");
        assert_eq!(d["data"]["evidence"]["root_cause"]["service"], "db", "{d}");
        assert!(
            d["data"]["reason"]
                .as_str()
                .unwrap()
                .contains("likely cause: dependency db"),
            "{d}"
        );
    }
    assert_eq!(
        by("checkout")["data"]["evidence"]["root_cause"]["path"],
        serde_json::json!(["checkout", "payments", "db"])
    );

    // Only db's page reaches the sink.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let written: Vec<Value> = std::fs::read_to_string(&sink)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let subjects: Vec<&str> = written
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["db"], "{written:#?}");

    let text = trike_tests::metrics_text(&running).await;
    let Some(samples) = trike_tests::parse_exposition(&text) else {
        return;
    };
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
            })
            .and_then(|s| s.value)
            .unwrap_or_else(|| panic!("{name} {label:?}"))
    };
    assert_eq!(value("trike_decisions_inhibited_total", None), 2.0);
    assert_eq!(value("trike_graph_edges", None), 2.0);
    assert_eq!(
        value("trike_graph_calls_total", Some(("outcome", "paired"))),
        300.0
    );
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
