//! Progressive rollouts (DESIGN §9): a canary version moves through traffic-weight steps
//! (`set_weight` at the start of each); the judge compares it with the baseline continuously
//! while a step runs; `promote` follows the last step's pass, `rollback` the first failing
//! verdict, and a step that reaches `step_max` without a pass (no traffic, or inconclusive) is
//! held and paged: a rollout is never promoted blind.
//!
//! - A step passes once it has run `step_min` and its verdict is `pass`; both arms are read
//!   over the step's own time range, so a canary that goes bad at a step is judged on that
//!   step's requests. A step at 100 % leaves the baseline no traffic: its baseline arm is the
//!   baseline's requests since the rollout started.
//! - A held step keeps being judged: a later pass resumes it (the page is `resolved`), a fail
//!   rolls back.
//! - Rollouts of one service never overlap: starting another while one is active is refused
//!   (starting the same versions again returns the active one, so a redelivered deploy event
//!   is harmless).
//!
//! Pure and deterministic on engine time. Decision ids derive from (rollout, step, action), so
//! a restart that restores the rollouts re-emits at most the same ids.

use crate::Engine;
use crate::canary::{CanaryMetric, CanaryResult, CanarySpec, Verdict, arm, judge_arms};
use crate::canary_seq::{Running, SeqConfig};
use crate::policy::{Action, Decision, Evidence, Target, decision_id};
use crate::slo::Severity;
use crate::time::{NANOS_PER_SEC, Span, UnixNanos};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Finished rollouts kept for the API, at most (the oldest go first).
pub const FINISHED_KEPT: usize = 100;
/// The rule name on rollout decisions.
pub const RULE: &str = "rollout";

fn default_steps() -> Vec<f64> {
    vec![5.0, 25.0, 50.0, 100.0]
}
const fn default_step_min() -> Span {
    Span::minutes(2)
}
const fn default_step_max() -> Span {
    Span::minutes(15)
}
fn default_min_requests() -> u64 {
    CanarySpec::new("", "", "").min_requests
}

/// What `POST /api/v1/rollouts` and an `io.trike.deploy.started` event carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Service.
    pub service: String,
    /// The version serving now.
    pub baseline: String,
    /// The version being rolled out.
    pub canary: String,
    /// Canary traffic weights in percent, increasing, each in (0, 100].
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// A step passes no sooner than this.
    #[serde(default = "default_step_min")]
    pub step_min: Span,
    /// A step without a pass by then is held and paged.
    #[serde(default = "default_step_max")]
    pub step_max: Span,
    /// Requests each arm needs in a step before the judge decides.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Which test decides a step: `sequential` (default: anytime-valid, so a step fails or
    /// passes as soon as the evidence is there) or `exact` (the fixed-horizon judge of
    /// `/api/v1/canaries`). The evidence carries both.
    #[serde(default)]
    pub judge: Judge,
}

pub use crate::canary::Judge;

impl RolloutSpec {
    /// A spec with the default steps, durations and sample size.
    pub fn new(service: &str, baseline: &str, canary: &str) -> Self {
        Self {
            service: service.into(),
            baseline: baseline.into(),
            canary: canary.into(),
            steps: default_steps(),
            step_min: default_step_min(),
            step_max: default_step_max(),
            min_requests: default_min_requests(),
            judge: Judge::default(),
        }
    }

