//! Decisions as control events: CloudEvents 1.0, structured JSON (DESIGN §4).

use crate::rfc3339;
use serde_json::{Value, json};
use trike_engine::policy::Decision;

/// The control event for `d`, from Trike instance `instance`.
pub fn control_event(d: &Decision, instance: &str) -> Value {
    let mut target = json!({ "service": d.target.service, "version": d.target.version });
    if d.target.version.is_empty() {
        target.as_object_mut().map(|t| t.remove("version"));
    }
    let mut data = json!({
        "decision_id": d.decision_id,
        "action": d.action.name(),
        "target": target,
        "params": d.params,
        "severity": d.severity,
        "reason": d.reason,
        "rule": d.rule,
        "slo": d.slo,
        "policy_revision": d.policy_revision,
        "dry_run": d.dry_run,
        "evidence": serde_json::to_value(&d.evidence).unwrap_or(Value::Null),
        "detected_at": rfc3339(d.detected_at),
        "observed_until": rfc3339(d.observed_until),
    });
    if let Some(r) = &d.resolves {
        data["resolves"] = json!(r);
    }
    json!({
        "specversion": "1.0",
        "id": d.decision_id,
        "source": format!("trike://{instance}"),
        "type": format!("io.trike.control.{}", d.action.name()),
        "subject": d.target.service,
        "time": rfc3339(d.detected_at),
        "datacontenttype": "application/json",
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use trike_engine::policy::{Action, Evidence, Target};
    use trike_engine::slo::Severity;

    /// Guarantees: the event has every DESIGN §4 attribute and data field.
    #[test]
    fn cloudevent_shape() {
        let d = Decision {
            decision_id: "0a1b2c3d-0000-0000-0000-000000000000".into(),
            action: Action::Rollback,
            target: Target {
                service: "checkout".into(),
                version: "1.5.0".into(),
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
        };
        let e = control_event(&d, "trike-0");
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "io.trike.control.rollback");
        assert_eq!(e["source"], "trike://trike-0");
        assert_eq!(e["subject"], "checkout");
        assert_eq!(e["id"], e["data"]["decision_id"]);
        assert_eq!(e["time"], "2026-11-22T11:20:52.000Z");
        for field in [
            "decision_id",
            "action",
            "target",
            "params",
            "severity",
            "reason",
            "rule",
            "slo",
            "policy_revision",
            "dry_run",
            "evidence",
            "detected_at",
            "observed_until",
        ] {
            assert!(e["data"].get(field).is_some(), "data.{field}");
        }
        assert_eq!(e["data"]["target"]["version"], "1.5.0");
        assert_eq!(e["data"]["severity"], "page");
        assert_eq!(e["data"]["evidence"]["kind"], "stale");
        assert_eq!(e["data"]["observed_until"], "2026-11-22T11:20:51.500Z");
    }
}
