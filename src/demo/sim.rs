//! The demo's scenarios on a simulated clock: the same traffic ([`Traffic`]), decoded by the
//! same OTLP pipeline, applied to the same runtime [`Shard`] with the demo's own config, and a
//! stand-in for the actuator and rollout controller that obeys `rollback` and `set_weight` as
//! the demo's webhook does. Minutes of a story run in about a second, the same every time;
//! the live demo (`trike demo`) adds the sockets, the broker and the real actuator.

use super::traffic::{TICK, Traffic};
use super::{Scenario, config_yaml};
use crate::config::{Config, RawConfig};
use parking_lot::Mutex;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use trike_engine::{Batch, Engine};
use trike_ingest::pipeline::Ack;
use trike_ingest::{
    BatchSink, Encoding, IngestMetrics, Overloaded, Pipeline, SignalKind, Transport,
};
use trike_runtime::hooks::decide::Decider;
use trike_runtime::hooks::outbox::{DecisionStore, Outbox, SINK_QUEUE};
use trike_runtime::{Clock, Shard, SimClock};
use trike_sinks::ControlEvent;

/// Where the simulated run starts (a round, fixed time: runs are reproducible).
pub const START_NS: u64 = 1_800_000_000_000_000_000;

/// What a simulated run decided and did.
#[derive(Debug, Default)]
pub struct SimRun {
    /// Every control event, in order, with the seconds since the start it was published at.
    pub events: Vec<(f64, ControlEvent)>,
    /// Rollbacks and weight changes the stand-in controller carried out.
    pub controller_calls: u64,
    /// The canary's share of traffic at the end, percent.
    pub canary_weight: u64,
    /// Actions the policy held back because the data was stale.
    pub held_stale: u64,
    /// Canary requests decoded in the last 10 s of the run.
    pub canary_requests_last_10s: u64,
}

impl SimRun {
    /// The events of one action.
    pub fn of(&self, action: &str) -> Vec<&ControlEvent> {
        self.events
            .iter()
            .filter(|(_, e)| e.data.action.name() == action)
            .map(|(_, e)| e)
            .collect()
    }
}

/// Decoded batches, collected until the next step applies them.
#[derive(Debug, Default)]
struct Collected(Mutex<Vec<Batch>>);

impl BatchSink for Collected {
    fn submit(&self, batch: Batch, ack: Option<Ack>) -> Result<(), Overloaded> {
        self.0.lock().push(batch);
        if let Some(ack) = ack {
            ack();
        }
        Ok(())
    }
}

/// The demo's processor config (its SLOs, canary, stale rule and policy).
pub fn demo_config() -> Config {
    let yaml = config_yaml("http://127.0.0.1:9/rollout", std::path::Path::new("unused"));
    let raw = RawConfig::from_yaml(&yaml).expect("the demo's config parses");
    Config::validate(raw, &Default::default()).expect("the demo's config is valid")
}

/// Runs `scenario` for `duration` of simulated time, the trouble starting `degrade_after` in.
pub fn simulate(scenario: Scenario, degrade_after: Duration, duration: Duration) -> SimRun {
    let cfg = demo_config();
    let clock = SimClock::at(START_NS);
    let store = Arc::new(DecisionStore::default());
    let (tx, rx) = std::sync::mpsc::sync_channel(SINK_QUEUE);
    let outbox = Outbox::new(&cfg.instance, cfg.signing_key(), store.clone(), tx, None);
    let mut shard = Shard::new(
        Engine::new(Arc::new(cfg.engine.clone())),
        Arc::new(clock.clone()),
    )
    .with_hook(Decider::new(cfg.decide_spec(), store.clone()))
    .with_hook(outbox);
    let collected = Arc::new(Collected::default());
    let pipeline = Pipeline::new(
        Arc::new(cfg.decode.clone()),
        collected.clone(),
        Arc::new(IngestMetrics::default()),
    );
    let mut traffic = [
        Traffic::new(scenario, "1.4.0", false, degrade_after),
        Traffic::new(scenario, "1.5.0", true, degrade_after),
    ];
    let mut run = SimRun {
        canary_weight: scenario.canary_weight(),
        ..SimRun::default()
    };
    let mut canary_recent: std::collections::VecDeque<(Duration, u64)> = Default::default();
    let mut elapsed = Duration::ZERO;
    while elapsed < duration {
        clock.advance(TICK);
        elapsed += TICK;
        for (i, t) in traffic.iter_mut().enumerate() {
            let (request, _) = t.tick(elapsed, clock.now(), run.canary_weight);
            let Some(request) = request else { continue };
            if i == 1 {
                let n = request.resource_spans[0].scope_spans[0].spans.len() as u64;
                canary_recent.push_back((elapsed, n));
            }
            pipeline
                .export(
                    Transport::Http,
                    SignalKind::Traces,
                    Encoding::Protobuf,
                    &request.encode_to_vec(),
                )
                .expect("the demo's requests decode");
        }
        let batches = std::mem::take(&mut *collected.0.lock());
        if batches.is_empty() {
            shard.tick();
        } else {
            shard.apply(batches);
        }
        let at = elapsed.as_secs_f64();
        for event in rx.try_iter() {
            let d = &event.data;
            let obeyed = matches!(d.action.name(), "rollback" | "set_weight");
            if obeyed && !d.dry_run && d.target.service == "checkout" {
                run.controller_calls += 1;
                run.canary_weight = d.params.get("weight").copied().unwrap_or(0.0) as u64;
            }
            run.events.push((at, event));
        }
    }
    shard.finish();
    run.held_stale = store.policy_stats.lock().held_stale;
    run.canary_requests_last_10s = canary_recent
        .iter()
        .filter(|(t, _)| *t + Duration::from_secs(10) > elapsed)
        .map(|(_, n)| n)
        .sum();
    run
}
