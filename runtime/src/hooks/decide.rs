//! The decide hook: at most every [`DECIDE_EVERY`] of engine time, gathers the facts (SLOs,
//! canaries, staleness, anomalies), steps the policy and the progressive rollouts, and leaves
//! the decisions in the tick for the outbox. Backtests run this very hook, so a replay decides what the processor decided.

use crate::hook::{Decided, Hook, Tick};
use crate::hooks::outbox::DecisionStore;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use trike_engine::anomaly::{DetectorConfig, SliWatch};
use trike_engine::canary::{CanarySpec, Judge, arm, expand};
use trike_engine::canary_seq::{Running, SeqConfig};
use trike_engine::causes::Causes;
use trike_engine::facts::{StaleRule, gather};
use trike_engine::forecast::{CapacityLimit, Forecasts};
use trike_engine::policy::{Policy, PolicyEngine, PolicySnapshot};
use trike_engine::slo::Slo;
use trike_engine::{Engine, UnixNanos};

/// How often decisions are evaluated (engine time).
pub const DECIDE_EVERY: Duration = Duration::from_millis(200);
/// Seconds between anomaly samples of each watched SLI, by default.
pub const WATCH_EVERY_S: u64 = 10;
/// Watched SLI streams, at most (each holds ~4 KiB, a request rate's 4.6 KiB: about 65 MiB
/// for 5 000 services).
pub const WATCH_MAX_STREAMS: usize = 15_000;
/// The live watch's default threshold: a tail probability of about 10⁻³ among the stream's own
/// history (at one sample per 10 s, a clean stream is flagged about once a week; the offline
/// `trike detect` uses the detector's 0.45, tuned on labelled streams where a false alarm
/// costs a tenth of a missed anomaly).
pub const WATCH_THRESHOLD: f64 = 0.6;

/// How the anomaly watch samples and scores (`anomaly:` in the config).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WatchSettings {
    /// The detector of every stream.
    pub detector: DetectorConfig,
    /// Seconds between samples.
    pub every_s: u64,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            detector: DetectorConfig {
                threshold: WATCH_THRESHOLD,
                ..DetectorConfig::default()
            },
            every_s: WATCH_EVERY_S,
        }
    }
}

/// What the policy reads and acts on.
#[derive(Clone, Debug)]
pub struct DecideSpec {
    /// The SLOs.
    pub slos: Vec<Slo>,
    /// The canary comparisons.
    pub canaries: Vec<CanarySpec>,
    /// When telemetry counts as stale.
    pub stale: StaleRule,
    /// The rules.
    pub policy: Policy,
    /// The anomaly watch's settings.
    pub watch: WatchSettings,
    /// Services' capacity limits (their request rates are forecast whether or not they have
    /// one).
    pub capacity: Vec<CapacityLimit>,
    /// Services' prices and daily budgets (a restart changes them).
    pub costs: Vec<trike_engine::cost::CostSpec>,
}

/// What the policy reads besides the engine: replaced whole by a reload.
#[derive(Clone, Debug)]
pub struct DecideRules {
    /// The SLOs.
    pub slos: Vec<Slo>,
    /// The canary comparisons (and detection templates).
    pub canaries: Vec<CanarySpec>,
    /// When telemetry counts as stale.
    pub stale: StaleRule,
}

/// The policy and what it reads, owned by the engine's thread.
#[derive(Debug)]
pub struct Decider {
    /// Shared with a reload (locked after the engine, before the policy).
    rules: Arc<Mutex<DecideRules>>,
    /// Shared with a fleet processor's partition owner (locked after the engine).
    policy: Arc<Mutex<PolicyEngine>>,
    store: Arc<DecisionStore>,
    last: UnixNanos,
    /// The sequential tests of the canary pairs judged `sequential`, since each was first
    /// judged here (not checkpointed: after a restart a test starts afresh, which only makes
    /// it later to decide).
    sequential: HashMap<(String, String, String), Running>,
    /// Shared like the policy (its services' detectors move with their partitions).
    watch: Arc<Mutex<SliWatch>>,
    /// Every service's request-rate (and limited usage) forecasts: in `engine.ckpt` with the
    /// anomaly watch, and in the changelog with their partitions.
    forecasts: Arc<Mutex<Forecasts>>,
    /// Services' prices and daily budgets.
    costs: Vec<trike_engine::cost::CostSpec>,
    /// On a fleet's processor, the explanations of root causes, this processor's and those
    /// read from the others (locked alone; the cause log publishes and reads them).
    causes: Option<Arc<Mutex<Causes>>>,
    /// When the causes were last explained.
    explained: UnixNanos,
}

