//! `trike actuate` against a Kafka-protocol broker (librdkafka's mock cluster) and a test
//! webhook server: a signed rollback is executed exactly once (also when redelivered, and
//! after a restart), forged and unsigned events are rejected and never executed, a dry run is
//! logged only, every control event gets an outcome on `trike.actions`, offsets are committed,
//! and a failing executor's circuit opens (paging), holds its next event unclaimed through the
//! cool-down, probes with it and closes when the probe succeeds. The shared claim log: an
//! actuator with empty local state (another group here, as after a rebalance) finds the first
//! claim and does not execute again, and a claim the broker refuses is retried, never executed
//! without a winning claim.

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
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trike_actuate::config::ActuatorConfig;
use trike_actuate::{ActuatorSettings, ActuatorStats, run};

const KEY: &[u8] = b"actuator-secret";
const CLAIMS: &str = "trike.actuator.claims";

fn event(id: &str, action: &str, dry_run: bool, sign: bool) -> Value {
    let mut e = json!({
        "specversion": "1.0", "id": id, "source": "trike://test", "type": format!("io.trike.control.{action}"),
        "subject": "checkout", "time": trike_sinks::rfc3339(trike_runtime::clock::now_nanos()), "datacontenttype": "application/json",
        "data": { "decision_id": id, "action": action, "target": { "service": "checkout", "version": "1.5.0" },
                  "params": { "weight": 0 }, "reason": "checkout 1.5.0 failed \"canary\" analysis", "dry_run": dry_run, "severity": "page", "rule": "rollback-bad-canary", "slo": null, "policy_revision": "0123456789abcdef", "evidence": {"kind": "stale", "silent_s": 0.0, "lag_s": 0.0}, "detected_at": "2026-11-22T00:00:00.000Z", "observed_until": "2026-11-22T00:00:00.000Z" }
    });
    if sign {
        trike_sinks::signing::sign(&mut e, KEY);
    }
    e
}

async fn webhook_server(calls: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    webhook_server_with(calls, Default::default()).await
}

