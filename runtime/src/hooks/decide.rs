//! The decision loop: on the engine thread, at most every `DECIDE_EVERY`, gathers the facts
//! (SLOs, canaries, staleness), steps the policy, and hands the control events to the sinks and
//! to the store behind `/api/v1/decisions`.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;
use trike_engine::anomaly::{DetectorConfig, SliWatch};
use trike_engine::canary::CanarySpec;
use trike_engine::facts::{StaleRule, gather};
use trike_engine::policy::{Action, PolicyEngine};
use trike_engine::slo::Slo;
use trike_engine::{Engine, UnixNanos};
use trike_sinks::kafka::{KafkaSink, KafkaSinkConfig, KafkaSinkStats, ensure_topic};
use trike_sinks::{ControlEvent, JsonLines, SinkConfig};

/// How often decisions are evaluated (engine time).
pub const DECIDE_EVERY: Duration = Duration::from_millis(200);
/// Control events kept for `/api/v1/decisions`.
pub const STORE_CAPACITY: usize = 1000;
/// Control events queued for the sinks before new ones are dropped (and counted).
pub const SINK_QUEUE: usize = 10_000;

/// Recent control events and counters.
#[derive(Debug, Default)]
pub struct DecisionStore {
    events: Mutex<VecDeque<ControlEvent>>,
    /// Decisions by action (index: position in [`ACTIONS`]).
    pub by_action: [AtomicU64; 7],
    /// Events the sink queue had no room for.
    pub sink_dropped: AtomicU64,
    /// Events the sinks failed to write.
    pub sink_errors: AtomicU64,
    /// True while the newest batch failed to reach a JSON-lines sink (stdout, file); Kafka
    /// delivery failures are in `kafka.failing`. `/readyz` answers 503 while either is set.
    pub sinks_failing: std::sync::atomic::AtomicBool,
    /// What the policy held back (copied after each evaluation).
    pub policy_stats: Mutex<trike_engine::policy::PolicyStats>,
    /// Kafka control-topic deliveries (all zero without a Kafka sink).
    pub kafka: Arc<KafkaSinkStats>,
}

/// Actions in metric order.
pub const ACTIONS: [Action; 7] = [
    Action::Rollback,
    Action::SetWeight,
    Action::Throttle,
    Action::Page,
    Action::Ticket,
    Action::FreezeDeploys,
    Action::Resolved,
];

