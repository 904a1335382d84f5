//! The real `trike actuate` binary, as Kubernetes stops it: SIGTERM while a webhook call is in
//! flight. (Root-package test so that Cargo builds the binary and tells us where.)
//!
//! Scenario: a signed rollback reaches the actuator; its webhook takes 1.5 s to answer; SIGTERM
//! arrives while the call is in flight.
//! Guarantees: the process finishes that event (the webhook answers, a `succeeded` outcome is
//! written to `trike.actions`, the offset is committed) and exits 0, instead of ignoring the
//! signal until it is killed.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[path = "common/killed.rs"]
mod killed;
use killed::Killed;

#[path = "common/required.rs"]
#[allow(dead_code)]
mod required;

#[path = "common/prom.rs"]
#[allow(dead_code)]
mod prom;
use prom::{PromSample, parse_exposition};

const KEY: &str = "sigterm-test-key";

/// A one-connection HTTP server that answers 200 after `delay`; says "started" and "answered".
fn slow_webhook(delay: Duration) -> (u16, mpsc::Receiver<&'static str>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Headers, then as many body bytes as content-length says.
        loop {
            let Ok(n) = conn.read(&mut chunk) else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let _ = tx.send("started");
        std::thread::sleep(delay);
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = conn.flush();
        let _ = tx.send("answered");
    });
    (port, rx)
}

#[test]
fn sigterm_finishes_the_event_in_flight_and_exits_cleanly() {
    let (_mock, brokers) = cluster();
    let (port, webhook) = slow_webhook(Duration::from_millis(1500));
    let (mut child, dir) = start_actuator("sigterm", None, port, &brokers);
    let producer = send(&brokers, &[control_event("sig-1", false)]);

    // SIGTERM once the webhook call is in flight.
    assert_eq!(
        webhook.recv_timeout(Duration::from_secs(60)),
        Ok("started"),
        "the actuator called the webhook"
    );
    let status = sigterm_and_wait(&mut child);
    let status = status.expect("trike actuate exits on SIGTERM");
    assert!(status.success(), "a clean exit: {status:?}");
    // (The webhook's thread says so just after writing its answer, and may be scheduled after
    // the actuator has read it and exited: waited for, not polled.)
    assert_eq!(
        webhook.recv_timeout(Duration::from_secs(5)),
        Ok("answered"),
        "the call in flight was finished before exiting"
    );

    // Its outcome was written, and its offset committed.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trike.actions", 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let mut outcome = None;
    let start = Instant::now();
    while outcome.is_none() && start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            outcome = serde_json::from_slice::<Value>(m.payload().unwrap()).ok();
        }
    }
    let outcome = outcome.expect("an outcome on trike.actions");
    assert_eq!(outcome["data"]["control_event_id"], "sig-1");
    assert_eq!(outcome["data"]["outcome"], "succeeded", "{outcome:#}");
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "trike-actuators")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("trike.control", 0);
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    assert_eq!(committed.elements()[0].offset(), Offset::Offset(1));
    drop((reader, group, producer));
    let _ = std::fs::remove_dir_all(&dir);
}

