//! One signal per service: which of a service's signals arrived in a batch, so the batch in
//! which its preferred signal (spans, else request metrics, else log records) first appears
//! already counts that signal alone.

use super::Engine;
use crate::observation::Batch;
use std::sync::Arc;

impl Engine {
    /// Marks the services that send spans or request metrics in `batch` as sending them now,
    /// so the batch in which a service's preferred signal first appears already counts that
    /// signal alone (one request is never counted twice, not even in that second). Only for
    /// batches holding more than one signal, and services known (their keys resolved); returns
    /// whether any was marked (then the keys are resolved again).
    pub(super) fn note_signals(&mut self, batch: &Batch) -> bool {
        let span_partials = batch.partials.iter().any(|p| !p.from_metrics);
        let metric_partials = batch
            .partials
            .iter()
            .any(|p| p.from_metrics && !p.from_logs);
        let log_partials = batch.partials.iter().any(|p| p.from_logs);
        let present = [
            !batch.requests.is_empty() || span_partials,
            !batch.histograms.is_empty() || !batch.counters.is_empty() || metric_partials,
            !batch.logs.is_empty() || log_partials,
        ];
        if present.iter().filter(|p| **p).count() < 2 {
            return false;
        }
        let mut spans: Vec<u32> = batch.requests.iter().map(|r| r.key).collect();
        spans.extend(
            batch
                .partials
                .iter()
                .filter(|p| !p.from_metrics)
                .map(|p| p.key),
        );
        let mut metrics: Vec<u32> = batch.histograms.iter().map(|h| h.key).collect();
        metrics.extend(batch.counters.iter().map(|c| c.key));
        metrics.extend(
            batch
                .partials
                .iter()
                .filter(|p| p.from_metrics && !p.from_logs)
                .map(|p| p.key),
        );
        let mut marked = false;
        for (keys, is_spans) in [(spans, true), (metrics, false)] {
            let mut services: Vec<&Arc<str>> = keys
                .iter()
                .map(|&k| &batch.keys[k as usize].service)
                .collect();
            services.sort();
            services.dedup();
            for service in services {
                if let Some(info) = self.services.get_mut(service) {
                    if is_spans {
                        info.last_span_arrival = self.now;
                    } else {
                        info.last_metric_arrival = self.now;
                    }
                    marked = true;
                }
            }
        }
        marked
    }
}

#[cfg(test)]
#[path = "signals_tests.rs"]
mod tests;
