//! The admin API contract (DESIGN §5): health, readiness, the SLI document's shape, errors for
//! bad parameters, and the Prometheus exposition with per-service SLI gauges.

use rand::SeedableRng;
use std::time::Duration;
use trike::synth::{Behaviour, Service};
use trike_tests::{metrics_text, post_spans, sample, start_trike, wait_for_requests};

async fn send(running: &trike::app::Running, svc: &Service, n: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let client = reqwest::Client::new();
    post_spans(&client, running, svc, n, 1_000_000, &mut rng).await;
}

fn svc(name: &str, version: &str, error_ratio: f64) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/r".into()],
        behaviour: Behaviour {
            median_ms: 20.0,
            sigma: 0.3,
            error_ratio,
        },
    }
}

/// Guarantees: /healthz and /readyz answer 200 on a running processor; the SLI document has
/// the DESIGN §5 fields; unknown windows are a 400 naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slis_document_and_health() {
    let running = start_trike(
        "series: { dimensions: [deployment.environment] }\nslos:\n  - { name: l, service: shop, objective: 0.99, sli: { latency: { threshold_ms: 1000 } } }",
    )
    .await;
    let base = format!("http://{}", running.admin_addr);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            reqwest::get(format!("{base}{path}"))
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    send(&running, &svc("shop", "1.0", 0.0), 50).await;
    send(&running, &svc("shop", "1.1", 1.0), 10).await;
    send(&running, &svc("other", "9", 0.0), 5).await;
    assert_eq!(
        wait_for_requests(&running, "shop", 60, Duration::from_secs(5)).await,
        60
    );

    let doc: serde_json::Value = reqwest::get(format!("{base}/api/v1/slis?service=shop&window=1m"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["window"], "1m");
    let as_of = doc["as_of"].as_str().unwrap();
    assert!(
        as_of.len() == 24 && as_of.ends_with('Z') && as_of.as_bytes()[10] == b'T',
        "{as_of}"
    );
    let series = doc["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "only the requested service");
    let canary = series.iter().find(|s| s["version"] == "1.1").unwrap();
    for field in [
        "service",
        "operation",
        "version",
        "requests",
        "errors",
        "error_ratio",
        "rate_per_s",
        "latency_ms",
    ] {
        assert!(!canary[field].is_null(), "field {field} in {canary}");
    }
    for q in ["p50", "p90", "p95", "p99", "p999"] {
        assert!(canary["latency_ms"][q].as_f64().unwrap() > 0.0, "{q}");
    }
    assert_eq!(canary["operation"], "/r");
    assert_eq!(canary["requests"], 10);
    assert_eq!(canary["errors"], 10);
    assert_eq!(canary["error_ratio"], 1.0);
    assert_eq!(canary["dimensions"]["deployment.environment"], "demo");
    assert_eq!(canary["latency_good"][0]["threshold_ms"], 1000.0);
    assert_eq!(canary["latency_good"][0]["good"], 10);
    let all: serde_json::Value = reqwest::get(format!("{base}/api/v1/slis"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["window"], "5m", "default window");
    assert_eq!(all["series"].as_array().unwrap().len(), 3);

    for bad in ["5x", "31d"] {
        let r = reqwest::get(format!("{base}/api/v1/slis?window={bad}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains(bad), "{e}");
    }
    running.stop().await.unwrap();
}

/// Guarantees: /metrics carries ingest counters, engine state and per-service SLI gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exposition() {
    let running = start_trike("").await;
    send(&running, &svc("pay", "1", 0.5), 40).await;
    assert_eq!(
        wait_for_requests(&running, "pay", 40, Duration::from_secs(5)).await,
        40
    );
    let m = metrics_text(&running).await;
    assert_eq!(
        sample(
            &m,
            r#"trike_receiver_items_received_total{signal="traces"}"#
        ),
        Some(40.0)
    );
    assert_eq!(
        sample(&m, "trike_engine_requests_applied_total"),
        Some(40.0)
    );
    assert_eq!(sample(&m, "trike_engine_series"), Some(1.0));
    assert_eq!(sample(&m, "trike_engine_late_dropped_total"), Some(0.0));
    assert_eq!(
        sample(&m, r#"trike_sli_requests{service="pay",window="1m"}"#),
        Some(40.0)
    );
    let ratio = sample(&m, r#"trike_sli_error_ratio{service="pay",window="5m"}"#).unwrap();
    assert!((0.2..0.8).contains(&ratio), "{ratio}");
    let p50 = sample(
        &m,
        r#"trike_sli_latency_milliseconds{service="pay",window="1m",quantile="0.5"}"#,
    )
    .unwrap();
    assert!((10.0..40.0).contains(&p50), "{p50}");
    assert_eq!(
        sample(&m, "trike_engine_queue_delay_seconds_count"),
        Some(1.0)
    );
    // Every sample line parses: name{labels} value.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "unparseable sample: {line}");
    }
    running.stop().await.unwrap();
}

/// Guarantees: `/api/v1/slos` reports budget, burn rates per window and firing tiers from live
/// traffic (DESIGN §5 shape), and `/api/v1/gate` maps the budget left to a rollout strategy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slos_and_gate() {
    let running = start_trike(
        "slos:\n  - { name: shop-availability, service: shop, objective: 0.99, sli: availability }\n  - { name: calm-availability, service: calm, objective: 0.99, sli: availability }",
    )
    .await;
    send(&running, &svc("shop", "1.0", 0.5), 400).await;
    send(&running, &svc("calm", "1.0", 0.0), 400).await;
    assert_eq!(
        wait_for_requests(&running, "shop", 400, Duration::from_secs(5)).await,
        400
    );
    assert_eq!(
        wait_for_requests(&running, "calm", 400, Duration::from_secs(5)).await,
        400
    );
    let base = format!("http://{}", running.admin_addr);
    let doc: serde_json::Value = reqwest::get(format!("{base}/api/v1/slos"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slos = doc["slos"].as_array().unwrap();
    assert_eq!(slos.len(), 2);
    let shop = slos
        .iter()
        .find(|s| s["name"] == "shop-availability")
        .unwrap();
    for field in [
        "name",
        "service",
        "objective",
        "period",
        "budget_remaining",
        "burn_rates",
        "firing",
        "exhaustion_eta_s",
    ] {
        assert!(shop.get(field).is_some(), "{field} in {shop}");
    }
    for w in ["5m", "30m", "1h", "6h", "3d"] {
        assert!(shop["burn_rates"][w].as_f64().is_some(), "burn rate {w}");
    }
    let ratio = shop["burn_rates"]["5m"].as_f64().unwrap() * 0.01;
    assert!((0.35..0.65).contains(&ratio), "bad ratio {ratio}");
    // Burning far over every factor, but a fresh processor's history covers a sliver of the
    // 1 h window: no tier fires on history that is not there, and the tier says how much it has.
    assert_eq!(shop["firing"], serde_json::json!([]), "{shop}");
    let fast = &shop["tiers"][0];
    assert_eq!(fast["name"], "page_fast");
    assert!(fast["burn_long"].as_f64().unwrap() > 14.4, "{fast}");
    let covered = fast["coverage_long"].as_f64().unwrap();
    assert!(covered > 0.0 && covered < 0.05, "{fast}");
    assert_eq!(shop["period"], "30d");
    let calm = slos
        .iter()
        .find(|s| s["name"] == "calm-availability")
        .unwrap();
    assert_eq!(calm["firing"], serde_json::json!([]));
    assert_eq!(calm["budget_remaining"], 1.0);
    assert!(calm["exhaustion_eta_s"].is_null());

    let gate = |service: &'static str| {
        let base = base.clone();
        async move {
            reqwest::get(format!("{base}/api/v1/gate?service={service}"))
                .await
                .unwrap()
        }
    };
    let g: serde_json::Value = gate("shop").await.json().await.unwrap();
    assert_eq!(g["strategy"], "frozen", "{g}");
    assert!(g["budget_remaining"].as_f64().unwrap() < 0.05);
    let g: serde_json::Value = gate("calm").await.json().await.unwrap();
    assert_eq!(
        (g["strategy"].as_str(), g["budget_remaining"].as_f64()),
        (Some("aggressive"), Some(1.0))
    );
    let g: serde_json::Value = gate("unknown").await.json().await.unwrap();
    assert_eq!(g["strategy"], "aggressive");
    assert_eq!(gate("").await.status(), 400);
    running.stop().await.unwrap();
}

/// Scenario: two SLOs (availability at 99 %, latency at 99.9 % over 28 days) with traffic, one
/// without traffic on a service that sent nothing.
/// Guarantees: parsed with the Prometheus project's text-format parser (its Python client), `/metrics` carries Sloth's series
/// for each SLO (DESIGN §9): `slo:sli_error:ratio_rate<w>` for 5m … 3d and the period (`4w`
/// for 28 days, as Prometheus writes it), with `sloth_id`, `sloth_service`, `sloth_slo` and
/// `sloth_window`; objective, budget, period days, current and period burn rates and the
/// budget left, equal to what `/api/v1/slos` says; and `sloth_slo_info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloth_series_match_the_api() {
    let running = start_trike(
        "slos:\n  - { name: avail, service: pay, objective: 0.99, sli: availability }\n  - { name: fast, service: pay, objective: 0.999, period: 28d, sli: { latency: { threshold_ms: 25 } } }\n  - { name: idle, service: nobody, objective: 0.99, sli: availability }",
    )
    .await;
    send(&running, &svc("pay", "1", 0.2), 200).await;
    assert_eq!(
        wait_for_requests(&running, "pay", 200, Duration::from_secs(5)).await,
        200
    );
    let text = metrics_text(&running).await;
    let base = format!("http://{}", running.admin_addr);
    let api: serde_json::Value = reqwest::get(format!("{base}/api/v1/slos"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let Some(samples) = trike_tests::parse_exposition(&text) else {
        return;
    };
    let label = |s: &trike_tests::PromSample, k: &str| s.labels.get(k).cloned();
    let value = |name: &str, slo: &str, window: Option<&str>| -> f64 {
        let found: Vec<f64> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && label(s, "sloth_slo").as_deref() == Some(slo)
                    && window.is_none_or(|w| label(s, "sloth_window").as_deref() == Some(w))
            })
            .map(|s| {
                assert_eq!(s.kind, "gauge", "{name}");
                s.value.unwrap()
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {slo} {window:?}: {found:?}");
        found[0]
    };
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-9, "{what}: {a} vs {b}");
    for slo in api["slos"].as_array().unwrap() {
        let name = slo["name"].as_str().unwrap();
        let service = slo["service"].as_str().unwrap();
        let objective = slo["objective"].as_f64().unwrap();
        let budget = 1.0 - objective;
        let period = if name == "fast" { "4w" } else { "30d" };
        for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d", period] {
            let sample = samples
                .iter()
                .find(|s| {
                    s.name == format!("slo:sli_error:ratio_rate{w}")
                        && label(s, "sloth_slo").as_deref() == Some(name)
                })
                .unwrap_or_else(|| panic!("{name} {w}"));
            assert_eq!(label(sample, "sloth_service").as_deref(), Some(service));
            assert_eq!(label(sample, "sloth_id"), Some(format!("{service}-{name}")));
            assert_eq!(label(sample, "sloth_window").as_deref(), Some(w));
        }
        for w in ["5m", "30m", "1h", "6h", "3d"] {
            let ratio = value(&format!("slo:sli_error:ratio_rate{w}"), name, Some(w));
            close(ratio / budget, slo["burn_rates"][w].as_f64().unwrap(), w);
        }
        close(
            value("slo:objective:ratio", name, None),
            objective,
            "objective",
        );
        close(
            value("slo:error_budget:ratio", name, None),
            budget,
            "budget",
        );
        close(
            value("slo:time_period:days", name, None),
            if name == "fast" { 28.0 } else { 30.0 },
            "days",
        );
        close(
            value("slo:current_burn_rate:ratio", name, None),
            slo["burn_rates"]["5m"].as_f64().unwrap(),
            "current burn rate",
        );
        let remaining = slo["budget_remaining"].as_f64().unwrap();
        close(
            value("slo:period_error_budget_remaining:ratio", name, None),
            remaining,
            "budget remaining",
        );
        close(
            value("slo:period_burn_rate:ratio", name, None),
            1.0 - remaining,
            "period burn rate",
        );
        close(value("sloth_slo_info", name, None), 1.0, "info");
    }
    // Traffic made the numbers real: 20 % errors burn the 99 % SLO 20 times over.
    let avail = value("slo:sli_error:ratio_rate5m", "avail", Some("5m"));
    assert!((0.1..0.3).contains(&avail), "{avail}");
    assert_eq!(value("slo:sli_error:ratio_rate5m", "idle", Some("5m")), 0.0);
    let info = samples
        .iter()
        .find(|s| s.name == "sloth_slo_info" && label(s, "sloth_slo").as_deref() == Some("fast"))
        .unwrap();
    assert_eq!(label(info, "sloth_objective").as_deref(), Some("99.9"));
}

/// Scenario: a service sends spans for a few seconds to a processor whose anomaly watch
/// samples every second (`anomaly: { every: 1s, threshold: 0.7 }`).
/// Guarantees: `/api/v1/anomalies` lists the service's request rate, error ratio and p99 with
/// a score in [0, 1], the threshold configured, and `?service=` narrows the list; parsed with
/// the Prometheus text-format parser, `/metrics` carries `trike_anomaly_score` and
/// `trike_anomaly` gauges for each, equal to the API's (read between two identical API reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomaly_scores_in_the_api_and_metrics() {
    let running = start_trike("anomaly: { every: 1s, threshold: 0.7 }").await;
    let base = format!("http://{}", running.admin_addr);
    let get = |path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    let api = loop {
        send(&running, &svc("pay", "1", 0.1), 50).await;
        sent += 50;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = get("/api/v1/anomalies?service=pay").await;
        if a["anomalies"].as_array().is_some_and(|l| l.len() == 3) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{a} after {sent} spans"
        );
    };
    assert_eq!(api["threshold"], 0.7);
    let mut metrics: Vec<&str> = Vec::new();
    for p in api["anomalies"].as_array().unwrap() {
        assert_eq!(p["service"], "pay");
        let score = p["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{p}");
        assert_eq!(p["anomaly"].as_bool().unwrap(), score >= 0.7, "{p}");
        assert!(p["at"].as_str().unwrap().ends_with('Z'), "{p}");
        metrics.push(p["metric"].as_str().unwrap());
    }
    metrics.sort();
    assert_eq!(metrics, ["error_ratio", "latency_p99", "request_rate"]);
    let everyone = get("/api/v1/anomalies").await;
    assert!(everyone["anomalies"].as_array().unwrap().len() >= 3);
    let other = get("/api/v1/anomalies?service=nobody").await;
    assert_eq!(other["anomalies"], serde_json::json!([]));

    // /metrics against the API, from the same sample.
    let (text, api) = loop {
        let before = get("/api/v1/anomalies?service=pay").await;
        let text = metrics_text(&running).await;
        let after = get("/api/v1/anomalies?service=pay").await;
        if before == after {
            break (text, after);
        }
    };
    let Some(samples) = trike_tests::parse_exposition(&text) else {
        return;
    };
    for p in api["anomalies"].as_array().unwrap() {
        let metric = p["metric"].as_str().unwrap();
        for (name, want) in [
            ("trike_anomaly_score", p["score"].as_f64().unwrap()),
            (
                "trike_anomaly",
                f64::from(u8::from(p["anomaly"].as_bool().unwrap())),
            ),
        ] {
            let found: Vec<&trike_tests::PromSample> = samples
                .iter()
                .filter(|s| {
                    s.name == name
                        && s.labels.get("service").map(String::as_str) == Some("pay")
                        && s.labels.get("metric").map(String::as_str) == Some(metric)
                })
                .collect();
            assert_eq!(found.len(), 1, "{name} {metric}");
            assert_eq!(found[0].kind, "gauge");
            assert!(
                (found[0].value.unwrap() - want).abs() < 1e-12,
                "{name} {metric}"
            );
        }
    }
    running.stop().await.unwrap();
}
