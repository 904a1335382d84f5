//! Fault test with the real `trike run` binary and a real Kafka-protocol broker (tansu, started
//! by `scripts/test`): OTLP spans stream into a spans topic (as the Collector's Kafka exporter
//! writes them) for a baseline and a failing canary. Process A checkpoints its state
//! (`state.dir`) and is SIGKILLed mid-stream ten times (first after its rollback went out, then
//! at seeded random points 0.2–2 s after each restart), and restarted each time; process B
//! consumes the same topic in another group without interruption.
//!
//! Guarantees: afterwards A's SLIs equal B's (requests and errors exactly, latency quantiles
//! within the sketch's tolerance): nothing lost, nothing counted twice. Every rollback on the
//! control topic carries one and the same decision id (a restart never decides again under a
//! new id; an event re-published from the outbox keeps its id).
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says SKIPPED locally and fails in CI.

#[path = "../src/run.rs"]
mod run;

use prost::Message as _;
use rand::SeedableRng;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trike::synth::{Behaviour, Service};

const MESSAGES: usize = 300;
/// SIGKILLs of process A, and the seed of their timing.
const KILLS: usize = 10;
const KILL_SEED: u64 = 20_261_203;
const BASELINE: usize = 60;
const CANARY: usize = 20;

#[path = "common/required.rs"]
mod required;
use required::brokers;

#[path = "common/ports.rs"]
mod ports;
use ports::free_port;

fn svc(version: &str, error_ratio: f64) -> Service {
    Service {
        name: "checkout".into(),
        version: version.into(),
        routes: vec!["/pay".into(), "/cart".into()],
        behaviour: Behaviour {
            median_ms: 30.0,
            sigma: 0.5,
            error_ratio,
        },
    }
}

struct Trike {
    child: Child,
    admin: u16,
}

fn spawn(config: &Path, admin: u16) -> Trike {
    let child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--otlp-grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--otlp-http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("TRIKE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the trike binary starts");
    let t = Trike { child, admin };
    let start = Instant::now();
    while get(&t, "/readyz").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "trike did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

fn get(t: &Trike, path: &str) -> Option<String> {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{}{path}", t.admin)).ok()?;
    (r.status() == 200).then(|| r.text().ok()).flatten()
}

/// Per series (operation, version): (requests, errors, [p50, p90, p95, p99]).
fn slis(t: &Trike) -> BTreeMap<(String, String), (u64, u64, Vec<f64>)> {
    let doc: Value =
        serde_json::from_str(&get(t, "/api/v1/slis?service=checkout&window=5m").unwrap()).unwrap();
    doc["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let q = ["p50", "p90", "p95", "p99"]
                .iter()
                .map(|k| s["latency_ms"][k].as_f64().unwrap_or(f64::NAN))
                .collect();
            (
                (
                    s["operation"].as_str().unwrap().to_string(),
                    s["version"].as_str().unwrap().to_string(),
                ),
                (
                    s["requests"].as_u64().unwrap(),
                    s["errors"].as_u64().unwrap(),
                    q,
                ),
            )
        })
        .collect()
}

fn total(t: &Trike) -> u64 {
    slis(t).values().map(|v| v.0).sum()
}

