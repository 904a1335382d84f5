//! The control event (DESIGN §4): one typed value from the decider to the actuator. CloudEvents
//! 1.0, structured JSON. Built from a decision here, serialised here (object keys sorted, the
//! canonical form the signature covers), and parsed here: reading an event that lacks a field
//! is an error naming the field, never a silent `""`. Fields a newer Trike adds are ignored on
//! reading (the signature, checked on the event as received, still covers them).

use crate::rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use trike_engine::policy::{Action, Decision};
use trike_engine::slo::Severity;

/// The CloudEvents `type` prefix of control events.
pub const TYPE_PREFIX: &str = "io.trike.control.";
/// The CloudEvents version.
pub const SPEC_VERSION: &str = "1.0";

/// A control event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlEvent {
    /// `1.0`.
    pub specversion: String,
    /// The decision id (deterministic: the same decision keeps its id across restarts).
    pub id: String,
    /// `trike://<instance>`.
    pub source: String,
    /// `io.trike.control.<action>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The service.
    pub subject: String,
    /// When it was decided (RFC 3339).
    pub time: String,
    /// `application/json`.
    pub datacontenttype: String,
    /// The decision.
    pub data: ControlData,
    /// HMAC-SHA256 of the canonical event without this attribute (when signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trikesignature: Option<String>,
    /// The id of the key that signed it (when signed with a named key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trikekeyid: Option<String>,
}

/// What a control event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Service.
    pub service: String,
    /// Version; `null` when the decision is about the whole service (always written, as
    /// DESIGN §4 lists it: a consumer's schema can require the key).
    #[serde(default)]
    pub version: Option<String>,
    /// Operation, when the decision is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Region, when the decision is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Which of the service's traffic (dimension → value), when the rule selects some (e.g.
    /// `traffic.class: batch`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// `data` of a control event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlData {
    /// Same as the event's id.
    pub decision_id: String,
    /// What to do.
    pub action: Action,
    /// On what.
    pub target: Target,
    /// Parameters (`weight`, `rate_limit`).
    pub params: BTreeMap<String, f64>,
    /// Who is told.
    pub severity: Severity,
    /// One human sentence.
    pub reason: String,
    /// The rule that decided.
    pub rule: String,
    /// The SLO involved, if any (`null` otherwise).
    pub slo: Option<String>,
    /// The rule set's revision.
    pub policy_revision: String,
    /// Decided by a dry-run rule: actuators log it only.
    pub dry_run: bool,
    /// The numbers behind it (kind-tagged: burn_rate, canary, stale, anomaly, budget).
    pub evidence: Value,
    /// When it was decided (RFC 3339).
    pub detected_at: String,
    /// Event time of the newest data used (RFC 3339).
    pub observed_until: String,
    /// For `resolved`: the decision it resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolves: Option<String>,
    /// Matched by an active silence or maintenance window: recorded, not sent to the sinks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub silenced: bool,
    /// The silence that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
    /// Its cause is a failing dependency, paged by this decision instead: recorded, not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibited_by: Option<String>,
}

/// Why bytes are not a control event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or a field missing or of the wrong type (serde names it).
    #[error("not a Trike control event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Well-formed, but not a control event of this version.
    #[error("not a Trike control event: {0}")]
    Invalid(String),
}

impl ControlEvent {
    /// The control event for `d`, from Trike instance `instance` (unsigned).
    pub fn from_decision(d: &Decision, instance: &str) -> Self {
        let target = Target {
            service: d.target.service.clone(),
            version: (!d.target.version.is_empty()).then(|| d.target.version.clone()),
            operation: None,
            region: (!d.target.region.is_empty()).then(|| d.target.region.clone()),
            selector: d.target.selector.clone(),
        };
        Self {
            specversion: SPEC_VERSION.into(),
            id: d.decision_id.clone(),
            source: format!("trike://{instance}"),
            kind: format!("{TYPE_PREFIX}{}", d.action.name()),
            subject: d.target.service.clone(),
            time: rfc3339(d.detected_at),
            datacontenttype: "application/json".into(),
            data: ControlData {
                decision_id: d.decision_id.clone(),
                action: d.action,
                target,
                params: d.params.clone(),
                severity: d.severity,
                reason: d.reason.clone(),
                rule: d.rule.clone(),
                slo: d.slo.clone(),
                policy_revision: d.policy_revision.clone(),
                dry_run: d.dry_run,
                evidence: serde_json::to_value(&d.evidence).unwrap_or(Value::Null),
                detected_at: rfc3339(d.detected_at),
                observed_until: rfc3339(d.observed_until),
                resolves: d.resolves.clone(),
                silenced: false,
                silenced_by: None,
                inhibited_by: d.inhibited_by.clone(),
            },
            trikesignature: None,
            trikekeyid: None,
        }
    }

