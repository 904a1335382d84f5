//! Example traces of failing requests, per service: the newest [`EXEMPLARS_PER_SERVICE`], for
//! the service's page (a link to the trace in Jaeger or Tempo). Not part of any SLI, not in
//! snapshots: they are pointers into a tracing backend, not state.

use super::Engine;
use crate::UnixNanos;
use crate::observation::Batch;
use std::collections::VecDeque;
use std::sync::Arc;

/// Failing traces kept per service.
pub const EXEMPLARS_PER_SERVICE: usize = 20;

/// A failing request's trace.
#[derive(Clone, Debug, PartialEq)]
pub struct FailingTrace {
    /// The version that served it.
    pub version: Arc<str>,
    /// Its operation.
    pub operation: Arc<str>,
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// When it ended (event time).
    pub time: UnixNanos,
    /// Its latency.
    pub latency_ms: f64,
}

fn hex(id: &[u8; 16]) -> String {
    use std::fmt::Write;
    id.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Engine {
    /// Keeps the batch's exemplars of services the engine knows.
    pub(super) fn keep_exemplars(&mut self, batch: &Batch) {
        for x in &batch.exemplars {
            let Some(key) = batch.keys.get(x.key as usize) else {
                continue;
            };
            if !self.services.contains_key(&key.service) {
                continue;
            }
            if !self.exemplars.contains_key(&key.service)
                && self.exemplars.len() >= self.services.len().max(100)
            {
                // Services that went away leave their examples behind: drop them.
                let services = &self.services;
                self.exemplars.retain(|s, _| services.contains_key(s));
            }
            let list = self.exemplars.entry(key.service.clone()).or_default();
            if list.len() == EXEMPLARS_PER_SERVICE {
                list.pop_front();
            }
            list.push_back(FailingTrace {
                version: key.version.clone(),
                operation: key.operation.clone(),
                trace_id: hex(&x.trace_id),
                time: x.time,
                latency_ms: x.latency_ms,
            });
        }
    }

    /// The newest failing traces of `service`, newest first.
    pub fn exemplars(&self, service: &str) -> Vec<FailingTrace> {
        self.exemplars
            .get(service)
            .map(|l| l.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// Per service, its newest failing traces.
pub(super) type Exemplars = std::collections::HashMap<Arc<str>, VecDeque<FailingTrace>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;
    use crate::observation::{Exemplar, RequestObs, SeriesKey};

    /// Guarantees: the newest [`EXEMPLARS_PER_SERVICE`] failing traces of a service are kept,
    /// newest first, with their version and operation; a service the engine never admitted
    /// (no requests) keeps none.
    #[test]
    fn the_newest_failing_traces_are_kept_per_service() {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let t0 = 1_800_000_000_000_000_000u64;
        for i in 0..30u64 {
            let mut id = [0u8; 16];
            id[15] = i as u8;
            id[0] = 0xab;
            let b = Batch {
                keys: vec![SeriesKey::new("checkout", "/pay", "1.5")],
                requests: vec![RequestObs {
                    key: 0,
                    time: t0 + i,
                    latency_ms: 5.0,
                    bad: true,
                }],
                exemplars: vec![Exemplar {
                    key: 0,
                    trace_id: id,
                    time: t0 + i,
                    latency_ms: 5.0,
                }],
                ..Default::default()
            };
            e.ingest(&b, t0 + i);
        }
        let kept = e.exemplars("checkout");
        assert_eq!(kept.len(), EXEMPLARS_PER_SERVICE);
        assert_eq!(kept[0].trace_id, "ab00000000000000000000000000001d");
        assert_eq!((&*kept[0].version, &*kept[0].operation), ("1.5", "/pay"));
        assert!(kept.windows(2).all(|w| w[0].time > w[1].time));
        assert!(e.exemplars("payments").is_empty());
    }
}
