//! The loop's own metrics (issue 14 item 5; the seeds' M5–M11): how fast faults are detected
//! and mitigated, and how often automation acts well.
//!
//! - **Time to detect**: a decision's `detected_at` − its evidence's `first_bad_at` (when
//!   the bad events began to rise, [`trike_engine::onset`]).
//! - **Time to mitigate**: the actuator's outcome event's `time` − `detected_at`.
//! - **Control-plane latency**: the outcome's arrival here − `detected_at`.
//! - **Automation success rate**: succeeded ÷ (succeeded + failed) outcomes.
//! - **Rollbacks per deploy**: rollbacks sent ÷ versions judged as canaries (configured,
//!   detected, or a rollout's).
//! - **False-positive estimate**: actions whose condition resolved without SLO impact: over
//!   the episode (from the fault's onset, else 5 minutes before the decision, to its
//!   resolution) no SLO of the service burned its budget faster than its sustainable pace
//!   (burn ≤ 1). A service without SLOs counts as unknown.
//!
//! Only actions sent (live, neither silenced nor inhibited) count. Each process counts the
//! decisions it made, in memory (a restart starts over); outcomes of other processes'
//! decisions are ignored.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write;
use trike_engine::UnixNanos;
use trike_engine::expo::header;
use trike_engine::policy::{Action, Decision, Evidence};

/// Decisions remembered for their outcomes, and samples kept per measure.
const REMEMBERED: usize = 1000;
/// Versions remembered as deploys.
const DEPLOYS_REMEMBERED: usize = 10_000;
/// Histogram buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
const NS: f64 = 1e9;

/// One action sent, and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoopRecord {
    /// The decision (= control event) id.
    pub decision_id: String,
    /// Its service.
    pub service: String,
    /// Its action.
    pub action: String,
    /// When the fault began (engine time, ns), from the evidence.
    pub first_bad_at: Option<UnixNanos>,
    /// When it was decided (ns).
    pub detected_at: UnixNanos,
    /// The actuator's outcome (`succeeded`, `failed`, ...), once known.
    pub outcome: Option<String>,
    /// When the actuator wrote it (ns).
    pub outcome_at: Option<UnixNanos>,
    /// When it arrived here (ns).
    pub received_at: Option<UnixNanos>,
    /// Whether its resolution showed SLO impact (None: not resolved, or unknown).
    pub slo_impact: Option<bool>,
}

/// One measure's samples (seconds) and histogram.
#[derive(Clone, Debug, Default)]
struct Measure {
    recent: VecDeque<f64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Measure {
    fn add(&mut self, s: f64) {
        let s = s.max(0.0);
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(s);
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            *b += u64::from(s <= le);
        }
        self.count += 1;
        self.sum += s;
    }

    fn summary(&self) -> serde_json::Value {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| -> Option<f64> {
            (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize])
        };
        serde_json::json!({
            "count": self.count,
            "mean": (self.count > 0).then(|| self.sum / self.count as f64),
            "p50": q(0.5),
            "p90": q(0.9),
            "max": v.last(),
        })
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {b}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<LoopRecord>,
    index: HashMap<String, usize>,
    /// `index` values are positions plus this offset (records popped from the front).
    popped: usize,
    detect: Measure,
    mitigate: Measure,
    control_plane: Measure,
    outcomes: std::collections::BTreeMap<String, u64>,
    actions: u64,
    rollbacks: u64,
    deploys: BTreeSet<(String, String)>,
    deploys_counted: u64,
    resolved_impact: u64,
    resolved_no_impact: u64,
    resolved_unknown: u64,
}

impl Inner {
    fn get_mut(&mut self, id: &str) -> Option<&mut LoopRecord> {
        let at = self.index.get(id)?.checked_sub(self.popped)?;
        self.records.get_mut(at)
    }
}

/// The loop's metrics, shared by the decide hook, the outbox, the outcome reader and the API.
#[derive(Debug, Default)]
pub struct LoopStats {
    inner: Mutex<Inner>,
}

/// The evidence's onset.
fn first_bad_at(e: &Evidence) -> Option<UnixNanos> {
    match e {
        Evidence::BurnRate { first_bad_at, .. } => *first_bad_at,
        Evidence::Canary(c) => c.first_bad_at,
        Evidence::Rollout { canary, .. } => canary.as_ref().and_then(|c| c.first_bad_at),
        _ => None,
    }
}

impl LoopStats {
    /// A decision published; `sent`: it went to the control sinks (live, neither silenced nor
    /// inhibited). Actions sent are remembered for their outcomes and timed from their onset.
    pub fn decided(&self, d: &Decision, sent: bool) {
        if !sent || d.dry_run || d.action == Action::Resolved {
            return;
        }
        let mut s = self.inner.lock();
        if s.index.contains_key(&d.decision_id) {
            return;
        }
        let onset = first_bad_at(&d.evidence);
        if let Some(t) = onset {
            s.detect.add(d.detected_at.saturating_sub(t) as f64 / NS);
        }
        s.actions += 1;
        if d.action == Action::Rollback {
            s.rollbacks += 1;
        }
        if s.records.len() == REMEMBERED {
            let gone = s.records.pop_front().expect("full");
            s.index.remove(&gone.decision_id);
            s.popped += 1;
        }
        let at = s.records.len() + s.popped;
        s.index.insert(d.decision_id.clone(), at);
        s.records.push_back(LoopRecord {
            decision_id: d.decision_id.clone(),
            service: d.target.service.clone(),
            action: d.action.name().to_string(),
            first_bad_at: onset,
            detected_at: d.detected_at,
            ..LoopRecord::default()
        });
    }

