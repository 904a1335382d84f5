//! What the engine is fed: batches of observations keyed by series, already decoded from
//! whatever wire format they came in (that happens in `trike-ingest`).

use crate::time::UnixNanos;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Identity of one SLI series: service, operation, version and the configured extra dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Resource `service.name`.
    pub service: Arc<str>,
    /// `http.route`, else `rpc.method`, else the span name.
    pub operation: Arc<str>,
    /// Resource `service.version` (or the configured version attribute); empty when unknown.
    pub version: Arc<str>,
    /// Configured extra dimensions, in configuration order, as (name, value).
    pub dims: Arc<[(Arc<str>, Arc<str>)]>,
}

impl SeriesKey {
    /// True when every entry of `selector` names this key's `operation`, `version` or one
    /// of its dimensions with that value.
    pub fn matches(&self, selector: &std::collections::BTreeMap<String, String>) -> bool {
        selector.iter().all(|(name, want)| {
            let have = match name.as_str() {
                "operation" => Some(&*self.operation),
                "version" => Some(&*self.version),
                _ => self
                    .dims
                    .iter()
                    .find(|(n, _)| &**n == name.as_str())
                    .map(|(_, v)| &**v),
            };
            have == Some(want.as_str())
        })
    }

    /// A key without extra dimensions.
    pub fn new(service: &str, operation: &str, version: &str) -> Self {
        Self {
            service: service.into(),
            operation: operation.into(),
            version: version.into(),
            dims: Arc::new([]),
        }
    }

    /// The series every new series of `service` folds into once the cap is reached.
    pub fn overflow(service: &Arc<str>) -> Self {
        Self {
            service: service.clone(),
            operation: "".into(),
            version: "".into(),
            dims: Arc::new([("overflow".into(), "true".into())]),
        }
    }

    /// The aggregate of `service`'s idle series of `version`: an overflow series that keeps
    /// the version (so per-version totals, and canary verdicts, stay exact).
    pub fn aggregate(service: &Arc<str>, version: &Arc<str>) -> Self {
        Self {
            service: service.clone(),
            operation: "".into(),
            version: version.clone(),
            dims: Arc::new([("overflow".into(), "true".into())]),
        }
    }

    /// True for the overflow series of a service (and its per-version idle aggregates).
    pub fn is_overflow(&self) -> bool {
        self.dims.len() == 1 && &*self.dims[0].0 == "overflow" && self.operation.is_empty()
    }

    /// Approximate heap bytes held by this key's strings (shared strings counted fully).
    pub fn heap_bytes(&self) -> usize {
        self.service.len()
            + self.operation.len()
            + self.version.len()
            + self
                .dims
                .iter()
                .map(|(k, v)| k.len() + v.len() + 32)
                .sum::<usize>()
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.service, self.operation, self.version)?;
        for (k, v) in self.dims.iter() {
            write!(f, ",{k}={v}")?;
        }
        Ok(())
    }
}

/// Which telemetry signal an observation came from (one signal is the source per service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Entry spans.
    Spans,
    /// Request-duration histograms and request counters.
    Metrics,
}

/// One request outcome (from an entry span).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestObs {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// Event time (span end).
    pub time: UnixNanos,
    /// End − start, in milliseconds.
    pub latency_ms: f64,
    /// Span status ERROR, HTTP ≥ 500, or a configured gRPC status.
    pub bad: bool,
}

/// Whether a metric point carries totals since a start time or the change since the last point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    /// Change since the previous point.
    Delta,
    /// Running total since `start_time`.
    Cumulative,
}

/// A request-duration histogram point, in explicit-bucket form (exponential histograms are
/// converted by the decoder). Bucket `i` covers `(bounds[i-1], bounds[i]]`, with the first
/// unbounded below and the last unbounded above; `counts.len() == bounds.len() + 1`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramObs {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// Identity of the metric stream (resource, scope, name, point attributes), for
    /// cumulative-to-delta conversion.
    pub stream: u64,
    /// Point time.
    pub time: UnixNanos,
    /// Point start time (0 when unknown).
    pub start_time: UnixNanos,
    /// Delta or cumulative.
    pub temporality: Temporality,
    /// Bucket upper bounds in milliseconds, increasing.
    pub bounds_ms: Arc<[f64]>,
    /// Bucket counts.
    pub counts: Vec<u64>,
    /// Smallest recorded value in ms, when the point carries it.
    pub min_ms: Option<f64>,
    /// Largest recorded value in ms, when the point carries it.
    pub max_ms: Option<f64>,
    /// Whether these requests failed (from the point's status attributes).
    pub bad: bool,
    /// For exponential histograms: `(scale, offset)` of the positive buckets. Then `counts` is
    /// `[zero_count, positive buckets…, 0]`, so cumulative points can be aligned when the SDK
    /// re-scales or moves its offset.
    pub exp: Option<(i32, i32)>,
}

