//! `trike actuate`: the actuator worker. Consumes control events (group `trike-actuators`;
//! several actuators split the control topic's partitions), rejects unsigned or forged ones
//! when a key is configured, runs the matching executor at most once per event id, skips dry
//! runs, writes an outcome event to `trike.actions`, and commits the offset only after the
//! outcome is delivered. After `breaker_failures` consecutive failures an executor's circuit
//! opens: its events page instead.
//!
//! At most once, even across restarts, rebalances and crashes, takes two checks before an
//! executor runs:
//! 1. the local ledger (`state_dir/executed.log`, fsynced): ids this actuator already took on.
//!    Cheap, survives restarts of this actuator; a hit is `skipped_duplicate` at once.
//! 2. the shared claim log ([`claims`], topic `trike.actuator.claims`): the actuator writes a
//!    claim for the id and reads the claim partition back up to it; only if the *first* claim
//!    for the id is its own does it go on. This covers a partition moving to another actuator
//!    after a rebalance, and an actuator dying between executing and committing (the event is
//!    redelivered to whichever actuator owns the partition next, which finds the dead one's
//!    claim first: `skipped_duplicate`, with `claimed_by` naming the winner).
//!
//! The winner records the id in its ledger, then executes. Only events that would run an
//! executor are claimed; rejections, dry runs and resolutions without an executor act on
//! nothing and need no claim.
//!
//! If the claim cannot be written or read back (broker down, timeout), the event is **not**
//! executed and gets no outcome: its offset is not committed, the consumer seeks back to it and
//! the claim is retried with backoff (0.5 s doubling to 10 s) until it is decided or the
//! actuator stops; a later actuator then picks it up from the committed offset. Never executed
//! without a winning claim.

pub mod claims;
pub mod config;
mod executors;
mod ledger;

use anyhow::Context;
use claims::{Claim, ClaimLog};
use config::{ActuatorConfig, ExecutorConfig, matches};
use ledger::Ledger;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset};
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
    /// Events already executed or claimed (redelivered, or claimed first by another actuator).
    pub duplicates: u64,
    /// Dry runs and resolutions logged without acting.
    pub logged: u64,
    /// Claim attempts that failed (claim not written or not read back): the event was not
    /// executed and was retried.
    pub claim_retries: u64,
}

