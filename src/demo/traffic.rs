//! The demo's synthetic traffic, one 100 ms tick at a time. Pure (time and the canary's
//! weight are arguments), so the live demo sends each tick over OTLP/HTTP and the simulated
//! runs ([`super::sim`]) apply the very same requests on a simulated clock.

use super::{PER_TICK, PIPELINE_LAG, Scenario, healthy};
use crate::synth::Service;
use rand::SeedableRng;
use std::time::Duration;
use trike_proto::collector::trace::v1::ExportTraceServiceRequest;

/// How often each version sends.
pub const TICK: Duration = Duration::from_millis(100);

/// One version's traffic.
#[derive(Debug)]
pub struct Traffic {
    svc: Service,
    canary: bool,
    scenario: Scenario,
    degrade_after: Duration,
    rng: rand::rngs::StdRng,
    carry: f64,
    degraded: bool,
}

impl Traffic {
    /// The traffic of `version` (the canary's when `canary`), degrading as `scenario` says
    /// `degrade_after` from the start.
    pub fn new(scenario: Scenario, version: &str, canary: bool, degrade_after: Duration) -> Self {
        Self {
            svc: Service {
                name: "checkout".into(),
                version: version.into(),
                routes: vec!["/cart".into(), "/pay".into()],
                behaviour: healthy(),
            },
            canary,
            scenario,
            degrade_after,
            rng: rand::rngs::StdRng::seed_from_u64(u64::from(canary)),
            carry: 0.0,
            degraded: false,
        }
    }

    /// The tick `elapsed` after the start, at `now_ns`, with the canary at `weight` percent of
    /// traffic: the request to send, if any, and whether the trouble began on this tick.
    pub fn tick(
        &mut self,
        elapsed: Duration,
        now_ns: u64,
        weight: u64,
    ) -> (Option<ExportTraceServiceRequest>, bool) {
        let mut began = false;
        if elapsed >= self.degrade_after && !self.degraded {
            self.degraded = true;
            began = true;
            let (to_canary, to_baseline) = self.scenario.degrade();
            if let Some(b) = if self.canary { to_canary } else { to_baseline } {
                self.svc.behaviour = b;
            }
        }
        // The stalled pipeline: nothing for PIPELINE_LAG, then data that far behind.
        let mut end_ns = now_ns;
        if self.degraded && self.scenario == Scenario::Stale {
            if elapsed < self.degrade_after + PIPELINE_LAG {
                return (None, began);
            }
            end_ns -= PIPELINE_LAG.as_nanos() as u64;
        }
        let weight = weight as f64 / 100.0;
        let share = if self.canary { weight } else { 1.0 - weight };
        self.carry += PER_TICK as f64 * share;
        let n = self.carry.floor();
        self.carry -= n;
        if n < 1.0 {
            return (None, began);
        }
        let spread = TICK.as_nanos() as u64;
        let mut request = self.svc.request(n as usize, end_ns, spread, &mut self.rng);
        // Each request calls a dependency: the service graph's edges.
        crate::synth::add_calls(&mut request, |route| match route {
            "/pay" => Some("payments"),
            "/cart" => Some("inventory"),
            _ => None,
        });
        (Some(request), began)
    }
}