impl DecisionStore {
    fn push(&self, e: ControlEvent) {
        let mut q = self.events.lock();
        if q.len() == STORE_CAPACITY {
            q.pop_front();
        }
        q.push_back(e);
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

/// The policy and what it reads, owned by the engine thread.
#[derive(Debug)]
pub struct Decider {
    slos: Vec<Slo>,
    canaries: Vec<CanarySpec>,
    stale: StaleRule,
    policy: PolicyEngine,
    instance: String,
    store: Arc<DecisionStore>,
    out: SyncSender<ControlEvent>,
    last: UnixNanos,
    watch: SliWatch,
    key: Option<Vec<u8>>,
    /// Where the policy checkpoint goes (`state.dir`), if anywhere.
    persist: Option<std::path::PathBuf>,
    /// Control events of the last [`OUTBOX_AGE`], published again after a crash.
    outbox: VecDeque<(UnixNanos, ControlEvent)>,
    /// The archive, when configured.
    archive: Option<trike_sql::archive::ArchiveHandle>,
}

/// How long control events stay in the outbox of the policy checkpoint.
pub const OUTBOX_AGE: Duration = Duration::from_secs(60);
/// Control events in the outbox, at most.
pub const OUTBOX_MAX: usize = 100;

impl Decider {
    /// A decider for `cfg`'s SLOs, canaries and policy, writing to `out`, signing with `key`.
    pub fn new(
        cfg: &crate::config::Config,
        store: Arc<DecisionStore>,
        out: SyncSender<ControlEvent>,
        key: Option<Vec<u8>>,
    ) -> Self {
        // Every service's request rate, error ratio and p99, sampled every 10 s (bounded: at
        // most 3 × 10 000 streams of ~1 KiB).
        let watch = SliWatch::new(DetectorConfig::default(), 10, 30_000);
        Self {
            slos: cfg.slos.clone(),
            canaries: cfg.canaries.clone(),
            stale: cfg.stale,
            policy: PolicyEngine::new(cfg.policy.clone()),
            instance: cfg.instance.clone(),
            store,
            out,
            last: 0,
            watch,
            key,
            persist: cfg.state_dir.clone(),
            outbox: VecDeque::new(),
            archive: None,
        }
    }

    /// Also writes every control event to the archive.
    pub fn with_archive(mut self, archive: trike_sql::archive::ArchiveHandle) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Takes over the policy state of a checkpoint and publishes its outbox again (the same
    /// events, with the same ids: a crash may have caught them before delivery).
    pub fn restore(&mut self, c: crate::checkpoint::PolicyCheckpoint) {
        for rule in self.policy.restore(c.policy) {
            tracing::warn!(%rule, "checkpointed policy state of a rule no longer configured dropped");
        }
        for (at, text) in c.outbox {
            let event = match ControlEvent::parse(text.as_bytes()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "a control event in the policy checkpoint's outbox is unreadable: not published again");
                    continue;
                }
            };
            tracing::info!(id = %event.id, "control event from before the restart published again");
            self.store.push(event.clone());
            self.outbox.push_back((at, event.clone()));
            if self.out.try_send(event).is_err() {
                self.store.sink_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes the policy checkpoint; with `clean`, the outbox is written empty (the sinks are
    /// about to be flushed by a clean shutdown).
    pub fn save(&self, clean: bool) {
        let Some(dir) = &self.persist else { return };
        let c = crate::checkpoint::PolicyCheckpoint {
            version: crate::checkpoint::VERSION,
            policy: self.policy.snapshot(),
            outbox: if clean {
                Vec::new()
            } else {
                self.outbox
                    .iter()
                    .map(|(at, e)| (*at, e.to_json()))
                    .collect()
            },
        };
        if let Err(e) = crate::checkpoint::save_policy(dir, &c) {
            tracing::error!(dir = %dir.display(), error = %e, "writing the policy checkpoint");
        }
    }

    /// Evaluates when `DECIDE_EVERY` has passed since the last evaluation.
    pub fn tick(&mut self, engine: &Engine) {
        let now = engine.now();
        if self.policy.policy().rules.is_empty() || now < self.last + DECIDE_EVERY.as_nanos() as u64
        {
            return;
        }
        self.last = now;
        self.watch.sample(engine);
        let facts = gather(
            engine,
            &self.slos,
            &self.canaries,
            self.stale,
            Some(&self.watch),
        );
        let decisions = self.policy.step(now, &facts);
        *self.store.policy_stats.lock() = self.policy.stats();
        if decisions.is_empty() {
            return;
        }
        let events: Vec<ControlEvent> = decisions
            .iter()
            .map(|d| {
                let mut event = ControlEvent::from_decision(d, &self.instance);
                if let Some(k) = &self.key {
                    trike_sinks::signing::sign_event(&mut event, k);
                }
                event
            })
            .collect();
        let age = OUTBOX_AGE.as_nanos() as u64;
        self.outbox.extend(events.iter().map(|e| (now, e.clone())));
        while self.outbox.len() > OUTBOX_MAX
            || self.outbox.front().is_some_and(|(t, _)| t + age < now)
        {
            self.outbox.pop_front();
        }
        // Write-ahead: durable before anyone can see the events.
        self.save(false);
        for (d, event) in decisions.into_iter().zip(events) {
            if let Some(i) = ACTIONS.iter().position(|a| *a == d.action) {
                self.store.by_action[i].fetch_add(1, Relaxed);
            }
            tracing::info!(id = %d.decision_id, action = d.action.name(), service = %d.target.service, version = %d.target.version, dry_run = d.dry_run, "{}", d.reason);
            self.store.push(event.clone());
            if let Some(a) = &self.archive {
                a.decision(event.to_value());
            }
            match self.out.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.store.sink_dropped.fetch_add(1, Relaxed);
                    tracing::error!(id = %d.decision_id, "sink queue full: control event not written to the sinks");
                }
            }
        }
    }
}

/// The sink writer thread: drains control events into every configured sink.
#[derive(Debug)]
pub struct SinkWriter {
    thread: Option<JoinHandle<()>>,
}

enum Out {
    Lines(JsonLines<Box<dyn Write + Send>>),
    Kafka(KafkaSink),
}

impl SinkWriter {
    /// Opens the sinks (creating the Kafka control topic if missing) and starts the writer;
    /// returns it and the queue's sending side.
    pub fn start(
        sinks: &[SinkConfig],
        kafka: Option<KafkaSinkConfig>,
        store: Arc<DecisionStore>,
    ) -> std::io::Result<(Self, SyncSender<ControlEvent>)> {
        let mut outs: Vec<Out> = Vec::new();
        for s in sinks {
            match s {
                SinkConfig::Stdout => {
                    outs.push(Out::Lines(JsonLines::new(Box::new(std::io::stdout()))))
                }
                SinkConfig::File { path } => {
                    let f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?;
                    outs.push(Out::Lines(JsonLines::new(Box::new(f))));
                }
                SinkConfig::Kafka => {
                    let cfg = kafka
                        .clone()
                        .ok_or_else(|| std::io::Error::other("kafka sink without kafka.brokers"))?;
                    if let Err(e) = ensure_topic(&cfg) {
                        // Brokers without topic creation rights (or test brokers) still work
                        // when the topic exists.
                        tracing::warn!(topic = %cfg.topic, error = %e, "could not create the control topic; producing anyway");
                    }
                    let sink = KafkaSink::new(&cfg, store.kafka.clone())
                        .map_err(|e| std::io::Error::other(format!("kafka producer: {e}")))?;
                    outs.push(Out::Kafka(sink));
                }
            }
        }
        let (tx, rx) = sync_channel(SINK_QUEUE);
        let thread = std::thread::Builder::new()
            .name("trike-sinks".into())
            .spawn(move || write_all(rx, outs, &store))?;
        Ok((
            Self {
                thread: Some(thread),
            },
            tx,
        ))
    }

    /// Waits for the queue to drain (every sender must be dropped first).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_all(rx: Receiver<ControlEvent>, mut outs: Vec<Out>, store: &DecisionStore) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(255));
        let mut failed = false;
        for o in &mut outs {
            let result = match o {
                // The wire form everywhere: keys sorted, as signed.
                Out::Lines(l) => l
                    .write_batch(&batch.iter().map(ControlEvent::to_value).collect::<Vec<_>>())
                    .map_err(|e| e.to_string()),
                Out::Kafka(k) => batch
                    .iter()
                    .try_for_each(|e| k.send(&e.subject, e.to_json().as_bytes()))
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                failed = true;
                store.sink_errors.fetch_add(batch.len() as u64, Relaxed);
                tracing::error!(error = %e, "writing control events");
            }
        }
        store.sinks_failing.store(failed, Relaxed);
    }
    for o in &outs {
        if let Out::Kafka(k) = o
            && let Err(e) = k.flush(Duration::from_secs(10))
        {
            tracing::error!(error = %e, "flushing control events to Kafka at shutdown");
        }
    }
}