async fn webhook_server_with(
    calls: Arc<Mutex<Vec<String>>>,
    flaky_calls: Arc<Mutex<Vec<Instant>>>,
) -> std::net::SocketAddr {
    let ok_calls = calls.clone();
    let app = Router::new()
        .route(
            "/rollback",
            post(move |body: String| {
                let calls = ok_calls.clone();
                async move {
                    calls.lock().unwrap().push(body);
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/flaky",
            post(move |_: String| {
                // Fails its first two calls, then recovers.
                let calls = flaky_calls.clone();
                async move {
                    let mut calls = calls.lock().unwrap();
                    calls.push(Instant::now());
                    if calls.len() <= 2 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn settings(brokers: &str, web: std::net::SocketAddr, state: &std::path::Path) -> ActuatorSettings {
    settings_as(brokers, web, state, "test", "trike-actuators")
}

fn settings_as(
    brokers: &str,
    web: std::net::SocketAddr,
    state: &std::path::Path,
    instance: &str,
    group: &str,
) -> ActuatorSettings {
    let yaml = format!(
        r#"
group_id: "{group}"
state_dir: "{}"
breaker_failures: 2
breaker_cooldown: 1s
executors:
  - {{ name: rollouts, type: webhook, actions: [rollback], services: ["check*"], url: "http://{web}/rollback",
       body: '{{"rollout": "{{{{service}}}}", "version": "{{{{version}}}}", "weight": {{{{params.weight}}}}, "why": "{{{{reason}}}}"}}', retries: 0 }}
  - {{ name: weights, type: webhook, actions: [set_weight], url: "http://{web}/flaky", retries: 0, timeout: 2s }}
  - {{ name: pager, type: log, actions: [page] }}
"#,
        state.display()
    );
    let actuator: ActuatorConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    ActuatorSettings {
        brokers: brokers.into(),
        control_topic: "trike.control".into(),
        keys: trike_sinks::signing::VerifyKeys::single(KEY.to_vec()),
        instance: instance.into(),
        actuator: actuator.validate("actuator").unwrap(),
        client: Default::default(),
    }
}

fn start(s: ActuatorSettings) -> (Arc<AtomicBool>, std::thread::JoinHandle<ActuatorStats>) {
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    (stop, worker)
}

/// A producer to the test's mock cluster.
fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// Sends `e` to `trike.control` (key `checkout`) and waits until the broker has it.
fn send_control(producer: &ThreadedProducer<DefaultProducerContext>, e: &Value) {
    producer
        .send(
            BaseRecord::to("trike.control")
                .key("checkout")
                .payload(&e.to_string()),
        )
        .unwrap();
    producer.flush(Duration::from_secs(5)).unwrap();
}

/// A reader of `trike.actions` from its beginning, in consumer group `group`.
fn actions_reader(brokers: &str, group: &str) -> BaseConsumer {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trike.actions", 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    reader
}

/// Every claim record on the claim log, as (event id, claimant), partitions in turn.
fn claims(brokers: &str, want: usize) -> Vec<(String, String)> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "claims-reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(CLAIMS, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    // Past `want`, keep reading briefly: there must be no more.
    let mut quiet_since = None;
    while start.elapsed() < Duration::from_secs(30) {
        match reader.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                if v["done"] == true {
                    // A finish record (executed, outcome recorded), not a claim.
                    continue;
                }
                let key = std::str::from_utf8(m.key().unwrap()).unwrap();
                assert_eq!(v["id"], key, "a claim's key is its event id");
                assert!(v["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
                seen.push((key.to_string(), v["claimant"].as_str().unwrap().to_string()));
            }
            _ if seen.len() >= want => {
                let q = *quiet_since.get_or_insert_with(Instant::now);
                if q.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            _ => {}
        }
    }
    seen
}

fn outcomes(reader: &BaseConsumer, want: usize, seen: &mut Vec<Value>) {
    outcomes_within(reader, want, seen, Duration::from_secs(60));
}

fn outcomes_within(reader: &BaseConsumer, want: usize, seen: &mut Vec<Value>, max: Duration) {
    let start = Instant::now();
    while seen.len() < want && start.elapsed() < max {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            seen.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actuator_executes_once_rejects_forgeries_and_breaks_circuits() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("trike.control", 1, 1).unwrap();
    mock.create_topic("trike.actions", 1, 1).unwrap();
    // The mock cannot create topics through the admin API: the claim log is made here.
    mock.create_topic(CLAIMS, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let flaky = Arc::new(Mutex::new(Vec::new()));
    let web = webhook_server_with(calls.clone(), flaky.clone()).await;
    let state = std::env::temp_dir().join(format!("trike-actuator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);

    let producer = producer(&brokers);
    let send = |e: &Value| send_control(&producer, e);
    let rollback = event("e-1", "rollback", false, true);
    let mut forged = event("e-2", "rollback", false, true);
    forged["data"]["target"]["version"] = json!("1.4.0"); // changed after signing
    send(&rollback);
    send(&forged);
    send(&event("e-3", "rollback", false, false)); // unsigned
    send(&event("e-4", "rollback", true, true)); // dry run
    send(&rollback); // redelivered
    for i in 0..4 {
        // The webhook fails twice, then recovers.
        send(&event(&format!("w-{i}"), "set_weight", false, true));
    }

    let reader = actions_reader(&brokers, "reader");

    let stop = Arc::new(AtomicBool::new(false));
    let s = settings(&brokers, web, &state);
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    let mut seen = Vec::new();
    tokio::task::block_in_place(|| outcomes(&reader, 9, &mut seen));
    let kinds: Vec<(String, String)> = seen
        .iter()
        .map(|o| {
            (
                o["data"]["control_event_id"].as_str().unwrap().to_string(),
                o["data"]["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("e-1", "succeeded"),
        ("e-2", "rejected"),
        ("e-3", "rejected"),
        ("e-4", "succeeded"),
        ("e-1", "skipped_duplicate"),
        ("w-0", "failed"),
        ("w-1", "failed"),
        ("w-2", "succeeded"),
        ("w-3", "succeeded"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, want, "{seen:#?}");
    assert_eq!(seen[3]["data"]["dry_run"], true);
    assert_eq!(seen[3]["data"]["executed"], false);
    assert_eq!(seen[0]["type"], "io.trike.action.succeeded");
    // After 2 failures the circuit opens and a human is paged.
    assert_eq!(seen[5]["data"]["circuit"], Value::Null, "{:#}", seen[5]);
    assert_eq!(seen[6]["data"]["circuit"], "open", "{:#}", seen[6]);
    assert_eq!(seen[6]["data"]["paged"], true);
    // w-2 was held, unclaimed, through the 1 s cool-down, then ran as the probe; its success
    // closed the circuit, so w-3 ran at once.
    assert_eq!(seen[7]["data"]["probe"], true, "{:#}", seen[7]);
    assert_eq!(seen[8]["data"]["probe"], false, "{:#}", seen[8]);
    {
        let flaky = flaky.lock().unwrap();
        assert_eq!(flaky.len(), 4, "each set_weight event ran once");
        let held = flaky[2] - flaky[1];
        assert!(held >= Duration::from_millis(900), "held {held:?}");
    }
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "the rollback webhook ran exactly once");
        let body: Value = serde_json::from_str(&calls[0]).unwrap();
        assert_eq!(
            body,
            json!({"rollout": "checkout", "version": "1.5.0", "weight": 0, "why": "checkout 1.5.0 failed \"canary\" analysis"})
        );
    }
    stop.store(true, Relaxed);
    let stats = worker.join().unwrap();
    assert!(stats.held >= 1, "{stats:?}");
    assert_eq!((stats.pages, stats.failed), (1, 2), "{stats:?}");

    // Restart with the same state: a redelivered event is still not executed again.
    send(&rollback);
    let stop = Arc::new(AtomicBool::new(false));
    let s = settings(&brokers, web, &state);
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    tokio::task::block_in_place(|| outcomes(&reader, 10, &mut seen));
    assert_eq!(seen[9]["data"]["outcome"], "skipped_duplicate");
    assert_eq!(calls.lock().unwrap().len(), 1);
    stop.store(true, Relaxed);
    worker.join().unwrap();

    // Every control event's offset was committed after its outcome.
    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trike-actuators")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("trike.control", 0);
    let offsets = committed
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    assert_eq!(offsets.elements()[0].offset(), Offset::Offset(10));
    // The claim log: one claim per event that reached an executor (redeliveries were caught
    // by the local ledger first; the held w-2 was claimed once, when it ran), all by the first
    // run's one claimant; rejections, the dry run and the restart's redelivery claimed nothing.
    let mut claimed = tokio::task::block_in_place(|| claims(&brokers, 5));
    claimed.sort();
    let ids: Vec<&str> = claimed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["e-1", "w-0", "w-1", "w-2", "w-3"], "{claimed:?}");
    assert!(
        claimed
            .iter()
            .all(|(_, c)| *c == claimed[0].1 && c.starts_with("test/")),
        "{claimed:?}"
    );
    drop((reader, committed, producer));
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_log_stops_a_second_actuator_and_refused_claims_are_retried() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("trike.control", 1, 1).unwrap();
    mock.create_topic("trike.actions", 1, 1).unwrap();
    mock.create_topic(CLAIMS, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let web = webhook_server(calls.clone()).await;
    let dir = |n: &str| {
        let d = std::env::temp_dir().join(format!("trike-claims-{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    };
    let (state_a, state_b) = (dir("a"), dir("b"));
    let producer = producer(&brokers);
    let send = |e: &Value| send_control(&producer, e);
    let reader = actions_reader(&brokers, "reader");
    let mut seen = Vec::new();

    // Actuator a executes e-1.
    send(&event("e-1", "rollback", false, true));
    let (stop_a, a) = start(settings_as(&brokers, web, &state_a, "a", "group-a"));
    tokio::task::block_in_place(|| outcomes(&reader, 1, &mut seen));
    assert_eq!(seen[0]["data"]["outcome"], "succeeded", "{seen:#?}");
    assert_eq!(seen[0]["source"], "trike-actuator://a");
    assert_eq!(calls.lock().unwrap().len(), 1);

    // Actuator b, empty state dir, gets the same event (its own group here; a rebalance or a
    // crash hands it over the same way): the claim log says a was first.
    let (stop_b, b) = start(settings_as(&brokers, web, &state_b, "b", "group-b"));
    tokio::task::block_in_place(|| outcomes(&reader, 2, &mut seen));
    assert_eq!(seen[1]["source"], "trike-actuator://b");
    assert_eq!(seen[1]["data"]["outcome"], "skipped_duplicate", "{seen:#?}");
    assert_eq!(seen[1]["data"]["seen_in"], "claims");
    assert_eq!(seen[1]["data"]["executed"], false);
    let claimed_by = seen[1]["data"]["claimed_by"].as_str().unwrap().to_string();
    assert!(claimed_by.starts_with("a/"), "{claimed_by}");
    assert_eq!(calls.lock().unwrap().len(), 1, "b did not call the webhook");
    stop_b.store(true, Relaxed);
    let stats_b = b.join().unwrap();
    assert_eq!(
        (stats_b.succeeded, stats_b.duplicates),
        (0, 1),
        "{stats_b:?}"
    );
    stop_a.store(true, Relaxed);
    let stats_a = a.join().unwrap();
    assert_eq!(
        (stats_a.succeeded, stats_a.claim_retries),
        (1, 0),
        "{stats_a:?}"
    );

    // The broker refuses the next two produce requests (a restarted a's first two claims for
    // e-2): not executed, no outcome, retried; a later claim wins and e-2 runs once. e-3,
    // behind it in the partition, is not passed over meanwhile: it comes after e-2.
    send(&event("e-2", "rollback", false, true));
    send(&event("e-3", "rollback", false, true));
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
    mock.request_errors(RDKafkaApiKey::Produce, &[refused, refused]);
    let (stop_a, a) = start(settings_as(&brokers, web, &state_a, "a", "group-a"));
    tokio::task::block_in_place(|| outcomes(&reader, 4, &mut seen));
    let ids: Vec<&Value> = seen[2..]
        .iter()
        .map(|o| &o["data"]["control_event_id"])
        .collect();
    assert_eq!(ids, ["e-2", "e-3"], "{seen:#?}");
    assert!(
        seen[2..]
            .iter()
            .all(|o| o["data"]["outcome"] == "succeeded"),
        "{seen:#?}"
    );
    assert_eq!(calls.lock().unwrap().len(), 3);
    stop_a.store(true, Relaxed);
    let stats_a = a.join().unwrap();
    // Two refused claims, each retried. A retry can fail once more without reaching the broker:
    // librdkafka marks a topic refused for authorization as failed until its next metadata
    // refresh (its 1 s timer finds the topic without partitions and asks), and a claim made
    // before that fails locally. So two refusals are at least two retries, and sometimes three
    // or four; what matters is above: nothing refused was executed, e-2 ran once, e-3 after it.
    assert_eq!(stats_a.succeeded, 2, "{stats_a:?}");
    assert!(
        stats_a.claim_retries >= 2,
        "two refused claims, retried: {stats_a:?}"
    );
    let quiet = Duration::from_secs(2);
    tokio::task::block_in_place(|| outcomes_within(&reader, 5, &mut seen, quiet));
    assert_eq!(seen.len(), 4, "no other outcome: {seen:#?}");

    // On the log: e-1 claimed by a then by b; e-2 and e-3 once each, by the restarted a (the
    // refused claims were not written).
    let claimed = tokio::task::block_in_place(|| claims(&brokers, 4));
    let by = |want: &str| -> Vec<&str> {
        claimed
            .iter()
            .filter(|(id, _)| id == want)
            .map(|(_, c)| c.as_str())
            .collect()
    };
    let e1 = by("e-1");
    assert_eq!(e1.len(), 2, "{claimed:?}");
    assert_eq!(e1[0], claimed_by);
    assert!(e1[1].starts_with("b/"), "{claimed:?}");
    let (e2, e3) = (by("e-2"), by("e-3"));
    assert_eq!((e2.len(), e3.len()), (1, 1), "{claimed:?}");
    assert!(
        e2[0].starts_with("a/") && e2[0] != claimed_by && e3[0] == e2[0],
        "a new run, a new claimant: {claimed:?}"
    );
    assert_eq!(claimed.len(), 4);

    // a committed all three events.
    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "group-a")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("trike.control", 0);
    let offsets = committed
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    assert_eq!(offsets.elements()[0].offset(), Offset::Offset(3));
    drop((reader, committed, producer));
    for d in [state_a, state_b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Scenario: processors sign with named keys during a rotation (`2026-11` old, `2026-12` new);
/// the actuator lists both. Then a retired key, a replay of an old signed event, and an
/// actuator started without any key.
/// Guarantees: events signed with either listed key run; one naming a key the actuator does
/// not have is rejected saying so; a validly signed event older than `max_event_age` is
/// rejected as a replay, never executed; `run` refuses to start without a key unless
/// `allow_unsigned` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_replays_of_old_events_are_rejected() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("trike.control", 1, 1).unwrap();
    mock.create_topic("trike.actions", 1, 1).unwrap();
    mock.create_topic(CLAIMS, 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let web = webhook_server(Default::default()).await;
    let state = std::env::temp_dir().join(format!("trike-actuator-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let signed_with = |id: &str, key_id: &str, secret: &[u8], age: Duration| {
        let mut e = event(id, "page", false, false);
        let at = trike_runtime::clock::now_nanos() - age.as_nanos() as u64;
        e["time"] = json!(trike_sinks::rfc3339(at));
        e["trikekeyid"] = json!(key_id);
        trike_sinks::signing::sign(&mut e, secret);
        e
    };
    let producer = producer(&brokers);
    for e in [
        signed_with("k-old", "2026-11", b"old-secret", Duration::ZERO),
        signed_with("k-new", "2026-12", b"new-secret", Duration::ZERO),
        signed_with("k-retired", "2025-01", b"retired-secret", Duration::ZERO),
        signed_with(
            "k-replay",
            "2026-12",
            b"new-secret",
            Duration::from_secs(3600),
        ),
    ] {
        send_control(&producer, &e);
    }

    let mut s = settings(&brokers, web, &state);
    s.keys = trike_sinks::signing::VerifyKeys::default()
        .with(Some("2026-11"), b"old-secret".to_vec())
        .with(Some("2026-12"), b"new-secret".to_vec());
    let reader = tokio::task::block_in_place(|| actions_reader(&brokers, "keys-reader"));
    let (stop, worker) = start(s.clone());
    let mut seen = Vec::new();
    tokio::task::block_in_place(|| outcomes(&reader, 4, &mut seen));
    stop.store(true, Relaxed);
    let stats = tokio::task::block_in_place(|| worker.join().unwrap());
    let got: Vec<(String, String, String)> = seen
        .iter()
        .map(|o| {
            (
                o["data"]["control_event_id"].as_str().unwrap().to_string(),
                o["data"]["outcome"].as_str().unwrap().to_string(),
                o["data"]["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(got[0].0, "k-old");
    assert_eq!(got[0].1, "succeeded");
    assert_eq!(got[1].0, "k-new");
    assert_eq!(got[1].1, "succeeded");
    assert_eq!(got[2].0, "k-retired");
    assert_eq!(got[2].1, "rejected");
    assert!(got[2].2.contains("2025-01"), "{:?}", got[2]);
    assert_eq!(got[3].0, "k-replay");
    assert_eq!(got[3].1, "rejected");
    assert!(got[3].2.contains("max_event_age"), "{:?}", got[3]);
    assert_eq!((stats.succeeded, stats.rejected), (2, 2));

    // No key: refused at start, unless unsigned operation is asked for.
    let mut unsigned = s.clone();
    unsigned.keys = Default::default();
    // (Each run owns a runtime of its own: off the test's async workers.)
    let e = tokio::task::block_in_place(|| {
        run(unsigned.clone(), Arc::new(AtomicBool::new(true))).unwrap_err()
    });
    assert!(e.to_string().contains("allow_unsigned"), "{e}");
    unsigned.actuator.allow_unsigned = true;
    let ok = tokio::task::block_in_place(|| run(unsigned, Arc::new(AtomicBool::new(true))));
    assert!(ok.is_ok(), "{ok:?}");
    let _ = std::fs::remove_dir_all(&state);
}