fn wait_total(t: &Trike, want: u64, timeout: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let got = get(t, "/readyz").map(|_| total(t)).unwrap_or(0);
        if got >= want || start.elapsed() > timeout {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the control topic from the beginning, accumulating events.
struct ControlReader {
    reader: BaseConsumer,
    events: Vec<Value>,
}

impl ControlReader {
    fn new(brokers: &str, topic: &str) -> Self {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "crash-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = reader
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        assert!(tpl.count() > 0, "control topic {topic} has partitions");
        reader.assign(&tpl).unwrap();
        Self {
            reader,
            events: Vec::new(),
        }
    }

    /// Polls for `d`, keeping what arrives.
    fn poll_for(&mut self, d: Duration) -> &[Value] {
        let start = Instant::now();
        while start.elapsed() < d {
            if let Some(Ok(m)) = self.reader.poll(Duration::from_millis(100)) {
                self.events
                    .push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            }
        }
        &self.events
    }
}

fn rollbacks(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "io.trike.control.rollback")
        .collect()
}

#[test]
fn ten_sigkills_mid_stream_lose_nothing_and_never_change_decision_ids() {
    let Some(brokers) = brokers() else { return };
    let run = run::run_id();
    let spans_topic = format!("crash{run}_otlp_spans");
    let control_topic = format!("trike.control.crash{run}");
    for t in [&spans_topic, &control_topic] {
        trike_sinks::kafka::ensure_topic(&trike_sinks::kafka::KafkaSinkConfig {
            brokers: brokers.clone(),
            topic: t.clone(),
            partitions: 2,
            replication: 1,
            client: Default::default(),
        })
        .expect("the broker creates topics");
    }
    let dir = std::env::temp_dir().join(format!("trike-crash-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config_a = dir.join("a.yaml");
    std::fs::write(
        &config_a,
        format!(
            r#"kafka: {{ brokers: "{brokers}", control_topic: "{control_topic}", ingest: {{ topics: ["{spans_topic}"], group_id: "a-{run}", group_instance_id: "crash-a" }} }}
canary: [{{ service: checkout, baseline: "1.4.0", canary: "1.5.0", window: 5m, min_requests: 100 }}]
policies: [{{ name: rollback-bad-canary, when: canary.fail, action: rollback, for: 1s }}]
sinks: [{{ type: kafka }}]
signing: {{ key: crash-secret }}
state: {{ dir: "{}", checkpoint_every: 1s }}
instance: crash-a
"#,
            dir.join("state-a").display()
        ),
    )
    .unwrap();
    let config_b = dir.join("b.yaml");
    std::fs::write(
        &config_b,
        format!(
            r#"kafka: {{ brokers: "{brokers}", ingest: {{ topics: ["{spans_topic}"], group_id: "b-{run}" }} }}
instance: crash-b
"#
        ),
    )
    .unwrap();

    let expected = (MESSAGES / 2 * (BASELINE + CANARY) * 2) as u64;

    let admin_a = free_port();
    let mut a = spawn(&config_a, admin_a);
    let mut b = spawn(&config_b, free_port());

    // The stream: MESSAGES requests of (BASELINE + CANARY) spans, one every 100 ms, from once
    // both are up (so A is killed mid-stream however long a loaded machine takes to start).
    let producer_thread = {
        let (brokers, topic) = (brokers.clone(), spans_topic.clone());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("enable.idempotence", "true")
                .set("linger.ms", "1")
                .create()
                .unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for i in 0..MESSAGES {
                let (s, n) = if i % 2 == 0 {
                    (svc("1.4.0", 0.002), BASELINE * 2)
                } else {
                    (svc("1.5.0", 0.4), CANARY * 2)
                };
                let body = s
                    .request(n, trike_runtime::clock::now_nanos(), 100_000_000, &mut rng)
                    .encode_to_vec();
                let key = format!("{i}");
                producer
                    .send(BaseRecord::to(&topic).key(&key).payload(&body))
                    .unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };

    let mut control = ControlReader::new(&brokers, &control_topic);
    // Kill A mid-stream, once its rollback is on the control topic and a checkpoint was written.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no rollback before the kill"
        );
        let checkpointed = get(&a, "/metrics").is_some_and(|m| {
            m.lines()
                .any(|l| l.starts_with("trike_checkpoints_total ") && !l.ends_with(" 0"))
        });
        if checkpointed && !rollbacks(control.poll_for(Duration::from_millis(300))).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let before_kill = total(&a);
    a.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    a.child.wait().unwrap();
    assert!(
        before_kill > 0 && before_kill < expected,
        "killed mid-stream: {before_kill} of {expected} applied"
    );
    let mut a = spawn(&config_a, admin_a);
    // Nine more, at seeded random points after each restart (catching up, mid-stream).
    let mut kill_rng = rand::rngs::StdRng::seed_from_u64(KILL_SEED);
    let mut kills_at = vec![before_kill];
    for _ in 1..KILLS {
        std::thread::sleep(Duration::from_millis(rand::Rng::random_range(
            &mut kill_rng,
            200..2000,
        )));
        kills_at.push(total(&a));
        a.child.kill().expect("SIGKILL");
        a.child.wait().unwrap();
        a = spawn(&config_a, admin_a);
    }
    eprintln!("SIGKILLs with {kills_at:?} of {expected} spans applied");

    producer_thread.join().unwrap();
    let got_a = wait_total(&a, expected, Duration::from_secs(90));
    if got_a != expected {
        let m = get(&a, "/metrics").unwrap_or_default();
        eprintln!(
            "A's metrics:\n{}",
            m.lines()
                .filter(|l| l.contains("kafka")
                    || l.contains("queue_obs")
                    || l.contains("checkpoint"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let got_b = wait_total(&b, expected, Duration::from_secs(60));
    assert_eq!(got_b, expected, "the uninterrupted run saw every span");
    // A little longer: anything counted twice would show up now.
    std::thread::sleep(Duration::from_secs(2));
    let (sa, sb) = (slis(&a), slis(&b));
    assert_eq!(got_a, expected, "after SIGKILL and restart: nothing lost");
    assert_eq!(sa.len(), sb.len(), "same series: {sa:?} vs {sb:?}");
    for (k, (req_b, err_b, q_b)) in &sb {
        let (req_a, err_a, q_a) = sa.get(k).unwrap_or_else(|| panic!("series {k:?} missing"));
        assert_eq!(
            (req_a, err_a),
            (req_b, err_b),
            "series {k:?}: requests, errors"
        );
        for (x, y) in q_a.iter().zip(q_b) {
            assert!(
                (x - y).abs() <= 0.03 * y.abs().max(1.0),
                "series {k:?}: quantiles {q_a:?} vs {q_b:?}"
            );
        }
    }

    let rb = rollbacks(control.poll_for(Duration::from_secs(3)));
    assert!(!rb.is_empty());
    let ids: std::collections::BTreeSet<&str> =
        rb.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one decision, one id: {rb:#?}");
    assert!(
        rb.len() >= 2,
        "the restart published its outbox again (same id): {}",
        rb.len()
    );
    let m = get(&a, "/metrics").unwrap_or_default();
    eprintln!(
        "killed at {before_kill} of {expected} spans; after restart: {}",
        m.lines()
            .filter(
                |l| l.starts_with("trike_kafka_source_already_applied_total")
                    || l.starts_with("trike_kafka_source_messages_total")
                    || l.starts_with("trike_checkpoint_bytes")
            )
            .collect::<Vec<_>>()
            .join(", ")
    );
    for e in &rb {
        assert!(trike_sinks::signing::verify(e, b"crash-secret"));
    }

    for t in [&mut a, &mut b] {
        let _ = t.child.kill();
        let _ = t.child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
