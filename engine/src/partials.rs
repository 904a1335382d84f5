//! A gateway's pre-aggregation (DESIGN §6): observations become per-second partial state per
//! series — counts, counts within the latency thresholds, and a t-digest — which a processor
//! applies exactly as it would have applied the observations themselves ([`PartialObs`] in a
//! [`Batch`] goes through `Engine::ingest`).
//!
//! Calls between services ride along too: the builder pairs their halves
//! ([`crate::graph::Pairing`], halves waiting across flushes for up to `graph.wait`) and adds
//! each completed call to its caller's partials as one second of an edge ([`EdgeObs`]), so
//! the processor that owns the caller holds its edges, merged exactly across gateways.
//!
//! Usage points (CPU time, memory: [`crate::usage`]) ride along too, cumulative sums converted
//! to deltas here (where a stream's points arrive, as for every other metric point).
//!
//! Failing requests' trace ids ride along: the newest [`EXEMPLARS_PER_SERVICE`] of each service
//! per flush, so the processor that owns the service can link its failing requests to traces.
//!
//! The builder holds only what arrived since the last [`PartialBuilder::take`] (one flush
//! interval), plus the cumulative-to-delta baselines of metric streams (bounded by
//! `max_metric_streams`, forgotten after `metric_stream_ttl`): its memory does not grow with
//! history. Lateness, series caps and the choice of signal per service are the processor's,
//! which sees every gateway's partials of a service.

