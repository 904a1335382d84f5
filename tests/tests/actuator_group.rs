//! Two actuators in one consumer group on a real Kafka-protocol broker (tansu, started by
//! `scripts/test`) split a 4-partition control topic: signed rollbacks for many services are
//! produced while both run (and the group rebalances as the second one joins); each actuator
//! executes a share, every event gets exactly one `succeeded` outcome, and the webhook is
//! called exactly once per event id (redeliveries across the rebalance are stopped by the
//! shared claim log).
//!
//! Needs `TRIKE_TEST_KAFKA_BROKERS`; without it the test says why and passes locally, and fails
//! under CI (`CI` set), where the broker must be there.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trike_actuate::config::ActuatorConfig;
use trike_actuate::{ActuatorSettings, run};
use trike_sinks::kafka::{KafkaSinkConfig, ensure_topic};

const KEY: &[u8] = b"group-secret";
const CONTROL_PARTITIONS: i32 = 4;

fn rollback(id: &str, service: &str) -> Value {
    let mut e = json!({
        "specversion": "1.0", "id": id, "source": "trike://test", "type": "io.trike.control.rollback",
        "subject": service, "time": trike_sinks::rfc3339(trike_runtime::clock::now_nanos()), "datacontenttype": "application/json",
        "data": { "decision_id": id, "action": "rollback", "target": { "service": service, "version": "2.0.0" },
                  "params": {}, "reason": format!("{service} 2.0.0 failed canary analysis"), "dry_run": false, "severity": "page", "rule": "rollback-bad-canary", "slo": null, "policy_revision": "0123456789abcdef", "evidence": {"kind": "stale", "silent_s": 0.0, "lag_s": 0.0}, "detected_at": "2026-11-22T00:00:00.000Z", "observed_until": "2026-11-22T00:00:00.000Z" }
    });
    trike_sinks::signing::sign(&mut e, KEY);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_actuators_split_the_partitions_and_execute_each_event_once() {
    let Some(brokers) = trike_tests::real_brokers() else {
        return;
    };
    // tansu keeps data between runs: unique names per run.
    let run_id = trike_tests::run_id();
    let control = format!("grp{run_id}.control");
    let actions = format!("grp{run_id}.actions");
    let claims = format!("grp{run_id}.claims");
    let group = format!("grp{run_id}-actuators");
    for (topic, partitions) in [(&control, CONTROL_PARTITIONS), (&actions, 3), (&claims, 3)] {
        ensure_topic(&KafkaSinkConfig {
            brokers: brokers.clone(),
            topic: topic.clone(),
            partitions,
            replication: 1,
            client: Default::default(),
        })
        .expect("the broker creates topics");
    }

    // The webhook counts calls per event id.
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let app = {
        let calls = calls.clone();
        Router::new().route(
            "/rollback",
            post(move |body: String| {
                let calls = calls.clone();
                async move {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    *calls.lock().unwrap().entry(id).or_default() += 1;
                    StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let base = std::env::temp_dir().join(format!("trike-group-{run_id}"));
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |instance: &str| {
        let yaml = format!(
            r#"
group_id: "{group}"
actions_topic: "{actions}"
claims_topic: "{claims}"
state_dir: "{}"
executors:
  - {{ name: rollouts, type: webhook, actions: [rollback], url: "http://{web}/rollback",
       body: '{{"id": "{{{{id}}}}", "service": "{{{{service}}}}"}}', retries: 0, timeout: 5s }}
"#,
            base.join(instance).display()
        );
        let actuator: ActuatorConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        let s = ActuatorSettings {
            brokers: brokers.clone(),
            control_topic: control.clone(),
            keys: trike_sinks::signing::VerifyKeys::single(KEY.to_vec()),
            instance: instance.into(),
            actuator: actuator.validate("actuator").unwrap(),
            client: Default::default(),
        };
        let stop = stop.clone();
        std::thread::spawn(move || run(s, stop).unwrap())
    };
    // act-a starts alone; act-b joins once act-a is executing, so the group rebalances while
    // events flow.
    let mut workers = vec![spawn("act-a")];

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("reader-{run_id}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&actions, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();

    // Produce rounds of events for 8 new services each (keys spread over all partitions) every
    // 400 ms, while reading outcomes, until both actuators have executed some (and at least
    // 10 rounds went out, 5 of them after act-b started), or 45 s.
    let start = Instant::now();
    let mut produced: Vec<String> = Vec::new();
    let mut partitions_used = std::collections::BTreeSet::new();
    let mut outcomes: Vec<Value> = Vec::new();
    let succeeded_by = |outcomes: &[Value]| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for o in outcomes
            .iter()
            .filter(|o| o["data"]["outcome"] == "succeeded")
        {
            *by.entry(o["source"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        by
    };
    let mut round = 0;
    let mut b_joined_at_round = None;
    let mut next_round = Instant::now();
    tokio::task::block_in_place(|| {
        loop {
            let by = succeeded_by(&outcomes);
            if b_joined_at_round.is_none() && !by.is_empty() {
                workers.push(spawn("act-b"));
                b_joined_at_round = Some(round);
            }
            let both = by.len() == 2 && by.values().all(|n| *n > 0);
            let enough = b_joined_at_round.is_some_and(|b| round >= 10.max(b + 5));
            if (both && enough) || start.elapsed() > Duration::from_secs(45) {
                break;
            }
            if Instant::now() >= next_round {
                for k in 0..8 {
                    let service = format!("svc-{round}-{k}");
                    let id = format!("{run_id}-{round}-{k}");
                    let payload = rollback(&id, &service).to_string();
                    producer
                        .send(BaseRecord::to(&control).key(&service).payload(&payload))
                        .unwrap();
                    produced.push(id);
                }
                producer.flush(Duration::from_secs(10)).unwrap();
                round += 1;
                next_round += Duration::from_millis(400);
            }
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
                outcomes.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            }
        }
        // Then every event's outcome (and a little longer, to catch any extra).
        let succeeded = |outcomes: &[Value]| {
            outcomes
                .iter()
                .filter(|o| o["data"]["outcome"] == "succeeded")
                .count()
        };
        let mut settled = None;
        while start.elapsed() < Duration::from_secs(75) {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                outcomes.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            }
            if succeeded(&outcomes) >= produced.len() {
                let at = *settled.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
        }
    });
    stop.store(true, Relaxed);
    let stats: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // And what they wrote after that reading stopped (a duplicate outcome from a late claim),
    // so the outcomes read are all they wrote.
    tokio::task::block_in_place(|| {
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
                outcomes.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
                quiet_since = Instant::now();
            }
        }
    });

    // Which partitions the events went to (from the control topic itself).
    let control_reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("control-reader-{run_id}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..CONTROL_PARTITIONS {
        tpl.add_partition_offset(&control, p, Offset::Beginning)
            .unwrap();
    }
    control_reader.assign(&tpl).unwrap();
    let mut on_control = 0;
    let read_start = Instant::now();
    while on_control < produced.len() && read_start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = control_reader.poll(Duration::from_millis(100)) {
            partitions_used.insert(m.partition());
            on_control += 1;
        }
    }

    let n = produced.len();
    let by = succeeded_by(&outcomes);
    let mut per_id: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for o in &outcomes {
        per_id
            .entry(o["data"]["control_event_id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                o["data"]["outcome"].as_str().unwrap().to_string(),
                o["source"].as_str().unwrap().to_string(),
            ));
    }
    let duplicates = outcomes
        .iter()
        .filter(|o| o["data"]["outcome"] == "skipped_duplicate")
        .count();
    let calls = calls.lock().unwrap().clone();
    eprintln!(
        "{n} events in {round} rounds (act-b joined at round {b_joined_at_round:?}) over \
         partitions {partitions_used:?}; succeeded by {by:?}; \
         {duplicates} skipped duplicates; {} outcomes; stats {stats:?}; {:.1}s",
        outcomes.len(),
        start.elapsed().as_secs_f64()
    );

    assert!(n >= 80, "at least 10 rounds of 8 events: {n}");
    assert_eq!(
        partitions_used.len(),
        CONTROL_PARTITIONS as usize,
        "keys spread over every partition"
    );
    for id in &produced {
        let os = per_id.get(id).map(Vec::as_slice).unwrap_or_default();
        let ok = os.iter().filter(|(o, _)| o == "succeeded").count();
        assert_eq!(ok, 1, "exactly one succeeded outcome for {id}: {os:?}");
        assert!(
            os.iter()
                .all(|(o, _)| o == "succeeded" || o == "skipped_duplicate"),
            "{id}: {os:?}"
        );
        assert_eq!(calls.get(id), Some(&1), "the webhook ran once for {id}");
    }
    assert_eq!(per_id.len(), n, "no outcome for an unknown id");
    assert_eq!(calls.len(), n);
    assert_eq!(
        calls.values().sum::<usize>(),
        n,
        "one webhook call per event"
    );
    assert_eq!(by.len(), 2, "both actuators executed: {by:?}");
    for instance in ["act-a", "act-b"] {
        let share = by[&format!("trike-actuator://{instance}")];
        assert!(share > 0, "{instance} executed a share");
    }
    assert_eq!(by.values().sum::<usize>(), n);
    assert_eq!(
        stats.iter().map(|s| s.succeeded).sum::<u64>(),
        n as u64,
        "{stats:?}"
    );
    assert_eq!(
        stats.iter().map(|s| s.duplicates).sum::<u64>(),
        duplicates as u64
    );
    assert!(stats.iter().all(|s| s.failed == 0 && s.rejected == 0));

    // The group committed every event (whichever actuator owned the partition last).
    let committed: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..CONTROL_PARTITIONS {
        tpl.add_partition(&control, p);
    }
    let offsets = committed
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, n as i64, "every control event committed");
    drop((reader, control_reader, committed, producer));
    let _ = std::fs::remove_dir_all(&base);
}
