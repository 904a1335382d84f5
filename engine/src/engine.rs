//! The engine: applies observation batches to per-series windows and answers SLI queries.
//!
//! `ingest(batch, now)`, `advance(now)` and the queries are the whole API. `now` is the arrival
//! time the caller assigns; event times later than `now` are clamped to it (so a client whose
//! clock runs ahead is still visible at once), and event times before `now − allowed_lateness`
//! are counted and dropped.

use crate::config::{EngineConfig, SignalSource};
use crate::delta::DeltaTracker;
use crate::observation::{Batch, SeriesKey, Temporality};
use crate::time::{NANOS_PER_SEC, Span, UnixNanos, secs};
use crate::window::{MAX_THRESHOLDS, SeriesState, VersionDigests};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Service name of the series that new services fold into beyond `max_services`.
pub const OVERFLOW_SERVICE: &str = "__trike_overflow__";

/// Version of the [`Snapshot`] layout.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Counters of what the engine did with its input (monotonic, for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Span observations applied.
    pub requests_applied: u64,
    /// Metric points (histogram or counter) applied.
    pub metric_points_applied: u64,
    /// Observations older than the allowed lateness, dropped.
    pub late_dropped: u64,
    /// Observations folded into a service's overflow series.
    pub overflowed: u64,
    /// Observations whose event time was ahead of arrival by more than 1 s (clamped).
    pub clock_skew_clamped: u64,
    /// Observations dropped because another signal is the service's source.
    pub signal_deduplicated: u64,
    /// First cumulative points kept only as baselines.
    pub metric_baselines: u64,
    /// Cumulative resets detected.
    pub metric_resets: u64,
    /// Cumulative points not newer than their predecessor, dropped.
    pub metric_out_of_order: u64,
    /// Cumulative points dropped because the stream table was full.
    pub metric_streams_full: u64,
    /// Cumulative points whose bucket layout changed (kept as the new baseline, not counted).
    pub metric_layout_changes: u64,
    /// Idle series removed.
    pub series_evicted: u64,
    /// Idle series folded into their service version's aggregate (`idle_series_after`).
    #[serde(default)]
    pub series_folded: u64,
    /// Log records applied (`logs.errors_as: bad_events`).
    #[serde(default)]
    pub log_records_applied: u64,
}

/// What one `ingest` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Observations applied to state.
    pub applied: u64,
    /// Observations dropped as too late.
    pub late: u64,
    /// Observations folded into an overflow series (also counted in `applied`).
    pub overflowed: u64,
    /// Observations dropped because the service's source is the other signal.
    pub deduplicated: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ServiceInfo {
    /// Series of this service, overflow series excluded.
    series: usize,
    /// Arrival time of the newest span observation.
    last_span_arrival: UnixNanos,
    /// Arrival time of the newest request metric point (absent in earlier checkpoints).
    #[serde(default)]
    last_metric_arrival: UnixNanos,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    key: SeriesKey,
    state: SeriesState,
    /// The oldest event second applied since the changes were last taken
    /// ([`Engine::take_changes`]); [`UNCHANGED`] when none.
    changed_from: u64,
}

impl Entry {
    fn new(key: SeriesKey, state: SeriesState) -> Self {
        Self {
            key,
            state,
            changed_from: UNCHANGED,
        }
    }
}

/// `changed_from` of a series or version with no change to take.
const UNCHANGED: u64 = u64::MAX;

/// Usage series (service × usage metric) kept per `max_services`.
const USAGE_SERIES_PER_SERVICE: usize = 4;

/// A service version, as the key of its [`VersionDigests`].
type VersionKey = (Arc<str>, Arc<str>);

#[derive(Clone, Debug, PartialEq)]
struct VersionEntry {
    key: VersionKey,
    digests: VersionDigests,
    /// As [`Entry::changed_from`].
    changed_from: u64,
}