use crate::config::EngineConfig;
use crate::delta::DeltaTracker;
use crate::engine::{
    DeltaPoint, EXEMPLARS_PER_SERVICE, Stats, convert_point, for_each_bucket, layout_hash,
};
use crate::graph::{Call, Pairing};
use crate::observation::{Batch, EdgeObs, Exemplar, PartialObs, SeriesKey, Temporality};
use crate::sketch::TDigest;
use crate::time::{UnixNanos, secs};
use crate::usage::{UsageAdd, UsageObs};
use crate::window::MAX_THRESHOLDS;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The per-observation maps: hashed with a fast, per-map seeded hash (SipHash was 3 % of a
/// gateway's source thread).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One (series, second, signal) being built.
#[derive(Debug, Default)]
struct Cell {
    points: u64,
    requests: u64,
    errors: u64,
    timed: u64,
    within: [u64; MAX_THRESHOLDS],
    last_event: UnixNanos,
    digest: Option<TDigest>,
}

impl Cell {
    fn add(
        &mut self,
        n: u64,
        errors: u64,
        within: [u64; MAX_THRESHOLDS],
        latency_ms: Option<f64>,
        compression: f32,
    ) {
        self.requests += n;
        self.errors += errors;
        for (w, add) in self.within.iter_mut().zip(within) {
            *w += add;
        }
        if let Some(ms) = latency_ms {
            self.timed += n;
            self.digest
                .get_or_insert_with(|| TDigest::new(compression))
                .add_weighted(ms, n);
        }
    }
}

/// One (caller, callee, second) of calls being built.
#[derive(Debug, Default)]
struct EdgeCell {
    requests: u64,
    errors: u64,
    digest: Option<TDigest>,
}

/// Partials of one service, ready to publish: a batch holding only [`Batch::partials`].
#[derive(Debug)]
pub struct ServicePartials {
    /// The service (the record key).
    pub service: Arc<str>,
    /// Its partials.
    pub batch: Batch,
    /// Observations behind them.
    pub points: u64,
}

/// A cell's signal.
const SPANS: u8 = 0;
const METRICS: u8 = 1;
const LOGS: u8 = 2;

/// Builds partials from observation batches.
#[derive(Debug)]
pub struct PartialBuilder {
    cfg: Arc<EngineConfig>,
    index: FastMap<SeriesKey, u32>,
    keys: Vec<SeriesKey>,
    /// By (key, second, signal: [`SPANS`], [`METRICS`] or [`LOGS`]).
    cells: FastMap<(u32, u64, u8), Cell>,
    /// Per service, its newest failing traces since the last `take` (keys index `keys`).
    exemplars: HashMap<Arc<str>, VecDeque<Exemplar>>,
    /// Halves of calls waiting for their other half (across flushes, up to `graph.wait`).
    pairing: Pairing,
    /// Calls completed since the last `take`, per (caller, callee, second).
    edges: HashMap<(Arc<str>, Arc<str>, u64), EdgeCell>,
    /// Usage points since the last `take`, cumulative rates converted to deltas.
    usage: Vec<UsageObs>,
    deltas: DeltaTracker,
    start: UnixNanos,
    now: UnixNanos,
    stats: Stats,
}

impl PartialBuilder {
    /// An empty builder with the engine settings the processors use (latency thresholds per
    /// service, digest compression, metric stream bounds).
    pub fn new(cfg: Arc<EngineConfig>) -> Self {
        Self {
            index: FastMap::default(),
            keys: Vec::new(),
            cells: FastMap::default(),
            exemplars: HashMap::new(),
            pairing: Pairing::new(cfg.graph),
            edges: HashMap::new(),
            usage: Vec::new(),
            deltas: DeltaTracker::default(),
            start: 0,
            now: 0,
            stats: Stats::default(),
            cfg,
        }
    }

    /// The service graph's pairing counters (halves paired, named by peer, dropped).
    pub fn graph_stats(&self) -> crate::graph::GraphStats {
        self.pairing.stats()
    }

    /// Halves of calls waiting for their other half.
    pub fn calls_waiting(&self) -> usize {
        self.pairing.waiting()
    }

    /// Moves arrival time to `now` (a flush with no new data): call halves that waited
    /// `graph.wait` stop waiting.
    pub fn advance(&mut self, now: UnixNanos) {
        self.now = self.now.max(now);
        let mut done = Vec::new();
        self.pairing.advance(self.now, &mut done);
        self.count_calls(done);
    }

    fn count_calls(&mut self, done: Vec<Call>) {
        let compression = self.cfg.digest_compression;
        for c in done {
            // Event times ahead of arrival count now, as in the engine.
            let second = secs(c.time.min(self.now));
            let cell = self.edges.entry((c.client, c.server, second)).or_default();
            cell.requests += 1;
            cell.errors += u64::from(c.bad);
            if c.latency_ms.is_finite() && c.latency_ms >= 0.0 {
                cell.digest
                    .get_or_insert_with(|| TDigest::new(compression))
                    .add(c.latency_ms);
            }
        }
    }

    /// Counters of the metric conversion (baselines, resets, drops); the observation counters
    /// are the processor's.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Series with data since the last `take`.
    pub fn series(&self) -> usize {
        self.keys.len()
    }

    /// Cells (series × second × signal) since the last `take`.
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    fn cell(&mut self, key: u32, time: UnixNanos, signal: u8) -> &mut Cell {
        // Event times ahead of arrival count now, as in the engine.
        let t = time.min(self.now);
        let c = self.cells.entry((key, secs(t), signal)).or_default();
        c.last_event = c.last_event.max(t);
        c
    }

    /// Adds a batch that arrived at `now`; returns the observations it holds.
    pub fn add(&mut self, batch: &Batch, now: UnixNanos) -> u64 {
        if self.start == 0 {
            self.start = now;
        }
        self.now = self.now.max(now);
        let compression = self.cfg.digest_compression;
        let keys: Vec<u32> = batch
            .keys
            .iter()
            .map(|k| {
                if let Some(&i) = self.index.get(k) {
                    return i;
                }
                self.keys.push(k.clone());
                let i = (self.keys.len() - 1) as u32;
                self.index.insert(k.clone(), i);
                i
            })
            .collect();
        let cfg = self.cfg.clone();
        let thresholds: Vec<&[f64]> = batch
            .keys
            .iter()
            .map(|k| cfg.thresholds_for(&k.service))
            .collect();
        let mut points = 0;
        for r in &batch.requests {
            let th = thresholds[r.key as usize];
            let mut within = [0; MAX_THRESHOLDS];
            for (w, t) in within.iter_mut().zip(th) {
                *w = u64::from(r.latency_ms <= *t);
            }
            let c = self.cell(keys[r.key as usize], r.time, SPANS);
            c.points += 1;
            c.add(1, u64::from(r.bad), within, Some(r.latency_ms), compression);
            points += 1;
        }
        for h in &batch.histograms {
            let counts = match h.temporality {
                Temporality::Delta => h.counts.clone(),
                Temporality::Cumulative => {
                    let values: Vec<f64> = h.counts.iter().map(|&c| c as f64).collect();
                    let p = DeltaPoint {
                        stream: h.stream,
                        start: h.start_time,
                        time: h.time,
                        layout: (layout_hash(&h.bounds_ms), h.exp),
                    };
                    let Some(d) = self.convert(p, &values) else {
                        continue;
                    };
                    d.into_iter().map(|v| v.max(0.0) as u64).collect()
                }
            };
            let th = thresholds[h.key as usize];
            let c = self.cell(keys[h.key as usize], h.time, METRICS);
            let mut any = false;
            for_each_bucket(h, &counts, th, |n, errors, within, ms| {
                c.add(n, errors, within, Some(ms), compression);
                any = true;
            });
            if any {
                c.points += 1;
                points += 1;
            }
        }
        for p in &batch.counters {
            let value = match p.temporality {
                Temporality::Delta => p.value,
                Temporality::Cumulative => {
                    let d = DeltaPoint {
                        stream: p.stream,
                        start: p.start_time,
                        time: p.time,
                        layout: (0, None),
                    };
                    let Some(v) = self.convert(d, &[p.value]) else {
                        continue;
                    };
                    v[0]
                }
            };
            let n = value.max(0.0).round() as u64;
            if n == 0 {
                continue;
            }
            let errors = if p.bad { n } else { 0 };
            let c = self.cell(keys[p.key as usize], p.time, METRICS);
            c.points += 1;
            c.add(n, errors, [0; MAX_THRESHOLDS], None, compression);
            points += 1;
        }
        for l in &batch.logs {
            let c = self.cell(keys[l.key as usize], l.time, LOGS);
            c.points += 1;
            c.add(1, u64::from(l.bad), [0; MAX_THRESHOLDS], None, compression);
            points += 1;
        }
        // Partials passing through (a gateway reading another gateway's output) merge as is.
        for p in &batch.partials {
            let signal = if p.from_logs {
                LOGS
            } else if p.from_metrics {
                METRICS
            } else {
                SPANS
            };
            let c = self.cell(keys[p.key as usize], p.last_event, signal);
            c.points += p.points;
            c.requests += p.requests;
            c.errors += p.errors;
            c.timed += p.timed;
            for (w, add) in c.within.iter_mut().zip(&p.within) {
                *w += add;
            }
            if let Some(d) = &p.digest {
                c.digest
                    .get_or_insert_with(|| TDigest::new(compression))
                    .merge(d);
            }
            points += p.points;
        }
        let mut done = Vec::new();
        for c in &batch.calls {
            self.pairing.call(c, self.now, &mut done);
        }
        self.pairing.advance(self.now, &mut done);
        self.count_calls(done);
        // Edges passing through merge as is.
        for e in &batch.edges {
            let cell = self
                .edges
                .entry((e.client.clone(), e.server.clone(), e.second))
                .or_default();
            cell.requests += e.requests;
            cell.errors += e.errors;
            if let Some(d) = &e.digest {
                cell.digest
                    .get_or_insert_with(|| TDigest::new(compression))
                    .merge(d);
            }
        }
        for u in &batch.usage {
            let max = self.cfg.max_metric_streams;
            let times = (self.start, self.now);
            let add = crate::usage::convert(&mut self.deltas, &mut self.stats, u, times, max);
            match add {
                Some(UsageAdd::Amount { from, to, amount }) => self.usage.push(UsageObs {
                    temporality: Temporality::Delta,
                    start_time: from,
                    time: to,
                    value: amount,
                    ..u.clone()
                }),
                Some(UsageAdd::Level { .. }) => self.usage.push(u.clone()),
                None => {}
            }
            points += 1;
        }
        for x in &batch.exemplars {
            let Some(&key) = keys.get(x.key as usize) else {
                continue;
            };
            let service = &self.keys[key as usize].service;
            let list = self.exemplars.entry(service.clone()).or_default();
            if list.len() == EXEMPLARS_PER_SERVICE {
                list.pop_front();
            }
            list.push_back(Exemplar { key, ..*x });
        }
        points
    }

    fn convert(&mut self, p: DeltaPoint, values: &[f64]) -> Option<Vec<f64>> {
        let max = self.cfg.max_metric_streams;
        convert_point(
            &mut self.deltas,
            &mut self.stats,
            p,
            values,
            (self.start, self.now),
            max,
        )
    }

    /// Everything built since the last call, one batch per service (sorted by service), and
    /// starts over; metric baselines not seen for `metric_stream_ttl` are forgotten.
    pub fn take(&mut self) -> Vec<ServicePartials> {
        let keys = std::mem::take(&mut self.keys);
        self.index.clear();
        let mut cells: Vec<_> = self.cells.drain().collect();
        cells.sort_unstable_by(|a, b| {
            let (ka, kb) = (&keys[a.0.0 as usize], &keys[b.0.0 as usize]);
            (ka, a.0.1, a.0.2).cmp(&(kb, b.0.1, b.0.2))
        });
        let mut out: Vec<ServicePartials> = Vec::new();
        for ((k, second, signal), mut c) in cells {
            let key = &keys[k as usize];
            if out.last().is_none_or(|s| s.service != key.service) {
                out.push(ServicePartials {
                    service: key.service.clone(),
                    batch: Batch::default(),
                    points: 0,
                });
            }
            let sp = out.last_mut().expect("pushed above");
            let thresholds = self.cfg.thresholds_for(&key.service);
            // Sorted by key: a key's cells are consecutive.
            if sp.batch.keys.last() != Some(key) {
                sp.batch.keys.push(key.clone());
            }
            let idx = (sp.batch.keys.len() - 1) as u32;
            if let Some(d) = &mut c.digest {
                d.compress();
            }
            sp.points += c.points;
            sp.batch.partials.push(PartialObs {
                key: idx,
                second,
                from_metrics: signal != SPANS,
                from_logs: signal == LOGS,
                points: c.points,
                requests: c.requests,
                errors: c.errors,
                timed: c.timed,
                thresholds_ms: thresholds.to_vec(),
                within: c.within[..thresholds.len()].to_vec(),
                last_event: c.last_event,
                digest: c.digest,
            });
        }
        for (service, list) in self.exemplars.drain() {
            let at = service_at(&mut out, &service);
            let batch = &mut out[at].batch;
            for x in list {
                let key = batch.key_index(keys[x.key as usize].clone());
                batch.exemplars.push(Exemplar { key, ..x });
            }
        }
        let mut edges: Vec<_> = self.edges.drain().collect();
        edges.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((client, server, second), mut cell) in edges {
            let at = service_at(&mut out, &client);
            if let Some(d) = &mut cell.digest {
                d.compress();
            }
            out[at].batch.edges.push(EdgeObs {
                client,
                server,
                second,
                requests: cell.requests,
                errors: cell.errors,
                digest: cell.digest,
            });
        }
        for u in self.usage.drain(..) {
            let at = service_at(&mut out, &u.service);
            out[at].batch.usage.push(u);
        }
        let ttl = self.cfg.metric_stream_ttl.nanos();
        self.deltas.expire(self.now.saturating_sub(ttl));
        out
    }
}

/// The index of `service`'s partials in `out` (sorted by service), inserted empty if missing.
fn service_at(out: &mut Vec<ServicePartials>, service: &Arc<str>) -> usize {
    match out.binary_search_by(|s| s.service.cmp(service)) {
        Ok(at) => at,
        Err(at) => {
            out.insert(
                at,
                ServicePartials {
                    service: service.clone(),
                    batch: Batch::default(),
                    points: 0,
                },
            );
            at
        }
    }
}

#[cfg(test)]
#[path = "partials_tests.rs"]
mod tests;
