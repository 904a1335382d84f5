//! `trike actuate`: the actuator worker, its own process and trust boundary. Consumes control
//! events (group `trike-actuators`; several actuators split the control topic's partitions),
//! rejects unsigned or forged ones when a key is configured, runs the matching executor at
//! most once per event id, skips dry runs, writes an outcome event to `trike.actions`, and
//! commits the offset only after the outcome is delivered.
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
//!    claim first: `skipped_duplicate`, with `claimed_by` naming the winner). A first claim
//!    with no finish record is waited for up to the claim lease, then paged about.
//!
//! The winner records the id in its ledger, executes, and writes a finish record. Only events
//! that would run an executor are claimed; rejections, dry runs and resolutions without an
//! executor act on nothing and need no claim.
//!
//! Circuit breakers ([`breaker`]): after `breaker_failures` consecutive failures an
//! executor's circuit opens and a human is paged (through a `page` executor). Its events are
//! then *held* before they are claimed (not committed; the consumer stays on them) until the
//! cool-down ends; the first one runs as the half-open probe, and its success closes the
//! circuit. Nothing refused by an open circuit is lost or marked as done.
//!
//! If the claim cannot be written or read back (broker down, timeout), the event is **not**
//! executed and gets no outcome: its offset is not committed, the consumer seeks back to it and
//! the claim is retried with backoff (0.5 s doubling to 10 s) until it is decided or the
//! actuator stops; a later actuator then picks it up from the committed offset. Never executed
//! without a winning claim.
//!
//! Stopping (`stop`, set on SIGTERM or Ctrl-C): the event in flight is finished (executed,
//! outcome written, offset committed), then the worker returns.

pub mod breaker;
pub mod claims;
pub mod config;
mod executors;
mod ledger;
pub mod live;
pub mod outcome;

use anyhow::Context;
use breaker::{Admit, Breakers, Tripped};
use claims::{Claim, ClaimLog};
use config::{ExecutorConfig, Validated, matches};
use ledger::Ledger;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use trike_sinks::{ControlEvent, Outcome};

/// Everything the actuator needs.
#[derive(Clone, Debug)]
pub struct ActuatorSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Control topic.
    pub control_topic: String,
    /// The keys a control event may be signed with (`signing.key` and `signing.verify_keys`);
    /// events without a valid signature are rejected. Empty: only with
    /// `actuator.allow_unsigned`, and then nothing is checked.
    pub keys: trike_sinks::signing::VerifyKeys,
    /// Instance name (outcome events' source).
    pub instance: String,
    /// The `actuator:` section, validated.
    pub actuator: Validated,
    /// `kafka.client`: TLS, SASL and tuning properties for every client.
    pub client: trike_sinks::kafka_client::ClientProps,
}

/// What a run did (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActuatorStats {
    /// Events an executor ran successfully.
    pub succeeded: u64,
    /// Events whose executor failed (or had no executor).
    pub failed: u64,
    /// Events rejected (bad signature, not a control event).
    pub rejected: u64,
    /// Events already executed or claimed (redelivered, or claimed first by another actuator).
    pub duplicates: u64,
    /// Dry runs and resolutions logged without acting.
    pub logged: u64,
    /// Claim attempts that did not decide (claim not written or not read back, or another
    /// actuator's claim still within its lease): the event was not executed and was retried.
    pub claim_retries: u64,
    /// Times an event was held because its executor's circuit was open.
    pub held: u64,
    /// Pages sent about open circuits and claims without an outcome.
    pub pages: u64,
}

/// What to do with a control event.
enum Verdict {
    /// Publish this outcome (with details), then commit.
    Outcome(Outcome, Value),
    /// The claim could not be decided: not executed, no outcome, not committed; retry.
    Retry(String),
    /// The executor's circuit is open: not claimed, not committed; poll it again until then.
    Hold(Instant),
}

/// First and longest wait before retrying an undecided claim.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// A held event is polled again at least this often (the consumer must keep polling to stay
/// in its group).
const HOLD_POLL: Duration = Duration::from_secs(1);