/// A key of a batch, resolved once per batch.
#[derive(Clone, Copy)]
struct Resolved {
    entry: usize,
    /// Index of the entry's version in `Engine::versions`.
    version: usize,
    overflow: bool,
    thresholds: [f64; MAX_THRESHOLDS],
    n_thresholds: usize,
    allow_spans: bool,
    allow_metrics: bool,
    allow_logs: bool,
}

impl Resolved {
    fn within(&self, latency_ms: f64, count: u64) -> [u64; MAX_THRESHOLDS] {
        let mut w = [0; MAX_THRESHOLDS];
        for (w, t) in w.iter_mut().zip(&self.thresholds).take(self.n_thresholds) {
            if latency_ms <= *t {
                *w = count;
            }
        }
        w
    }
}

/// Everything needed to rebuild an engine: serialise it with any serde format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version.
    pub version: u32,
    now: UnixNanos,
    start: UnixNanos,
    series: Vec<(SeriesKey, SeriesState)>,
    /// The versions' latency digests (absent from snapshots written before they were kept
    /// per version: their series carry them, see [`SeriesState::take_legacy`]).
    #[serde(default)]
    versions: Vec<(VersionKey, VersionDigests)>,
    /// Of a change set ([`Engine::take_changes`]): series removed since the previous one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<SeriesKey>,
    services: Vec<(Arc<str>, ServiceInfo)>,
    deltas: DeltaTracker,
    stats: Stats,
    /// Services' usage metrics (a whole engine's snapshot only: absent from older ones and
    /// from the changelog's).
    #[serde(default, skip_serializing_if = "crate::usage::Usage::is_empty")]
    usage: crate::usage::Usage,
}

/// The windowed SLI engine.
#[derive(Debug)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    entries: Vec<Entry>,
    index: HashMap<SeriesKey, usize>,
    versions: Vec<VersionEntry>,
    version_index: HashMap<VersionKey, usize>,
    services: HashMap<Arc<str>, ServiceInfo>,
    deltas: DeltaTracker,
    now: UnixNanos,
    start: UnixNanos,
    last_sweep_s: u64,
    stats: Stats,
    /// Memory is short: new series fold into overflow series, as at the global cap.
    shedding: bool,
    /// Changes are taken ([`Engine::track_changes`]): removed series are remembered.
    tracking: bool,
    /// Series removed since the changes of their service were last taken.
    removed: Vec<SeriesKey>,
    /// Example traces of failing requests, per service.
    exemplars: exemplars::Exemplars,
    /// Calls between services.
    graph: crate::graph::Graph,
    /// Services' usage metrics (CPU time, memory…).
    usage: crate::usage::Usage,
}

