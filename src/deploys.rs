//! Deploy events (DESIGN §9): CloudEvents `io.trike.deploy.started` on `kafka.deploys_topic`
//! (default `trike.deploys`, structured JSON mode, `data` = the body of `POST /api/v1/rollouts`)
//! start progressive rollouts, so a CD pipeline can announce a deploy without calling Trike.
//!
//! Every process but a gateway reads the topic in one consumer group (`trike-deploys`): each
//! event is handled by one of them, which starts the rollout here or at the processor that
//! owns the service (as the API does), and commits the event only after that answered. So an
//! event is never lost to a crash; a redelivered one finds its rollout active and changes
//! nothing. Events of other types are skipped; events older than `kafka.deploys_max_age`
//! (default 10m: a deploy nobody judged in time) are counted and skipped; an event that does
//! not describe a rollout, or whose service has another active rollout, is counted, logged
//! and skipped. While no processor owns the service (the fleet is starting), the event waits.

use crate::admin::AdminState;
use crate::admin::rollouts::start_spec;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use trike_engine::Span;
use trike_engine::expo::header as family;
use trike_engine::rollout::RolloutSpec;

/// The CloudEvents type of a deploy.
pub const DEPLOY_STARTED: &str = "io.trike.deploy.started";
/// The consumer group of every process that reads deploy events, unless configured.
pub const GROUP: &str = "trike-deploys";

/// What became of deploy events, by outcome (`/metrics`: `trike_deploy_events_total`).
#[derive(Debug, Default)]
pub struct DeployStats {
    /// A rollout started.
    pub started: AtomicU64,
    /// The rollout was active already (a redelivery, or a deploy announced twice).
    pub duplicate: AtomicU64,
    /// Another rollout of the service is active.
    pub overlapping: AtomicU64,
    /// Not a rollout (bad JSON, a spec that cannot run).
    pub invalid: AtomicU64,
    /// Older than the maximum age.
    pub stale: AtomicU64,
    /// Another event type.
    pub ignored: AtomicU64,
}

impl DeployStats {
    /// Renders `trike_deploy_events_total`.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "trike_deploy_events_total";
        family(
            out,
            name,
            "Deploy events read from the deploys topic, by outcome.",
            "counter",
        );
        for (outcome, v) in [
            ("started", &self.started),
            ("duplicate", &self.duplicate),
            ("overlapping", &self.overlapping),
            ("invalid", &self.invalid),
            ("stale", &self.stale),
            ("ignored", &self.ignored),
        ] {
            let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
        }
    }
}

/// What one event asks for.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Start this rollout.
    Start(RolloutSpec),
    /// Not a deploy.
    Ignored(String),
    /// Older than the maximum age (its age).
    Stale(Duration),
    /// A deploy that does not describe a rollout (why).
    Invalid(String),
}

/// Reads one event's payload at `now` (Unix ns).
pub fn parse(payload: &[u8], now: u64, max_age: Span) -> Event {
    let doc: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(d) => d,
        Err(e) => return Event::Invalid(format!("not JSON: {e}")),
    };
    let kind = doc["type"].as_str().unwrap_or_default();
    if kind != DEPLOY_STARTED {
        return Event::Ignored(kind.to_string());
    }
    if let Some(t) = doc["time"].as_str() {
        match trike_sinks::parse_rfc3339(t).map(|s| s * 1_000_000_000) {
            Some(at) if now.saturating_sub(at) > max_age.nanos() => {
                return Event::Stale(Duration::from_nanos(now - at));
            }
            Some(_) => {}
            None => return Event::Invalid(format!("time {t:?} is not RFC 3339")),
        }
    }
    match serde_json::from_value::<RolloutSpec>(doc["data"].clone()) {
        Ok(spec) => match spec.validate() {
            Ok(()) => Event::Start(spec),
            Err(e) => Event::Invalid(e.to_string()),
        },
        Err(e) => Event::Invalid(format!("data is not a rollout: {e}")),
    }
}

/// The consumer of deploy events.
pub struct Deploys {
    /// The consumer, subscribed.
    pub consumer: BaseConsumer,
    /// The maximum age.
    pub max_age: Span,
    /// Where rollouts start.
    pub state: Arc<AdminState>,
    /// A member's own credentials for the owner (the first write token), when tokens are set.
    pub token: Option<trike_sinks::Secret>,
    /// Counters.
    pub stats: Arc<DeployStats>,
}

