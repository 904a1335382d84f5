//! The outbox hook: turns the decide hook's decisions into control events (signed when a key
//! is set), makes them durable *before* anyone can see them (the policy checkpoint holds the
//! policy's state and the events of the last [`OUTBOX_AGE`]), then hands them to the store
//! behind `/api/v1/decisions`, the archive and the sink writer's queue. After a crash the
//! checkpointed events are published again under the same ids: actuators execute an id once.

use crate::checkpoint::{self, PolicyCheckpoint};
use crate::hook::{Decided, Hook, Tick};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;
use trike_engine::UnixNanos;
use trike_engine::expo::{counter, header};
use trike_engine::policy::{Action, PolicySnapshot, PolicyStats};
use trike_sinks::ControlEvent;
use trike_sinks::kafka::KafkaSinkStats;

/// Control events kept for `/api/v1/decisions`.
pub const STORE_CAPACITY: usize = 1000;
/// Control events queued for the sinks before new ones are dropped (and counted).
pub const SINK_QUEUE: usize = 10_000;
/// How long control events stay in the outbox of the policy checkpoint.
pub const OUTBOX_AGE: Duration = Duration::from_secs(60);
/// Control events in the outbox, at most.
pub const OUTBOX_MAX: usize = 100;

/// Recent control events and counters.
#[derive(Debug, Default)]
pub struct DecisionStore {
    events: Mutex<VecDeque<ControlEvent>>,
    /// Decisions by action (index: position in [`ACTIONS`]).
    pub by_action: [AtomicU64; 8],
    /// Events the sink queue had no room for.
    pub sink_dropped: AtomicU64,
    /// Decisions a silence or maintenance window matched: recorded, not sent.
    pub silenced: AtomicU64,
    /// Decisions whose cause is a failing dependency paged instead: recorded, not sent.
    pub inhibited: AtomicU64,
    /// Events the sinks failed to write.
    pub sink_errors: AtomicU64,
    /// True while the newest batch failed to reach a JSON-lines sink (stdout, file); Kafka
    /// delivery failures are in `kafka.failing`. `/readyz` answers 503 while either is set.
    pub sinks_failing: AtomicBool,
    /// What the policy held back (copied after each evaluation).
    pub policy_stats: Mutex<PolicyStats>,
    /// Kafka control-topic deliveries (all zero without a Kafka sink).
    pub kafka: Arc<KafkaSinkStats>,
    /// The loop's own metrics (time to detect and mitigate, outcomes, false positives).
    pub loop_stats: crate::loop_stats::LoopStats,
}

/// Actions in metric order.
pub const ACTIONS: [Action; 8] = [
    Action::Rollback,
    Action::SetWeight,
    Action::Throttle,
    Action::Page,
    Action::Ticket,
    Action::FreezeDeploys,
    Action::Promote,
    Action::Resolved,
];