    /// Refuses a spec that cannot run, saying which field to change.
    pub fn validate(&self) -> Result<(), RolloutError> {
        let bad = |why: String| Err(RolloutError::Invalid(why));
        for (field, v) in [
            ("service", &self.service),
            ("baseline", &self.baseline),
            ("canary", &self.canary),
        ] {
            if v.trim().is_empty() {
                return bad(format!("{field} is empty"));
            }
        }
        if self.baseline == self.canary {
            return bad(format!(
                "canary and baseline are both {:?}: a rollout compares two versions",
                self.canary
            ));
        }
        if self.steps.is_empty() {
            return bad("steps is empty: give the canary's weights, e.g. [5, 25, 50, 100]".into());
        }
        let mut last = 0.0;
        for &w in &self.steps {
            if !(w > last && w <= 100.0) {
                return bad(format!(
                    "steps {:?}: each weight must be above the one before and at most 100",
                    self.steps
                ));
            }
            last = w;
        }
        if self.step_min > self.step_max {
            return bad(format!(
                "step_min {} is longer than step_max {}",
                self.step_min, self.step_max
            ));
        }
        if self.min_requests == 0 {
            return bad("min_requests must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a rollout did not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The spec cannot run.
    #[error("invalid rollout: {0}")]
    Invalid(String),
    /// The service has an active rollout of other versions.
    #[error(
        "{service} already has an active rollout ({id}: {baseline} -> {canary}); rollouts of one service never overlap"
    )]
    Overlap {
        /// Service.
        service: String,
        /// The active rollout.
        id: String,
        /// Its baseline.
        baseline: String,
        /// Its canary.
        canary: String,
    },
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A step is being judged.
    Running,
    /// A step reached `step_max` without a pass: held (paged), still judged.
    Holding,
    /// Every step passed; `promote` was emitted.
    Promoted,
    /// A step failed; `rollback` was emitted.
    RolledBack,
}

impl Phase {
    /// Still moving (or held): not finished.
    pub const fn active(self) -> bool {
        matches!(self, Phase::Running | Phase::Holding)
    }
}

/// One finished step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Canary weight, percent.
    pub weight: f64,
    /// When it started.
    pub started_at: UnixNanos,
    /// When it ended.
    pub ended_at: UnixNanos,
    /// Its last verdict.
    pub verdict: Verdict,
}

/// One rollout and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Deterministic id (service, canary, start second).
    pub id: String,
    /// What was asked.
    pub spec: RolloutSpec,
    /// When it started (engine time).
    pub started_at: UnixNanos,
    /// Where it stands.
    pub phase: Phase,
    /// Index of the current (or last) step in `spec.steps`.
    pub step: usize,
    /// When the current step started.
    pub step_started: UnixNanos,
    /// The current step's `set_weight` was emitted.
    pub announced: bool,
    /// The latest verdict of the current step.
    pub verdict: Verdict,
    /// The judge's latest result.
    pub evidence: Option<CanaryResult>,
    /// When it was last judged.
    pub judged_at: UnixNanos,
    /// When it finished.
    pub ended_at: Option<UnixNanos>,
    /// The open page of a held step.
    pub page: Option<String>,
    /// Steps passed.
    pub passed: Vec<StepRecord>,
    /// Ids of its decisions, in order.
    pub decisions: Vec<String>,
    /// The current step's sequential test.
    #[serde(default)]
    pub test: Option<Running>,
}

impl Rollout {
    /// The current step's canary weight.
    pub fn weight(&self) -> f64 {
        self.spec.steps[self.step.min(self.spec.steps.len() - 1)]
    }

    fn target(&self) -> Target {
        Target {
            service: self.spec.service.clone(),
            version: self.spec.canary.clone(),
            ..Target::default()
        }
    }

    fn evidence(&self) -> Evidence {
        Evidence::Rollout {
            rollout_id: self.id.clone(),
            step: self.step + 1,
            steps: self.spec.steps.clone(),
            weight: self.weight(),
            phase: self.phase,
            canary: self.evidence.clone(),
        }
    }
}

/// Every rollout: the active ones and the last [`FINISHED_KEPT`] finished.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollouts {
    items: Vec<Rollout>,
}

/// One rollout decision's parts.
struct Emit<'a> {
    action: Action,
    severity: Severity,
    params: BTreeMap<String, f64>,
    reason: String,
    resolves: Option<&'a str>,
}