/// Runs until `stop` is set; the event in flight is finished first.
pub fn run(s: ActuatorSettings, stop: std::sync::Arc<AtomicBool>) -> anyhow::Result<ActuatorStats> {
    run_with(s, stop, Default::default())
}

/// Like [`run`], keeping `live` up to date for an admin server (`/metrics`, `/healthz`).
pub fn run_with(
    s: ActuatorSettings,
    stop: std::sync::Arc<AtomicBool>,
    live: std::sync::Arc<live::Live>,
) -> anyhow::Result<ActuatorStats> {
    let result = run_loop(&s, &stop, &live);
    live.stop();
    result
}

fn run_loop(
    s: &ActuatorSettings,
    stop: &AtomicBool,
    live: &std::sync::Arc<live::Live>,
) -> anyhow::Result<ActuatorStats> {
    anyhow::ensure!(
        !s.keys.is_empty() || s.actuator.allow_unsigned,
        "no signing key: an actuator executes only signed control events. Set the key the \
         processors sign with (signing.key_env, default TRIKE_SIGNING_KEY) or list \
         signing.verify_keys; for a trusted test setup, set actuator.allow_unsigned: true"
    );
    let mut a = Actuator::connect(s)?;
    a.live = live.clone();
    while !stop.load(Relaxed) {
        a.live.beat();
        a.step(stop);
        a.live.update(&a.stats);
    }
    Ok(a.stats)
}

/// A connected actuator.
struct Actuator<'a> {
    s: &'a ActuatorSettings,
    ledger: Ledger,
    claims: ClaimLog,
    consumer: BaseConsumer,
    producer: FutureProducer,
    rt: tokio::runtime::Runtime,
    breakers: Breakers,
    stats: ActuatorStats,
    /// What the admin server shows.
    live: std::sync::Arc<live::Live>,
    backoff: Duration,
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

fn outcome(o: Outcome, detail: Value) -> Verdict {
    Verdict::Outcome(o, detail)
}

/// Creates the outcome and claims topics when missing. Not fatal: a topic may exist already or
/// be made by an operator; an unwritable claim is retried, never skipped.
fn ensure_topics(s: &ActuatorSettings) {
    let a = &s.actuator;
    std::thread::scope(|scope| {
        // Both at once (each may wait for its timeout where topic creation is unsupported).
        for (topic, partitions) in [(&a.actions_topic, 3), (&a.claims_topic, claims::PARTITIONS)] {
            let cfg = trike_sinks::kafka::KafkaSinkConfig {
                brokers: s.brokers.clone(),
                topic: topic.clone(),
                partitions,
                replication: 1,
                client: s.client.clone(),
            };
            scope.spawn(move || {
                if let Err(e) = trike_sinks::kafka::ensure_topic(&cfg) {
                    tracing::warn!(%topic, error = %e, "could not create the topic");
                }
            });
        }
    });
}

