//! Policy: rules that turn signals (burn-rate tiers, canary verdicts, stale telemetry, budget
//! left) into decisions, with hysteresis (`for`), cool-down, a cap on actions per window,
//! deduplication (one action per target and episode), a hold on stale data, dry runs, and a
//! `resolved` decision when an acted-on condition clears.
//!
//! Pure and deterministic: [`PolicyEngine::step`] takes the facts at `now` and returns the
//! decisions; decision ids are a hash of (rule, service, version, action, episode start), so a
//! replay of the same input yields the same ids.

use crate::anomaly::{AnomalyPoint, SliMetric};
use crate::canary::{CanaryResult, Verdict};
use crate::rollout::{Rollout, RolloutError, RolloutSpec, Rollouts};
use crate::slo::{Severity, SloStatus, TierStatus};
use crate::time::{NANOS_PER_SEC, Span, UnixNanos};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;

/// What a decision asks the actuators to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Roll the version back.
    Rollback,
    /// Change the traffic weight (`params.weight`).
    SetWeight,
    /// Rate-limit (`params.rate_limit`).
    Throttle,
    /// Page a human.
    Page,
    /// Open a ticket.
    Ticket,
    /// Stop deploys to the service.
    FreezeDeploys,
    /// Make the canary version the one serving (a rollout passed its last step).
    Promote,
    /// A previous decision's condition cleared.
    Resolved,
}

impl Action {
    /// The CloudEvents type suffix and `data.action` value.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Rollback => "rollback",
            Action::SetWeight => "set_weight",
            Action::Throttle => "throttle",
            Action::Page => "page",
            Action::Ticket => "ticket",
            Action::FreezeDeploys => "freeze_deploys",
            Action::Promote => "promote",
            Action::Resolved => "resolved",
        }
    }
}

/// Which burn-rate tiers a rule listens to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierSelector {
    /// Any firing tier of this severity (`burn_rate.page`, `burn_rate.ticket`).
    Severity(Severity),
    /// The tier with this name (`burn_rate.page_fast`).
    Named(String),
}

/// A rule's condition, written as a string in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum When {
    /// `burn_rate.page`, `burn_rate.ticket` or `burn_rate.<tier name>`.
    BurnRate(TierSelector),
    /// `canary.fail`, `canary.inconclusive` or `canary.pass`.
    Canary(Verdict),
    /// `stale`: the service's telemetry stopped or lags.
    Stale,
    /// `budget < 0.2`: an SLO's budget left is below the share.
    BudgetBelow(f64),
    /// `anomaly` (any SLI stream) or `anomaly.<request_rate|error_ratio|latency_p99>`.
    Anomaly(Option<SliMetric>),
    /// `forecast.days_to_limit < 14`: the request rate's forecast reaches the service's
    /// `capacity:` limit within that many days.
    ForecastWithin(f64),
    /// `region.health < 0.9`: a region of the service (see [`crate::regions`]) is less healthy
    /// than that, and less than the service as a whole.
    RegionHealthBelow(f64),
    /// `cost.spend_burn > 2`: the service spends its budget faster than that, over 1 h and
    /// over 5 m (see [`crate::cost`]).
    SpendBurnAbove(f64),
}

/// Why a `when` string did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a condition: write burn_rate.page, burn_rate.ticket, burn_rate.<tier>, canary.fail, canary.inconclusive, stale, budget < 0.2, anomaly, anomaly.<request_rate|error_ratio|latency_p99>, forecast.days_to_limit < 14, region.health < 0.9 or cost.spend_burn > 2"
)]
pub struct WhenParseError(pub String);

