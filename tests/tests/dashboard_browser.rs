//! The dashboard in a real browser (headless Chromium) while the demo runs.

use std::sync::atomic::Ordering::Relaxed;
use trike::demo::Demo;
use trike_tests::{chromium, demo_args, run_chromium, wait_for_rollback};

/// Number of `<polyline>` points in the chart `id` of a dumped DOM, per series.
fn chart_series(dom: &str, id: &str) -> Vec<(String, usize)> {
    let Some(start) = dom.find(&format!("id=\"{id}\"")) else {
        return Vec::new();
    };
    let body = &dom[start..dom[start..].find("</svg>").map_or(dom.len(), |e| start + e)];
    body.split("<polyline")
        .skip(1)
        .filter_map(|p| {
            let attr = |name: &str| {
                let i = p.find(&format!("{name}=\""))? + name.len() + 2;
                Some(p[i..i + p[i..].find('"')?].to_string())
            };
            Some((attr("data-series")?, attr("data-n")?.parse().ok()?))
        })
        .collect()
}

/// Scenario: the demo runs (canary degrading 2 s in) until the actuator has rolled the canary
/// back; headless Chromium then loads the dashboard. Guarantees: the page's scripts ran
/// against the live API — the rate, error and latency charts draw lines with data for both
/// versions, the SLO cards and the canary verdict show, and the rollback appears in the
/// decisions timeline with its evidence. A screenshot is kept as a test artifact
/// (`target/dashboard.png`). Then, with a rollout started and a silence set over the API, the
/// executive page lists every SLO sorted by budget left with its burn and KPIs, and the loop's
/// own (time to detect and mitigate, success, rollbacks per deploy), and the on-call
/// page shows the rollout at its step, the canary verdict, the silence, the rollback and
/// set_weight decisions, the anomaly watch's scores, and the service graph of the demo's
/// calls (screenshots `executive.png`, `oncall.png`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_charts_and_the_rollback() {
    let Some(chromium) = chromium() else { return };
    let args = demo_args(trike::demo::Scenario::Canary, 2);
    let demo = Demo::start(&args).await.expect("the demo starts");
    wait_for_rollback(&demo).await;
    assert_eq!(demo.controller.calls.load(Relaxed), 1, "rolled back");
    let url = format!("http://{}/?service=checkout", demo.running.admin_addr);
    let dom = {
        let (c, u) = (chromium.clone(), url.clone());
        tokio::task::spawn_blocking(move || run_chromium(&c, &u, 5000, &["--dump-dom"]))
            .await
            .unwrap()
    };
    for chart in ["chart-rate", "chart-errors", "chart-latency"] {
        let series = chart_series(&dom, chart);
        for version in ["1.4.0", "1.5.0"] {
            assert!(
                series
                    .iter()
                    .any(|(name, n)| name.starts_with(version) && *n >= 3),
                "{chart} has a line with data for {version}: {series:?}"
            );
        }
    }
    assert!(
        dom.contains("data-slo=\"checkout-availability\""),
        "SLO card"
    );
    // The verdict is judged now: "fail" until the rolled-back canary's last minute of data
    // ages out (then "inconclusive"); the failing statistics are in the rollback's evidence.
    assert!(
        dom.contains("class=\"canary\" data-verdict="),
        "the canary panel"
    );
    assert!(
        dom.contains("class=\"decision sev-page\" data-action=\"rollback\""),
        "the rollback in the timeline"
    );
    assert!(
        dom.contains("\"p_value\""),
        "its evidence (canary statistics)"
    );
    assert!(
        dom.contains("badge b-ok\">live"),
        "the page reached the API"
    );
    for version in ["1.4.0", "1.5.0"] {
        assert!(
            dom.contains(&format!(
                "class=\"route\" data-operation=\"/pay\" data-version=\"{version}\""
            )),
            "the routes table: /pay of {version}"
        );
    }
    // The canary's failing requests, with their trace ids linked through trace_url_template.
    assert!(
        dom.contains("class=\"exemplar\" data-trace=\""),
        "example traces"
    );
    assert!(
        dom.contains("href=\"http://127.0.0.1:16686/trace/"),
        "linked to the tracing backend"
    );
    assert!(
        dom.contains("id=\"fleet-section\" hidden"),
        "no fleet panel on a single process (no /api/v1/fleet)"
    );

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target");
    let shot = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(target, std::path::PathBuf::from)
        .join("dashboard.png");
    let arg = format!("--screenshot={}", shot.display());
    let c = chromium.clone();
    tokio::task::spawn_blocking(move || run_chromium(&c, &url, 5000, &[&arg]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 20_000, "a real picture: {} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());

    // The executive and on-call pages, with a rollout and a silence to show.
    let admin = demo.running.admin_addr;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("http://{admin}/api/v1/rollouts"))
        .json(&serde_json::json!({"service": "checkout", "baseline": "1.4.0", "canary": "1.6.0", "steps": [10, 100], "step_min": "30s", "step_max": "1m"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let r = client
        .post(format!("http://{admin}/api/v1/silences"))
        .json(&serde_json::json!({"matchers": [{"name": "service", "value": "checkout"}, {"name": "action", "value": "page"}], "endsAt": "2099-01-01T00:00:00Z", "createdBy": "sre", "comment": "known"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    for (page, checks) in [
        (
            "executive",
            &[
                // Sorted by budget left, lowest first; each SLO with its burn and gate.
                "class=\"slo-row\" data-service=\"checkout\" data-slo=\"checkout-",
                "id=\"kpi-firing\"",
                "class=\"bar\"",
                "th class=\"sortable sorted asc\" data-key=\"budget\"",
                // The loop's own metrics: the demo's rollback, mitigated.
                "id=\"kpi-mttd\"",
                "id=\"kpi-mttm\"",
                "1 of 2 deploys", // 1.5.0, and the rollout of 1.6.0 started above
                " succeeded · 0 failed", // the rollback, and the rollout's set_weight once it is through
                "badge b-ok\">live",
            ][..],
        ),
        (
            "oncall",
            &[
                "class=\"rollout\" data-phase=\"running\" data-service=\"checkout\"",
                "class=\"canary\" data-verdict=",
                "class=\"silence\" data-state=\"active\"",
                "class=\"decision sev-page\" data-action=\"rollback\"",
                "data-action=\"set_weight\"",
                "class=\"anomaly\" data-service=\"checkout\" data-metric=\"error_ratio\"",
                // The demo's calls: checkout → payments and inventory, drawn.
                "class=\"edge\" data-client=\"checkout\" data-server=\"payments\"",
                "class=\"edge\" data-client=\"checkout\" data-server=\"inventory\"",
                "class=\"node\" data-service=\"payments\"",
                "badge b-ok\">live",
            ][..],
        ),
    ] {
        let url = format!("http://{admin}/{page}");
        let (c, u) = (chromium.clone(), url.clone());
        let dom = tokio::task::spawn_blocking(move || run_chromium(&c, &u, 5000, &["--dump-dom"]))
            .await
            .unwrap();
        for want in checks {
            assert!(dom.contains(want), "{page}: {want} in {dom}");
        }
        let shot = shot.with_file_name(format!("{page}.png"));
        let arg = format!("--screenshot={}", shot.display());
        let c = chromium.clone();
        tokio::task::spawn_blocking(move || run_chromium(&c, &url, 5000, &[&arg]))
            .await
            .unwrap();
        let png = std::fs::read(&shot).expect("the screenshot was written");
        assert!(
            png.len() > 20_000,
            "{page}: a real picture: {} bytes",
            png.len()
        );
        eprintln!("screenshot: {}", shot.display());
    }
    demo.stop().await.unwrap();
}