    /// As a JSON value (object keys sorted).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a control event is always JSON")
    }

    /// The wire form: compact JSON with object keys sorted.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// Reads a control event: every field of DESIGN §4 must be there with its type, and the
    /// type must match the action.
    pub fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        Self::check(serde_json::from_slice(bytes)?)
    }

    /// Like [`ControlEvent::parse`], from a JSON value.
    pub fn from_value(v: Value) -> Result<Self, EventError> {
        Self::check(serde_json::from_value(v)?)
    }

    fn check(e: Self) -> Result<Self, EventError> {
        if e.specversion != SPEC_VERSION {
            return Err(EventError::Invalid(format!(
                "specversion {:?} is not {SPEC_VERSION}",
                e.specversion
            )));
        }
        let want = format!("{TYPE_PREFIX}{}", e.data.action.name());
        if e.kind != want {
            return Err(EventError::Invalid(format!(
                "type {:?} does not match data.action {} (expected {want})",
                e.kind,
                e.data.action.name()
            )));
        }
        Ok(e)
    }

    /// The version targeted, or "".
    pub fn version(&self) -> &str {
        self.data.target.version.as_deref().unwrap_or("")
    }
}

/// An actuator's outcome for a control event (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The executor ran and succeeded (or there was nothing to run: dry run, resolution).
    Succeeded,
    /// The executor failed, or there was none.
    Failed,
    /// Already executed or claimed: not executed again.
    SkippedDuplicate,
    /// Not a valid, signed control event: not executed.
    Rejected,
}

impl Outcome {
    /// The CloudEvents type suffix and `data.outcome` value.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::SkippedDuplicate => "skipped_duplicate",
            Outcome::Rejected => "rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trike_engine::policy::{Evidence, Target as DecisionTarget};

    fn decision() -> Decision {
        Decision {
            decision_id: "0a1b2c3d-0000-0000-0000-000000000000".into(),
            action: Action::Rollback,
            target: DecisionTarget {
                service: "checkout".into(),
                version: "1.5.0".into(),
                ..Default::default()
            },
            params: BTreeMap::from([("weight".to_string(), 0.0)]),
            severity: Severity::Page,
            reason: "checkout 1.5.0 failed canary analysis".into(),
            rule: "rollback-bad-canary".into(),
            slo: None,
            policy_revision: "abc".into(),
            dry_run: false,
            evidence: Evidence::Stale {
                silent_s: 1.0,
                lag_s: 0.0,
            },
            detected_at: 1_795_346_452_000_000_000,
            observed_until: 1_795_346_451_500_000_000,
            resolves: None,
            inhibited_by: None,
        }
    }

    /// Guarantees: the wire form is byte for byte the DESIGN §4 event (every attribute and
    /// data field, keys sorted, `slo` null when none, no version key for a service-wide
    /// decision), and it reads back as the same value.
    #[test]
    fn the_json_is_pinned() {
        let e = ControlEvent::from_decision(&decision(), "trike-0");
        assert_eq!(
            e.to_json(),
            concat!(
                r#"{"data":{"action":"rollback","decision_id":"0a1b2c3d-0000-0000-0000-000000000000","#,
                r#""detected_at":"2026-11-22T11:20:52.000Z","dry_run":false,"evidence":{"kind":"stale","lag_s":0.0,"silent_s":1.0},"#,
                r#""observed_until":"2026-11-22T11:20:51.500Z","params":{"weight":0.0},"policy_revision":"abc","#,
                r#""reason":"checkout 1.5.0 failed canary analysis","rule":"rollback-bad-canary","severity":"page","slo":null,"#,
                r#""target":{"service":"checkout","version":"1.5.0"}},"datacontenttype":"application/json","#,
                r#""id":"0a1b2c3d-0000-0000-0000-000000000000","source":"trike://trike-0","specversion":"1.0","#,
                r#""subject":"checkout","time":"2026-11-22T11:20:52.000Z","type":"io.trike.control.rollback"}"#
            )
        );
        assert_eq!(ControlEvent::parse(e.to_json().as_bytes()).unwrap(), e);
        let mut whole = decision();
        whole.target.version = String::new();
        whole.action = Action::Page;
        let e = ControlEvent::from_decision(&whole, "trike-0");
        let target = &e.to_value()["data"]["target"];
        assert_eq!(
            target.get("version"),
            Some(&serde_json::Value::Null),
            "{target}"
        );
        assert_eq!(ControlEvent::parse(e.to_json().as_bytes()).unwrap(), e);
        assert_eq!(e.version(), "");
        assert_eq!(e.kind, "io.trike.control.page");
    }

    /// Guarantees: an event that lacks a field, or whose type and action disagree, is an
    /// error naming the field (never read as "").
    #[test]
    fn missing_fields_are_named() {
        let e = ControlEvent::from_decision(&decision(), "trike-0");
        for (path, field) in [
            (&["data", "reason"][..], "reason"),
            (&["data", "target", "service"][..], "service"),
            (&["subject"][..], "subject"),
            (&["data", "policy_revision"][..], "policy_revision"),
        ] {
            let mut v = e.to_value();
            let mut at = &mut v;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at.as_object_mut().unwrap().remove(path[path.len() - 1]);
            let err = ControlEvent::from_value(v).unwrap_err().to_string();
            assert!(err.contains(&format!("missing field `{field}`")), "{err}");
        }
        let mut v = e.to_value();
        v["type"] = "io.trike.control.promote".into();
        let err = ControlEvent::from_value(v).unwrap_err().to_string();
        assert!(err.contains("does not match data.action rollback"), "{err}");
        assert!(ControlEvent::parse(b"not json").is_err());
    }
}
