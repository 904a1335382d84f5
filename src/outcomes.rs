//! Actuators' outcome events (DESIGN §4: CloudEvents `io.trike.action.<outcome>` on
//! `actuator.actions_topic`, default `trike.actions`), read by every process that decides, for
//! the loop's own metrics ([`trike_runtime::loop_stats`]): time to mitigate, control-plane
//! latency, automation success rate. Each process reads every outcome in a group of its own
//! (`trike-loop-<instance>`), from the oldest kept at its first start, and counts only those of
//! decisions it made; nothing is acted on, so nothing needs committing exactly.

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;
use trike_runtime::loop_stats::LoopStats;

/// One outcome event: (control event id, outcome, time written in ns).
pub fn parse(payload: &[u8]) -> Option<(String, String, u64)> {
    let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let outcome = doc["type"].as_str()?.strip_prefix("io.trike.action.")?;
    let id = doc["data"]["control_event_id"].as_str()?;
    let at = trike_sinks::parse_rfc3339_nanos(doc["time"].as_str()?)?;
    Some((id.to_string(), outcome.to_string(), at))
}

/// Reads outcome events into `stats` until `stop`.
pub fn run(consumer: BaseConsumer, stats: Arc<crate::admin::AdminState>, stop: &AtomicBool) {
    let loop_stats: &LoopStats = &stats.decisions.loop_stats;
    while !stop.load(Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "outcome events consumer");
                continue;
            }
        };
        match parse(m.payload().unwrap_or_default()) {
            Some((id, outcome, at)) => {
                loop_stats.outcome(&id, &outcome, at, trike_runtime::clock::now_nanos());
            }
            None => tracing::debug!(offset = m.offset(), "not an outcome event: skipped"),
        }
    }
    consumer.unsubscribe();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the actuator's own outcome event (`trike_actuate::outcome::event`) reads
    /// back as its control event id, outcome and time; other events are not outcomes.
    #[test]
    fn outcome_events_parse() {
        let control = serde_json::json!({"id": "abc", "subject": "checkout", "data": {"action": "rollback", "target": {"service": "checkout"}}});
        let e = trike_actuate::outcome::event(
            "a-1",
            &control,
            trike_sinks::Outcome::Succeeded,
            serde_json::json!({}),
        );
        let (id, outcome, at) = parse(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!((id.as_str(), outcome.as_str()), ("abc", "succeeded"));
        assert_eq!(
            Some(at),
            trike_sinks::parse_rfc3339_nanos(e["time"].as_str().unwrap())
        );
        assert_eq!(parse(b"{\"type\": \"io.trike.deploy.started\"}"), None);
        assert_eq!(parse(b"nope"), None);
    }
}
