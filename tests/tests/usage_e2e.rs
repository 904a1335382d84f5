//! Usage metrics end to end (patterns 1 and 6): the OpenTelemetry SDK's metrics exporter sends
//! a worker's CPU time (a cumulative counter with a `cpu.mode` attribute) and memory in use
//! (an up-down counter) over OTLP/gRPC; `trike run` prices the CPU (`cost[].per_cpu_second`)
//! and has a capacity limit on the memory.

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use serde_json::Value;
use std::time::{Duration, Instant};
use trike_tests::{get_json as get, start_trike};

/// The worker's usage rows, once its CPU amount reaches `cpu` CPU seconds (10 s at most).
async fn usage_once(running: &trike::app::Running, cpu: f64) -> Vec<Value> {
    let waited = Instant::now();
    loop {
        let doc = get(running, "/api/v1/usage?service=worker&window=5m").await;
        let rows = doc["usage"].as_array().unwrap().clone();
        let amount = rows
            .iter()
            .find(|r| r["metric"] == "process.cpu.time")
            .and_then(|r| r["amount"].as_f64());
        if amount.is_some_and(|a| (a - cpu).abs() < 1e-9) {
            return rows;
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "{doc}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scenario: the worker's SDK reports 1.5 CPU seconds (user 1.0, system 0.5) and 500 MB in
/// use, then 3 CPU seconds more (the memory unchanged); CPU is priced at 0.05 a second against
/// a budget of 0.01 a day, and a rule throttles a service whose spend burns over 2×.
/// Guarantees: `/api/v1/usage` reads the CPU as a rate with its amount exact (1.5, then 4.5
/// CPU seconds: cumulative points converted, every mode summed; the first point counts, its
/// stream having started after Trike) and the memory as a level of 500 MB; `/api/v1/cost`
/// prices the CPU (spend a day = cores × price × 86 400; a request-free service's cost per
/// request is its CPU price alone); the spend burn throttles the worker; `/metrics` carries
/// `trike_usage_value` and `trike_cost_cpu_cores` (read with the Prometheus parser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_memory_from_the_sdk_are_read_and_priced() {
    let running = start_trike(
        "capacity: [{ service: worker, metric: process.memory.usage, limit: 8e9 }]\n\
         cost: [{ service: worker, per_cpu_second: 0.05, budget_per_day: 0.01 }]\n\
         policies:\n\
         \x20 - { name: throttle-spend, when: \"cost.spend_burn > 2\", action: throttle, params: { rate_limit: 0.5 } }\n",
    )
    .await;
    let provider = trike_tests::sdk_meter_provider(&running, "worker");
    let meter = provider.meter("e2e");
    let cpu = meter.f64_counter("process.cpu.time").with_unit("s").build();
    let memory = meter
        .i64_up_down_counter("process.memory.usage")
        .with_unit("By")
        .build();
    let (p, c, m) = (provider.clone(), cpu.clone(), memory.clone());
    tokio::task::spawn_blocking(move || {
        c.add(1.0, &[KeyValue::new("cpu.mode", "user")]);
        c.add(0.5, &[KeyValue::new("cpu.mode", "system")]);
        m.add(500_000_000, &[]);
        p.force_flush().unwrap();
    })
    .await
    .unwrap();
    let rows = usage_once(&running, 1.5).await;
    let memory_row = rows
        .iter()
        .find(|r| r["metric"] == "process.memory.usage")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(memory_row["kind"], "level");
    assert_eq!(memory_row["value"], 5e8);
    assert!(memory_row.get("amount").is_none());

    let p = provider.clone();
    tokio::task::spawn_blocking(move || {
        cpu.add(2.0, &[KeyValue::new("cpu.mode", "user")]);
        cpu.add(1.0, &[KeyValue::new("cpu.mode", "system")]);
        p.force_flush().unwrap();
        p.shutdown().unwrap();
    })
    .await
    .unwrap();
    let rows = usage_once(&running, 4.5).await;
    let cpu_row = rows
        .iter()
        .find(|r| r["metric"] == "process.cpu.time")
        .unwrap();
    assert_eq!(cpu_row["kind"], "rate");
    assert!(cpu_row["value"].as_f64().unwrap() > 0.0, "{cpu_row}");
    let memory_row = rows
        .iter()
        .find(|r| r["metric"] == "process.memory.usage")
        .unwrap();
    assert_eq!(memory_row["value"], 5e8, "the level, not a sum of points");

    let costs = get(&running, "/api/v1/cost?service=worker").await;
    let c = &costs["costs"][0];
    let cores = c["cpu_cores"].as_f64().unwrap();
    let per_day = c["spend_per_day"].as_f64().unwrap();
    assert!(cores > 0.0, "{costs}");
    assert!(
        (per_day - cores * 0.05 * 86_400.0).abs() <= 1e-9 * per_day,
        "{costs}"
    );
    assert_eq!(
        c["cost_per_request"], 0.0,
        "no price per request, no requests"
    );
    assert!(c["burn_5m"].as_f64().unwrap() > 2.0, "{costs}");

    let waited = Instant::now();
    let throttle = loop {
        let doc = get(&running, "/api/v1/decisions").await;
        let list = doc["decisions"].as_array().unwrap();
        if let Some(d) = list.iter().find(|d| d["data"]["action"] == "throttle") {
            break d.clone();
        }
        assert!(waited.elapsed() < Duration::from_secs(15), "{doc}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(throttle["data"]["target"]["service"], "worker");
    assert_eq!(throttle["data"]["evidence"]["kind"], "spend");
    assert!(
        throttle["data"]["reason"]
            .as_str()
            .unwrap()
            .contains(" cores against 0.01"),
        "{throttle}"
    );

    let text = trike_tests::metrics_text(&running).await;
    let samples = trike_tests::parse_exposition(&text);
    if let Some(samples) = samples {
        let find = |name: &str, metric: Option<&str>| {
            samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.get("service").map(String::as_str) == Some("worker")
                        && metric
                            .is_none_or(|m| s.labels.get("metric").map(String::as_str) == Some(m))
                })
                .unwrap_or_else(|| panic!("{name} {metric:?} in:\n{text}"))
        };
        let mem = find("trike_usage_value", Some("process.memory.usage"));
        assert_eq!(mem.value, Some(5e8));
        assert_eq!(mem.labels.get("kind").map(String::as_str), Some("level"));
        let rate = find("trike_usage_value", Some("process.cpu.time"));
        assert_eq!(rate.labels.get("kind").map(String::as_str), Some("rate"));
        assert!(rate.value.unwrap() > 0.0);
        assert!(find("trike_cost_cpu_cores", None).value.unwrap() > 0.0);
        let dropped = samples
            .iter()
            .find(|s| s.name == "trike_usage_points_dropped_total")
            .unwrap_or_else(|| panic!("trike_usage_points_dropped_total in:\n{text}"));
        assert_eq!(dropped.value, Some(0.0));
    }
    running.stop().await.unwrap();
}
