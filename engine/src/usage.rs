//! Usage metrics (patterns 1 and 6): what a service consumes, read from the OTLP metrics its
//! resources already export: CPU time (`process.cpu.time`, `container.cpu.time`), memory,
//! connections, queue depth. A metric becomes a usage metric by being named where it is used
//! (a `capacity:` limit to forecast against, a `cost:` price per CPU-second); every service
//! exporting it then has a usage series.
//!
//! Two kinds, told apart by the data:
//! - **rates**: monotonic sums (CPU seconds, bytes sent). What counts is how fast they grow: the
//!   amount in a window over the window, in the metric's unit per second (CPU seconds per
//!   second = cores). Each point's amount (cumulative points are converted to deltas by the
//!   engine's, or a gateway's, delta tracker) is spread evenly over the interval it covers (an
//!   interval longer than the hour kept contributes its last hour's share), and a rate is read
//!   up to the newest point, so a window between two exports is not diluted by the time since
//!   the last one.
//! - **levels**: gauges and non-monotonic sums (memory in use, open connections). What counts
//!   is their value: over a window, the sum over the service's streams (its instances, and
//!   their attributes) of each stream's mean in the window.
//!
//! Memory is bounded: an hour of minutes per series, at most `max_series` series, each
//! forgotten an hour after its last point, at most [`MAX_LEVEL_STREAMS`] streams a level's
//! minute. Pure: time is an argument.

use crate::minutes;
use crate::time::{NANOS_PER_SEC, Span, UnixNanos};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The longest interval an amount is spread over: the hour kept (and a silent series' life).
const MAX_SPREAD: u64 = 3600 * NANOS_PER_SEC;
/// Minutes a level's stream counts as present after its last point (Prometheus's lookback).
const STALE_MINUTES: u64 = 5;
/// Most streams a level's minute sums (instances × attribute sets); points of more are
/// dropped (counted).
pub const MAX_LEVEL_STREAMS: usize = 1000;

/// How a usage metric is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    /// A monotonic sum: read as its growth per second.
    Rate,
    /// A gauge or a non-monotonic sum: read as its value.
    Level,
}

/// One point of a usage metric, as decoded (or, from a gateway, already a delta).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageObs {
    /// The resource's `service.name`.
    pub service: Arc<str>,
    /// The metric's name.
    pub metric: Arc<str>,
    /// Identity of the metric stream (resource, scope, name, point attributes).
    pub stream: u64,
    /// Point time.
    pub time: UnixNanos,
    /// Point start time (0 when unknown).
    pub start_time: UnixNanos,
    /// Delta or cumulative (rates only).
    pub temporality: crate::observation::Temporality,
    /// Rate or level.
    pub kind: UsageKind,
    /// The point's value.
    pub value: f64,
}