impl<'a> Actuator<'a> {
    /// Opens the ledger, makes sure the topics exist, and connects the claim log, the
    /// consumer and the outcome producer.
    fn connect(s: &'a ActuatorSettings) -> anyhow::Result<Self> {
        let a = &s.actuator;
        let ledger = Ledger::open(&a.state_dir)
            .with_context(|| format!("actuator state in {}", a.state_dir.display()))?;
        ensure_topics(s);
        let claims = ClaimLog::new(
            &s.brokers,
            &s.client,
            &a.claims_topic,
            ClaimLog::new_claimant(&s.instance),
        )?;
        tracing::info!(claimant = claims.claimant(), topic = %a.claims_topic, "actuator claims as");
        let consumer: BaseConsumer = s
            .client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", &s.brokers)
                    .set("group.id", &a.group_id)
                    .set("enable.auto.commit", "false")
                    .set("auto.offset.reset", "earliest")
                    // Short sessions: a restarted or added actuator takes over partitions in
                    // seconds.
                    .set("session.timeout.ms", "6000"),
            )
            .create()
            .context("actuator consumer")?;
        consumer
            .subscribe(&[&s.control_topic])
            .context("subscribing to the control topic")?;
        let producer: FutureProducer = s
            .client
            .apply(
                ClientConfig::new()
                    .set("bootstrap.servers", &s.brokers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all"),
            )
            .create()
            .context("actuator producer")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            s,
            ledger,
            claims,
            consumer,
            producer,
            rt,
            breakers: Breakers::new(a.breaker),
            stats: ActuatorStats::default(),
            live: Default::default(),
            backoff: RETRY_FIRST,
        })
    }

    /// Takes one control event (if any arrives within 100 ms) through to its outcome and
    /// commit, or back to the consumer for a retry.
    fn step(&mut self, stop: &AtomicBool) {
        let m = match self.consumer.poll(Duration::from_millis(100)) {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "actuator consumer");
                return;
            }
            // Owned: the event outlives the consumer's borrow while it is handled.
            Some(Ok(m)) => m.detach(),
        };
        let event: Value = m
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(Value::Null);
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        match self.handle(&event) {
            Verdict::Outcome(o, detail) => {
                self.backoff = RETRY_FIRST;
                self.publish_and_commit((&topic, partition, offset), &event, o, detail);
            }
            Verdict::Retry(why) => {
                self.stats.claim_retries += 1;
                tracing::error!(
                    id = event["id"].as_str().unwrap_or(""),
                    error = %why,
                    "claim not decided: not executed, not committed; retrying in {:?}", self.backoff
                );
                self.seek_back(&topic, partition, offset);
                sleep_unless(stop, self.backoff);
                self.backoff = (self.backoff * 2).min(RETRY_MAX);
            }
            Verdict::Hold(until) => {
                self.stats.held += 1;
                self.seek_back(&topic, partition, offset);
                sleep_unless(
                    stop,
                    until
                        .saturating_duration_since(Instant::now())
                        .min(HOLD_POLL),
                );
            }
        }
    }

    /// Back to this event: it must not be passed over (a later commit would cover it).
    fn seek_back(&self, topic: &str, partition: i32, offset: i64) {
        if let Err(e) = self.consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            // E.g. the partition was revoked: its next owner starts from the commit.
            tracing::warn!(error = %e, "seeking back to the undecided event");
        }
    }

    /// Writes the outcome to the actions topic, then commits the event's offset. An outcome
    /// that is not delivered leaves the offset uncommitted: the event comes back after a
    /// restart and is then a duplicate.
    fn publish_and_commit(
        &self,
        (topic, partition, offset): (&str, i32, i64),
        event: &Value,
        o: Outcome,
        detail: Value,
    ) {
        let out = outcome::event(&self.s.instance, event, o, detail);
        let key = event["subject"].as_str().unwrap_or("").to_string();
        let payload = out.to_string();
        let delivered = self.rt.block_on(
            self.producer.send(
                FutureRecord::to(&self.s.actuator.actions_topic)
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(30),
            ),
        );
        if let Err((e, _)) = delivered {
            tracing::error!(error = %e, "outcome not delivered; offset not committed");
            return;
        }
        if let Some(detected) = event["data"]["detected_at"]
            .as_str()
            .and_then(trike_sinks::parse_rfc3339_nanos)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.live
                .acted_after(now.saturating_sub(detected) as f64 / 1e9);
        }
        let mut next = TopicPartitionList::new();
        let committed = next
            .add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .and_then(|()| self.consumer.commit(&next, CommitMode::Sync));
        if let Err(e) = committed {
            tracing::warn!(error = %e, "committing the control event");
        }
    }

    /// Pages through the first `page` executor other than `not` (the one that failed);
    /// whether a page went out.
    fn page(&mut self, not: Option<&str>, event: &Value, reason: String) -> bool {
        let service = event["data"]["target"]["service"].as_str().unwrap_or("");
        let Some(p) = executor_for(&self.s.actuator.executors, "page", service)
            .filter(|p| Some(p.name.as_str()) != not)
        else {
            tracing::error!(%reason, "no page executor to tell a human");
            return false;
        };
        let mut page = event.clone();
        page["data"]["action"] = json!("page");
        page["data"]["reason"] = json!(reason);
        let ok = executors::execute(p, &page).is_ok();
        self.stats.pages += u64::from(ok);
        ok
    }

    /// Decides what to do with one event, executing it when it is due.
    fn handle(&mut self, event: &Value) -> Verdict {
        let typed = match self.admissible(event) {
            Ok(e) => e,
            Err(v) => return v,
        };
        let id = typed.id.as_str();
        if self.ledger.contains(id) {
            self.stats.duplicates += 1;
            return outcome(
                Outcome::SkippedDuplicate,
                json!({ "executed": false, "seen_in": "ledger" }),
            );
        }
        let data = &typed.data;
        let action = data.action.name();
        let service = data.target.service.as_str();
        let reason = data.reason.as_str();
        if data.dry_run {
            self.stats.logged += 1;
            tracing::info!(%id, action, service, "dry run: not executed; {reason}");
            let _ = self.ledger.record(id);
            return outcome(
                Outcome::Succeeded,
                json!({ "executed": false, "dry_run": true }),
            );
        }
        let s = self.s;
        let Some(exec) = executor_for(&s.actuator.executors, action, service) else {
            if action == "resolved" {
                self.stats.logged += 1;
                let _ = self.ledger.record(id);
                tracing::info!(%id, service, "{}", if reason.is_empty() { "resolved" } else { reason });
                return outcome(Outcome::Succeeded, json!({ "executed": false }));
            }
            self.stats.failed += 1;
            return outcome(
                Outcome::Failed,
                json!({ "error": format!("no executor for action {action} on service {service}") }),
            );
        };
        // The breaker first: an event its open circuit refuses stays unclaimed and retryable.
        let probe = match self.breakers.admit(&exec.name, Instant::now()) {
            Admit::Hold { until } => return Verdict::Hold(until),
            Admit::Run { probe } => probe,
        };
        if let Some(v) = self.claim(id, event) {
            return v;
        }
        // Write-ahead: recorded before executing, so a restart of this actuator skips it at once.
        if let Err(e) = self.ledger.record(id) {
            self.stats.failed += 1;
            return outcome(
                Outcome::Failed,
                json!({ "executor": exec.name, "error": format!("recording the event id: {e}") }),
            );
        }
        let verdict = self.execute(exec, id, event, probe);
        if let Verdict::Outcome(o, _) = &verdict {
            self.claims.finish(&self.rt, id, o.name());
        }
        verdict
    }

    /// The typed event when the message is a whole control event with a valid signature (when
    /// a key is set). The signature is checked on the event as received.
    fn admissible(&mut self, raw: &Value) -> Result<ControlEvent, Verdict> {
        let event = match ControlEvent::from_value(raw.clone()) {
            Ok(e) => e,
            Err(e) => {
                self.stats.rejected += 1;
                tracing::warn!(error = %e, "rejected a message");
                return Err(outcome(
                    Outcome::Rejected,
                    json!({ "error": e.to_string() }),
                ));
            }
        };
        if !self.s.keys.is_empty()
            && let Err(why) = self.s.keys.verify(raw)
        {
            self.stats.rejected += 1;
            tracing::warn!(id = %event.id, reason = %why, "rejected a control event");
            return Err(outcome(
                Outcome::Rejected,
                json!({ "error": format!("signature: {why}") }),
            ));
        }
        // A replay of an old (validly signed) event must not act again.
        let max_age = self.s.actuator.max_event_age;
        let age_ms = trike_sinks::parse_rfc3339(&event.time)
            .map(|t| (now_nanos() / 1_000_000).saturating_sub(t.saturating_mul(1000)));
        if age_ms.is_none_or(|a| u128::from(a) > max_age.as_millis()) {
            self.stats.rejected += 1;
            let why = match age_ms {
                Some(a) => format!(
                    "the event is {:.0} s old, older than actuator.max_event_age ({} s)",
                    a as f64 / 1000.0,
                    max_age.as_secs()
                ),
                None => format!("the event's time {:?} is not an RFC 3339 time", event.time),
            };
            tracing::warn!(id = %event.id, reason = %why, "rejected a control event");
            return Err(outcome(Outcome::Rejected, json!({ "error": why })));
        }
        Ok(event)
    }

    /// Claims `id` on the shared log; None when this actuator won and may execute.
    fn claim(&mut self, id: &str, event: &Value) -> Option<Verdict> {
        let (claimant, at_ms, finished) = match self.claims.claim(&self.rt, id) {
            Ok(Claim::Won) => return None,
            Err(e) => return Some(Verdict::Retry(format!("{e:#}"))),
            Ok(Claim::Lost {
                claimant,
                at_ms,
                finished,
            }) => (claimant, at_ms, finished),
        };
        let age_ms = (now_nanos() / 1_000_000).saturating_sub(at_ms);
        let lease = self.s.actuator.claim_lease;
        // Claims from before finish records existed carry no time: taken as finished.
        let unfinished = !finished && at_ms > 0;
        if unfinished && u128::from(age_ms) < lease.as_millis() {
            return Some(Verdict::Retry(format!(
                "claimed {:.1} s ago by {claimant}, which has recorded no outcome yet: waiting up to the claim lease ({lease:?})",
                age_ms as f64 / 1000.0
            )));
        }
        self.stats.duplicates += 1;
        if !unfinished {
            tracing::info!(%id, claimed_by = %claimant, "claimed first by another actuator: not executed");
            return Some(outcome(
                Outcome::SkippedDuplicate,
                json!({ "executed": false, "seen_in": "claims", "claimed_by": claimant }),
            ));
        }
        let data = &event["data"];
        let reason = format!(
            "control event {id} ({} {}) was claimed by actuator {claimant} {:.0} s ago, which recorded no outcome: it may have died while executing it. Not executed again: check the target by hand",
            data["action"].as_str().unwrap_or(""),
            data["target"]["service"].as_str().unwrap_or(""),
            age_ms as f64 / 1000.0
        );
        tracing::error!(%id, claimed_by = %claimant, "{reason}");
        let paged = self.page(None, event, reason);
        Some(outcome(
            Outcome::SkippedDuplicate,
            json!({ "executed": false, "seen_in": "claims", "claimed_by": claimant,
                    "unfinished_claim": true, "paged": paged }),
        ))
    }

    /// Runs the executor and updates its breaker (paging when the circuit opens).
    fn execute(&mut self, exec: &ExecutorConfig, id: &str, event: &Value, probe: bool) -> Verdict {
        let data = &event["data"];
        let action = data["action"].as_str().unwrap_or("");
        let service = data["target"]["service"].as_str().unwrap_or("");
        let started = Instant::now();
        match executors::execute(exec, event) {
            Ok(attempts) => {
                self.breakers.success(&exec.name);
                self.stats.succeeded += 1;
                tracing::info!(%id, executor = %exec.name, action, service, probe, "executed");
                outcome(
                    Outcome::Succeeded,
                    json!({ "executor": exec.name, "attempts": attempts, "executed": true,
                            "probe": probe, "duration_ms": started.elapsed().as_millis() as u64 }),
                )
            }
            Err((error, attempts)) => {
                self.stats.failed += 1;
                tracing::error!(%id, executor = %exec.name, %error, probe, "executor failed");
                let mut detail = json!({ "executor": exec.name, "attempts": attempts,
                                         "executed": true, "probe": probe, "error": error });
                match self.breakers.failure(&exec.name, Instant::now()) {
                    Tripped::No => {}
                    Tripped::Opened => {
                        let b = self.s.actuator.breaker;
                        let reason = format!(
                            "circuit open for executor {} after {} consecutive failures (last: {error}); its events are held and retried from {:?} on. Control event {id} ({action} {service}) failed",
                            exec.name, b.failures, b.cooldown
                        );
                        detail["circuit"] = json!("open");
                        detail["paged"] = json!(self.page(Some(&exec.name), event, reason));
                    }
                    Tripped::Reopened { cooldown } => {
                        tracing::warn!(executor = %exec.name, ?cooldown, "probe failed: circuit open again");
                        detail["circuit"] = json!("open");
                    }
                }
                outcome(Outcome::Failed, detail)
            }
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// Wall-clock now in Unix nanoseconds (outcome and claim timestamps).
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
