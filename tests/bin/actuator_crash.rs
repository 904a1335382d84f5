//! Kill the actuator between executing and committing: after a restart the webhook is not
//! called again.
//!
//! The actuator is the real `trike actuate` binary, in a child process, so it can really die
//! (a root-package test, so that Cargo builds the binary and tells us where). The test
//! webhook SIGKILLs the child on its first call, before answering: the rollback was executed,
//! but no outcome was written and the offset was never committed. A new child, with a
//! *different*, empty state directory (so its local ledger knows nothing), gets the event again
//! and must report `skipped_duplicate` because the claim log (on librdkafka's mock cluster,
//! reached over loopback) names the dead run as first claimant. The dead run never wrote a
//! finish record, so once the claim's lease (1 s here) has passed the new run pages a human
//! (the event may or may not have run) instead of skipping it silently. The webhook count
//! stays 1.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "crash-secret";
const CLAIMS: &str = "crash.claims";

/// `trike actuate` with its own config file (in `state`'s parent) and state directory.
fn spawn_child(brokers: &str, instance: &str, web: &str, state: &std::path::Path) -> Child {
    let config = state.with_extension("yaml");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"signing: {{ key: {KEY} }}
instance: {instance}
kafka: {{ control_topic: crash.control }}
actuator:
  group_id: crash-actuators
  actions_topic: crash.actions
  claims_topic: {CLAIMS}
  state_dir: "{}"
  claim_lease: 1s
  executors:
    - {{ name: rollouts, type: webhook, actions: [rollback], url: "http://{web}/rollback", retries: 0, timeout: 5s }}
    - {{ name: pager, type: log, actions: [page] }}
"#,
            state.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["actuate", "--config"])
        .arg(&config)
        .args(["--kafka-brokers", brokers])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the trike binary starts")
}

/// A child actuator; killed on drop if still running.
struct ChildGuard(Arc<Mutex<Option<Child>>>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signed_rollback(id: &str) -> Value {
    let mut e = json!({
        "specversion": "1.0", "id": id, "source": "trike://test", "type": "io.trike.control.rollback",
        "subject": "checkout", "time": trike_sinks::rfc3339(trike_runtime::clock::now_nanos()), "datacontenttype": "application/json",
        "data": { "decision_id": id, "action": "rollback", "target": { "service": "checkout", "version": "1.5.0" },
                  "params": {}, "reason": "checkout 1.5.0 failed canary analysis", "dry_run": false, "severity": "page", "rule": "rollback-bad-canary", "slo": null, "policy_revision": "0123456789abcdef", "evidence": {"kind": "stale", "silent_s": 0.0, "lag_s": 0.0}, "detected_at": "2026-11-22T00:00:00.000Z", "observed_until": "2026-11-22T00:00:00.000Z" }
    });
    trike_sinks::signing::sign(&mut e, KEY.as_bytes());
    e
}

fn poll_all(reader: &BaseConsumer, want: usize, within: Duration) -> Vec<(Option<String>, Value)> {
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < want && start.elapsed() < within {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            seen.push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
        }
    }
    seen
}

