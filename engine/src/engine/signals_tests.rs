//! Which signal counts for a service: spans, else request metrics, else log records.

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::observation::{Batch, CounterObs, RequestObs, SeriesKey, Temporality};
use crate::time::{NANOS_PER_SEC, Span};
use std::sync::Arc;

const S: u64 = NANOS_PER_SEC;
const T0: u64 = 1_800_000_000 * S;

/// Scenario: a worker sends only log records (10 a second, one an ERROR) for a minute; then
/// request metrics too; then spans too. Another service sends logs and spans from the start.
/// Guarantees: logs are the worker's SLI while it sends nothing else (600 events, 60 bad);
/// once metrics arrive its logs are deduplicated, and once spans arrive its metrics are (one
/// request is never counted twice); the other service's logs never count. Through a gateway's
/// partials, the same.
#[test]
fn logs_count_only_while_a_service_sends_nothing_else() {
    use crate::observation::LogObs;
    for via_gateway in [false, true] {
        let mut e = Engine::new(Arc::new(EngineConfig::default()));
        let mut g = crate::partials::PartialBuilder::new(Arc::new(EngineConfig::default()));
        let keys = vec![
            SeriesKey::new("worker", "logs", "1"),
            SeriesKey::new("worker", "/jobs", "1"),
            SeriesKey::new("api", "logs", "1"),
            SeriesKey::new("api", "/a", "1"),
        ];
        for sec in 0..180u64 {
            let t = T0 + sec * S;
            let mut b = Batch {
                keys: keys.clone(),
                ..Default::default()
            };
            for i in 0..10u64 {
                for key in [0, 2] {
                    b.logs.push(LogObs {
                        key,
                        time: t + i * S / 10,
                        bad: i == 0,
                    });
                }
                // Service 3 sends spans throughout; service 1 from its 120th second.
                let spans_of: &[u32] = if sec >= 120 { &[3, 1] } else { &[3] };
                for &key in spans_of {
                    b.requests.push(RequestObs {
                        key,
                        time: t + i * S / 10,
                        latency_ms: 5.0,
                        bad: false,
                    });
                }
            }
            if sec >= 60 {
                b.counters.push(CounterObs {
                    key: 1,
                    stream: 1,
                    time: t,
                    start_time: 0,
                    temporality: Temporality::Delta,
                    value: 7.0,
                    bad: false,
                });
            }
            if via_gateway {
                g.add(&b, t + S / 2);
                for sp in g.take() {
                    e.ingest(&sp.batch, t + S / 2);
                }
            } else {
                e.ingest(&b, t + S / 2);
            }
            e.advance(t + S);
            // Totals since the start (the engine's history is shorter than 5 minutes).
            let worker = e.service_sums_prorated("worker", Span::minutes(5));
            let got = (worker.requests, worker.errors);
            match sec {
                59 => assert_eq!(got, (600.0, 60.0), "logs: gateway {via_gateway}"),
                // Then 7 metric requests a second, the logs deduplicated from second 60 on.
                119 => assert_eq!(got, (1020.0, 60.0), "metrics: gateway {via_gateway}"),
                // Then 10 spans a second, the metrics deduplicated from second 120 on.
                179 => assert_eq!(got, (1620.0, 60.0), "spans: gateway {via_gateway}"),
                _ => {}
            }
        }
        let api = e.service_sums_prorated("api", Span::minutes(5));
        assert_eq!(
            (api.requests, api.errors),
            (1800.0, 0.0),
            "api: spans only, {via_gateway}"
        );
        assert_eq!(e.stats().log_records_applied, 600, "{via_gateway}");
    }
}

/// Scenario: a service sends spans, request metrics and logs, each in its own batch (three
/// exporters); after a minute its spans stop; 12 minutes on.
/// Guarantees: its metrics take over once spans are no longer recent, and its logs never
/// count (it sends request metrics all along, even while they do not count).
#[test]
fn logs_yield_to_metrics_that_did_not_count_yet() {
    use crate::observation::LogObs;
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    let keys = vec![SeriesKey::new("mixed", "/m", "1")];
    for sec in 0..720u64 {
        let t = T0 + sec * S;
        let mut spans = Batch {
            keys: keys.clone(),
            ..Default::default()
        };
        let mut metrics = spans.clone();
        let mut logs = spans.clone();
        for i in 0..10u64 {
            if sec < 60 {
                spans.requests.push(RequestObs {
                    key: 0,
                    time: t + i * S / 10,
                    latency_ms: 5.0,
                    bad: false,
                });
            }
            logs.logs.push(LogObs {
                key: 0,
                time: t + i * S / 10,
                bad: i == 0,
            });
        }
        metrics.counters.push(CounterObs {
            key: 0,
            stream: 1,
            time: t,
            start_time: 0,
            temporality: Temporality::Delta,
            value: 7.0,
            bad: false,
        });
        // Logs before metrics each second: the first second metrics count must not let logs in.
        for b in [&spans, &logs, &metrics] {
            e.ingest(b, t + S / 2);
        }
        e.advance(t + S);
    }
    let s = e.service_sums_prorated("mixed", Span::minutes(5));
    assert_eq!(s.errors, 0.0, "no log record counted: {s:?}");
    assert_eq!(e.stats().log_records_applied, 0);
    assert!(
        (413.0..=427.0).contains(&s.requests),
        "the metrics since they took over: {s:?}"
    );
}
