//! Health and readiness as the process's supervisors see them.

use super::*;
use std::time::{Duration, Instant};
use trike_engine::{Engine, EngineConfig};
use trike_runtime::hooks::outbox::DecisionStore;
use trike_runtime::sink_writer::SinkWriter;
use trike_runtime::worker::EngineWorker;
use trike_runtime::{Shard, SystemClock};

fn worker() -> EngineWorker {
    let engine = Engine::new(Arc::new(EngineConfig::default()));
    EngineWorker::start(Shard::new(engine, Arc::new(SystemClock)), 1000).unwrap()
}

fn state(worker: &EngineWorker, decisions: Arc<DecisionStore>) -> AdminState {
    AdminState {
        worker: worker.handle(),
        ingest: Default::default(),
        ready: AtomicBool::new(true),
        metrics_windows: vec![],
        metrics_max_services: 10,
        rules: Default::default(),
        history: Default::default(),
        archive: None,
        decisions,
        kafka_source: Default::default(),
        checkpoints: None,
        reloader: None,
        query: super::query::QueryService::new(Default::default()).unwrap(),
        auth: Default::default(),
        inflight: trike_ingest::pipeline::Inflight::new(1 << 20),
        listeners: vec![("admin", Default::default())],
        memory: Some(Arc::new(trike_ingest::memory::MemoryLimiter::new(1 << 30))),
        gateway: None,
        changelog: None,
        fleet: None,
        role: crate::config::fleet::Role::All,
        policy: None,
        deploys: Default::default(),
        silences: Default::default(),
        trace_url_template: None,
        silence_log: None,
        cause_log: None,
        watch: None,
        forecasts: None,
        forward: None,
        costs: Vec::new(),
    }
}

/// Scenario: the engine thread ends while the admin API still serves.
/// Guarantees: `/healthz` turns 503 (a supervisor restarts the process), and so does `/readyz`.
#[test]
fn healthz_fails_once_the_engine_thread_has_died() {
    let w = worker();
    let s = state(&w, Default::default());
    assert_eq!(health(&s).0, StatusCode::OK);
    assert_eq!(readiness(&s).0, StatusCode::OK);
    w.stop();
    assert_eq!(health(&s).0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readiness(&s).0, StatusCode::SERVICE_UNAVAILABLE);
}

/// Scenario: a control sink cannot write (a file sink on a full disk: `/dev/full`), then a
/// Kafka sink reports a failed delivery.
/// Guarantees: `/readyz` answers 503 naming the control sink while it fails, and 200 again
/// once it delivers; `/healthz` stays 200 (the process itself is fine).
#[test]
fn readyz_fails_while_a_control_sink_fails() {
    let store = Arc::new(DecisionStore::default());
    let sinks = [trike_sinks::SinkConfig::File {
        path: "/dev/full".into(),
    }];
    let (writer, tx) = SinkWriter::start(&sinks, None, store.clone()).unwrap();
    let w = worker();
    let s = state(&w, store.clone());
    assert_eq!(readiness(&s).0, StatusCode::OK);
    let event = trike_sinks::ControlEvent::from_value(serde_json::json!({
        "specversion": "1.0", "id": "e1", "source": "trike://t", "type": "io.trike.control.page",
        "subject": "checkout", "time": "2026-12-02T00:00:00.000Z", "datacontenttype": "application/json",
        "data": { "decision_id": "e1", "action": "page", "target": { "service": "checkout" }, "params": {},
                  "severity": "page", "reason": "r", "rule": "x", "slo": null, "policy_revision": "p",
                  "dry_run": false, "evidence": {}, "detected_at": "2026-12-02T00:00:00.000Z",
                  "observed_until": "2026-12-02T00:00:00.000Z" }
    }))
    .unwrap();
    tx.send(event).unwrap();
    let start = Instant::now();
    while !store.sinks_failing.load(Relaxed) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, why) = readiness(&s);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.contains("control sink"), "{why}");
    assert_eq!(health(&s).0, StatusCode::OK);
    assert_eq!(store.sink_errors.load(Relaxed), 1);
    drop(tx);
    writer.join();

    let store = Arc::new(DecisionStore::default());
    let s = state(&w, store.clone());
    store.kafka.failing.store(true, Relaxed);
    let (code, why) = readiness(&s);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(why.contains("Kafka"), "{why}");
    store.kafka.failing.store(false, Relaxed);
    assert_eq!(readiness(&s).0, StatusCode::OK);
}

