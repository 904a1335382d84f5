//! `trike actuate`: the actuator worker. Consumes control events (group `trike-actuators`),
//! rejects unsigned or forged ones when a key is configured, runs the matching executor at most
//! once per event id (the id is recorded durably *before* executing, so a crash between
//! executing and committing never executes twice), skips dry runs, writes an outcome event to
//! `trike.actions`, and commits the offset only after the outcome is delivered. After
//! `breaker_failures` consecutive failures an executor's circuit opens: its events page instead.
//!
//! Known limit: the executed-id ledger is a local file, so "at most once" holds across restarts
//! of one actuator (same `state_dir`), not yet across actuators after a rebalance.

pub mod config;
mod executors;
mod ledger;

use anyhow::Context;
use config::{ActuatorConfig, ExecutorConfig, matches};
use ledger::Ledger;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Everything the actuator needs.
#[derive(Clone, Debug)]
pub struct ActuatorSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Control topic.
    pub control_topic: String,
    /// Signing key (events without a valid signature are rejected when set).
    pub key: Option<Vec<u8>>,
    /// Instance name (outcome events' source).
    pub instance: String,
    /// The `actuator:` section.
    pub actuator: ActuatorConfig,
}

/// What a run did (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActuatorStats {
    /// Events an executor ran successfully.
    pub succeeded: u64,
    /// Events whose executor failed (or had no executor, or an open circuit).
    pub failed: u64,
    /// Events rejected (bad signature, not a control event).
    pub rejected: u64,
    /// Events already executed (redelivered).
    pub duplicates: u64,
    /// Dry runs and resolutions logged without acting.
    pub logged: u64,
}

fn outcome_event(instance: &str, event: &Value, outcome: &str, detail: Value) -> Value {
    let id = event["id"].as_str().unwrap_or("");
    let mut data = json!({
        "control_event_id": id,
        "action": event["data"]["action"],
        "target": event["data"]["target"],
        "outcome": outcome,
    });
    if let (Some(d), Some(extra)) = (data.as_object_mut(), detail.as_object()) {
        d.extend(extra.clone());
    }
    json!({
        "specversion": "1.0",
        "id": format!("{id}/{outcome}"),
        "source": format!("trike-actuator://{instance}"),
        "type": format!("io.trike.action.{outcome}"),
        "subject": event["subject"],
        "time": trike_sinks::rfc3339(crate::worker::now_nanos()),
        "datacontenttype": "application/json",
        "data": data,
    })
}

fn executor_for<'a>(
    execs: &'a [ExecutorConfig],
    action: &str,
    service: &str,
) -> Option<&'a ExecutorConfig> {
    execs.iter().find(|e| {
        e.actions.iter().any(|a| a.name() == action)
            && (e.services.is_empty() || e.services.iter().any(|p| matches(p, service)))
    })
}

/// Runs until `stop` is set.
pub fn run(s: ActuatorSettings, stop: Arc<AtomicBool>) -> anyhow::Result<ActuatorStats> {
    let group = s
        .actuator
        .group_id
        .clone()
        .unwrap_or_else(|| "trike-actuators".into());
    let actions_topic = s
        .actuator
        .actions_topic
        .clone()
        .unwrap_or_else(|| "trike.actions".into());
    let state_dir = s
        .actuator
        .state_dir
        .clone()
        .unwrap_or_else(|| "trike-actuator-state".into());
    let breaker_at = s.actuator.breaker_failures.unwrap_or(3).max(1);
    let mut ledger = Ledger::open(&state_dir)
        .with_context(|| format!("actuator state in {}", state_dir.display()))?;
    let topic_cfg = |t: &str| trike_sinks::kafka::KafkaSinkConfig {
        brokers: s.brokers.clone(),
        topic: t.into(),
        partitions: 3,
        replication: 1,
    };
    if let Err(e) = trike_sinks::kafka::ensure_topic(&topic_cfg(&actions_topic)) {
        tracing::warn!(topic = %actions_topic, error = %e, "could not create the actions topic");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Short sessions: a restarted or added actuator takes over partitions in seconds.
        .set("session.timeout.ms", "6000")
        .create()
        .context("actuator consumer")?;
    consumer
        .subscribe(&[&s.control_topic])
        .context("subscribing to the control topic")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("actuator producer")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stats = ActuatorStats::default();
    let mut failures: HashMap<String, u32> = HashMap::new();
    while !stop.load(Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "actuator consumer");
                continue;
            }
        };
        let event: Value = m
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(Value::Null);
        let (outcome, detail) = decide(
            &s,
            &event,
            &mut ledger,
            &mut failures,
            breaker_at,
            &mut stats,
        );
        let out = outcome_event(&s.instance, &event, outcome, detail);
        let key = event["subject"].as_str().unwrap_or("").to_string();
        let payload = out.to_string();
        let delivered = rt.block_on(producer.send(
            FutureRecord::to(&actions_topic).key(&key).payload(&payload),
            Duration::from_secs(30),
        ));
        if let Err((e, _)) = delivered {
            // Not committed: the event comes back after a restart and is then a duplicate.
            tracing::error!(error = %e, "outcome not delivered; offset not committed");
            continue;
        }
        if let Err(e) = consumer.commit_message(&m, CommitMode::Sync) {
            tracing::warn!(error = %e, "committing the control event");
        }
    }
    Ok(stats)
}