impl FromStr for When {
    type Err = WhenParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || WhenParseError(s.to_string());
        if let Some(tier) = t.strip_prefix("burn_rate.") {
            return Ok(When::BurnRate(match tier {
                "page" => TierSelector::Severity(Severity::Page),
                "ticket" => TierSelector::Severity(Severity::Ticket),
                "" => return Err(err()),
                name => TierSelector::Named(name.to_string()),
            }));
        }
        if let Some(v) = t.strip_prefix("canary.") {
            return Ok(When::Canary(match v {
                "fail" => Verdict::Fail,
                "inconclusive" => Verdict::Inconclusive,
                "pass" => Verdict::Pass,
                _ => return Err(err()),
            }));
        }
        if t == "stale" {
            return Ok(When::Stale);
        }
        if t == "anomaly" {
            return Ok(When::Anomaly(None));
        }
        if let Some(m) = t.strip_prefix("anomaly.") {
            let metric = SliMetric::ALL
                .into_iter()
                .find(|x| x.name() == m)
                .ok_or_else(err)?;
            return Ok(When::Anomaly(Some(metric)));
        }
        if let Some(x) = t
            .strip_prefix("budget")
            .map(str::trim)
            .and_then(|r| r.strip_prefix('<'))
        {
            let v: f64 = x.trim().parse().map_err(|_| err())?;
            return Ok(When::BudgetBelow(v));
        }
        if let Some(x) = t
            .strip_prefix("forecast.days_to_limit")
            .map(str::trim)
            .and_then(|r| r.strip_prefix('<'))
        {
            let v: f64 = x.trim().parse().map_err(|_| err())?;
            if !(v.is_finite() && v > 0.0) {
                return Err(err());
            }
            return Ok(When::ForecastWithin(v));
        }
        let compare = |prefix: &str, op: char| -> Option<Result<f64, WhenParseError>> {
            let x = t.strip_prefix(prefix)?.trim().strip_prefix(op)?;
            Some(
                x.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(err),
            )
        };
        if let Some(v) = compare("region.health", '<') {
            return Ok(When::RegionHealthBelow(v?));
        }
        if let Some(v) = compare("cost.spend_burn", '>') {
            return Ok(When::SpendBurnAbove(v?));
        }
        Err(err())
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::BurnRate(TierSelector::Severity(Severity::Page)) => f.write_str("burn_rate.page"),
            When::BurnRate(TierSelector::Severity(Severity::Ticket)) => {
                f.write_str("burn_rate.ticket")
            }
            When::BurnRate(TierSelector::Named(n)) => write!(f, "burn_rate.{n}"),
            When::Canary(v) => write!(f, "canary.{}", serde_json_verdict(*v)),
            When::Stale => f.write_str("stale"),
            When::BudgetBelow(x) => write!(f, "budget < {x}"),
            When::Anomaly(None) => f.write_str("anomaly"),
            When::Anomaly(Some(m)) => write!(f, "anomaly.{}", m.name()),
            When::ForecastWithin(x) => write!(f, "forecast.days_to_limit < {x}"),
            When::RegionHealthBelow(x) => write!(f, "region.health < {x}"),
            When::SpendBurnAbove(x) => write!(f, "cost.spend_burn > {x}"),
        }
    }
}

fn serde_json_verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Inconclusive => "inconclusive",
        Verdict::Fail => "fail",
    }
}

/// A rule's cool-down unless it sets one.
pub const DEFAULT_COOLDOWN: Span = Span::minutes(10);
/// A rule's cap on actions per window unless it sets one.
pub const DEFAULT_MAX_ACTIONS: u32 = 10;
/// The window of that cap unless the rule sets one.
pub const DEFAULT_MAX_ACTIONS_WINDOW: Span = Span::hours(1);