impl std::fmt::Debug for Deploys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deploys")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Deploys {
    /// Reads and handles events until `stop` (on its own thread; `rt` runs the starts).
    pub fn run(self, rt: tokio::runtime::Handle, stop: &AtomicBool) {
        let creds: Vec<(HeaderName, HeaderValue)> = self
            .token
            .iter()
            .filter_map(|t| HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok())
            .map(|v| (header::AUTHORIZATION, v))
            .collect();
        while !stop.load(Relaxed) {
            let Some(m) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "deploy events consumer");
                    continue;
                }
            };
            let now = trike_runtime::clock::now_nanos();
            let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
            match parse(m.payload().unwrap_or_default(), now, self.max_age) {
                Event::Ignored(kind) => {
                    tracing::debug!(%kind, offset, "deploy topic: another event type skipped");
                    self.stats.ignored.fetch_add(1, Relaxed);
                }
                Event::Stale(age) => {
                    tracing::warn!(
                        age_s = age.as_secs(),
                        offset,
                        "deploy event older than kafka.deploys_max_age skipped"
                    );
                    self.stats.stale.fetch_add(1, Relaxed);
                }
                Event::Invalid(why) => {
                    tracing::warn!(%why, partition, offset, "deploy event is not a rollout: skipped");
                    self.stats.invalid.fetch_add(1, Relaxed);
                }
                Event::Start(spec) => {
                    let service = spec.service.clone();
                    loop {
                        let (status, doc) = rt.block_on(start_spec(
                            &self.state,
                            spec.clone(),
                            creds.clone(),
                            false,
                        ));
                        let counter = match status {
                            StatusCode::CREATED | StatusCode::ACCEPTED => &self.stats.started,
                            StatusCode::OK => &self.stats.duplicate,
                            StatusCode::CONFLICT => &self.stats.overlapping,
                            StatusCode::BAD_REQUEST => &self.stats.invalid,
                            _ if stop.load(Relaxed) => return,
                            _ => {
                                tracing::warn!(%service, %status, answer = %doc, "deploy event: the rollout could not start yet; retrying");
                                std::thread::sleep(Duration::from_secs(1));
                                continue;
                            }
                        };
                        counter.fetch_add(1, Relaxed);
                        tracing::info!(%service, %status, id = %doc["id"], error = %doc["error"], "deploy event handled");
                        break;
                    }
                }
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            let _ = tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset + 1));
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "committing a deploy event");
            }
        }
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000_000_000;

    fn event(kind: &str, time: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": "d-1", "source": "ci://pipeline", "type": kind,
            "time": time, "datacontenttype": "application/json", "data": data,
        }))
        .unwrap()
    }

    /// Table: what each kind of event on the deploys topic becomes.
    #[test]
    fn deploy_events_parse_to_what_they_ask() {
        let data = serde_json::json!({"service": "checkout", "baseline": "1.4", "canary": "1.5", "steps": [10, 100]});
        let max_age = Span::minutes(10);
        let fresh = trike_sinks::rfc3339(NOW - 60 * 1_000_000_000);
        let old = trike_sinks::rfc3339(NOW - 3600 * 1_000_000_000);
        let Event::Start(spec) = parse(&event(DEPLOY_STARTED, &fresh, data.clone()), NOW, max_age)
        else {
            panic!()
        };
        assert_eq!((spec.canary.as_str(), spec.steps.len()), ("1.5", 2));
        assert_eq!(
            parse(&event(DEPLOY_STARTED, &old, data.clone()), NOW, max_age),
            Event::Stale(Duration::from_secs(3600))
        );
        assert_eq!(
            parse(
                &event("io.argoproj.rollout.updated", &fresh, data),
                NOW,
                max_age
            ),
            Event::Ignored("io.argoproj.rollout.updated".into())
        );
        let Event::Invalid(why) = parse(
            &event(
                DEPLOY_STARTED,
                &fresh,
                serde_json::json!({"service": "checkout", "baseline": "1.4", "canary": "1.4"}),
            ),
            NOW,
            max_age,
        ) else {
            panic!()
        };
        assert!(why.contains("both \"1.4\""), "{why}");
        assert!(matches!(parse(b"{", NOW, max_age), Event::Invalid(w) if w.contains("not JSON")));
        assert!(matches!(
            parse(&event(DEPLOY_STARTED, "yesterday", serde_json::json!({})), NOW, max_age),
            Event::Invalid(w) if w.contains("RFC 3339")
        ));
    }
}
