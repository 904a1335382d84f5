//! `trike actuate` against a Kafka-protocol broker (librdkafka's mock cluster) and a test
//! webhook server: a signed rollback is executed exactly once (also when redelivered, and
//! after a restart), forged and unsigned events are rejected and never executed, a dry run is
//! logged only, every control event gets an outcome on `trike.actions`, offsets are committed,
//! and a failing executor's circuit opens and pages instead.

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
use trike::actuate::config::ActuatorConfig;
use trike::actuate::{ActuatorSettings, run};

const KEY: &[u8] = b"actuator-secret";

fn event(id: &str, action: &str, dry_run: bool, sign: bool) -> Value {
    let mut e = json!({
        "specversion": "1.0", "id": id, "source": "trike://test", "type": format!("io.trike.control.{action}"),
        "subject": "checkout", "time": "2026-11-22T00:00:00.000Z", "datacontenttype": "application/json",
        "data": { "decision_id": id, "action": action, "target": { "service": "checkout", "version": "1.5.0" },
                  "params": { "weight": 0 }, "reason": "checkout 1.5.0 failed \"canary\" analysis", "dry_run": dry_run }
    });
    if sign {
        trike_sinks::signing::sign(&mut e, KEY);
    }
    e
}

async fn webhook_server(calls: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
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
            "/fail",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn settings(brokers: &str, web: std::net::SocketAddr, state: &std::path::Path) -> ActuatorSettings {
    let yaml = format!(
        r#"
state_dir: "{}"
breaker_failures: 2
executors:
  - {{ name: rollouts, type: webhook, actions: [rollback], services: ["check*"], url: "http://{web}/rollback",
       body: '{{"rollout": "{{{{service}}}}", "version": "{{{{version}}}}", "weight": {{{{params.weight}}}}, "why": "{{{{reason}}}}"}}', retries: 0 }}
  - {{ name: weights, type: webhook, actions: [set_weight], url: "http://{web}/fail", retries: 0, timeout: 2s }}
  - {{ name: pager, type: log, actions: [page] }}
"#,
        state.display()
    );
    let actuator: ActuatorConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    ActuatorSettings {
        brokers: brokers.into(),
        control_topic: "trike.control".into(),
        key: Some(KEY.to_vec()),
        instance: "test".into(),
        actuator,
    }
}

fn outcomes(reader: &BaseConsumer, want: usize, seen: &mut Vec<Value>) {
    let start = Instant::now();
    while seen.len() < want && start.elapsed() < Duration::from_secs(60) {
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
    let brokers = mock.bootstrap_servers();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let web = webhook_server(calls.clone()).await;
    let state = std::env::temp_dir().join(format!("trike-actuator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let send = |e: &Value| {
        producer
            .send(
                BaseRecord::to("trike.control")
                    .key("checkout")
                    .payload(&e.to_string()),
            )
            .unwrap();
        producer.flush(Duration::from_secs(5)).unwrap();
    };
    let rollback = event("e-1", "rollback", false, true);
    let mut forged = event("e-2", "rollback", false, true);
    forged["data"]["target"]["version"] = json!("1.4.0"); // changed after signing
    send(&rollback);
    send(&forged);
    send(&event("e-3", "rollback", false, false)); // unsigned
    send(&event("e-4", "rollback", true, true)); // dry run
    send(&rollback); // redelivered
    for i in 0..3 {
        send(&event(&format!("w-{i}"), "set_weight", false, true)); // the webhook fails
    }

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("trike.actions", 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let s = settings(&brokers, web, &state);
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    let mut seen = Vec::new();
    tokio::task::block_in_place(|| outcomes(&reader, 8, &mut seen));
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
        ("w-2", "failed"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(kinds, want, "{seen:#?}");
    assert_eq!(seen[3]["data"]["dry_run"], true);
    assert_eq!(seen[3]["data"]["executed"], false);
    assert_eq!(seen[0]["type"], "io.trike.action.succeeded");
    assert_eq!(
        seen[7]["data"]["error"], "circuit open",
        "after 2 failures the circuit opens"
    );
    assert_eq!(seen[7]["data"]["paged"], true);
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
    worker.join().unwrap();

    // Restart with the same state: a redelivered event is still not executed again.
    send(&rollback);
    let stop = Arc::new(AtomicBool::new(false));
    let s = settings(&brokers, web, &state);
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    tokio::task::block_in_place(|| outcomes(&reader, 9, &mut seen));
    assert_eq!(seen[8]["data"]["outcome"], "skipped_duplicate");
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
    assert_eq!(offsets.elements()[0].offset(), Offset::Offset(9));
    drop((reader, committed, producer));
    let _ = std::fs::remove_dir_all(&state);
}