/// One rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Condition.
    pub when: When,
    /// What to do.
    pub action: Action,
    /// The condition must hold this long before acting (hysteresis).
    pub for_: Span,
    /// After acting, the same rule does not act on the same target again for this long.
    pub cooldown: Span,
    /// At most this many actions of this rule per `max_actions_window`.
    pub max_actions: u32,
    /// Window of the cap.
    pub max_actions_window: Span,
    /// Severity reported (default: page for page/rollback, ticket otherwise).
    pub severity: Severity,
    /// Decide and record, but mark `dry_run` so actuators only log.
    pub dry_run: bool,
    /// Action parameters (e.g. `weight`, `rate_limit`).
    pub params: BTreeMap<String, f64>,
    /// Only these services (all when empty).
    pub services: Vec<String>,
    /// Which of the service's traffic its decisions act on (dimension → value; e.g.
    /// `traffic.class: batch`), carried in the decision's target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Act even when the service's telemetry is stale.
    pub act_on_stale: bool,
}

impl Rule {
    /// A live rule with the defaults: no hysteresis, [`DEFAULT_COOLDOWN`], at most
    /// [`DEFAULT_MAX_ACTIONS`] per [`DEFAULT_MAX_ACTIONS_WINDOW`], severity page for rollbacks
    /// and pages (ticket otherwise), no parameters, every service, never on stale data.
    pub fn new(name: &str, when: When, action: Action) -> Self {
        Self {
            name: name.into(),
            when,
            action,
            for_: Span(0),
            cooldown: DEFAULT_COOLDOWN,
            max_actions: DEFAULT_MAX_ACTIONS,
            max_actions_window: DEFAULT_MAX_ACTIONS_WINDOW,
            severity: match action {
                Action::Rollback | Action::Page => Severity::Page,
                _ => Severity::Ticket,
            },
            dry_run: false,
            params: BTreeMap::new(),
            services: vec![],
            selector: BTreeMap::new(),
            act_on_stale: false,
        }
    }
}

/// The rules and their revision (a content hash, stamped on every decision).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// The revision stamped on every decision. The processor sets it to the revision of the
    /// whole rule set (SLOs, canaries, stale rule and rules: `trike::config::revision`).
    pub revision: String,
}

impl Policy {
    /// A policy of `rules` alone, its revision a hash of their debug rendering (for the
    /// engine's own tests and tools; the processor stamps the rule set's revision instead).
    pub fn new(rules: Vec<Rule>) -> Self {
        let revision = format!("{:016x}", fnv64(0, format!("{rules:?}").as_bytes()));
        Self { rules, revision }
    }
}

/// What a decision is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Target {
    /// Service.
    pub service: String,
    /// Version ("" when the signal is about the whole service).
    pub version: String,
    /// Region ("" unless the signal is about one region).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Which of the service's traffic (dimension → value; a rule's `selector`, e.g.
    /// `traffic.class: batch` for low-value traffic to throttle).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// The numbers behind a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// A burn-rate tier fired.
    BurnRate {
        /// SLO name.
        slo: String,
        /// Objective.
        objective: f64,
        /// Budget left.
        budget_remaining: f64,
        /// The tier with its burn rates and threshold.
        tier: TierStatus,
        /// Which values carry the bad events (see [`crate::attribution`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attribution: Vec<crate::attribution::Attribution>,
        /// The failing dependency that carries the bad events (see [`crate::graph`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root_cause: Option<crate::graph::RootCause>,
        /// When the bad events began to rise (engine time, ns; see [`crate::onset`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_bad_at: Option<UnixNanos>,
    },
    /// The canary judge's result.
    Canary(CanaryResult),
    /// Telemetry stopped or lags.
    Stale {
        /// Seconds since data last arrived.
        silent_s: f64,
        /// Seconds the newest event time lags its arrival.
        lag_s: f64,
    },
    /// An SLI stream deviates from what the detector expects.
    Anomaly(AnomalyPoint),
    /// A progressive rollout's step and its judge's latest result.
    Rollout {
        /// The rollout.
        rollout_id: String,
        /// The step, from 1.
        step: usize,
        /// Every step's canary weight.
        steps: Vec<f64>,
        /// The step's canary weight.
        weight: f64,
        /// Where the rollout stands after this decision.
        phase: crate::rollout::Phase,
        /// The judge's latest result of the step (none at its start).
        canary: Option<CanaryResult>,
    },
    /// Budget below the rule's share.
    Budget {
        /// SLO name.
        slo: String,
        /// Budget left.
        budget_remaining: f64,
        /// The rule's threshold.
        below: f64,
    },
    /// A forecast (request rate or usage) reaches its capacity limit within the rule's days.
    Forecast {
        /// What the forecast says.
        forecast: crate::forecast::ForecastPoint,
        /// The rule's days.
        within_days: f64,
    },
    /// A region is less healthy than the rule's threshold, and than the whole service.
    Region {
        /// The region.
        region: crate::regions::RegionHealth,
        /// The whole service's health over the same window.
        service_health: f64,
        /// The rule's threshold.
        below: f64,
    },
    /// The service spends its budget too fast.
    Spend {
        /// What it spends.
        spend: crate::cost::SpendPoint,
        /// The rule's burn.
        above: f64,
    },
}