fn decide(
    s: &ActuatorSettings,
    event: &Value,
    ledger: &mut Ledger,
    failures: &mut HashMap<String, u32>,
    breaker_at: u32,
    stats: &mut ActuatorStats,
) -> (&'static str, Value) {
    let Some(id) = event["id"].as_str().filter(|_| {
        event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("io.trike.control."))
    }) else {
        stats.rejected += 1;
        tracing::warn!("rejected a message that is not a Trike control event");
        return ("rejected", json!({ "error": "not a Trike control event" }));
    };
    if let Some(k) = &s.key
        && !trike_sinks::signing::verify(event, k)
    {
        stats.rejected += 1;
        tracing::warn!(%id, "rejected a control event with a missing or wrong signature");
        return (
            "rejected",
            json!({ "error": "missing or invalid trikesignature" }),
        );
    }
    if ledger.contains(id) {
        stats.duplicates += 1;
        return ("skipped_duplicate", json!({ "executed": false }));
    }
    let data = &event["data"];
    let action = data["action"].as_str().unwrap_or("");
    let service = data["target"]["service"].as_str().unwrap_or("");
    if data["dry_run"].as_bool() == Some(true) {
        stats.logged += 1;
        tracing::info!(%id, action, service, "dry run: not executed; {}", data["reason"].as_str().unwrap_or(""));
        let _ = ledger.record(id);
        return ("succeeded", json!({ "executed": false, "dry_run": true }));
    }
    let execs = &s.actuator.executors;
    let Some(exec) = executor_for(execs, action, service) else {
        if action == "resolved" {
            stats.logged += 1;
            let _ = ledger.record(id);
            tracing::info!(%id, service, "{}", data["reason"].as_str().unwrap_or("resolved"));
            return ("succeeded", json!({ "executed": false }));
        }
        stats.failed += 1;
        return (
            "failed",
            json!({ "error": format!("no executor for action {action} on service {service}") }),
        );
    };
    // Write-ahead: recorded before executing, so a crash cannot execute it twice.
    if let Err(e) = ledger.record(id) {
        stats.failed += 1;
        return (
            "failed",
            json!({ "executor": exec.name, "error": format!("recording the event id: {e}") }),
        );
    }
    let open = failures.get(&exec.name).is_some_and(|f| *f >= breaker_at);
    if open {
        stats.failed += 1;
        let paged = executor_for(execs, "page", service).filter(|p| p.name != exec.name).map(|p| {
            let mut page = event.clone();
            page["data"]["action"] = json!("page");
            page["data"]["reason"] = json!(format!(
                "circuit open for executor {} after {breaker_at} failures: control event {id} ({action} {service}) was not executed",
                exec.name
            ));
            executors::execute(p, &page).is_ok()
        });
        return (
            "failed",
            json!({ "executor": exec.name, "error": "circuit open", "paged": paged.unwrap_or(false) }),
        );
    }
    let started = Instant::now();
    match executors::execute(exec, event) {
        Ok(attempts) => {
            failures.insert(exec.name.clone(), 0);
            stats.succeeded += 1;
            tracing::info!(%id, executor = %exec.name, action, service, "executed");
            (
                "succeeded",
                json!({ "executor": exec.name, "attempts": attempts, "executed": true, "duration_ms": started.elapsed().as_millis() as u64 }),
            )
        }
        Err((error, attempts)) => {
            *failures.entry(exec.name.clone()).or_default() += 1;
            stats.failed += 1;
            tracing::error!(%id, executor = %exec.name, %error, "executor failed");
            (
                "failed",
                json!({ "executor": exec.name, "attempts": attempts, "executed": true, "error": error }),
            )
        }
    }
}