    /// When an action sent was decided, and its fault's onset (None: not one of ours).
    pub fn decided_at(&self, id: &str) -> Option<(UnixNanos, Option<UnixNanos>)> {
        let mut s = self.inner.lock();
        s.get_mut(id).map(|r| (r.detected_at, r.first_bad_at))
    }

    /// An actuator's outcome for control event `id`, written at `outcome_at` and received at
    /// `received_at` (ns). Ignored unless `id` is an action sent here, and after its first.
    pub fn outcome(&self, id: &str, outcome: &str, outcome_at: UnixNanos, received_at: UnixNanos) {
        let mut s = self.inner.lock();
        let Some(r) = s.get_mut(id) else {
            return;
        };
        if r.outcome.is_some() {
            return;
        }
        r.outcome = Some(outcome.to_string());
        r.outcome_at = Some(outcome_at);
        r.received_at = Some(received_at);
        let detected = r.detected_at;
        *s.outcomes.entry(outcome.to_string()).or_default() += 1;
        if outcome == "succeeded" {
            s.mitigate
                .add(outcome_at.saturating_sub(detected) as f64 / NS);
        }
        s.control_plane
            .add(received_at.saturating_sub(detected) as f64 / NS);
    }

    /// The action `id` resolved; `burn` is the highest burn rate of its service's SLOs over
    /// the episode (None: the service has no SLO with events).
    pub fn resolved(&self, id: &str, burn: Option<f64>) {
        let mut s = self.inner.lock();
        let Some(r) = s.get_mut(id) else {
            return;
        };
        if r.slo_impact.is_some() {
            return;
        }
        let impact = burn.map(|b| b > 1.0);
        r.slo_impact = impact;
        match impact {
            Some(true) => s.resolved_impact += 1,
            Some(false) => s.resolved_no_impact += 1,
            None => s.resolved_unknown += 1,
        }
    }

    /// A version judged as a canary of `service`: one deploy, counted once.
    pub fn deploy(&self, service: &str, version: &str) {
        let mut s = self.inner.lock();
        let key = (service.to_string(), version.to_string());
        if s.deploys.contains(&key) {
            return;
        }
        if s.deploys.len() == DEPLOYS_REMEMBERED {
            s.deploys.pop_first();
        }
        s.deploys.insert(key);
        s.deploys_counted += 1;
    }

    /// `GET /api/v1/loop`.
    pub fn json(&self) -> serde_json::Value {
        let s = self.inner.lock();
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let ok = s.outcomes.get("succeeded").copied().unwrap_or(0);
        let failed = s.outcomes.get("failed").copied().unwrap_or(0);
        let resolved = s.resolved_impact + s.resolved_no_impact;
        serde_json::json!({
            "time_to_detect_s": s.detect.summary(),
            "time_to_mitigate_s": s.mitigate.summary(),
            "control_plane_s": s.control_plane.summary(),
            "outcomes": s.outcomes,
            "success_rate": ratio(ok, ok + failed),
            "actions": s.actions,
            "rollbacks": s.rollbacks,
            "deploys": s.deploys_counted,
            "rollbacks_per_deploy": ratio(s.rollbacks, s.deploys_counted),
            "resolved": {"slo_impact": s.resolved_impact, "no_impact": s.resolved_no_impact, "unknown": s.resolved_unknown},
            "false_positive_rate": ratio(s.resolved_no_impact, resolved),
            "recent": s.records.iter().rev().take(50).collect::<Vec<_>>(),
        })
    }