impl DecisionStore {
    pub(crate) fn push(&self, e: ControlEvent) {
        let mut q = self.events.lock();
        if q.len() == STORE_CAPACITY {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Renders the decision, policy and sink families.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "trike_decisions_total";
        header(out, name, "Control events decided, by action.", "counter");
        for (i, a) in ACTIONS.iter().enumerate() {
            let v = self.by_action[i].load(Relaxed);
            let _ = writeln!(out, "{name}{{action=\"{}\"}} {v}", a.name());
        }
        let ps = *self.policy_stats.lock();
        let name = "trike_policy_held_total";
        header(
            out,
            name,
            "Actions the policy held back, by reason.",
            "counter",
        );
        for (reason, v) in [
            ("stale", ps.held_stale),
            ("cooldown", ps.cooled_down),
            ("cap", ps.capped),
            ("duplicate", ps.deduplicated),
        ] {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {v}");
        }
        for (name, help, v) in [
            (
                "trike_sink_dropped_total",
                "Control events the sink queue had no room for.",
                &self.sink_dropped,
            ),
            (
                "trike_decisions_silenced_total",
                "Decisions a silence or maintenance window matched: recorded, not sent.",
                &self.silenced,
            ),
            (
                "trike_decisions_inhibited_total",
                "Decisions whose cause is a failing dependency, paged instead: recorded, not sent.",
                &self.inhibited,
            ),
            (
                "trike_sink_errors_total",
                "Control events a sink failed to write.",
                &self.sink_errors,
            ),
            (
                "trike_kafka_control_delivered_total",
                "Control events acknowledged by the Kafka control topic.",
                &self.kafka.delivered,
            ),
            (
                "trike_kafka_control_failed_total",
                "Control events that failed to reach the Kafka control topic after retries.",
                &self.kafka.failed,
            ),
        ] {
            counter(out, name, help, v.load(Relaxed));
        }
        self.loop_stats.render(out);
    }

    /// The newest `limit` events, optionally of one service, newest first.
    pub fn recent(&self, service: Option<&str>, limit: usize) -> Vec<ControlEvent> {
        self.events
            .lock()
            .iter()
            .rev()
            .filter(|e| service.is_none_or(|s| e.subject == s))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Where the outbox makes the policy's state and its recent events durable (write-ahead: the
/// outbox publishes nothing before `save` returns).
pub trait DecisionLog: std::fmt::Debug + Send {
    /// Makes `policy` and `recent` (control events of the last [`OUTBOX_AGE`], with the engine
    /// time they were decided; those of this round are at `engine.now()`) durable. `clean`: a
    /// clean stop, the sinks are about to be flushed, so no event needs publishing again.
    fn save(
        &mut self,
        engine: &mut trike_engine::Engine,
        policy: PolicySnapshot,
        recent: &VecDeque<(UnixNanos, ControlEvent)>,
        clean: bool,
    );
    /// Control events (JSON, with their engine time) taken over from elsewhere to publish
    /// again under their ids (a fleet processor's newly assigned partitions).
    fn take_republish(&mut self) -> Vec<(UnixNanos, String)> {
        Vec::new()
    }
}

/// `state.dir/policy.ckpt`: the single process's decision log.
#[derive(Debug)]
pub struct PolicyFile(pub PathBuf);

impl DecisionLog for PolicyFile {
    fn save(
        &mut self,
        _engine: &mut trike_engine::Engine,
        policy: PolicySnapshot,
        recent: &VecDeque<(UnixNanos, ControlEvent)>,
        clean: bool,
    ) {
        let c = PolicyCheckpoint {
            version: checkpoint::VERSION,
            policy,
            outbox: if clean {
                Vec::new()
            } else {
                recent.iter().map(|(at, e)| (*at, e.to_json())).collect()
            },
        };
        if let Err(e) = checkpoint::save_policy(&self.0, &c) {
            tracing::error!(dir = %self.0.display(), error = %e, "writing the policy checkpoint");
        }
    }
}

/// Makes decisions durable, then publishes them.
#[derive(Debug)]
pub struct Outbox {
    instance: String,
    key: Option<trike_sinks::signing::SigningKey>,
    store: Arc<DecisionStore>,
    out: SyncSender<ControlEvent>,
    /// Where decisions are made durable before they are published, if anywhere.
    log: Option<Box<dyn DecisionLog>>,
    /// Control events of the last [`OUTBOX_AGE`], with the engine time they were decided.
    recent: VecDeque<(UnixNanos, ControlEvent)>,
    /// The archive, when configured.
    archive: Option<trike_sql::archive::ArchiveHandle>,
    /// Silences and maintenance windows.
    silences: Option<Arc<crate::silences::Silences>>,
}

impl Outbox {
    /// An outbox publishing as `trike://<instance>` to `out` and `store`, signing with `key`,
    /// checkpointing to `persist`.
    pub fn new(
        instance: &str,
        key: Option<trike_sinks::signing::SigningKey>,
        store: Arc<DecisionStore>,
        out: SyncSender<ControlEvent>,
        persist: Option<PathBuf>,
    ) -> Self {
        Self {
            instance: instance.to_string(),
            key,
            store,
            out,
            log: persist.map(|d| Box::new(PolicyFile(d)) as Box<dyn DecisionLog>),
            recent: VecDeque::new(),
            archive: None,
            silences: None,
        }
    }

    /// Records the decisions an active silence matches with `silenced: true`, and does not
    /// send them to the sinks.
    pub fn with_silences(mut self, silences: Arc<crate::silences::Silences>) -> Self {
        self.silences = Some(silences);
        self
    }

    /// Makes decisions durable in `log` instead (a fleet processor's changelog).
    pub fn with_log(mut self, log: Box<dyn DecisionLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Also writes every control event to the archive.
    pub fn with_archive(mut self, archive: trike_sql::archive::ArchiveHandle) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Publishes a checkpoint's outbox again (the same events, with the same ids: a crash may
    /// have caught them before delivery). They are signed again with the key of now: an event
    /// written by an earlier version is sent in this version's form (a field it lacked is
    /// written now), which its old signature would not cover, and the key may have rotated.
    pub fn restore(&mut self, outbox: Vec<(UnixNanos, String)>) {
        for (at, text) in outbox {
            let mut event = match ControlEvent::parse(text.as_bytes()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "a control event in the policy checkpoint's outbox is unreadable: not published again");
                    continue;
                }
            };
            if let Some(k) = &self.key {
                k.sign(&mut event);
            }
            tracing::info!(id = %event.id, "control event from before the restart published again");
            self.store.push(event.clone());
            self.recent.push_back((at, event.clone()));
            self.send(event);
        }
    }

    fn send(&self, event: ControlEvent) {
        if event.data.silenced {
            // Recorded (the store, the archive, the outbox), not sent.
            self.store.silenced.fetch_add(1, Relaxed);
            return;
        }
        if event.data.inhibited_by.is_some() {
            self.store.inhibited.fetch_add(1, Relaxed);
            return;
        }
        match self.out.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => {
                self.store.sink_dropped.fetch_add(1, Relaxed);
                tracing::error!(id = %e.id, "sink queue full: control event not written to the sinks");
            }
        }
    }

    /// Makes `policy` and the recent events durable (with none on a clean stop).
    fn save(&mut self, engine: &mut trike_engine::Engine, policy: PolicySnapshot, clean: bool) {
        if let Some(log) = &mut self.log {
            log.save(engine, policy, &self.recent, clean);
        }
    }

    fn publish(&mut self, engine: &mut trike_engine::Engine, decided: Decided) {
        let now = engine.now();
        let events: Vec<ControlEvent> = decided
            .decisions
            .iter()
            .map(|d| {
                let mut event = ControlEvent::from_decision(d, &self.instance);
                if let Some(id) = self.silences.as_ref().and_then(|s| s.silencing(d)) {
                    event.data.silenced = true;
                    event.data.silenced_by = Some(id);
                }
                if let Some(k) = &self.key {
                    k.sign(&mut event);
                }
                event
            })
            .collect();
        let age = OUTBOX_AGE.as_nanos() as u64;
        self.recent.extend(events.iter().map(|e| (now, e.clone())));
        while self.recent.len() > OUTBOX_MAX
            || self.recent.front().is_some_and(|(t, _)| t + age < now)
        {
            self.recent.pop_front();
        }
        // Write-ahead: durable before anyone can see the events.
        self.save(engine, decided.policy, false);
        for (d, event) in decided.decisions.into_iter().zip(events) {
            if let Some(i) = ACTIONS.iter().position(|a| *a == d.action) {
                self.store.by_action[i].fetch_add(1, Relaxed);
            }
            let sent = !event.data.silenced && d.inhibited_by.is_none();
            self.store.loop_stats.decided(&d, sent);
            tracing::info!(id = %d.decision_id, action = d.action.name(), service = %d.target.service, version = %d.target.version, dry_run = d.dry_run, silenced_by = event.data.silenced_by.as_deref().unwrap_or("-"), inhibited_by = d.inhibited_by.as_deref().unwrap_or("-"), "{}", d.reason);
            self.store.push(event.clone());
            if let Some(a) = &self.archive {
                a.decision(event.to_value());
            }
            self.send(event);
        }
    }
}

impl Hook for Outbox {
    fn on_tick(&mut self, tick: &mut Tick<'_>) {
        let taken = self.log.as_mut().map(|l| l.take_republish());
        if let Some(events) = taken.filter(|e| !e.is_empty()) {
            self.restore(events);
        }
        if let Some(decided) = tick.decided.take() {
            self.publish(tick.engine, decided);
        }
    }