impl Decider {
    /// A decider for `spec`, reporting what its policy held back to `store`.
    pub fn new(spec: DecideSpec, store: Arc<DecisionStore>) -> Self {
        // Every service's request rate, error ratio and p99 (bounded: at most
        // WATCH_MAX_STREAMS streams).
        let watch = SliWatch::new(spec.watch.detector, spec.watch.every_s, WATCH_MAX_STREAMS);
        let forecasts = Forecasts::new(&spec.capacity, WATCH_MAX_STREAMS);
        Self {
            rules: Arc::new(Mutex::new(DecideRules {
                slos: spec.slos,
                canaries: spec.canaries,
                stale: spec.stale,
            })),
            policy: Arc::new(Mutex::new(PolicyEngine::new(spec.policy))),
            store,
            last: 0,
            sequential: HashMap::new(),
            watch: Arc::new(Mutex::new(watch)),
            forecasts: Arc::new(Mutex::new(forecasts)),
            costs: spec.costs,
            causes: None,
            explained: 0,
        }
    }

    /// A fleet processor's decider: it explains its services' root causes into `causes` (for
    /// the cause log to publish) and continues its walks along the other processors'.
    pub fn with_causes(mut self, causes: Arc<Mutex<Causes>>) -> Self {
        self.causes = Some(causes);
        self
    }

    /// Takes over a checkpoint's policy state (episodes, cool-downs).
    pub fn restore(&mut self, snap: PolicySnapshot) {
        for rule in self.policy.lock().restore(snap) {
            tracing::warn!(%rule, "checkpointed policy state of a rule no longer configured dropped");
        }
    }

    /// The policy, shared (a fleet processor moves its services' episodes with their
    /// partitions). Lock it only while holding the engine's lock, or on the engine thread.
    pub fn policy(&self) -> Arc<Mutex<PolicyEngine>> {
        self.policy.clone()
    }

    /// The SLOs, canaries and stale rule, shared with a reload. Lock them only while holding
    /// the engine's lock (before the policy's), or on the engine thread.
    pub fn rules(&self) -> Arc<Mutex<DecideRules>> {
        self.rules.clone()
    }

    /// The anomaly watch, shared (a fleet processor moves its services' detectors with their
    /// partitions). Lock it only while holding the engine's lock and then the policy's.
    pub fn watch(&self) -> Arc<Mutex<SliWatch>> {
        self.watch.clone()
    }

    /// Every service's request-rate forecast. Locked alone.
    pub fn forecasts(&self) -> Arc<Mutex<Forecasts>> {
        self.forecasts.clone()
    }

    /// Evaluates when [`DECIDE_EVERY`] has passed since the last evaluation.
    fn decide(&mut self, engine: &Engine) -> Option<Decided> {
        let now = engine.now();
        let rules_handle = self.rules.clone();
        let spec = rules_handle.lock();
        let policy_handle = self.policy.clone();
        let mut policy = policy_handle.lock();
        let rules = !policy.policy().rules.is_empty();
        // Sampled on its own period whether or not a rule reads it: the API, /metrics and the
        // dashboard show the scores.
        self.forecasts.lock().sample(engine);
        let mut watch = self.watch.lock();
        watch.sample(engine);
        // Whether or not this processor has rules: the others read its explanations.
        if let Some(causes) = &self.causes
            && now >= self.explained + DECIDE_EVERY.as_nanos() as u64
        {
            self.explained = now;
            causes.lock().explain(engine);
        }
        if !(rules || policy.rollouts().any_active())
            || now < self.last + DECIDE_EVERY.as_nanos() as u64
        {
            return None;
        }
        self.last = now;
        let mut decisions = Vec::new();
        if rules {
            let mut facts = gather(engine, &spec.slos, &spec.canaries, spec.stale, Some(&watch));
            drop(watch);
            // A service that reports only usage (a batch worker's CPU, say) has no SLI, but
            // its spend and forecasts are facts too.
            for service in engine.usage().services() {
                if let Err(at) = facts.binary_search_by(|f| (*f.service).cmp(&*service)) {
                    let f = trike_engine::policy::ServiceFacts {
                        service: service.to_string(),
                        observed_until: now,
                        ..Default::default()
                    };
                    facts.insert(at, f);
                }
            }
            let forecasts = self.forecasts.lock();
            let regions = policy
                .policy()
                .rules
                .iter()
                .any(|r| matches!(r.when, trike_engine::policy::When::RegionHealthBelow(_)));
            for f in &mut facts {
                f.forecast = forecasts.most_urgent(&f.service);
                if regions {
                    f.regions = trike_engine::regions::region_health(
                        engine,
                        &f.service,
                        &engine.config().region_dimension,
                        trike_engine::regions::WINDOW,
                    );
                }
                if let Some(c) = self.costs.iter().find(|c| c.service == f.service) {
                    f.spend = Some(trike_engine::cost::spend(engine, c));
                }
            }
            drop(forecasts);
            if let Some(causes) = &self.causes {
                causes.lock().apply_to(engine, &mut policy, &mut facts);
            }
            self.judge_sequentially(engine, &spec.canaries, &mut facts);
            decisions = policy.step(now, &facts);
            if let Some(causes) = &self.causes {
                causes.lock().mark_dependents(&policy, now);
            }
            for c in facts.iter().flat_map(|f| &f.canaries) {
                if c.metrics.iter().any(|m| m.canary_n > 0) {
                    self.store.loop_stats.deploy(&c.service, &c.canary);
                }
            }
        }
        decisions.extend(policy.step_rollouts(engine));
        for r in policy.rollouts().all() {
            self.store
                .loop_stats
                .deploy(&r.spec.service, &r.spec.canary);
        }
        self.resolved(engine, &spec.slos, &decisions);
        *self.store.policy_stats.lock() = policy.stats();
        (!decisions.is_empty()).then(|| Decided {
            decisions,
            policy: policy.snapshot(),
        })
    }
}