impl minutes::Minutely for Minute {
    fn minute(&self) -> u64 {
        self.minute
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Minute {
    /// Unix minute.
    minute: u64,
    /// Rates: the amount within the minute.
    amount: f64,
    /// Levels: (stream, sum of values, points) in the minute.
    levels: Vec<(u64, f64, u32)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Series {
    kind: UsageKind,
    /// Oldest first.
    minutes: VecDeque<Minute>,
    /// The earliest time the series covers (rates: the rate's denominator starts there).
    since: UnixNanos,
    /// Rates: the latest time the series covers (the denominator ends there: between two
    /// exports, the time since the last one holds no data yet).
    until: UnixNanos,
    /// Engine time of the last point.
    seen: UnixNanos,
}

/// Every service's usage series (in a single process's checkpoint with the engine).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The cap (configuration: not saved).
    #[serde(skip)]
    max_series: usize,
    /// Per service, its metrics' series (a few each).
    series: HashMap<Arc<str>, Vec<(Arc<str>, Series)>>,
    /// Series held, over every service.
    count: usize,
    /// Points dropped: the series cap, a kind that changed, or too old.
    dropped: u64,
}

/// One series' reading, for the API and `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageRow {
    /// The service.
    pub service: String,
    /// The metric.
    pub metric: String,
    /// Rate or level.
    pub kind: UsageKind,
    /// Per second (rates) or the value (levels), over the window.
    pub value: f64,
    /// Rates: the amount within the window (e.g. CPU seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
}

impl Usage {
    /// An empty store of at most `max_series` (service, metric) series.
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            ..Self::default()
        }
    }

    /// Points dropped so far (series cap, a changed kind, too old).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// What a checkpoint keeps: the series and counts, without the cap (the configuration's
    /// at restore).
    pub fn saved(&self) -> Usage {
        Usage {
            max_series: 0,
            ..self.clone()
        }
    }

    /// The series of `saved` (a checkpoint's), under this store's cap (series beyond it are
    /// not taken, counted as dropped).
    pub fn restore(&mut self, saved: Usage) {
        for (service, series) in saved.series {
            for (metric, s) in series {
                if self.count >= self.max_series {
                    self.dropped += 1;
                    continue;
                }
                self.count += 1;
                self.series
                    .entry(service.clone())
                    .or_default()
                    .push((metric, s));
            }
        }
        self.dropped += saved.dropped;
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.series
            .iter()
            .flat_map(|(s, list)| list.iter().map(move |l| (s, l)))
            .map(|(s, (m, v))| {
                s.len()
                    + m.len()
                    + 96
                    + v.minutes
                        .iter()
                        .map(|m| 48 + m.levels.len() * 24)
                        .sum::<usize>()
            })
            .sum()
    }

    fn series_mut(
        &mut self,
        service: &Arc<str>,
        metric: &Arc<str>,
        kind: UsageKind,
        now: UnixNanos,
    ) -> Option<&mut Series> {
        let full = self.count >= self.max_series;
        let known = self
            .series
            .get(service)
            .is_some_and(|list| list.iter().any(|(m, _)| m == metric));
        if !known && full {
            self.dropped += 1;
            return None;
        }
        let list = self.series.entry(service.clone()).or_default();
        let at = match list.iter().position(|(m, _)| m == metric) {
            Some(at) => at,
            None => {
                list.push((
                    metric.clone(),
                    Series {
                        kind,
                        minutes: VecDeque::new(),
                        since: UnixNanos::MAX,
                        until: 0,
                        seen: now,
                    },
                ));
                self.count += 1;
                list.len() - 1
            }
        };
        let s = &mut list[at].1;
        if s.kind != kind {
            self.dropped += 1;
            return None;
        }
        s.seen = now;
        Some(s)
    }

    /// Adds `amount` of rate `metric` of `service`, spread evenly over `(from, to]` (at `to`
    /// when `from` is unknown or not before `to`; of an interval longer than the hour kept,
    /// the last hour's share). Times after `now` count at `now`.
    pub fn add_amount(
        &mut self,
        service: &Arc<str>,
        metric: &Arc<str>,
        (from, to): (UnixNanos, UnixNanos),
        amount: f64,
        now: UnixNanos,
    ) {
        if !amount.is_finite() || amount < 0.0 {
            self.dropped += 1;
            return;
        }
        let to = to.min(now);
        let (from, amount) = if from == 0 || from >= to {
            (to, amount)
        } else if to - from > MAX_SPREAD {
            // Only the last hour is kept: its share of the amount (a stream back after a long
            // silence, or a process older than the engine, must not land in one minute).
            let kept = to - MAX_SPREAD;
            (kept, amount * MAX_SPREAD as f64 / (to - from) as f64)
        } else {
            (from, amount)
        };
        let Some(s) = self.series_mut(service, metric, UsageKind::Rate, now) else {
            return;
        };
        s.since = s.since.min(from);
        s.until = s.until.max(to);
        let mut counted = false;
        if from == to {
            if let Some(m) = s.minute(to / (60 * NANOS_PER_SEC)) {
                m.amount += amount;
                counted = true;
            }
        } else {
            let per_ns = amount / (to - from) as f64;
            let mut t = from;
            while t < to {
                let minute = t / (60 * NANOS_PER_SEC);
                let end = ((minute + 1) * 60 * NANOS_PER_SEC).min(to);
                if let Some(m) = s.minute(minute) {
                    m.amount += per_ns * (end - t) as f64;
                    counted = true;
                }
                t = end;
            }
        }
        if !counted {
            self.dropped += 1;
        }
    }

    /// Adds one point of level `metric` of `service`'s `stream` at `time` (after `now`: at
    /// `now`).
    pub fn add_level(
        &mut self,
        service: &Arc<str>,
        metric: &Arc<str>,
        stream: u64,
        time: UnixNanos,
        value: f64,
        now: UnixNanos,
    ) {
        if !value.is_finite() {
            self.dropped += 1;
            return;
        }
        let time = time.min(now);
        let Some(s) = self.series_mut(service, metric, UsageKind::Level, now) else {
            return;
        };
        s.since = s.since.min(time);
        let Some(m) = s.minute(time / (60 * NANOS_PER_SEC)) else {
            self.dropped += 1;
            return;
        };
        let full = m.levels.len() >= MAX_LEVEL_STREAMS;
        match m.levels.iter_mut().find(|l| l.0 == stream) {
            Some(l) => {
                l.1 += value;
                l.2 += 1;
            }
            None if full => self.dropped += 1,
            None => m.levels.push((stream, value, 1)),
        }
    }

    /// Forgets the series of the services for which `gone(service)` holds (their partition
    /// moved to another processor).
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) {
        self.series.retain(|service, _| !gone(service));
        self.count = self.series.values().map(Vec::len).sum();
    }

    /// The services with a usage series, sorted.
    pub fn services(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self.series.keys().cloned().collect();
        v.sort();
        v
    }

    /// The kind of `service`'s `metric`, if it has a series.
    pub fn kind(&self, service: &str, metric: &str) -> Option<UsageKind> {
        self.find(service, metric).map(|s| s.kind)
    }

    fn find(&self, service: &str, metric: &str) -> Option<&Series> {
        let list = self.series.get(service)?;
        list.iter().find(|(m, _)| &**m == metric).map(|(_, s)| s)
    }

    /// The amount of rate `metric` of `service` within the `window` ending at `now` (minutes
    /// prorated at the window's start); None without a series, or for a level.
    pub fn amount(&self, service: &str, metric: &str, window: Span, now: UnixNanos) -> Option<f64> {
        let s = self
            .find(service, metric)
            .filter(|s| s.kind == UsageKind::Rate)?;
        Some(s.amount(window, now))
    }

    /// The value of `service`'s `metric` over the `window` ending at `now`: a rate per second
    /// (over the part of the window the series covers), or a level's mean. None without data.
    pub fn value(&self, service: &str, metric: &str, window: Span, now: UnixNanos) -> Option<f64> {
        let s = self.find(service, metric)?;
        s.value(window, now)
    }

    /// Every series' value over `window` ending at `now`, sorted by service then metric.
    pub fn rows(&self, window: Span, now: UnixNanos) -> Vec<UsageRow> {
        let mut rows: Vec<UsageRow> = self
            .series
            .iter()
            .flat_map(|(service, list)| list.iter().map(move |l| (service, l)))
            .filter_map(|(service, (metric, s))| {
                Some(UsageRow {
                    service: service.to_string(),
                    metric: metric.to_string(),
                    kind: s.kind,
                    value: s.value(window, now)?,
                    amount: (s.kind == UsageKind::Rate).then(|| s.amount(window, now)),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.service, &a.metric).cmp(&(&b.service, &b.metric)));
        rows
    }

    /// Drops minutes older than an hour before `now`, and series without a point for an hour.
    pub fn sweep(&mut self, now: UnixNanos) {
        let mut count = 0;
        self.series.retain(|_, list| {
            list.retain_mut(|(_, s)| {
                minutes::expire(&mut s.minutes, now);
                now.saturating_sub(s.seen) <= MAX_SPREAD
            });
            count += list.len();
            !list.is_empty()
        });
        self.count = count;
    }
}

/// What one usage point adds to its series, once a cumulative rate is converted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum UsageAdd {
    /// An amount over `(from, to]`.
    Amount {
        from: UnixNanos,
        to: UnixNanos,
        amount: f64,
    },
    /// A level's value at `time`.
    Level {
        stream: u64,
        time: UnixNanos,
        value: f64,
    },
}