fn span_text(d: UnixNanos) -> String {
    let s = d.div_ceil(NANOS_PER_SEC);
    if s == 0 {
        "0s".into()
    } else {
        Span(s).to_string()
    }
}

fn summary(c: &CanaryResult) -> String {
    let parts: Vec<String> = c
        .metrics
        .iter()
        .map(|m| match m.metric {
            CanaryMetric::ErrorRatio => format!(
                "error ratio {:.2} % vs {:.2} % ({})",
                m.canary.unwrap_or(0.0) * 100.0,
                m.baseline.unwrap_or(0.0) * 100.0,
                verdict_name(m.verdict)
            ),
            CanaryMetric::Latency => format!(
                "median {:.1} ms vs {:.1} ms ({})",
                m.canary.unwrap_or(0.0),
                m.baseline.unwrap_or(0.0),
                verdict_name(m.verdict)
            ),
        })
        .collect();
    let n = c
        .metrics
        .first()
        .map_or((0, 0), |m| (m.canary_n, m.baseline_n));
    format!(
        "{}; {} canary and {} baseline requests",
        parts.join(", "),
        n.0,
        n.1
    )
}

const fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Inconclusive => "inconclusive",
        Verdict::Fail => "fail",
    }
}

impl Rollouts {
    /// Every rollout, oldest first.
    pub fn all(&self) -> &[Rollout] {
        &self.items
    }

    /// The active rollout of `service`, if any.
    pub fn active(&self, service: &str) -> Option<&Rollout> {
        self.items
            .iter()
            .find(|r| r.phase.active() && r.spec.service == service)
    }

    /// True when some rollout is active.
    pub fn any_active(&self) -> bool {
        self.items.iter().any(|r| r.phase.active())
    }

    /// Starts a rollout at `now`; `Ok((rollout, false))` when the same versions of the service
    /// are already rolling out.
    pub fn start(
        &mut self,
        spec: RolloutSpec,
        now: UnixNanos,
    ) -> Result<(&Rollout, bool), RolloutError> {
        spec.validate()?;
        if let Some(i) = self
            .items
            .iter()
            .position(|r| r.phase.active() && r.spec.service == spec.service)
        {
            let r = &self.items[i];
            if r.spec.baseline == spec.baseline && r.spec.canary == spec.canary {
                return Ok((&self.items[i], false));
            }
            return Err(RolloutError::Overlap {
                service: r.spec.service.clone(),
                id: r.id.clone(),
                baseline: r.spec.baseline.clone(),
                canary: r.spec.canary.clone(),
            });
        }
        let id = decision_id(
            "rollout-start",
            &Target {
                service: spec.service.clone(),
                version: spec.canary.clone(),
                ..Target::default()
            },
            Action::SetWeight,
            now,
        );
        self.items.push(Rollout {
            id,
            spec,
            started_at: now,
            phase: Phase::Running,
            step: 0,
            step_started: now,
            announced: false,
            verdict: Verdict::Inconclusive,
            evidence: None,
            judged_at: now,
            ended_at: None,
            page: None,
            passed: Vec::new(),
            decisions: Vec::new(),
            test: None,
        });
        self.trim();
        Ok((self.items.last().expect("just pushed"), true))
    }

    /// The id the first decision of rollout `r` gets (its first `set_weight`).
    pub fn first_decision_id(r: &Rollout) -> String {
        decision_id(
            &format!("{RULE}/{}/{}", r.id, 0),
            &r.target(),
            Action::SetWeight,
            r.started_at,
        )
    }

    fn trim(&mut self) {
        let finished = self.items.iter().filter(|r| !r.phase.active()).count();
        let mut drop = finished.saturating_sub(FINISHED_KEPT);
        self.items.retain(|r| {
            if drop > 0 && !r.phase.active() {
                drop -= 1;
                return false;
            }
            true
        });
    }