/// Facts about one service at `now`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceFacts {
    /// Service.
    pub service: String,
    /// Why its telemetry is stale (None when fresh).
    pub stale: Option<Evidence>,
    /// Its SLOs.
    pub slos: Vec<SloStatus>,
    /// Its canary comparisons.
    pub canaries: Vec<CanaryResult>,
    /// Event time of the newest data.
    pub observed_until: UnixNanos,
    /// The latest anomaly-detector verdicts on its SLI streams.
    pub anomalies: Vec<AnomalyPoint>,
    /// Its capacity forecast that reaches its limit first (request rate or usage).
    pub forecast: Option<crate::forecast::ForecastPoint>,
    /// Its regions' health, worst first (filled only when a rule reads it).
    pub regions: Vec<crate::regions::RegionHealth>,
    /// Its spend (with a `cost:` entry).
    pub spend: Option<crate::cost::SpendPoint>,
}

/// One decision (the control event's content; its wire form is built in `trike-sinks`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Deterministic id.
    pub decision_id: String,
    /// Action (`Resolved` for a clearing).
    pub action: Action,
    /// Target.
    pub target: Target,
    /// Parameters.
    pub params: BTreeMap<String, f64>,
    /// Severity.
    pub severity: Severity,
    /// One human sentence.
    pub reason: String,
    /// Rule name.
    pub rule: String,
    /// SLO involved, if any.
    pub slo: Option<String>,
    /// Policy revision.
    pub policy_revision: String,
    /// Dry run.
    pub dry_run: bool,
    /// The numbers behind it.
    pub evidence: Evidence,
    /// When it was decided (engine time).
    pub detected_at: UnixNanos,
    /// Event time of the newest data used.
    pub observed_until: UnixNanos,
    /// For `resolved`: the decision it resolves.
    pub resolves: Option<String>,
    /// Inhibited: its cause is a failing dependency, and this decision (the dependency's
    /// page) acts instead. Recorded, not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibited_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RuleTarget {
    /// Condition true (and not held) since.
    pending_since: Option<UnixNanos>,
    /// The open episode: start and decision.
    episode: Option<(UnixNanos, Decision)>,
    /// When this rule last acted on this target.
    last_action: Option<UnixNanos>,
}

/// Counters of what the policy held back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStats {
    /// Actions held because the data was stale.
    pub held_stale: u64,
    /// Actions skipped in cool-down.
    pub cooled_down: u64,
    /// Actions skipped by the cap.
    pub capped: u64,
    /// Actions skipped because another rule already acted on the same target the same way.
    pub deduplicated: u64,
}

/// The policy and its state.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    policy: Policy,
    state: HashMap<(usize, Target), RuleTarget>,
    recent: Vec<VecDeque<UnixNanos>>,
    stats: PolicyStats,
    rollouts: Rollouts,
    /// Open pages of root causes, by the dependency's service.
    roots: BTreeMap<String, inhibition::RootEpisode>,
    /// On a fleet, the roots other processors' services still fail because of: their pages
    /// stay open here after the dependents here resolved.
    blamed_elsewhere: BTreeSet<String>,
}

fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A deterministic UUID-shaped id from the parts of a decision's identity. The episode start
/// counts to the second, so a backtest, which evaluates once per second of event time, derives
/// the live evaluation's id (every 200 ms) whenever both place the start in the same second.
pub fn decision_id(
    rule: &str,
    target: &Target,
    action: Action,
    episode_start: UnixNanos,
) -> String {
    let start_s = episode_start / crate::time::NANOS_PER_SEC;
    let mut key = format!(
        "{rule}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{start_s}",
        target.service,
        target.version,
        action.name()
    );
    // (Only when set: the ids of decisions without them are as they always were.)
    if !target.region.is_empty() {
        key.push_str(&format!("\u{1f}region={}", target.region));
    }
    for (k, v) in &target.selector {
        key.push_str(&format!("\u{1f}{k}={v}"));
    }
    let (a, b) = (fnv64(1, key.as_bytes()), fnv64(2, key.as_bytes()));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

impl PolicyEngine {
    /// A policy with fresh state.
    pub fn new(policy: Policy) -> Self {
        let recent = vec![VecDeque::new(); policy.rules.len()];
        Self {
            policy,
            state: HashMap::new(),
            recent,
            stats: PolicyStats::default(),
            rollouts: Rollouts::default(),
            roots: BTreeMap::new(),
            blamed_elsewhere: BTreeSet::new(),
        }
    }

    /// Replaces the rules (a reload), keeping the state of every rule whose name is still
    /// there (its episodes, hysteresis, cool-downs and caps) and the rollouts; returns the
    /// names of the rules whose state was dropped.
    pub fn set_policy(&mut self, policy: Policy) -> Vec<String> {
        let snap = self.snapshot();
        self.recent = vec![VecDeque::new(); policy.rules.len()];
        self.policy = policy;
        self.restore(snap)
    }

    /// The progressive rollouts.
    pub fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// Starts a progressive rollout at `now` (see [`Rollouts::start`]).
    pub fn start_rollout(
        &mut self,
        spec: RolloutSpec,
        now: UnixNanos,
    ) -> Result<(&Rollout, bool), RolloutError> {
        self.rollouts.start(spec, now)
    }

    /// Judges the active rollouts at the engine's now and moves them on.
    pub fn step_rollouts(&mut self, engine: &crate::Engine) -> Vec<Decision> {
        self.rollouts.step(engine, &self.policy.revision)
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What was held back so far.
    pub fn stats(&self) -> PolicyStats {
        self.stats
    }

    /// Evaluates every rule against the facts at `now`; returns the new decisions (actions
    /// whose hysteresis elapsed, and `resolved` for acted-on conditions that cleared).
    pub fn step(&mut self, now: UnixNanos, facts: &[ServiceFacts]) -> Vec<Decision> {
        let mut out: Vec<Decision> = Vec::new();
        for (ri, rule) in self.policy.rules.iter().enumerate() {
            let window = rule.max_actions_window.nanos();
            while self.recent[ri].front().is_some_and(|t| t + window <= now) {
                self.recent[ri].pop_front();
            }
            let mut active: BTreeMap<Target, (Evidence, String, Option<String>, UnixNanos)> =
                BTreeMap::new();
            let mut held_services: Vec<&str> = Vec::new();
            for f in facts
                .iter()
                .filter(|f| rule.services.is_empty() || rule.services.contains(&f.service))
            {
                let conditions = Self::conditions(rule, f);
                if f.stale.is_some() && !rule.act_on_stale && rule.when != When::Stale {
                    // Never act, nor resolve, on stale data: the state stays as it was.
                    self.stats.held_stale += conditions.len() as u64;
                    held_services.push(&f.service);
                    continue;
                }
                for (mut target, ev, reason, slo) in conditions {
                    target.selector.clone_from(&rule.selector);
                    let reason = if rule.selector.is_empty() {
                        reason
                    } else {
                        let sel: Vec<String> = rule
                            .selector
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        format!("{reason}; acting on {} traffic", sel.join(", "))
                    };
                    active.insert(target, (ev, reason, slo, f.observed_until));
                }
            }
            // Targets with state but no condition now: clear, and resolve an open episode.
            let known: Vec<Target> = self
                .state
                .keys()
                .filter(|(r, _)| *r == ri)
                .map(|(_, t)| t.clone())
                .collect();
            for t in known {
                if active.contains_key(&t) || held_services.contains(&t.service.as_str()) {
                    continue;
                }
                let st = self.state.get_mut(&(ri, t.clone())).expect("known target");
                st.pending_since = None;
                if let Some((start, d)) = st.episode.take() {
                    let what = if t.version.is_empty() {
                        t.service.clone()
                    } else {
                        format!("{} {}", t.service, t.version)
                    };
                    out.push(Decision {
                        decision_id: decision_id(&rule.name, &t, Action::Resolved, start),
                        action: Action::Resolved,
                        reason: format!(
                            "resolved: the condition of rule {} ({}) no longer holds for {what}",
                            rule.name, rule.when
                        ),
                        detected_at: now,
                        resolves: Some(d.decision_id.clone()),
                        ..d
                    });
                }
                if st
                    .last_action
                    .is_none_or(|a| a + rule.cooldown.nanos() <= now)
                {
                    self.state.remove(&(ri, t));
                }
            }
            for (t, (ev, reason, slo, observed_until)) in active {
                // One action per (target, action) episode across rules: the first rule wins.
                // Shadow (dry-run) and live decisions are independent: a dry-run rule never
                // suppresses a live one, nor the other way round.
                let rules = &self.policy.rules;
                let duplicate = out
                    .iter()
                    .any(|o| o.target == t && o.action == rule.action && o.dry_run == rule.dry_run)
                    || self.state.iter().any(|((r, tt), s)| {
                        *r != ri
                            && *tt == t
                            && rules[*r].dry_run == rule.dry_run
                            && s.episode
                                .as_ref()
                                .is_some_and(|(_, e)| e.action == rule.action)
                    });
                let st = self.state.entry((ri, t.clone())).or_default();
                let since = *st.pending_since.get_or_insert(now);
                if st.episode.is_some() || now < since + rule.for_.nanos() {
                    continue;
                }
                if duplicate {
                    self.stats.deduplicated += 1;
                    continue;
                }
                if st
                    .last_action
                    .is_some_and(|a| a + rule.cooldown.nanos() > now)
                {
                    self.stats.cooled_down += 1;
                    continue;
                }
                if self.recent[ri].len() >= rule.max_actions as usize {
                    self.stats.capped += 1;
                    continue;
                }
                let d = Decision {
                    decision_id: decision_id(&rule.name, &t, rule.action, since),
                    action: rule.action,
                    target: t.clone(),
                    params: rule.params.clone(),
                    severity: rule.severity,
                    reason,
                    rule: rule.name.clone(),
                    slo,
                    policy_revision: self.policy.revision.clone(),
                    dry_run: rule.dry_run,
                    evidence: ev,
                    detected_at: now,
                    observed_until,
                    resolves: None,
                    inhibited_by: None,
                };
                st.last_action = Some(now);
                st.episode = Some((since, d.clone()));
                self.recent[ri].push_back(now);
                out.push(d);
            }
        }
        self.inhibit(now, &mut out);
        out
    }
}

/// The policy's state (episodes, hysteresis, cool-downs, caps), keyed by rule name so that it
/// survives edits to the rule list. Restoring it after a restart means an ongoing condition
/// keeps its episode, and so its decision id, and is not acted on again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    rules: Vec<RuleSnapshot>,
    stats: PolicyStats,
    /// Progressive rollouts (absent in checkpoints written before they existed).
    #[serde(default)]
    rollouts: Vec<Rollout>,
    /// Open root-cause pages (absent in checkpoints written before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roots: Vec<inhibition::RootEpisode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RuleSnapshot {
    rule: String,
    recent: Vec<UnixNanos>,
    targets: Vec<(Target, RuleTarget)>,
}

impl PolicyEngine {
    /// Copies the state.
    pub fn snapshot(&self) -> PolicySnapshot {
        let rules = self
            .policy
            .rules
            .iter()
            .enumerate()
            .map(|(ri, rule)| {
                let mut targets: Vec<(Target, RuleTarget)> = self
                    .state
                    .iter()
                    .filter(|((r, _), _)| *r == ri)
                    .map(|((_, t), st)| (t.clone(), st.clone()))
                    .collect();
                targets.sort_by(|a, b| a.0.cmp(&b.0));
                RuleSnapshot {
                    rule: rule.name.clone(),
                    recent: self.recent[ri].iter().copied().collect(),
                    targets,
                }
            })
            .collect();
        PolicySnapshot {
            rules,
            stats: self.stats,
            rollouts: self.rollouts.all().to_vec(),
            roots: self.roots.values().cloned().collect(),
        }
    }

    /// Takes over the state of `snap` for the rules that still exist (by name); returns the
    /// names of the rules it dropped state for.
    pub fn restore(&mut self, snap: PolicySnapshot) -> Vec<String> {
        let mut dropped = Vec::new();
        self.state.clear();
        for r in snap.rules {
            let Some(ri) = self.policy.rules.iter().position(|x| x.name == r.rule) else {
                dropped.push(r.rule);
                continue;
            };
            self.recent[ri] = r.recent.into();
            for (t, st) in r.targets {
                self.state.insert((ri, t), st);
            }
        }
        self.stats = snap.stats;
        self.rollouts.restore(snap.rollouts);
        self.roots = snap
            .roots
            .into_iter()
            .map(|r| (r.service.clone(), r))
            .collect();
        dropped
    }
}

impl PolicyEngine {
    /// The episodes and cool-downs of the targets whose service `owns` holds (a fleet
    /// processor's partition); the per-rule action caps stay with the process.
    pub fn snapshot_of(&self, owns: impl Fn(&str) -> bool) -> PolicySnapshot {
        let mut snap = self.snapshot();
        for r in &mut snap.rules {
            r.recent.clear();
            r.targets.retain(|(t, _)| owns(&t.service));
        }
        snap.stats = PolicyStats::default();
        snap.rollouts = self.rollouts.of(&owns);
        snap.roots = inhibition::roots_of(&self.roots, &owns);
        snap
    }

    /// Takes over the targets of `snap` (from [`PolicyEngine::snapshot_of`]) for the rules
    /// that still exist, replacing the state of the same targets; returns the names of the
    /// rules it dropped state for.
    pub fn merge(&mut self, snap: PolicySnapshot) -> Vec<String> {
        let mut dropped = Vec::new();
        for r in snap.rules {
            let Some(ri) = self.policy.rules.iter().position(|x| x.name == r.rule) else {
                dropped.push(r.rule);
                continue;
            };
            for (t, st) in r.targets {
                self.state.insert((ri, t), st);
            }
        }
        self.rollouts.merge(snap.rollouts);
        inhibition::merge_roots(&mut self.roots, snap.roots);
        dropped
    }

    /// Forgets the episodes and cool-downs of the targets whose service `gone` holds.
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) {
        self.state.retain(|(_, t), _| !gone(&t.service));
        inhibition::drop_dependents(&mut self.roots, &gone);
        self.rollouts.drop_services(gone);
    }
}

/// Seconds between two engine times.
pub fn seconds(a: UnixNanos, b: UnixNanos) -> f64 {
    a.saturating_sub(b) as f64 / NANOS_PER_SEC as f64
}

#[path = "conditions.rs"]
mod conditions;
#[path = "inhibition.rs"]
mod inhibition;

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