/// librdkafka's mock cluster with the control, actions and claims topics, and its address.
fn cluster() -> (MockCluster<'static, DefaultProducerContext>, String) {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("trike.control", 1, 1).unwrap();
    mock.create_topic("trike.actions", 1, 1).unwrap();
    mock.create_topic("trike.actuator.claims", 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    (mock, brokers)
}

/// `trike actuate` (the real binary) with a rollback webhook on `port`, serving its admin
/// endpoints on `admin` when given; its process and directory.
fn start_actuator(
    name: &str,
    admin: Option<std::net::SocketAddr>,
    port: u16,
    brokers: &str,
) -> (Killed, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("trike-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("actuator.yaml");
    let admin = admin.map_or(String::new(), |a| format!("  admin: \"{a}\"\n"));
    std::fs::write(
        &config,
        format!(
            r#"signing: {{ key: {KEY} }}
instance: {name}-test
actuator:
{admin}  state_dir: "{}"
  executors:
    - {{ name: rollouts, type: webhook, actions: [rollback], url: "http://127.0.0.1:{port}/rollback", retries: 0, timeout: 10s }}
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_trike"))
        .args(["actuate", "--config"])
        .arg(&config)
        .args(["--kafka-brokers", brokers])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the trike binary starts");
    (Killed(child), dir)
}

/// Produces `events` to the control topic; the producer (kept until the test ends).
fn send(brokers: &str, events: &[Value]) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for e in events {
        producer
            .send(
                BaseRecord::to("trike.control")
                    .key("checkout")
                    .payload(&e.to_string()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(5)).unwrap();
    producer
}

/// SIGTERM, then the exit status (None when it did not exit within 30 s: it is killed when
/// the test ends).
fn sigterm_and_wait(child: &mut Killed) -> Option<std::process::ExitStatus> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(s) = child.0.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A signed control event for `checkout`, detected now.
fn control_event(id: &str, dry_run: bool) -> Value {
    let now = trike_sinks::rfc3339(trike_runtime::clock::now_nanos());
    let mut event = json!({
        "specversion": "1.0", "id": id, "source": "trike://test", "type": "io.trike.control.rollback",
        "subject": "checkout", "time": now, "datacontenttype": "application/json",
        "data": { "decision_id": id, "action": "rollback", "target": { "service": "checkout", "version": "1.5.0" },
                  "params": {}, "reason": "checkout 1.5.0 failed canary analysis", "dry_run": dry_run, "severity": "page", "rule": "rollback-bad-canary", "slo": null, "policy_revision": "0123456789abcdef", "evidence": {"kind": "stale", "silent_s": 0.0, "lag_s": 0.0}, "detected_at": now, "observed_until": now }
    });
    trike_sinks::signing::sign(&mut event, KEY.as_bytes());
    event
}

/// Scenario: `trike actuate` with `actuator.admin`; a signed rollback (its webhook answers at
/// once) and a dry-run rollback reach it.
/// Guarantees: `/healthz` answers 200 while it runs; `/metrics`, read with the Prometheus
/// text-format parser, counts one event succeeded and one logged, and its
/// decision-to-outcome histogram holds both, each under 30 s; after SIGTERM the process exits 0.
#[test]
fn the_actuator_serves_metrics_and_health() {
    let (_mock, brokers) = cluster();
    let (port, webhook) = slow_webhook(Duration::ZERO);
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (mut child, dir) = start_actuator("admin", Some(admin), port, &brokers);
    let get = |path: &str| -> Option<(u16, String)> {
        let r = reqwest::blocking::get(format!("http://{admin}{path}")).ok()?;
        Some((r.status().as_u16(), r.text().ok()?))
    };
    let start = Instant::now();
    while get("/healthz").map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/healthz never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let producer = send(
        &brokers,
        &[
            control_event("admin-1", false),
            control_event("admin-2", true),
        ],
    );
    assert_eq!(webhook.recv_timeout(Duration::from_secs(60)), Ok("started"));
    // A label matches by text, or by number (`le` is "30" or "30.0" as parsers spell it).
    let value = |samples: &[PromSample], name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && label.is_none_or(|(k, v)| {
                        s.labels.get(k).is_some_and(|have| {
                            have == v
                                || have
                                    .parse::<f64>()
                                    .ok()
                                    .zip(v.parse::<f64>().ok())
                                    .is_some_and(|(a, b)| a == b)
                        })
                    })
            })
            .and_then(|s| s.value)
    };
    let start = Instant::now();
    let samples = loop {
        let (status, text) = get("/metrics").expect("/metrics answers");
        assert_eq!(status, 200);
        let Some(samples) = parse_exposition(&text) else {
            break None;
        };
        if value(
            &samples,
            "trike_actuator_decision_to_outcome_seconds_count",
            None,
        ) == Some(2.0)
        {
            break Some(samples);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    if let Some(samples) = samples {
        let events = |outcome| {
            value(
                &samples,
                "trike_actuator_events_total",
                Some(("outcome", outcome)),
            )
        };
        assert_eq!(events("succeeded"), Some(1.0));
        assert_eq!(events("logged"), Some(1.0));
        assert_eq!(events("failed"), Some(0.0));
        assert_eq!(
            value(
                &samples,
                "trike_actuator_decision_to_outcome_seconds_bucket",
                Some(("le", "30.0"))
            ),
            Some(2.0)
        );
        assert_eq!(value(&samples, "trike_actuator_up", None), Some(1.0));
    }
    assert_eq!(get("/healthz").map(|r| r.0), Some(200));
    let status = sigterm_and_wait(&mut child).expect("trike actuate exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    drop(producer);
    let _ = std::fs::remove_dir_all(&dir);
}