/// Converts `u` with the cumulative-to-delta rules of every other metric point (`deltas`,
/// counting in `stats`; `(start, now)` are the converter's start and current time): a
/// cumulative rate's amount covers the interval since its stream's previous point (or since
/// its start time, after a reset). None while there is nothing to add (a first point is
/// only a baseline).
pub(crate) fn convert(
    deltas: &mut crate::delta::DeltaTracker,
    stats: &mut crate::engine::Stats,
    u: &UsageObs,
    (start, now): (UnixNanos, UnixNanos),
    max_streams: usize,
) -> Option<UsageAdd> {
    use crate::observation::Temporality;
    match (u.kind, u.temporality) {
        (UsageKind::Level, _) => Some(UsageAdd::Level {
            stream: u.stream,
            time: u.time,
            value: u.value,
        }),
        (UsageKind::Rate, Temporality::Delta) => Some(UsageAdd::Amount {
            from: u.start_time,
            to: u.time,
            amount: u.value,
        }),
        (UsageKind::Rate, Temporality::Cumulative) => {
            let previous = deltas.last_time(u.stream);
            let point = crate::engine::DeltaPoint {
                stream: u.stream,
                start: u.start_time,
                time: u.time,
                layout: (0, None),
            };
            let d = crate::engine::convert_point(
                deltas,
                stats,
                point,
                &[u.value],
                (start, now),
                max_streams,
            )?;
            let from = match previous {
                Some(p) if u.start_time == 0 || p >= u.start_time => p,
                _ => u.start_time,
            };
            Some(UsageAdd::Amount {
                from,
                to: u.time,
                amount: d[0].max(0.0),
            })
        }
    }
}