/// A request counter point (no latency).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterObs {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// Identity of the metric stream, for cumulative-to-delta conversion.
    pub stream: u64,
    /// Point time.
    pub time: UnixNanos,
    /// Point start time (0 when unknown).
    pub start_time: UnixNanos,
    /// Delta or cumulative.
    pub temporality: Temporality,
    /// Requests counted.
    pub value: f64,
    /// Whether these requests failed.
    pub bad: bool,
}

/// One log record as an event of its service's SLIs: bad at severity ERROR or above. Logs are
/// a service's third signal: counted only while it sends neither spans nor request metrics
/// (unless configured otherwise), so one request is never counted twice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogObs {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// The record's time (else its observed time).
    pub time: UnixNanos,
    /// Severity ERROR or above.
    pub bad: bool,
}

/// A batch of observations sharing a table of series keys (one decoded request, typically).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Distinct series keys referenced by index from the observations.
    pub keys: Vec<SeriesKey>,
    /// Request outcomes from spans.
    pub requests: Vec<RequestObs>,
    /// Histogram points from metrics.
    pub histograms: Vec<HistogramObs>,
    /// Counter points from metrics.
    pub counters: Vec<CounterObs>,
    /// Log records, each one event (bad at severity ERROR or above), when logs count
    /// toward SLIs (`logs.errors_as: bad_events`).
    pub logs: Vec<LogObs>,
    /// Pre-aggregated seconds from a gateway (the fleet's `trike.partials`).
    pub partials: Vec<PartialObs>,
    /// Failing requests' traces, kept as examples for the service's page (counted nowhere).
    pub exemplars: Vec<Exemplar>,
    /// Halves of calls between services, for the service graph ([`crate::graph`]); no SLI
    /// counts them.
    pub calls: Vec<CallObs>,
    /// Calls between services pre-aggregated per second by a gateway (`trike.partials`).
    pub edges: Vec<EdgeObs>,
    /// Points of usage metrics (CPU time, memory…; [`crate::usage`]); no SLI counts them.
    pub usage: Vec<crate::usage::UsageObs>,
}

/// One second of the calls from one service to another, pre-aggregated by a gateway: counts
/// and a latency digest, which merge exactly with every other part of the same second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeObs {
    /// The calling service.
    pub client: Arc<str>,
    /// The called service.
    pub server: Arc<str>,
    /// Event second (Unix seconds) of the client spans' ends.
    pub second: u64,
    /// Calls.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// The callers' latencies (None without any).
    pub digest: Option<crate::sketch::TDigest>,
}

/// One side of a call between services: a CLIENT or PRODUCER span, or the SERVER or
/// CONSUMER span it parents. The service graph pairs the two by (trace id, span id).
#[derive(Clone, Debug, PartialEq)]
pub struct CallObs {
    /// The span's service (resource `service.name`).
    pub service: Arc<str>,
    /// Which side, and what the client side names its peer.
    pub side: CallSide,
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The client span's id: its own for the client side, its parent's for the server side.
    pub span_id: [u8; 8],
    /// End of the span (event time).
    pub time: UnixNanos,
    /// End − start, in milliseconds.
    pub latency_ms: f64,
    /// Failed (the SLIs' rule: status ERROR, HTTP ≥ 500, a configured gRPC status).
    pub bad: bool,
}

/// The side of a call a span is.
#[derive(Clone, Debug, PartialEq)]
pub enum CallSide {
    /// A CLIENT or PRODUCER span, with the service it names as its peer (`peer.service`,
    /// else `server.address`, else `db.system`), if any.
    Client {
        /// The named peer.
        peer: Option<Arc<str>>,
    },
    /// A SERVER or CONSUMER span with a parent.
    Server,
}

/// A failing request's trace, kept as an example (a few per batch; never part of an SLI).
/// Gateways carry them to processors in `trike.partials` records.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// The trace id (W3C, 16 bytes).
    pub trace_id: [u8; 16],
    /// End of the request (event time).
    pub time: UnixNanos,
    /// Its latency.
    pub latency_ms: f64,
}

impl Batch {
    /// Index of `key` in the key table, adding it if new. Linear: batches hold few keys.
    pub fn key_index(&mut self, key: SeriesKey) -> u32 {
        if let Some(i) = self.keys.iter().rposition(|k| *k == key) {
            return i as u32;
        }
        self.keys.push(key);
        (self.keys.len() - 1) as u32
    }

    /// Number of observations (spans, histogram points, counter points, partials, log records,
    /// usage points).
    pub fn len(&self) -> usize {
        self.requests.len()
            + self.histograms.len()
            + self.counters.len()
            + self.partials.len()
            + self.logs.len()
            + self.usage.len()
    }