    fn on_finish(&mut self, tick: &mut Tick<'_>) {
        if let Some(decided) = tick.decided.take() {
            self.save(tick.engine, decided.policy, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: an event restored from a checkpoint or a changelog, written and signed by an
    /// earlier version without `target.version` (a whole-service page), is published signed
    /// with the key of now and verifies; its id and content are kept.
    #[test]
    fn restored_events_are_signed_again() {
        let old = serde_json::json!({
            "specversion": "1.0", "id": "d-1", "source": "trike://t", "type": "io.trike.control.page",
            "subject": "checkout", "time": "2026-12-02T07:00:00.000Z", "datacontenttype": "application/json",
            "data": {"decision_id": "d-1", "rule": "page-fast-burn", "action": "page",
                "target": {"service": "checkout"}, "params": {}, "severity": "page", "reason": "r",
                "slo": "checkout-availability", "policy_revision": "p", "dry_run": false, "evidence": {},
                "detected_at": "2026-12-02T07:00:00.000Z", "observed_until": "2026-12-02T07:00:00.000Z"}});
        let mut signed_then = old.clone();
        trike_sinks::signing::sign(&mut signed_then, b"the-key");
        assert!(trike_sinks::signing::verify(&signed_then, b"the-key"));
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let key = trike_sinks::signing::SigningKey::new(None, b"the-key".to_vec());
        let mut outbox = Outbox::new("t", Some(key), Arc::default(), tx, None);
        outbox.restore(vec![(1, signed_then.to_string())]);
        let sent = rx.try_recv().expect("published again").to_value();
        assert_eq!(sent["data"]["target"]["version"], serde_json::Value::Null);
        assert_eq!(sent["id"], "d-1");
        assert!(
            trike_sinks::signing::verify(&sent, b"the-key"),
            "signed again: {sent}"
        );
    }
}
