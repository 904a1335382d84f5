//! Outcome events on `trike.actions` (DESIGN §4): CloudEvents `io.trike.action.<outcome>`
//! referencing the control event by id.

use serde_json::{Value, json};
use trike_sinks::Outcome;

/// The outcome event for `event`, from actuator `instance`, with `detail` merged into `data`.
pub fn event(instance: &str, event: &Value, outcome: Outcome, detail: Value) -> Value {
    let outcome = outcome.name();
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
        "time": trike_sinks::rfc3339(crate::now_nanos()),
        "datacontenttype": "application/json",
        "data": data,
    })
}