fn reader_of(brokers: &str, topic: &str, partitions: i32) -> BaseConsumer {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    reader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_executing_and_committing_the_webhook_is_not_called_again() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("crash.control", 1, 1).unwrap();
    mock.create_topic("crash.actions", 1, 1).unwrap();
    mock.create_topic(CLAIMS, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();

    // The webhook: the first call kills the child that made it, before answering.
    let calls = Arc::new(AtomicUsize::new(0));
    let victim: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
    let killed: Arc<Mutex<Option<std::process::ExitStatus>>> = Arc::new(Mutex::new(None));
    let app = {
        let (calls, victim, killed) = (calls.clone(), victim.clone(), killed.clone());
        Router::new().route(
            "/rollback",
            post(move || {
                let (calls, victim, killed) = (calls.clone(), victim.clone(), killed.clone());
                async move {
                    if calls.fetch_add(1, Relaxed) == 0
                        && let Some(mut child) = victim.lock().unwrap().take()
                    {
                        child.kill().unwrap(); // SIGKILL
                        *killed.lock().unwrap() = Some(child.wait().unwrap());
                    }
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let base = std::env::temp_dir().join(format!("trike-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (state_1, state_2) = (base.join("first"), base.join("second"));

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let send = |e: &Value| {
        producer
            .send(
                BaseRecord::to("crash.control")
                    .key("checkout")
                    .payload(&e.to_string()),
            )
            .unwrap();
        producer.flush(Duration::from_secs(5)).unwrap();
    };

    // First life: executes e-1 and is killed inside the webhook call.
    *victim.lock().unwrap() = Some(spawn_child(&brokers, "crash-1", &web, &state_1));
    let _first = ChildGuard(victim.clone());
    send(&signed_rollback("e-1"));
    let start = Instant::now();
    while killed.lock().unwrap().is_none() && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = killed
        .lock()
        .unwrap()
        .expect("the first actuator called the webhook");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    assert_eq!(calls.load(Relaxed), 1);

    let (actions, claims) = tokio::task::block_in_place(|| {
        let actions = reader_of(&brokers, "crash.actions", 1);
        let claims = reader_of(&brokers, CLAIMS, 3);
        (actions, claims)
    });
    // It died before writing an outcome or committing; its claim and ledger entry are there.
    let none = tokio::task::block_in_place(|| poll_all(&actions, 1, Duration::from_secs(2)));
    assert!(
        none.is_empty(),
        "no outcome from the killed actuator: {none:?}"
    );
    let first_claims =
        tokio::task::block_in_place(|| poll_all(&claims, 1, Duration::from_secs(10)));
    assert_eq!(first_claims.len(), 1);
    let first_claimant = first_claims[0].1["claimant"].as_str().unwrap().to_string();
    assert_eq!(first_claims[0].0.as_deref(), Some("e-1"));
    assert!(first_claimant.starts_with("crash-1/"), "{first_claimant}");
    let ledger = std::fs::read_to_string(state_1.join("executed.log")).unwrap();
    assert_eq!(ledger.lines().collect::<Vec<_>>(), ["e-1"]);
    let group = tokio::task::block_in_place(|| {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "crash-actuators")
            .create()
            .unwrap();
        c
    });
    let committed = |c: &BaseConsumer| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("crash.control", 0);
        c.committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()[0]
            .offset()
    };
    assert_eq!(
        tokio::task::block_in_place(|| committed(&group)),
        Offset::Invalid,
        "nothing committed"
    );

    // Second life, with an empty state directory: e-1 comes back (never committed) and the
    // claim log, not the local ledger, stops it.
    let second = Arc::new(Mutex::new(Some(spawn_child(
        &brokers, "crash-2", &web, &state_2,
    ))));
    let _second_guard = ChildGuard(second.clone());
    let mut seen = tokio::task::block_in_place(|| poll_all(&actions, 1, Duration::from_secs(60)));
    assert_eq!(seen.len(), 1, "the redelivered event got an outcome");
    let o = &seen[0].1;
    assert_eq!(o["data"]["control_event_id"], "e-1");
    assert_eq!(o["data"]["outcome"], "skipped_duplicate", "{o:#}");
    assert_eq!(o["data"]["seen_in"], "claims");
    assert_eq!(o["data"]["claimed_by"], first_claimant.as_str());
    assert_eq!(o["data"]["unfinished_claim"], true, "{o:#}");
    assert_eq!(o["data"]["paged"], true, "a human was told: {o:#}");
    assert_eq!(o["source"], "trike-actuator://crash-2");
    assert_eq!(calls.load(Relaxed), 1, "the webhook was not called again");

    // The second life still executes new events.
    send(&signed_rollback("e-2"));
    seen.extend(tokio::task::block_in_place(|| {
        poll_all(&actions, 1, Duration::from_secs(30))
    }));
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].1["data"]["control_event_id"], "e-2");
    assert_eq!(seen[1].1["data"]["outcome"], "succeeded");
    assert_eq!(calls.load(Relaxed), 2);

    // Stop it as Kubernetes does (SIGTERM) and read the stats it prints on the way out.
    let mut child = second.lock().unwrap().take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    let err: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let stopped = err
        .iter()
        .find(|l| l.contains("trike actuate: stopped:"))
        .unwrap_or_else(|| panic!("the actuator printed its stats: {err:?}"));
    for count in ["succeeded: 1", "duplicates: 1", "failed: 0", "pages: 1"] {
        assert!(stopped.contains(count), "{count} in {stopped}");
    }

    // Claims: e-1 by each life (the second may have claimed again while it waited out the
    // lease), e-2 by the second, which also finished it; e-1 has no finish record. Offsets:
    // both events committed.
    let more = tokio::task::block_in_place(|| poll_all(&claims, 100, Duration::from_secs(5)));
    let mut ids: Vec<(String, String, bool)> = more
        .iter()
        .map(|(k, v)| {
            let c = v["claimant"].as_str().unwrap();
            let done = v["done"] == true;
            (
                k.clone().unwrap(),
                c.split('/').next().unwrap().to_string(),
                done,
            )
        })
        .collect();
    ids.sort();
    ids.dedup();
    let own = |id: &str, done: bool| (id.to_string(), "crash-2".to_string(), done);
    assert_eq!(
        ids,
        [own("e-1", false), own("e-2", false), own("e-2", true)],
        "{more:?}"
    );
    assert_eq!(
        tokio::task::block_in_place(|| committed(&group)),
        Offset::Offset(2)
    );
    drop((actions, claims, group, producer));
    let _ = std::fs::remove_dir_all(&base);
}
