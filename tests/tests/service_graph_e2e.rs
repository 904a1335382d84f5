//! The service graph and root-cause inhibition end to end (DESIGN §10): checkout → payments →
//! db, traced with the real OpenTelemetry SDK (W3C trace context propagated from checkout's
//! client span to payments' server span); checkout exports over OTLP/gRPC, payments over
//! OTLP/HTTP; db sends nothing. db starts failing half its calls.

use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use serde_json::Value;
use std::time::{Duration, Instant};
use trike_tests::start_trike;
use trike_tests::traced_calls::{provider, traffic};

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
    // db's calls wait out the 1 s for a server span that never comes (db sends no spans); then
    // payments→db is known by its peer, and the failing calls below count as they come.
    let waited = Instant::now();
    loop {
        let doc = get(format!("{admin}/api/v1/graph?window=5m")).await;
        let learned = doc["edges"].as_array().unwrap().iter().any(|e| {
            e["client"] == "payments" && e["server"] == "db" && e["requests"].as_u64() >= Some(100)
        });
        if learned {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(15), "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

    // Only db's page reaches the sink (written by the sinks' thread after the API has it;
    // then nothing else follows).
    let waited = Instant::now();
    while std::fs::read_to_string(&sink)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "nothing written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let value = |name: &str, label| trike_tests::prom_value(&samples, name, label);
    assert_eq!(value("trike_decisions_inhibited_total", None), 2.0);
    assert_eq!(value("trike_graph_edges", None), 2.0);
    assert_eq!(
        value("trike_graph_calls_total", Some(("outcome", "paired"))),
        300.0
    );
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