/// What to do with a control event.
enum Decision {
    /// Publish this outcome (with details), then commit.
    Outcome(&'static str, Value),
    /// The claim could not be decided: not executed, no outcome, not committed; retry.
    Retry(String),
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
        "time": trike_sinks::rfc3339(now_nanos()),
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
    let claims_topic = s
        .actuator
        .claims_topic
        .clone()
        .unwrap_or_else(|| claims::DEFAULT_TOPIC.into());
    let breaker_at = s.actuator.breaker_failures.unwrap_or(3).max(1);
    let mut ledger = Ledger::open(&state_dir)
        .with_context(|| format!("actuator state in {}", state_dir.display()))?;
    let topic_cfg = |t: &str, partitions: i32| trike_sinks::kafka::KafkaSinkConfig {
        brokers: s.brokers.clone(),
        topic: t.into(),
        partitions,
        replication: 1,
    };
    // Both at once (each may wait for its timeout where topic creation is unsupported). Not
    // fatal: a topic may exist already or be made by an operator; an unwritable claim is
    // retried, never skipped.
    std::thread::scope(|scope| {
        for (topic, partitions) in [(&actions_topic, 3), (&claims_topic, claims::PARTITIONS)] {
            let cfg = topic_cfg(topic, partitions);
            scope.spawn(move || {
                if let Err(e) = trike_sinks::kafka::ensure_topic(&cfg) {
                    tracing::warn!(%topic, error = %e, "could not create the topic");
                }
            });
        }
    });
    let mut claim_log = ClaimLog::new(
        &s.brokers,
        &claims_topic,
        ClaimLog::new_claimant(&s.instance),
    )?;
    tracing::info!(claimant = claim_log.claimant(), topic = %claims_topic, "actuator claims as");
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
    let mut backoff = RETRY_FIRST;
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
        let mut ctx = Ctx {
            s: &s,
            rt: &rt,
            ledger: &mut ledger,
            claims: &mut claim_log,
            failures: &mut failures,
            breaker_at,
            stats: &mut stats,
        };
        let (outcome, detail) = match decide(&mut ctx, &event) {
            Decision::Outcome(outcome, detail) => {
                backoff = RETRY_FIRST;
                (outcome, detail)
            }
            Decision::Retry(why) => {
                stats.claim_retries += 1;
                tracing::error!(
                    id = event["id"].as_str().unwrap_or(""),
                    error = %why,
                    "claim not decided: not executed, not committed; retrying in {backoff:?}"
                );
                // Back to this event: it must not be passed over (a later commit would cover it).
                let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                drop(m);
                if let Err(e) = consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    // E.g. the partition was revoked: its next owner starts from the commit.
                    tracing::warn!(error = %e, "seeking back to the unclaimed event");
                }
                sleep_unless(&stop, backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        };
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

/// First and longest wait before retrying an undecided claim.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// What deciding on one event needs.
struct Ctx<'a> {
    s: &'a ActuatorSettings,
    rt: &'a tokio::runtime::Runtime,
    ledger: &'a mut Ledger,
    claims: &'a mut ClaimLog,
    failures: &'a mut HashMap<String, u32>,
    breaker_at: u32,
    stats: &'a mut ActuatorStats,
}

fn outcome(o: &'static str, detail: Value) -> Decision {
    Decision::Outcome(o, detail)
}

fn decide(c: &mut Ctx<'_>, event: &Value) -> Decision {
    let (s, stats) = (c.s, &mut *c.stats);
    let Some(id) = event["id"].as_str().filter(|_| {
        event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("io.trike.control."))
    }) else {
        stats.rejected += 1;
        tracing::warn!("rejected a message that is not a Trike control event");
        return outcome("rejected", json!({ "error": "not a Trike control event" }));
    };
    if let Some(k) = &s.key
        && !trike_sinks::signing::verify(event, k)
    {
        stats.rejected += 1;
        tracing::warn!(%id, "rejected a control event with a missing or wrong signature");
        return outcome(
            "rejected",
            json!({ "error": "missing or invalid trikesignature" }),
        );
    }
    if c.ledger.contains(id) {
        stats.duplicates += 1;
        return outcome(
            "skipped_duplicate",
            json!({ "executed": false, "seen_in": "ledger" }),
        );
    }
    let data = &event["data"];
    let action = data["action"].as_str().unwrap_or("");
    let service = data["target"]["service"].as_str().unwrap_or("");
    if data["dry_run"].as_bool() == Some(true) {
        stats.logged += 1;
        tracing::info!(%id, action, service, "dry run: not executed; {}", data["reason"].as_str().unwrap_or(""));
        let _ = c.ledger.record(id);
        return outcome("succeeded", json!({ "executed": false, "dry_run": true }));
    }
    let execs = &s.actuator.executors;
    let Some(exec) = executor_for(execs, action, service) else {
        if action == "resolved" {
            stats.logged += 1;
            let _ = c.ledger.record(id);
            tracing::info!(%id, service, "{}", data["reason"].as_str().unwrap_or("resolved"));
            return outcome("succeeded", json!({ "executed": false }));
        }
        stats.failed += 1;
        return outcome(
            "failed",
            json!({ "error": format!("no executor for action {action} on service {service}") }),
        );
    };
    // The shared claim log decides across actuators: only the first claimant executes.
    match c.claims.claim(c.rt, id) {
        Ok(Claim::Won) => {}
        Ok(Claim::Lost { claimant }) => {
            stats.duplicates += 1;
            tracing::info!(%id, claimed_by = %claimant, "claimed first by another actuator: not executed");
            return outcome(
                "skipped_duplicate",
                json!({ "executed": false, "seen_in": "claims", "claimed_by": claimant }),
            );
        }
        Err(e) => return Decision::Retry(format!("{e:#}")),
    }
    // Write-ahead: recorded before executing, so a restart of this actuator skips it at once.
    if let Err(e) = c.ledger.record(id) {
        stats.failed += 1;
        return outcome(
            "failed",
            json!({ "executor": exec.name, "error": format!("recording the event id: {e}") }),
        );
    }
    let breaker_at = c.breaker_at;
    let open = c.failures.get(&exec.name).is_some_and(|f| *f >= breaker_at);
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
        return outcome(
            "failed",
            json!({ "executor": exec.name, "error": "circuit open", "paged": paged.unwrap_or(false) }),
        );
    }
    let started = Instant::now();
    match executors::execute(exec, event) {
        Ok(attempts) => {
            c.failures.insert(exec.name.clone(), 0);
            stats.succeeded += 1;
            tracing::info!(%id, executor = %exec.name, action, service, "executed");
            outcome(
                "succeeded",
                json!({ "executor": exec.name, "attempts": attempts, "executed": true, "duration_ms": started.elapsed().as_millis() as u64 }),
            )
        }
        Err((error, attempts)) => {
            *c.failures.entry(exec.name.clone()).or_default() += 1;
            stats.failed += 1;
            tracing::error!(%id, executor = %exec.name, %error, "executor failed");
            outcome(
                "failed",
                json!({ "executor": exec.name, "attempts": attempts, "executed": true, "error": error }),
            )
        }
    }
}

/// Wall-clock now in Unix nanoseconds (outcome and claim timestamps).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