    /// The `/metrics` families.
    pub fn render(&self, out: &mut String) {
        let s = self.inner.lock();
        s.detect.render(
            out,
            "trike_loop_detect_seconds",
            "Time to detect: an action's decision time minus its evidence's fault onset.",
        );
        s.mitigate.render(
            out,
            "trike_loop_mitigate_seconds",
            "Time to mitigate: a successful outcome's time minus the decision's.",
        );
        s.control_plane.render(
            out,
            "trike_loop_control_plane_seconds",
            "Control-plane latency: an outcome's arrival here minus the decision's time.",
        );
        let name = "trike_loop_outcomes_total";
        header(
            out,
            name,
            "Actuator outcomes of the actions sent from here.",
            "counter",
        );
        for o in ["succeeded", "failed", "skipped_duplicate", "rejected"] {
            let v = s.outcomes.get(o).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{outcome=\"{o}\"}} {v}");
        }
        let name = "trike_loop_resolved_total";
        header(
            out,
            name,
            "Actions whose condition resolved, by whether their service's SLOs burned faster than their sustainable pace over the episode (none: an estimated false positive).",
            "counter",
        );
        for (impact, v) in [
            ("slo", s.resolved_impact),
            ("none", s.resolved_no_impact),
            ("unknown", s.resolved_unknown),
        ] {
            let _ = writeln!(out, "{name}{{impact=\"{impact}\"}} {v}");
        }
        for (name, help, v) in [
            (
                "trike_loop_actions_total",
                "Actions sent (live, neither silenced nor inhibited).",
                s.actions,
            ),
            ("trike_loop_rollbacks_total", "Rollbacks sent.", s.rollbacks),
            (
                "trike_loop_deploys_total",
                "Versions judged as canaries (deploys).",
                s.deploys_counted,
            ),
        ] {
            trike_engine::expo::counter(out, name, help, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use trike_engine::policy::Target;
    use trike_engine::slo::Severity;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * S;

    fn decision(id: &str, action: Action, onset: Option<u64>, at: u64) -> Decision {
        let mut canary = trike_engine::canary::CanaryResult {
            service: "checkout".into(),
            baseline: "1".into(),
            canary: "2".into(),
            verdict: trike_engine::canary::Verdict::Fail,
            score: 0.0,
            metrics: vec![],
            sequential: None,
            attribution: vec![],
            first_bad_at: None,
        };
        canary.first_bad_at = onset;
        Decision {
            decision_id: id.into(),
            action,
            target: Target {
                service: "checkout".into(),
                version: "2".into(),
                ..Target::default()
            },
            params: BTreeMap::new(),
            severity: Severity::Page,
            reason: String::new(),
            rule: "r".into(),
            slo: None,
            policy_revision: String::new(),
            dry_run: false,
            evidence: Evidence::Canary(canary),
            detected_at: at,
            observed_until: at,
            resolves: None,
            inhibited_by: None,
        }
    }

    /// Scenario: a rollback decided 12 s after its fault's onset, succeeded 2.5 s later and
    /// heard of 0.5 s after that; a page that failed; a silenced rollback; a resolution with
    /// and one without SLO impact; two canary versions (one judged twice).
    /// Guarantees: each measure is the difference of its timestamps; only actions sent count;
    /// outcomes of unknown ids and second outcomes are ignored; the rates follow.
    #[test]
    fn the_loop_is_timed_from_its_timestamps() {
        let l = LoopStats::default();
        l.decided(
            &decision("a", Action::Rollback, Some(T0), T0 + 12 * S),
            true,
        );
        l.decided(&decision("b", Action::Page, None, T0 + 20 * S), true);
        l.decided(
            &decision("c", Action::Rollback, Some(T0), T0 + 20 * S),
            false,
        );
        l.outcome("a", "succeeded", T0 + 14 * S + S / 2, T0 + 15 * S);
        l.outcome("a", "failed", T0 + 16 * S, T0 + 16 * S);
        l.outcome("b", "failed", T0 + 21 * S, T0 + 21 * S);
        l.outcome("zzz", "succeeded", T0, T0);
        l.resolved("a", Some(30.0));
        l.resolved("b", Some(0.4));
        l.deploy("checkout", "2");
        l.deploy("checkout", "2");
        l.deploy("checkout", "3");
        let j = l.json();
        assert_eq!(j["time_to_detect_s"]["count"], 1);
        assert_eq!(j["time_to_detect_s"]["mean"], 12.0);
        assert_eq!(j["time_to_mitigate_s"]["p50"], 2.5);
        assert_eq!(j["control_plane_s"]["max"], 3.0);
        assert_eq!(j["control_plane_s"]["count"], 2);
        assert_eq!(
            j["outcomes"],
            serde_json::json!({"succeeded": 1, "failed": 1})
        );
        assert_eq!(j["success_rate"], 0.5);
        assert_eq!(
            (j["actions"].clone(), j["rollbacks"].clone()),
            (2.into(), 1.into())
        );
        assert_eq!(j["deploys"], 2);
        assert_eq!(j["rollbacks_per_deploy"], 0.5);
        assert_eq!(j["false_positive_rate"], 0.5);
        assert_eq!(j["recent"][1]["decision_id"], "a");
        assert_eq!(j["recent"][1]["slo_impact"], true);
        let mut text = String::new();
        l.render(&mut text);
        assert!(
            text.contains("trike_loop_detect_seconds_bucket{le=\"10\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("trike_loop_detect_seconds_bucket{le=\"30\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("trike_loop_resolved_total{impact=\"none\"} 1\n"),
            "{text}"
        );
    }

    /// Guarantees: memory is bounded: the oldest decisions are forgotten (their outcomes then
    /// ignored), the newest still found.
    #[test]
    fn old_decisions_are_forgotten() {
        let l = LoopStats::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            l.decided(
                &decision(&format!("d{i}"), Action::Page, None, T0 + i),
                true,
            );
        }
        assert_eq!(l.decided_at("d0"), None);
        assert_eq!(l.decided_at("d1009"), Some((T0 + 1009, None)));
        l.outcome("d5", "succeeded", T0, T0);
        l.outcome("d1005", "succeeded", T0 + 2000, T0 + 2000);
        assert_eq!(l.json()["outcomes"]["succeeded"], 1);
    }
}