    /// Judges every active rollout at the engine's now and moves it on; returns the decisions,
    /// stamped with policy revision `revision`.
    pub fn step(&mut self, engine: &Engine, revision: &str) -> Vec<Decision> {
        let now = engine.now();
        let mut out = Vec::new();
        for r in self.items.iter_mut().filter(|r| r.phase.active()) {
            let observed_until = engine
                .service_freshness(&r.spec.service)
                .map_or(0, |(event, _)| event);
            let mut emit = |r: &mut Rollout, e: Emit<'_>| {
                let d = Decision {
                    decision_id: decision_id(
                        &format!("{RULE}/{}/{}", r.id, r.step),
                        &r.target(),
                        e.action,
                        r.started_at,
                    ),
                    action: e.action,
                    target: r.target(),
                    params: e.params,
                    severity: e.severity,
                    reason: e.reason,
                    rule: RULE.into(),
                    slo: None,
                    policy_revision: revision.into(),
                    dry_run: false,
                    evidence: r.evidence(),
                    detected_at: now,
                    observed_until,
                    resolves: e.resolves.map(str::to_string),
                    inhibited_by: None,
                };
                r.decisions.push(d.decision_id.clone());
                out.push(d);
            };
            if !r.announced {
                announce(r, &mut emit);
            }
            let result = judge(engine, r, now);
            let elapsed = now.saturating_sub(r.step_started);
            r.verdict = result.verdict;
            r.judged_at = now;
            let detail = summary(&result);
            r.evidence = Some(result);
            let step_text = format!(
                "step {} of {} ({} %)",
                r.step + 1,
                r.spec.steps.len(),
                r.weight()
            );
            match r.verdict {
                Verdict::Fail => {
                    r.phase = Phase::RolledBack;
                    r.ended_at = Some(now);
                    let reason = format!(
                        "{} {} failed canary analysis against {} at rollout {step_text} after {}: {detail}; rolled back",
                        r.spec.service,
                        r.spec.canary,
                        r.spec.baseline,
                        span_text(elapsed)
                    );
                    emit(
                        r,
                        Emit {
                            action: Action::Rollback,
                            severity: Severity::Page,
                            params: BTreeMap::from([("weight".to_string(), 0.0)]),
                            reason,
                            resolves: None,
                        },
                    );
                    resolve_page(r, &mut emit, "the rollout was rolled back");
                }
                Verdict::Pass if elapsed >= r.spec.step_min.nanos() => {
                    r.passed.push(StepRecord {
                        weight: r.weight(),
                        started_at: r.step_started,
                        ended_at: now,
                        verdict: Verdict::Pass,
                    });
                    resolve_page(r, &mut emit, "the step passed");
                    if r.step + 1 == r.spec.steps.len() {
                        r.phase = Phase::Promoted;
                        r.ended_at = Some(now);
                        let reason = format!(
                            "{} {} passed all {} rollout steps against {} in {}: {detail}; promoted",
                            r.spec.service,
                            r.spec.canary,
                            r.spec.steps.len(),
                            r.spec.baseline,
                            span_text(now.saturating_sub(r.started_at))
                        );
                        emit(
                            r,
                            Emit {
                                action: Action::Promote,
                                severity: Severity::Ticket,
                                params: BTreeMap::from([("weight".to_string(), 100.0)]),
                                reason,
                                resolves: None,
                            },
                        );
                    } else {
                        r.step += 1;
                        r.step_started = now;
                        r.phase = Phase::Running;
                        r.verdict = Verdict::Inconclusive;
                        r.evidence = None;
                        r.test = None;
                        announce(r, &mut emit);
                    }
                }
                _ if r.phase == Phase::Running && elapsed >= r.spec.step_max.nanos() => {
                    r.phase = Phase::Holding;
                    let reason = format!(
                        "{} {} rollout held at {step_text}: no pass after {} ({}: {detail}); not promoted, a human decides",
                        r.spec.service,
                        r.spec.canary,
                        span_text(elapsed),
                        verdict_name(r.verdict)
                    );
                    emit(
                        r,
                        Emit {
                            action: Action::Page,
                            severity: Severity::Page,
                            params: BTreeMap::new(),
                            reason,
                            resolves: None,
                        },
                    );
                    r.page = r.decisions.last().cloned();
                }
                _ => {}
            }
        }
        self.trim();
        out
    }

    /// The rollouts of the services `owns` holds (a fleet processor's partition).
    pub fn of(&self, owns: impl Fn(&str) -> bool) -> Vec<Rollout> {
        self.items
            .iter()
            .filter(|r| owns(&r.spec.service))
            .cloned()
            .collect()
    }

    /// Replaces every rollout.
    pub fn restore(&mut self, items: Vec<Rollout>) {
        self.items = items;
    }

    /// Takes over `items`, replacing the rollouts of their services.
    pub fn merge(&mut self, items: Vec<Rollout>) {
        for r in items {
            self.items.retain(|x| x.id != r.id);
            self.items.push(r);
        }
        self.items.sort_by_key(|r| r.started_at);
        self.trim();
    }

    /// Forgets the rollouts of the services `gone` holds.
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) {
        self.items.retain(|r| !gone(&r.spec.service));
    }
}