impl Usage {
    /// Adds a converted point of `service`'s `metric` at engine time `now`.
    pub(crate) fn apply(
        &mut self,
        service: &Arc<str>,
        metric: &Arc<str>,
        add: UsageAdd,
        now: UnixNanos,
    ) {
        match add {
            UsageAdd::Amount { from, to, amount } => {
                self.add_amount(service, metric, (from, to), amount, now)
            }
            UsageAdd::Level {
                stream,
                time,
                value,
            } => self.add_level(service, metric, stream, time, value, now),
        }
    }
}

impl Series {
    /// The bucket of Unix `minute`, made if missing; None when it is out of the hour kept.
    fn minute(&mut self, minute: u64) -> Option<&mut Minute> {
        minutes::bucket(&mut self.minutes, minute, || Minute {
            minute,
            amount: 0.0,
            levels: Vec::new(),
        })
    }

    /// The minutes overlapping `window` ending at `now`, each with the share of it inside.
    fn weighted(&self, window: Span, now: UnixNanos) -> impl Iterator<Item = (&Minute, f64)> {
        minutes::weighted(&self.minutes, window, now)
    }

    fn amount(&self, window: Span, now: UnixNanos) -> f64 {
        self.weighted(window, now).map(|(m, w)| m.amount * w).sum()
    }

    fn value(&self, window: Span, now: UnixNanos) -> Option<f64> {
        match self.kind {
            UsageKind::Rate => {
                // Over the part of the window the series covers: from its first point (or the
                // window's start) to its newest (or now), the amount in it over its length.
                let end = self.until.min(now);
                let start = now
                    .saturating_sub(window.secs() * NANOS_PER_SEC)
                    .max(self.since);
                if end <= start {
                    return None;
                }
                let amount: f64 = minutes::weighted_between(&self.minutes, start, end, self.since)
                    .map(|(m, w)| m.amount * w)
                    .sum();
                Some(amount / ((end - start) as f64 / NANOS_PER_SEC as f64))
            }
            UsageKind::Level => self.level(window, now),
        }
    }

    /// Each stream's mean over the window, times the share of the window it was present, summed.
    /// A stream is present from its first point (or the window's start, when it reported in
    /// the [`STALE_MINUTES`] before) to [`STALE_MINUTES`] after its last: one that reports
    /// less often than once a minute counts in full; one that went away (a pod replaced)
    /// fades out.
    fn level(&self, window: Span, now: UnixNanos) -> Option<f64> {
        let last = now / (60 * NANOS_PER_SEC);
        // Over the part of the window the series covers (like a rate).
        let first = (now.saturating_sub(window.secs() * NANOS_PER_SEC) / (60 * NANOS_PER_SEC))
            .max(self.since / (60 * NANOS_PER_SEC))
            .min(last);
        let lookback = first.saturating_sub(STALE_MINUTES);
        let span = (last + 1 - first) as f64;
        let weights: HashMap<u64, f64> = self
            .weighted(window, now)
            .map(|(m, w)| (m.minute, w))
            .collect();
        // Per stream: sum and points weighted in the window, and over the lookback too; its
        // first and last minute.
        let mut streams: HashMap<u64, [f64; 6]> = HashMap::new();
        let seen = self
            .minutes
            .iter()
            .filter(|m| (lookback..=last).contains(&m.minute));
        for m in seen {
            let w = weights.get(&m.minute).copied().unwrap_or(0.0);
            let minute = m.minute as f64;
            for &(stream, sum, n) in &m.levels {
                let e = streams
                    .entry(stream)
                    .or_insert([0.0, 0.0, 0.0, 0.0, minute, minute]);
                e[0] += sum * w;
                e[1] += f64::from(n) * w;
                e[2] += sum;
                e[3] += f64::from(n);
                e[4] = e[4].min(minute);
                e[5] = e[5].max(minute);
            }
        }
        let mut level = None;
        for [sum_w, n_w, sum, n, seen_first, seen_last] in streams.into_values() {
            let present_to = (seen_last as u64 + STALE_MINUTES).min(last);
            if present_to < first || n == 0.0 {
                continue;
            }
            let present_from = (seen_first as u64).max(first);
            let share = ((present_to + 1 - present_from) as f64 / span).min(1.0);
            // Its mean in the window; one present only by its points just before, theirs.
            let mean = if n_w > 0.0 { sum_w / n_w } else { sum / n };
            *level.get_or_insert(0.0) += mean * share;
        }
        level
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