    /// True when the batch carries nothing: no observation and no call.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.calls.is_empty() && self.edges.is_empty()
    }

    /// Appends another batch, remapping its key indices.
    pub fn append(&mut self, mut other: Batch) {
        let keys = std::mem::take(&mut other.keys);
        let map: Vec<u32> = keys.into_iter().map(|k| self.key_index(k)).collect();
        self.extend_remapped(other, &map);
    }

    /// Appends another batch without looking its keys up: a key both batches hold appears
    /// twice in the key table (whoever reads a batch resolves keys by value). Constant work per
    /// key, for batches gathered from many requests.
    pub fn append_keys_unmerged(&mut self, mut other: Batch) {
        let base = self.keys.len() as u32;
        let map: Vec<u32> = (base..base + other.keys.len() as u32).collect();
        self.keys.append(&mut other.keys);
        self.extend_remapped(other, &map);
    }

    fn extend_remapped(&mut self, other: Batch, map: &[u32]) {
        self.requests
            .extend(other.requests.into_iter().map(|mut r| {
                r.key = map[r.key as usize];
                r
            }));
        self.histograms
            .extend(other.histograms.into_iter().map(|mut h| {
                h.key = map[h.key as usize];
                h
            }));
        self.counters
            .extend(other.counters.into_iter().map(|mut c| {
                c.key = map[c.key as usize];
                c
            }));
        self.logs.extend(other.logs.into_iter().map(|mut l| {
            l.key = map[l.key as usize];
            l
        }));
        self.partials
            .extend(other.partials.into_iter().map(|mut p| {
                p.key = map[p.key as usize];
                p
            }));
        self.exemplars
            .extend(other.exemplars.into_iter().map(|mut x| {
                x.key = map[x.key as usize];
                x
            }));
        self.calls.extend(other.calls);
        self.edges.extend(other.edges);
        self.usage.extend(other.usage);
    }
}

/// Part of one series' second, pre-aggregated by a gateway ([`crate::partials::PartialBuilder`]):
/// counts, threshold counts and a latency digest, which merge exactly with every other part of
/// the same second. A processor applies it like the observations it was built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialObs {
    /// Index into [`Batch::keys`].
    pub key: u32,
    /// Event second (Unix seconds).
    pub second: u64,
    /// Built from metric points (else from spans): the processor keeps one signal per service.
    pub from_metrics: bool,
    /// Built from log records (then `from_metrics` is set too, so a processor of an earlier
    /// release, which does not read this field, counts them as the metrics signal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_logs: bool,
    /// Observations behind it (spans, or metric points), for the processor's counters.
    pub points: u64,
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// Requests with a known latency.
    pub timed: u64,
    /// Thresholds (ms) `within` was counted against (the service's latency SLOs at the gateway).
    pub thresholds_ms: Vec<f64>,
    /// Requests at or under each threshold.
    pub within: Vec<u64>,
    /// Newest event time in it.
    pub last_event: UnixNanos,
    /// Latency digest (None without latency data).
    pub digest: Option<crate::sketch::TDigest>,
}

/// One series' whole second: what the archive stores per series and second, and what a
/// backtest replays ([`crate::Engine::second_rows`], [`crate::Engine::apply_seconds`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SecondObs {
    /// The series.
    pub key: SeriesKey,
    /// Event second (Unix seconds).
    pub second: u64,
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// Requests with a known latency.
    pub timed: u64,
    /// Latency thresholds (ms) the `within` counts were taken against (the service's latency
    /// SLOs when archived).
    pub thresholds_ms: Vec<f64>,
    /// Requests at or under each threshold.
    pub within: Vec<u64>,
    /// The second's latency digest (None without latency data).
    pub digest: Option<crate::sketch::TDigest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(route: &str, trace: u8) -> Batch {
        Batch {
            keys: vec![SeriesKey::new("checkout", route, "1")],
            requests: vec![RequestObs {
                key: 0,
                time: 1,
                latency_ms: 2.0,
                bad: true,
            }],
            exemplars: vec![Exemplar {
                key: 0,
                trace_id: [trace; 16],
                time: 1,
                latency_ms: 2.0,
            }],
            ..Default::default()
        }
    }

    /// Guarantees: appending batches (as the receivers' gathering does) keeps every part of
    /// them, exemplars included, each still pointing at its own series.
    #[test]
    fn appended_batches_keep_their_exemplars() {
        for unmerged in [false, true] {
            let mut b = one("/a", 1);
            for (route, trace) in [("/b", 2), ("/a", 3)] {
                if unmerged {
                    b.append_keys_unmerged(one(route, trace));
                } else {
                    b.append(one(route, trace));
                }
            }
            assert_eq!(b.requests.len(), 3);
            let routes: Vec<(&str, u8)> = b
                .exemplars
                .iter()
                .map(|x| (&*b.keys[x.key as usize].operation, x.trace_id[0]))
                .collect();
            assert_eq!(
                routes,
                [("/a", 1), ("/b", 2), ("/a", 3)],
                "unmerged {unmerged}"
            );
        }
    }
}