/// Emits the current step's `set_weight`.
fn announce(r: &mut Rollout, emit: &mut impl FnMut(&mut Rollout, Emit<'_>)) {
    r.announced = true;
    let reason = format!(
        "{} {}: rollout step {} of {}, canary weight {} % (baseline {})",
        r.spec.service,
        r.spec.canary,
        r.step + 1,
        r.spec.steps.len(),
        r.weight(),
        r.spec.baseline
    );
    emit(
        r,
        Emit {
            action: Action::SetWeight,
            severity: Severity::Ticket,
            params: BTreeMap::from([("weight".to_string(), r.weight())]),
            reason,
            resolves: None,
        },
    );
}

/// Resolves a held step's page.
fn resolve_page(r: &mut Rollout, emit: &mut impl FnMut(&mut Rollout, Emit<'_>), why: &str) {
    let Some(page) = r.page.take() else { return };
    let reason = format!(
        "{} {} rollout no longer held: {why}",
        r.spec.service, r.spec.canary
    );
    emit(
        r,
        Emit {
            action: Action::Resolved,
            severity: Severity::Ticket,
            params: BTreeMap::new(),
            reason,
            resolves: Some(&page),
        },
    );
}

/// Judges the current step of `r`: both arms over the step's time range (the baseline since
/// the rollout started when the step leaves it no traffic); the sequential test takes what the
/// seconds completed since its last look and, when it is the step's judge, decides the verdict.
fn judge(engine: &Engine, r: &mut Rollout, now: UnixNanos) -> CanaryResult {
    let window = |since: UnixNanos| Span(now.saturating_sub(since).div_ceil(NANOS_PER_SEC).max(1));
    let step = window(r.step_started);
    let full = r.weight() >= 100.0;
    let base = if full { window(r.started_at) } else { step };
    let mut spec = CanarySpec::new(&r.spec.service, &r.spec.baseline, &r.spec.canary);
    spec.min_requests = r.spec.min_requests;
    spec.window = step;
    let b = arm(engine, &r.spec.service, &r.spec.baseline, base);
    let c = arm(engine, &r.spec.service, &r.spec.canary, step);
    let mut result = judge_arms(&spec, &b, &c);
    if full {
        return result;
    }
    let t = r.test.get_or_insert_with(|| {
        Running::new(
            SeqConfig {
                error_tolerance: spec.error_tolerance,
                ..SeqConfig::default()
            },
            r.step_started,
        )
    });
    let evidence = t.look(
        engine,
        &r.spec.service,
        &r.spec.baseline,
        &r.spec.canary,
        b.digest.as_ref(),
    );
    if r.spec.judge == Judge::Sequential {
        result.verdict = evidence.verdict;
    }
    result.sequential = Some(evidence);
    result
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
