//! Argo Rollouts' web metric provider and Flagger's webhooks (DESIGN §9), driven as those
//! controllers drive them, from the examples under `deploy/`: the AnalysisTemplate's URL (its
//! `{{args.*}}` filled in), header, `jsonPath` and conditions; the Flagger Canary's webhook
//! URLs, types and metadata, with Flagger's payload.

use rand::SeedableRng;
use serde_yaml_ng::Value as Yaml;
use std::time::Duration;
use trike::synth::{Behaviour, Service};
use trike_tests::{post_spans, start_trike};

const READ: &str = "read-token-delivery-0123456789";

fn version(name: &str, version: &str, median_ms: f64, error_ratio: f64) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/pay".into(), "/cart".into()],
        behaviour: Behaviour {
            median_ms,
            sigma: 0.3,
            error_ratio,
        },
    }
}

fn load(path: &str) -> Yaml {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Argo's `successCondition` / `failureCondition` of the form `result == "X"`.
fn condition_value(c: &Yaml) -> String {
    let c = c.as_str().unwrap();
    let (lhs, rhs) = c.split_once("==").unwrap();
    assert_eq!(lhs.trim(), "result", "{c}");
    rhs.trim().trim_matches('"').to_string()
}

/// Scenario: service `checkout` with a stable version 1.4.0, a good canary 1.5.0 (same
/// behaviour), a bad canary 1.6.0 (20 % errors, twice as slow), and 1.7.0 with no traffic.
/// Guarantees: Argo's provider, as the AnalysisTemplate has Argo call it (URL with the args,
/// the bearer header, `jsonPath: {$.verdict}`), always gets 200 and reads `pass` for the good
/// canary (Successful by `successCondition`), `fail` for the bad one (Failed by
/// `failureCondition`), `inconclusive` for the silent one and for a request missing its
/// service (neither condition: Inconclusive, with an error saying what to give); Flagger's
/// rollout hook gets 200 for the good canary and 409 for the bad one, and its
/// confirm-promotion hook 200 only for the good one (409 for the silent one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_and_flagger_read_the_canary_verdict() {
    let running = start_trike(&format!(
        "auth: {{ admin_read_tokens: [\"{READ}\"] }}\ncanary:\n  - {{ service: checkout, baseline: \"1.4.0\", canary: \"1.5.0\", window: 10m, min_requests: 300 }}\n"
    ))
    .await;
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for (v, median, errors) in [
        ("1.4.0", 40.0, 0.01),
        ("1.5.0", 40.0, 0.01),
        ("1.6.0", 80.0, 0.2),
    ] {
        for _ in 0..4 {
            post_spans(
                &client,
                &running,
                &version("checkout", v, median, errors),
                250,
                30_000_000_000,
                &mut rng,
            )
            .await;
        }
    }
    let admin = running.admin_addr.to_string();
    let started = std::time::Instant::now();
    loop {
        let doc: serde_json::Value = client
            .get(format!(
                "http://{admin}/api/v1/slis?service=checkout&window=5m"
            ))
            .header("authorization", format!("Bearer {READ}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let total: u64 = doc["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["requests"].as_u64().unwrap())
            .sum();
        if total >= 3000 {
            assert_eq!(total, 3000);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{total} of 3000"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Argo Rollouts: the web provider as the AnalysisTemplate configures it.
    let template = load("deploy/argo/analysis-template.yaml");
    assert_eq!(template["kind"], "AnalysisTemplate");
    let metric = &template["spec"]["metrics"][0];
    let web = &metric["provider"]["web"];
    assert_eq!(web["jsonPath"].as_str(), Some("{$.verdict}"));
    let field = "verdict";
    let (success, failure) = (
        condition_value(&metric["successCondition"]),
        condition_value(&metric["failureCondition"]),
    );
    let url_template = web["url"].as_str().unwrap().replace(
        "http://trike.observability.svc:8480",
        &format!("http://{admin}"),
    );
    let header = &web["headers"][0];
    assert_eq!(header["key"].as_str(), Some("Authorization"));
    let argo = |canary: &str, service: &str| {
        let url = url_template
            .replace("{{args.service}}", service)
            .replace("{{args.canary-version}}", canary)
            .replace("{{args.baseline-version}}", "1.4.0");
        let auth = header["value"]
            .as_str()
            .unwrap()
            .replace("{{args.trike-token}}", READ);
        let client = client.clone();
        async move {
            let r = client
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "Argo counts a non-2xx as an Error");
            let doc: serde_json::Value = r.json().await.unwrap();
            (doc[field].as_str().unwrap().to_string(), doc)
        }
    };
    let (good, doc) = argo("1.5.0", "checkout").await;
    assert_eq!(good, success, "{doc}");
    assert_eq!(doc["baseline"], "1.4.0");
    assert!(doc["evidence"].as_array().is_some_and(|e| !e.is_empty()));
    let (bad, doc) = argo("1.6.0", "checkout").await;
    assert_eq!(bad, failure, "{doc}");
    let (silent, doc) = argo("1.7.0", "checkout").await;
    assert!(silent != success && silent != failure, "{doc}");
    assert_eq!(silent, "inconclusive");
    let (missing, doc) = argo("1.5.0", "").await;
    assert_eq!(missing, "inconclusive");
    assert!(doc["error"].as_str().unwrap().contains("service"), "{doc}");
    // Without a token: refused before any verdict (read scope).
    let r = client
        .get(format!(
            "http://{admin}/api/v1/analysis?service=checkout&canary=1.5.0"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Flagger: its webhooks as the Canary configures them, with its payload.
    let canary = load("deploy/flagger/canary.yaml");
    assert_eq!(canary["kind"], "Canary");
    let hooks = canary["spec"]["analysis"]["webhooks"]
        .as_sequence()
        .unwrap();
    let hook = |kind: &str| {
        hooks
            .iter()
            .find(|h| h["type"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("a {kind} webhook"))
            .clone()
    };
    let flagger = |hook: Yaml, canary_version: &str| {
        let url = hook["url"].as_str().unwrap().replace(
            "http://trike.observability.svc:8480",
            &format!("http://{admin}"),
        );
        let mut metadata: serde_json::Value = serde_json::to_value(&hook["metadata"]).unwrap();
        metadata["canary"] = canary_version.into();
        let payload = serde_json::json!({
            "name": "checkout",
            "namespace": "shop",
            "phase": "Progressing",
            "checksum": "6d7f9c",
            "metadata": metadata,
        });
        let client = client.clone();
        async move {
            client
                .post(url)
                .header("authorization", format!("Bearer {READ}"))
                .json(&payload)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        hook("rollout")["metadata"]["service"].as_str(),
        Some("checkout")
    );
    assert_eq!(flagger(hook("rollout"), "1.5.0").await, 200);
    assert_eq!(flagger(hook("rollout"), "1.6.0").await, 409);
    assert_eq!(flagger(hook("rollout"), "1.7.0").await, 200, "not failing");
    assert_eq!(flagger(hook("confirm-promotion"), "1.5.0").await, 200);
    assert_eq!(flagger(hook("confirm-promotion"), "1.6.0").await, 409);
    assert_eq!(
        flagger(hook("confirm-promotion"), "1.7.0").await,
        409,
        "never blind"
    );
}