impl Decider {
    /// Tells the loop's metrics, for each action resolved, whether its service's SLOs burned
    /// faster than their sustainable pace over the episode: from the fault's onset (else 5
    /// minutes before the decision) to now.
    fn resolved(
        &self,
        engine: &Engine,
        slos: &[Slo],
        decisions: &[trike_engine::policy::Decision],
    ) {
        let loop_stats = &self.store.loop_stats;
        for d in decisions {
            let Some(id) = d.resolves.as_deref() else {
                continue;
            };
            let Some((detected, onset)) = loop_stats.decided_at(id) else {
                continue;
            };
            let from = onset.unwrap_or(detected.saturating_sub(300 * 1_000_000_000));
            let window =
                trike_engine::Span((engine.now().saturating_sub(from) / 1_000_000_000).max(1));
            let burn = slos
                .iter()
                .filter(|s| s.service == d.target.service)
                .filter_map(|s| trike_engine::slo::burn_over(engine, s, window))
                .reduce(f64::max);
            loop_stats.resolved(id, burn);
        }
    }

    /// Gives the canary pairs judged `sequential` their sequential test's evidence and
    /// verdict (the exact test's numbers stay in the metrics).
    fn judge_sequentially(
        &mut self,
        engine: &Engine,
        canaries: &[CanarySpec],
        facts: &mut [trike_engine::policy::ServiceFacts],
    ) {
        if !canaries.iter().any(|c| c.judge == Judge::Sequential) {
            self.sequential.clear();
            return;
        }
        let pairs: Vec<CanarySpec> = expand(engine, canaries)
            .into_iter()
            .filter(|c| c.judge == Judge::Sequential)
            .collect();
        let mut seen = std::collections::HashSet::new();
        for c in pairs {
            let key = (c.service.clone(), c.baseline.clone(), c.canary.clone());
            let now = engine.now();
            let cfg = SeqConfig {
                error_tolerance: c.error_tolerance,
                ..SeqConfig::default()
            };
            let running = self
                .sequential
                .entry(key.clone())
                .or_insert_with(|| Running::new(cfg, now));
            let digest = arm(engine, &c.service, &c.baseline, c.window).digest;
            let evidence =
                running.look(engine, &c.service, &c.baseline, &c.canary, digest.as_ref());
            if let Some(r) = facts
                .iter_mut()
                .filter(|f| f.service == c.service)
                .flat_map(|f| f.canaries.iter_mut())
                .find(|r| r.baseline == c.baseline && r.canary == c.canary)
            {
                r.verdict = evidence.verdict;
                r.sequential = Some(evidence);
            }
            seen.insert(key);
        }
        self.sequential.retain(|k, _| seen.contains(k));
    }
}

impl Hook for Decider {
    fn on_tick(&mut self, tick: &mut Tick<'_>) {
        tick.decided = self.decide(tick.engine);
    }

    fn on_finish(&mut self, tick: &mut Tick<'_>) {
        tick.decided = Some(Decided {
            decisions: Vec::new(),
            policy: self.policy.lock().snapshot(),
        });
    }
}
