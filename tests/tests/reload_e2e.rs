//! Reload (DESIGN §9): the rule set is reloaded by `POST /api/v1/reload`, by a change of the
//! config file, and by `SIGHUP`, keeping the engine's counts and the policy's episodes; a
//! config that does not validate keeps the running rule set and says why.

use rand::SeedableRng;
use serde_json::Value;
use std::time::{Duration, Instant};
use trike::config::Config;
use trike::config::validate::Overrides;
use trike_tests::{checkout, post_spans};

const WRITE: &str = "write-token-reload-0123456789";

fn config(dir: &std::path::Path, objective: &str, rule: &str) -> String {
    format!(
        r#"
auth: {{ admin_write_tokens: ["{WRITE}"] }}
slos: [{{ name: checkout-availability, service: checkout, objective: {objective}, sli: availability }}]
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 1m, min_requests: 100 }}]
policies:
  - {{ name: rollback-bad-canary, when: canary.fail, action: rollback, params: {{ weight: 0 }} }}
  - {{ name: {rule}, when: stale, action: page }}
sinks: [{{ type: file, path: "{}" }}]
"#,
        dir.join("control.jsonl").display()
    )
}

async fn get(client: &reqwest::Client, admin: &str, path: &str) -> Value {
    client
        .get(format!("http://{admin}{path}"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn metric(client: &reqwest::Client, admin: &str, name: &str) -> f64 {
    let text = client
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    trike_tests::sample(&text, name).unwrap_or_else(|| panic!("{name} in /metrics"))
}

fn requests(slis: &Value) -> u64 {
    slis["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum()
}

fn rollbacks(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("control.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["data"]["action"] == "rollback")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Writes the config file as editors and ConfigMaps do, whole at once (the file watch never
/// reads half of it).
fn write_config(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Checks the answer to a `POST /api/v1/reload` that found `text`'s revision new. The file
/// watch (every 2 s) may have read the edited file between its write and the POST: then the
/// POST found nothing to change, and the watch's attempt, just before, loaded the revision.
async fn check_reload_of_an_edit(
    client: &reqwest::Client,
    admin: &str,
    done: &Value,
    previous: &str,
    dropped: Value,
) {
    if done["changed"] == true {
        assert_eq!(done["previous"], previous, "{done}");
        assert_eq!(done["dropped_rule_state"], dropped, "{done}");
    } else {
        let doc = get(client, admin, "/api/v1/revisions").await;
        let by_watch = &doc["reloads"][1];
        assert_eq!(by_watch["trigger"], "the config file changed", "{doc}");
        assert_eq!(by_watch["ok"], true, "{doc}");
        assert_eq!(by_watch["revision"], done["revision"], "{doc}");
    }
    assert_eq!(done["restart_needed"], serde_json::json!([]), "{done}");
}

/// The requests counted for checkout in the last hour, once they reach `want` (the receivers
/// answer before the engine has applied a batch).
async fn requests_reach(client: &reqwest::Client, admin: &str, want: u64) -> u64 {
    let waited = Instant::now();
    loop {
        let n = requests(&get(client, admin, "/api/v1/slis?service=checkout&window=1h").await);
        if n >= want || waited.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn revision_becomes(client: &reqwest::Client, admin: &str, not: &str) -> String {
    let waited = Instant::now();
    loop {
        let doc = get(client, admin, "/api/v1/revisions").await;
        let current = doc["current"].as_str().unwrap().to_string();
        if current != not {
            return current;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(15),
            "the revision stayed {not}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scenario: checkout's baseline and a failing canary send spans; the canary is rolled back.
/// Then: a reload over the API changes the SLO's objective and renames the stale rule; a config
/// with a bad rule is refused; the file is fixed (the file watch reloads it); SIGHUP reloads
/// an edit of the objective.
/// Guarantees: every accepted reload changes the revision (listed at /api/v1/revisions, on
/// /api/v1/slos' objective) and keeps the counts exactly and the rollback's episode (no second
/// rollback); the refused one answers 400 naming the problem, keeps the revision, and sets
/// `trike_config_last_reload_successful` to 0 until the next good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_state_and_refuse_bad_configs() {
    let dir = std::env::temp_dir().join(format!("trike-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trike.yaml");
    std::fs::write(&path, config(&dir, "0.99", "page-on-stale")).unwrap();
    let o = Overrides {
        otlp_grpc_addr: Some("127.0.0.1:0".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        admin_addr: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    let cfg = Config::load(Some(&path), &o).expect("the config validates");
    let running = trike::app::start(cfg).await.expect("trike starts");
    let admin = running.admin_addr.to_string();
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..3 {
        post_spans(
            &client,
            &running,
            &checkout("1.4.0", 0.0),
            300,
            5_000_000_000,
            &mut rng,
        )
        .await;
        post_spans(
            &client,
            &running,
            &checkout("1.5.0", 0.5),
            200,
            5_000_000_000,
            &mut rng,
        )
        .await;
    }
    let waited = Instant::now();
    while rollbacks(&dir).is_empty() {
        assert!(waited.elapsed() < Duration::from_secs(15), "no rollback");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted = requests_reach(&client, &admin, 1500).await;
    assert_eq!(counted, 1500);
    let first = get(&client, &admin, "/api/v1/revisions").await["current"]
        .as_str()
        .unwrap()
        .to_string();

    // 1. Over the API.
    write_config(&path, &config(&dir, "0.995", "page-when-stale"));
    let r = client
        .post(format!("http://{admin}/api/v1/reload"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    let dropped = serde_json::json!(["page-on-stale"]);
    check_reload_of_an_edit(&client, &admin, &done, &first, dropped).await;
    let second = done["revision"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let slos = get(&client, &admin, "/api/v1/slos").await;
    assert_eq!(slos["slos"][0]["objective"], 0.995, "{slos}");
    let revisions = get(&client, &admin, "/api/v1/revisions").await;
    assert_eq!(revisions["current"], second.as_str());
    assert_eq!(
        requests(&get(&client, &admin, "/api/v1/slis?service=checkout&window=1h").await),
        counted,
        "counts unchanged across the reload"
    );

    // 2. A bad config is refused; the running rule set stays.
    write_config(
        &path,
        &config(&dir, "0.995", "page-when-stale").replace("when: stale", "when: stael"),
    );
    let r = client
        .post(format!("http://{admin}/api/v1/reload"))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let refused: Value = r.json().await.unwrap();
    assert!(
        refused["problems"][0]
            .as_str()
            .unwrap()
            .contains("policies[1].when"),
        "{refused}"
    );
    assert_eq!(
        get(&client, &admin, "/api/v1/revisions").await["current"],
        second.as_str()
    );
    assert_eq!(
        metric(&client, &admin, "trike_config_last_reload_successful").await,
        0.0
    );
    // Refused once, by the POST, or twice when the file watch read the bad file first.
    let refusals = get(&client, &admin, "/api/v1/revisions").await["reloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ok"] == false)
        .count();
    assert!((1..=2).contains(&refusals), "{refusals} refusals");
    assert_eq!(
        metric(&client, &admin, "trike_config_reload_failures_total").await,
        refusals as f64
    );

    // 3. Fixing the file is enough: the file watch reloads it.
    write_config(&path, &config(&dir, "0.999", "page-when-stale"));
    let third = revision_becomes(&client, &admin, &second).await;
    assert_eq!(
        metric(&client, &admin, "trike_config_last_reload_successful").await,
        1.0
    );
    assert_eq!(
        get(&client, &admin, "/api/v1/slos").await["slos"][0]["objective"],
        0.999
    );

    // 4. SIGHUP (the file is edited without changing its content's meaning first, then with).
    write_config(&path, &config(&dir, "0.9", "page-when-stale"));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let fourth = revision_becomes(&client, &admin, &third).await;
    assert_ne!(fourth, second);
    // (The file watch may see the edit first; the signal's reload then follows it.)
    let waited = Instant::now();
    loop {
        let doc = get(&client, &admin, "/api/v1/revisions").await;
        if doc["reloads"][0]["trigger"] == "SIGHUP" {
            assert_eq!(doc["reloads"][0]["revision"], fourth.as_str(), "{doc}");
            let triggers: Vec<&str> = doc["reloads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["trigger"].as_str().unwrap())
                .collect();
            assert!(triggers.contains(&"the config file changed"), "{doc}");
            assert!(triggers.contains(&"POST /api/v1/reload"), "{doc}");
            let refused = doc["reloads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["ok"] == false)
                .unwrap();
            assert!(
                refused["problems"][0].as_str().unwrap().contains("stael"),
                "{doc}"
            );
            // Earlier revisions stay readable.
            let r = client
                .get(format!("http://{admin}/api/v1/revisions/{first}"))
                .bearer_auth(WRITE)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "no SIGHUP reload: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&client, &admin, "trike_config_reloads_total").await >= 3.0);

    // The canary's episode survived every reload: still one rollback.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rollbacks(&dir).len(), 1, "{:?}", rollbacks(&dir));
    assert_eq!(
        requests(&get(&client, &admin, "/api/v1/slis?service=checkout&window=1h").await),
        counted
    );
    running.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
