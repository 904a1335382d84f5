//! Silences and maintenance windows (DESIGN §9), end to end: three services each roll a failing
//! canary back; a silence made over the API matches checkout's rollback, a maintenance window
//! of the config matches payments'; orders' is matched by neither.

use rand::SeedableRng;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};
use trike_tests::{post_spans, start_trike};

const WRITE: &str = "write-token-silences-0123456789";
const READ: &str = "read-token-silences-0123456789";

fn version(name: &str, version: &str, error_ratio: f64) -> Service {
    Service {
        name: name.into(),
        version: version.into(),
        routes: vec!["/pay".into()],
        behaviour: Behaviour {
            median_ms: 30.0,
            sigma: 0.3,
            error_ratio,
        },
    }
}

/// Guarantees: each rollback is decided and listed at /api/v1/decisions; the two a silence
/// matches carry `silenced: true` and the silence's id and never reach the sink; the third is
/// written to the sink, unsilenced; `trike_decisions_silenced_total` counts 2; a silence with
/// a read token is refused (403) and one without matchers is refused (400); the API lists the
/// silence and the window as active, and a DELETE expires the silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_suppresses_exactly_what_it_matches() {
    let dir = std::env::temp_dir().join(format!("trike-silences-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sink = dir.join("control.jsonl");
    let now_s = trike_runtime::clock::now_nanos() / 1_000_000_000;
    let at = |offset: i64| trike_sinks::rfc3339(((now_s as i64 + offset) as u64) * 1_000_000_000);
    let mut canaries = String::new();
    for svc in ["checkout", "payments", "orders"] {
        canaries.push_str(&format!(
            "  - {{ service: {svc}, baseline: \"1.0\", canary: \"2.0\", window: 5m, min_requests: 100 }}\n"
        ));
    }
    let running = start_trike(&format!(
        r#"
auth: {{ admin_read_tokens: ["{READ}"], admin_write_tokens: ["{WRITE}"] }}
canary:
{canaries}policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, params: {{ weight: 0 }} }}]
maintenance:
  - {{ name: payments-db, matchers: [{{ name: service, value: payments }}], start: "{}", end: "{}", comment: "db upgrade" }}
sinks: [{{ type: file, path: "{}" }}]
"#,
        at(-3600),
        at(3600),
        sink.display()
    ))
    .await;
    let admin = running.admin_addr.to_string();
    let client = reqwest::Client::new();
    let post = |token: &'static str, body: Value| {
        let client = client.clone();
        let url = format!("http://{admin}/api/v1/silences");
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let silence = json!({
        "matchers": [{"name": "service", "value": "checkout"}, {"name": "action", "value": "roll.*", "isRegex": true}],
        "endsAt": at(3600), "createdBy": "sre@example.com", "comment": "known bad canary, handled by hand"
    });
    assert_eq!(post(READ, silence.clone()).await.0, 403);
    let (status, body) = post(WRITE, json!({"matchers": [], "endsAt": at(60)})).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at least one matcher"),
        "{body}"
    );
    let (status, body) = post(WRITE, silence).await;
    assert_eq!(status, 200, "{body}");
    let id = body["silenceID"].as_str().unwrap().to_string();

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for svc in ["checkout", "payments", "orders"] {
        post_spans(
            &client,
            &running,
            &version(svc, "1.0", 0.0),
            400,
            5_000_000_000,
            &mut rng,
        )
        .await;
        post_spans(
            &client,
            &running,
            &version(svc, "2.0", 0.5),
            300,
            5_000_000_000,
            &mut rng,
        )
        .await;
    }
    let waited = Instant::now();
    let rollbacks = loop {
        let doc: Value = client
            .get(format!("http://{admin}/api/v1/decisions"))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rollbacks: Vec<Value> = doc["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["data"]["action"] == "rollback")
            .cloned()
            .collect();
        if rollbacks.len() >= 3 {
            break rollbacks;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "rollbacks: {rollbacks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by = |svc: &str| {
        rollbacks
            .iter()
            .find(|d| d["subject"] == svc)
            .unwrap()
            .clone()
    };
    assert_eq!(by("checkout")["data"]["silenced"], true);
    assert_eq!(by("checkout")["data"]["silenced_by"], id.as_str());
    assert_eq!(by("payments")["data"]["silenced"], true);
    assert_eq!(
        by("payments")["data"]["silenced_by"],
        "maintenance:payments-db"
    );
    assert!(
        by("orders")["data"].get("silenced").is_none(),
        "{}",
        by("orders")
    );
    assert_eq!(
        by("checkout")["data"]["evidence"]["kind"],
        "canary",
        "evidence kept"
    );

    // Only orders' rollback reaches the sink (written by the sinks' thread after the API has
    // it; then nothing else follows).
    let waited = Instant::now();
    while !std::fs::read_to_string(&sink)
        .unwrap_or_default()
        .contains("\"rollback\"")
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
        .filter(|e| e["data"]["action"] == "rollback")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["orders"], "{written:?}");
    let text = client
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        trike_tests::sample(&text, "trike_decisions_silenced_total"),
        Some(2.0)
    );

    // Listed, then expired.
    let list = |client: reqwest::Client| {
        let url = format!("http://{admin}/api/v1/silences");
        async move {
            let doc: Value = client
                .get(url)
                .bearer_auth(READ)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            doc["silences"].as_array().unwrap().clone()
        }
    };
    let all = list(client.clone()).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().all(|s| s["status"]["state"] == "active"),
        "{all:?}"
    );
    let r = client
        .delete(format!("http://{admin}/api/v1/silences/{id}"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let all = list(client.clone()).await;
    let ours = all.iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(ours["status"]["state"], "expired", "{ours}");
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