/// Scenario: `/metrics` put together from every subsystem's own families (ingest, engine and
/// queue, decisions, archive, Kafka source, checkpoints, SLI gauges).
/// Guarantees: each family is declared once (one `# TYPE`), its samples follow its header
/// contiguously (as the text format requires), and every sample has a numeric value.
#[test]
fn every_family_is_declared_once_and_contiguous() {
    let w = worker();
    let mut s = state(&w, Default::default());
    s.archive = Some(("/tmp".into(), Default::default()));
    s.checkpoints = Some(Default::default());
    s.metrics_windows = vec![Span::minutes(1)];
    s.watch = Some(Arc::new(parking_lot::Mutex::new(
        trike_engine::anomaly::SliWatch::new(Default::default(), 10, 10),
    )));
    *s.kafka_source.lock() = Some((
        Default::default(),
        Arc::new(trike_ingest::kafka::progress::Progress::new(false)),
    ));
    let text = super::prom::render(&s);
    let mut declared = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(declared.insert(name.clone()), "{name} declared twice");
            current = name;
        } else if !line.starts_with('#') {
            let series = line.split([' ', '{']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s))
                .filter(|f| *f == current)
                .unwrap_or(series);
            assert_eq!(family, current, "sample outside its family: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    for family in [
        "trike_receiver_items_received_total",
        "trike_engine_requests_applied_total",
        "trike_engine_queue_delay_seconds",
        "trike_decisions_total",
        "trike_archive_files_total",
        "trike_kafka_consumer_lag_messages",
        "trike_checkpoints_total",
        "trike_sli_requests",
        "trike_anomaly_score",
        "trike_anomaly",
    ] {
        assert!(declared.contains(family), "{family} missing:\n{text}");
    }
    w.stop();
}

/// Scenario: a service's request rate learned for six days, growing 10/s a day from 100/s,
/// with a capacity limit of 200/s; another without a limit.
/// Guarantees: `/api/v1/forecast?service=` answers DESIGN §10's fields (`service`, `metric`,
/// `limit`, `days_to_limit`) with the rate and trend; a service without a limit has
/// `days_to_limit` null; the list holds both; an unknown service is a 404 naming it, and a
/// member without forecasts (a gateway) says so.
#[tokio::test]
async fn forecast_answers_days_to_the_limit() {
    use axum::extract::{Query, State};
    use trike_engine::forecast::{CapacityLimit, Forecasts};
    let w = worker();
    let mut s = state(&w, Default::default());
    let mut f = Forecasts::new(
        &[CapacityLimit {
            service: "checkout".into(),
            metric: "request_rate".into(),
            limit: 200.0,
        }],
        10,
    );
    for h in 0..6 * 24u64 {
        f.learn(
            "checkout",
            "request_rate",
            480_000 + h,
            100.0 + 10.0 * h as f64 / 24.0,
        );
        f.learn("search", "request_rate", 480_000 + h, 40.0);
    }
    s.forecasts = Some(Arc::new(parking_lot::Mutex::new(f)));
    let s = Arc::new(s);
    let ask = |service: Option<&str>| {
        let params: super::forecast::Params =
            serde_json::from_value(serde_json::json!({ "service": service })).unwrap();
        super::forecast::handler(State(s.clone()), Query(params))
    };
    let body = |r: Response| async move {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        )
    };
    let (status, one) = body(ask(Some("checkout")).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["service"], "checkout");
    assert_eq!(one["metric"], "request_rate");
    assert_eq!(one["limit"], 200.0);
    assert!(
        (one["trend_per_day"].as_f64().unwrap() - 10.0).abs() < 0.5,
        "{one}"
    );
    // At 159.6/s on the last hour, 10/s a day: about 4 days to 200/s.
    let days = one["days_to_limit"].as_f64().unwrap();
    assert!((3.5..4.5).contains(&days), "{one}");
    let (_, other) = body(ask(Some("search")).await).await;
    assert_eq!(other["days_to_limit"], serde_json::Value::Null);
    let (_, all) = body(ask(None).await).await;
    assert_eq!(all["forecasts"].as_array().unwrap().len(), 2);
    let (status, none) = body(ask(Some("nobody")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(none["error"].as_str().unwrap().contains("nobody"), "{none}");
    let mut gateway = state(&w, Default::default());
    gateway.forecasts = None;
    let params: super::forecast::Params = serde_json::from_value(serde_json::json!({})).unwrap();
    let (status, _) =
        body(super::forecast::handler(State(Arc::new(gateway)), Query(params)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    w.stop();
}