impl Engine {
    /// An empty engine.
    pub fn new(cfg: Arc<EngineConfig>) -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            versions: Vec::new(),
            version_index: HashMap::new(),
            services: HashMap::new(),
            deltas: DeltaTracker::default(),
            now: 0,
            start: 0,
            last_sweep_s: 0,
            stats: Stats::default(),
            shedding: false,
            tracking: false,
            removed: Vec::new(),
            exemplars: Default::default(),
            graph: crate::graph::Graph::new(cfg.graph, cfg.digest_compression),
            usage: crate::usage::Usage::new(
                cfg.max_services.saturating_mul(USAGE_SERIES_PER_SERVICE),
            ),
            cfg,
        }
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The service graph.
    pub fn graph(&self) -> &crate::graph::Graph {
        &self.graph
    }

    /// The service graph, to add a gateway's pre-aggregated calls to.
    pub fn graph_mut(&mut self) -> &mut crate::graph::Graph {
        &mut self.graph
    }

    /// Services' usage metrics.
    pub fn usage(&self) -> &crate::usage::Usage {
        &self.usage
    }

    /// The newest `now` seen.
    pub fn now(&self) -> UnixNanos {
        self.now
    }

    /// When the engine began collecting (its first `now`; kept across checkpoints): the
    /// windows before it hold no history.
    pub fn history_start(&self) -> UnixNanos {
        self.start
    }

    /// Counters of what was applied and dropped.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// While `on`, new series fold into their service's overflow series (and new services into
    /// the shared one), exactly as at the global series cap: observations are all counted,
    /// only new cardinality is refused. The memory limiter sets it above its hard limit.
    pub fn set_shedding(&mut self, on: bool) {
        self.shedding = on;
    }

    /// Series tracked (overflow series included).
    pub fn series_count(&self) -> usize {
        self.entries.len()
    }

    /// Series that received data within the last `within`.
    pub fn active_series(&self, within: Span) -> usize {
        let since = self.now.saturating_sub(within.nanos());
        self.entries
            .iter()
            .filter(|e| e.state.last_arrival >= since)
            .count()
    }

    /// Heap bytes of all series' windows (keys excluded).
    pub fn window_heap_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.state.heap_bytes()).sum()
    }

    /// Heap bytes of all series' counter rings and digest rings, separately.
    pub fn window_heap_split(&self) -> (usize, usize) {
        self.entries
            .iter()
            .map(|e| e.state.heap_bytes_split())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Heap bytes of the versions' hour of latency digests.
    pub fn version_heap_bytes(&self) -> usize {
        let per_version =
            std::mem::size_of::<VersionEntry>() + std::mem::size_of::<(VersionKey, usize)>() + 16;
        self.versions
            .iter()
            .map(|v| v.digests.heap_bytes() + per_version)
            .sum()
    }

    /// Heap bytes of all series and versions, keys and index included, and of the service
    /// graph and usage series (an estimate).
    pub fn heap_bytes(&self) -> usize {
        let per_entry =
            std::mem::size_of::<Entry>() + std::mem::size_of::<(SeriesKey, usize)>() + 16;
        self.entries
            .iter()
            .map(|e| e.state.heap_bytes() + e.key.heap_bytes() + per_entry)
            .sum::<usize>()
            + self.version_heap_bytes()
            + self.graph.heap_bytes()
            + self.usage.heap_bytes()
    }

    fn observe_now(&mut self, now: UnixNanos) {
        if self.start == 0 {
            self.start = now;
        }
        self.now = self.now.max(now);
    }

    fn resolve(&mut self, key: &SeriesKey) -> Resolved {
        let mut r = self.resolve_entry(key);
        let k = &self.entries[r.entry].key;
        r.version = self.version_for((k.service.clone(), k.version.clone()));
        r
    }

    /// The index of a version's digests, created empty if missing.
    fn version_for(&mut self, key: VersionKey) -> usize {
        if let Some(&i) = self.version_index.get(&key) {
            return i;
        }
        self.versions.push(VersionEntry {
            key: key.clone(),
            digests: VersionDigests::default(),
            changed_from: UNCHANGED,
        });
        self.version_index.insert(key, self.versions.len() - 1);
        self.versions.len() - 1
    }

    /// Hands the fine digests a series read from an old checkpoint to its version.
    fn adopt_legacy_digests(&mut self, entry: usize) {
        if let Some(legacy) = self.entries[entry].state.take_legacy() {
            let k = &self.entries[entry].key;
            let v = self.version_for((k.service.clone(), k.version.clone()));
            self.versions[v].digests.absorb_legacy(&legacy);
        }
    }

    fn resolve_entry(&mut self, key: &SeriesKey) -> Resolved {
        let thresholds_cfg = self.cfg.thresholds_for(&key.service);
        let mut thresholds = [f64::INFINITY; MAX_THRESHOLDS];
        thresholds[..thresholds_cfg.len()].copy_from_slice(thresholds_cfg);
        let source = self.cfg.source_for(&key.service);
        let recent = |t: UnixNanos| t > 0 && t + self.cfg.spans_preferred_for.nanos() >= self.now;
        let (spans_recent, metrics_recent) =
            self.services.get(&key.service).map_or((false, false), |s| {
                (recent(s.last_span_arrival), recent(s.last_metric_arrival))
            });
        let (allow_spans, allow_metrics, allow_logs) = match source {
            SignalSource::Spans => (true, false, false),
            SignalSource::Metrics => (false, true, false),
            SignalSource::Logs => (false, false, true),
            SignalSource::Auto => (true, !spans_recent, !spans_recent && !metrics_recent),
        };
        let mut r = Resolved {
            entry: 0,
            version: 0,
            overflow: false,
            thresholds,
            n_thresholds: thresholds_cfg.len(),
            allow_spans,
            allow_metrics,
            allow_logs,
        };
        if let Some(&i) = self.index.get(key) {
            r.entry = i;
            r.overflow = key.is_overflow();
            return r;
        }
        // At the global cap, new series fold into overflow series (bounded by max_services).
        let full = self.entries.len() >= self.cfg.max_series || self.shedding;
        if !self.services.contains_key(&key.service)
            && (self.services.len() >= self.cfg.max_services || full)
        {
            // Too many services (or series): fold the newcomer into one shared overflow series.
            r.overflow = true;
            r.entry = self.entry_for(SeriesKey::overflow(&Arc::from(OVERFLOW_SERVICE)));
            return r;
        }
        let info = self.services.entry(key.service.clone()).or_default();
        let target = if info.series >= self.cfg.max_series_per_service || full {
            r.overflow = true;
            SeriesKey::overflow(&key.service)
        } else {
            if !key.is_overflow() {
                info.series += 1;
            }
            key.clone()
        };
        r.entry = self.entry_for(target);
        r
    }

    /// The entry of `key`, created empty if missing.
    fn entry_for(&mut self, key: SeriesKey) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.entries
            .push(Entry::new(key.clone(), SeriesState::default()));
        self.index.insert(key, self.entries.len() - 1);
        self.entries.len() - 1
    }

    /// Clamps an event time to `now` and checks lateness. `None` when too late.
    fn event_second(&mut self, time: UnixNanos) -> Option<u64> {
        let t = if time > self.now {
            if time - self.now > NANOS_PER_SEC {
                self.stats.clock_skew_clamped += 1;
            }
            self.now
        } else {
            time
        };
        if t + self.cfg.allowed_lateness.nanos() < self.now {
            return None;
        }
        Some(secs(t))
    }

    /// Applies a batch that arrived at `now`.
    pub fn ingest(&mut self, batch: &Batch, now: UnixNanos) -> IngestReport {
        self.observe_now(now);
        let now_s = secs(self.now);
        let compression = self.cfg.digest_compression;
        let digests = self.cfg.digest_settings();
        let mut resolved: Vec<Resolved> = batch.keys.iter().map(|k| self.resolve(k)).collect();
        if self.note_signals(batch) {
            resolved = batch.keys.iter().map(|k| self.resolve(k)).collect();
        }
        let mut rep = IngestReport::default();
        for c in &batch.calls {
            self.graph.call(c, self.now);
        }
        for e in &batch.edges {
            self.graph.add_edge(e);
        }
        self.apply_usage(&batch.usage);

        let mut span_services: Vec<usize> = Vec::new();
        for r in &batch.requests {
            let res = resolved[r.key as usize];
            if !res.allow_spans {
                rep.deduplicated += 1;
                continue;
            }
            let Some(t_s) = self.event_second(r.time) else {
                rep.late += 1;
                continue;
            };
            let within = res.within(r.latency_ms, 1);
            let entry = &mut self.entries[res.entry];
            let e = &mut entry.state;
            if e.apply(
                t_s,
                now_s,
                1,
                u64::from(r.bad),
                within,
                Some(r.latency_ms),
                digests,
            ) {
                entry.changed_from = entry.changed_from.min(t_s);
                let v = &mut self.versions[res.version];
                v.digests.add(t_s, now_s, r.latency_ms, 1, compression);
                v.changed_from = v.changed_from.min(t_s);
                e.last_event = e.last_event.max(r.time.min(self.now));
                e.last_arrival = self.now;
                rep.applied += 1;
                rep.overflowed += u64::from(res.overflow);
                if span_services.last() != Some(&(r.key as usize)) {
                    span_services.push(r.key as usize);
                }
            } else {
                rep.late += 1;
            }
        }
        for k in span_services {
            let service = &batch.keys[k].service;
            if let Some(info) = self.services.get_mut(service) {
                info.last_span_arrival = self.now;
            } else {
                let info = ServiceInfo {
                    last_span_arrival: self.now,
                    ..ServiceInfo::default()
                };
                self.services.insert(service.clone(), info);
            }
        }
        self.stats.requests_applied += rep.applied;

        let mut metric_points = 0;
        let mut metric_keys: Vec<u32> = Vec::new();
        for h in &batch.histograms {
            let res = resolved[h.key as usize];
            // The service sends request metrics (whether or not they count): its logs yield.
            metric_keys.push(h.key);
            // Convert first, even when the point is then dropped: the cumulative baseline
            // must keep moving, or the next counted point would carry everything since.
            let layout = layout_hash(&h.bounds_ms);
            let counts = self.metric_delta(
                h.stream,
                h.start_time,
                h.time,
                h.temporality,
                (layout, h.exp),
                &h.counts,
            );
            if !res.allow_metrics {
                rep.deduplicated += 1;
                continue;
            }
            let Some(counts) = counts else {
                continue;
            };
            let Some(t_s) = self.event_second(h.time) else {
                rep.late += 1;
                continue;
            };
            let entry = &mut self.entries[res.entry];
            let e = &mut entry.state;
            let version = &mut self.versions[res.version];
            let v = &mut version.digests;
            let mut any = false;
            let thresholds = &res.thresholds[..res.n_thresholds];
            for_each_bucket(h, &counts, thresholds, |c, errors, within, rep_ms| {
                if e.apply(t_s, now_s, c, errors, within, Some(rep_ms), digests) {
                    v.add(t_s, now_s, rep_ms, c, compression);
                    any = true;
                }
            });
            if any {
                entry.changed_from = entry.changed_from.min(t_s);
                version.changed_from = version.changed_from.min(t_s);
                e.last_event = e.last_event.max(h.time.min(self.now));
                e.last_arrival = self.now;
                metric_points += 1;
                rep.overflowed += u64::from(res.overflow);
            }
        }
        for c in &batch.counters {
            let res = resolved[c.key as usize];
            metric_keys.push(c.key);
            let value = match c.temporality {
                Temporality::Delta => Some(c.value),
                Temporality::Cumulative => self
                    .convert(c.stream, c.start_time, c.time, (0, None), &[c.value])
                    .map(|v| v[0]),
            };
            if !res.allow_metrics {
                rep.deduplicated += 1;
                continue;
            }
            let Some(value) = value else {
                continue;
            };
            let n = value.max(0.0).round() as u64;
            if n == 0 {
                continue;
            }
            let Some(t_s) = self.event_second(c.time) else {
                rep.late += 1;
                continue;
            };
            let entry = &mut self.entries[res.entry];
            let e = &mut entry.state;
            let errors = if c.bad { n } else { 0 };
            if e.apply(t_s, now_s, n, errors, [0; MAX_THRESHOLDS], None, digests) {
                entry.changed_from = entry.changed_from.min(t_s);
                e.last_event = e.last_event.max(c.time.min(self.now));
                e.last_arrival = self.now;
                metric_points += 1;
                rep.overflowed += u64::from(res.overflow);
            }
        }
        let mut log_records = 0;
        for l in &batch.logs {
            let res = resolved[l.key as usize];
            if !res.allow_logs {
                rep.deduplicated += 1;
                continue;
            }
            let Some(t_s) = self.event_second(l.time) else {
                rep.late += 1;
                continue;
            };
            let entry = &mut self.entries[res.entry];
            let e = &mut entry.state;
            let bad = u64::from(l.bad);
            if e.apply(t_s, now_s, 1, bad, [0; MAX_THRESHOLDS], None, digests) {
                entry.changed_from = entry.changed_from.min(t_s);
                e.last_event = e.last_event.max(l.time.min(self.now));
                e.last_arrival = self.now;
                log_records += 1;
                rep.overflowed += u64::from(res.overflow);
            } else {
                rep.late += 1;
            }
        }
        for p in &batch.partials {
            let res = resolved[p.key as usize];
            if p.from_metrics && !p.from_logs {
                metric_keys.push(p.key);
            }
            let allowed = if p.from_logs {
                res.allow_logs
            } else if p.from_metrics {
                res.allow_metrics
            } else {
                res.allow_spans
            };
            if !allowed {
                rep.deduplicated += p.points;
                continue;
            }
            let whole = seconds::WholeSecond {
                second: p.second,
                requests: p.requests,
                errors: p.errors,
                timed: p.timed,
                thresholds_ms: &p.thresholds_ms,
                within: &p.within,
                last_event: p.last_event,
                digest: p.digest.as_ref(),
            };
            if !self.apply_whole_second(res, &whole) {
                rep.late += p.points;
                continue;
            }
            rep.overflowed += if res.overflow { p.points } else { 0 };
            if p.from_logs {
                log_records += p.points;
            } else if p.from_metrics {
                metric_points += p.points;
            } else {
                rep.applied += p.points;
                self.stats.requests_applied += p.points;
                let service = &batch.keys[p.key as usize].service;
                self.services
                    .entry(service.clone())
                    .or_default()
                    .last_span_arrival = self.now;
            }
        }
        self.stats.metric_points_applied += metric_points;
        rep.applied += metric_points;
        self.stats.log_records_applied += log_records;
        rep.applied += log_records;
        metric_keys.sort_unstable();
        metric_keys.dedup();
        for k in metric_keys {
            let service = &batch.keys[k as usize].service;
            self.services
                .entry(service.clone())
                .or_default()
                .last_metric_arrival = self.now;
        }
        self.stats.late_dropped += rep.late;
        self.stats.overflowed += rep.overflowed;
        self.stats.signal_deduplicated += rep.deduplicated;
        if !batch.exemplars.is_empty() {
            self.keep_exemplars(batch);
        }
        rep
    }

    /// Moves time forward: evicts buckets out of retention (once per second of `now`), removes
    /// series with no data left, and forgets silent metric streams.
    pub fn advance(&mut self, now: UnixNanos) {
        self.observe_now(now);
        self.graph.advance(self.now);
        let now_s = secs(self.now);
        if now_s <= self.last_sweep_s {
            return;
        }
        self.last_sweep_s = now_s;
        self.sweep(now_s);
    }

    /// Evicts buckets out of retention at `now_s`, removes series with no data left, folds
    /// idle series and forgets silent services and metric streams.
    fn sweep(&mut self, now_s: u64) {
        self.usage.sweep(self.now);
        let mut i = 0;
        while i < self.entries.len() {
            self.entries[i].state.evict(now_s);
            if self.entries[i].state.is_empty() {
                let gone = self.entries.swap_remove(i);
                self.index.remove(&gone.key);
                if let Some(moved) = self.entries.get(i) {
                    self.index.insert(moved.key.clone(), i);
                }
                if !gone.key.is_overflow()
                    && let Some(info) = self.services.get_mut(&gone.key.service)
                {
                    info.series = info.series.saturating_sub(1);
                }
                if self.tracking {
                    self.removed.push(gone.key);
                }
                self.stats.series_evicted += 1;
            } else {
                i += 1;
            }
        }
        self.fold_idle();
        let before = self.versions.len();
        self.versions.retain_mut(|v| {
            if let Some(t_s) = v.digests.evict(now_s) {
                v.changed_from = v.changed_from.min(t_s);
            }
            !v.digests.is_empty()
        });
        if self.versions.len() != before {
            self.reindex_versions();
        }
        // Forget services with no series left and no recent spans.
        let recent = self
            .now
            .saturating_sub(self.cfg.spans_preferred_for.nanos());
        self.services.retain(|_, info| {
            info.series > 0
                || info.last_span_arrival >= recent
                || info.last_metric_arrival >= recent
        });
        let ttl = self.cfg.metric_stream_ttl.nanos();
        self.deltas.expire(self.now.saturating_sub(ttl));
    }

    /// Folds series without new data for `idle_series_after` into their service version's
    /// aggregate series (an overflow series carrying the version): the aggregate absorbs their
    /// whole history, so every window's counts of the service and of each version stay exactly
    /// what they were; only the per-operation (and per-dimension) breakdown of idle history goes.
    fn fold_idle(&mut self) {
        let Some(idle) = self.cfg.idle_series_after else {
            return;
        };
        let cutoff = self.now.saturating_sub(idle.nanos());
        let mut idle_entries: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.key.is_overflow() && e.state.last_arrival < cutoff)
            .map(|(i, _)| i)
            .collect();
        // From the back: a swap_remove then only moves an entry already looked at (or a new
        // aggregate, found by key).
        idle_entries.sort_unstable_by(|a, b| b.cmp(a));
        for i in idle_entries {
            let gone = self.entries.swap_remove(i);
            self.index.remove(&gone.key);
            if let Some(moved) = self.entries.get(i) {
                self.index.insert(moved.key.clone(), i);
            }
            let agg = self.entry_for(SeriesKey::aggregate(&gone.key.service, &gone.key.version));
            self.entries[agg].state.absorb(&gone.state);
            // The aggregate changed in old buckets too: all of it is a change.
            self.entries[agg].changed_from = 0;
            if let Some(info) = self.services.get_mut(&gone.key.service) {
                info.series = info.series.saturating_sub(1);
            }
            if self.tracking {
                self.removed.push(gone.key);
            }
            self.stats.series_folded += 1;
        }
    }

    /// Rebuilds the series index after entries were removed.
    fn reindex(&mut self) {
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key.clone(), i))
            .collect();
    }

    fn reindex_versions(&mut self) {
        self.version_index = self
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| (v.key.clone(), i))
            .collect();
    }

    /// Copies the whole state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            deltas: self.deltas.clone(),
            stats: self.stats,
            usage: self.usage.saved(),
            ..self.snapshot_of(|_| true)
        }
    }

    /// Rebuilds an engine from a snapshot.
    pub fn restore(cfg: Arc<EngineConfig>, snap: Snapshot) -> Result<Self> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(Error::SnapshotVersion {
                found: snap.version,
                expected: SNAPSHOT_VERSION,
            });
        }
        let mut engine = Engine::new(cfg);
        engine.now = snap.now;
        engine.start = snap.start;
        engine.last_sweep_s = secs(snap.now);
        engine.deltas = snap.deltas;
        engine.stats = snap.stats;
        engine.usage.restore(snap.usage);
        engine.services = snap.services.into_iter().collect();
        for (key, digests) in snap.versions {
            engine.versions.push(VersionEntry {
                key,
                digests,
                changed_from: UNCHANGED,
            });
        }
        engine.reindex_versions();
        for (key, state) in snap.series {
            engine.index.insert(key.clone(), engine.entries.len());
            engine.entries.push(Entry::new(key, state));
            engine.adopt_legacy_digests(engine.entries.len() - 1);
        }
        Ok(engine)
    }
}

mod changes;
mod exemplars;
mod metric_points;
mod metrics;
mod owned;
mod queries;
mod seconds;
mod signals;

pub use exemplars::{EXEMPLARS_PER_SERVICE, FailingTrace};
pub(crate) use metric_points::{DeltaPoint, convert_point, for_each_bucket, layout_hash};
pub use metrics::Gauges;

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
