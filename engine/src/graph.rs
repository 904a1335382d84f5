//! The service graph (DESIGN §10): one edge per (calling service, called service), with its
//! requests, errors and latency over event-time windows up to an hour.
//!
//! A call is seen from both sides: the caller's CLIENT (or PRODUCER) span and the callee's
//! SERVER (or CONSUMER) span, whose parent is the client span. The two arrive separately,
//! usually in different requests from different services, so [`Graph`] holds the first half
//! of each call until the other arrives, keyed by (trace id, client span id), for at most
//! `wait` of arrival time. A client half still alone then counts toward the peer its span
//! names (`peer.service`, `server.address`, `db.system`): a database, or any callee that sends
//! no spans, is a node too, and once a (caller, peer) pair has been seen so, its next calls
//! count at once, without waiting (until one of them pairs with a server span again). A
//! client half naming no peer, and a server half whose caller sent nothing, are counted as
//! unpaired and dropped. Each client span is counted once, at its own
//! event time and with its own latency (the call as the caller saw it); it failed when either
//! side failed.
//!
//! [`root_cause`] walks the graph from a burning service to the dependency whose failures
//! explain its bad requests.

use crate::minutes;
use crate::observation::CallObs;
use crate::sketch::TDigest;
use crate::time::{Span, UnixNanos, secs};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// How the graph pairs and keeps calls.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// Whether calls are read at all (off: client spans and span parents are not looked at,
    /// and there is no graph nor root cause).
    pub enabled: bool,
    /// How long (arrival time) the first half of a call waits for the other.
    pub wait: Span,
    /// Most halves waiting at once; beyond it the oldest stop waiting early.
    pub max_pending: usize,
    /// Most edges kept; calls on new edges beyond it are counted and dropped.
    pub max_edges: usize,
    /// Least share of a service's bad requests a dependency's failures must carry to be
    /// named as their likely cause.
    pub min_share: f64,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            wait: Span(10),
            max_pending: 100_000,
            max_edges: 10_000,
            min_share: 0.5,
        }
    }
}

/// How many calls went which way (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphStats {
    /// Client spans paired with the server span they parent.
    pub paired: u64,
    /// Client spans counted toward the peer they name (no server span came).
    pub by_peer: u64,
    /// Halves dropped: a client span naming no peer, or a server span whose client never came.
    pub unpaired: u64,
    /// Halves that stopped waiting early because `max_pending` were waiting.
    pub evicted: u64,
    /// Calls dropped because `max_edges` edges exist, or older than the graph's hour.
    pub dropped: u64,
}

/// One edge over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeRow {
    /// The calling service.
    pub client: String,
    /// The called service.
    pub server: String,
    /// Calls.
    pub requests: u64,
    /// Failed calls.
    pub errors: u64,
    /// errors ÷ requests (0 without calls).
    pub error_ratio: f64,
    /// The calls' 99th-percentile latency as the caller saw it (None without calls).
    pub p99_ms: Option<f64>,
}

/// The dependency a burning service's bad requests come from (`evidence.root_cause`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootCause {
    /// The dependency at the end of the failing path.
    pub service: String,
    /// The edge into it, `caller→service`.
    pub edge: String,
    /// Share of the burning service's bad requests the failing calls along the path carry
    /// (the smallest share of any hop).
    pub share: f64,
    /// The path, from the burning service to the dependency.
    pub path: Vec<String>,
    /// On a fleet, when the explanation of the last hop (its caller's bad requests by the
    /// dependency) began, as its owner published it: the root page's id is derived from it, so
    /// every processor pages the dependency under one id (see [`crate::causes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<UnixNanos>,
}

mod pairing;
pub use pairing::{Call, Pairing};

impl minutes::Minutely for Minute {
    fn minute(&self) -> u64 {
        self.minute
    }
}

#[derive(Clone, Debug)]
struct Minute {
    /// Unix minute.
    minute: u64,
    requests: u64,
    errors: u64,
    latency: TDigest,
}

#[derive(Clone, Debug, Default)]
struct Edge {
    /// Oldest first.
    minutes: VecDeque<Minute>,
}

/// The service graph's state: halves of calls waiting for their other half, and the edges.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    settings: GraphSettings,
    compression: f32,
    pairing: Pairing,
    /// Calls the pairing completed, to count (kept to reuse its memory).
    done: Vec<Call>,
    edges: HashMap<(Arc<str>, Arc<str>), Edge>,
    /// Calls dropped at the edge cap or as too old.
    dropped: u64,
    /// The newest arrival time seen: event times ahead of it count at it (clock skew).
    now: UnixNanos,
}

impl Graph {
    /// An empty graph; edge latencies are kept in digests of `compression`.
    pub fn new(settings: GraphSettings, compression: f32) -> Self {
        Self {
            settings,
            compression,
            pairing: Pairing::new(settings),
            ..Default::default()
        }
    }

    /// The settings.
    pub fn settings(&self) -> GraphSettings {
        self.settings
    }

    /// Calls counted so far, by how.
    pub fn stats(&self) -> GraphStats {
        GraphStats {
            dropped: self.dropped,
            ..self.pairing.stats()
        }
    }

    /// Edges held.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Halves waiting for their other half.
    pub fn waiting(&self) -> usize {
        self.pairing.waiting()
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let edges: usize = self
            .edges
            .iter()
            .map(|((c, s), e)| {
                c.len()
                    + s.len()
                    + 64
                    + e.minutes
                        .iter()
                        .map(|m| 48 + m.latency.heap_bytes())
                        .sum::<usize>()
            })
            .sum();
        edges + self.pairing.heap_bytes()
    }

    /// Takes one half of a call that arrived at `now`: pairs it with its other half, or
    /// keeps it waiting.
    pub fn call(&mut self, c: &CallObs, now: UnixNanos) {
        self.now = self.now.max(now);
        let mut done = std::mem::take(&mut self.done);
        self.pairing.call(c, now, &mut done);
        self.count(&mut done);
        self.done = done;
    }

    /// Moves time to `now`: halves that waited `wait` stop waiting, minutes older than an
    /// hour go.
    pub fn advance(&mut self, now: UnixNanos) {
        self.now = self.now.max(now);
        let mut done = std::mem::take(&mut self.done);
        self.pairing.advance(now, &mut done);
        self.count(&mut done);
        self.done = done;
        self.edges.retain(|_, e| {
            minutes::expire(&mut e.minutes, now);
            !e.minutes.is_empty()
        });
    }

    fn count(&mut self, done: &mut Vec<Call>) {
        for c in done.drain(..) {
            let time = c.time.min(self.now);
            self.record(&c.client, &c.server, time, c.latency_ms, c.bad, 1);
        }
    }

    /// Adds a gateway's pre-aggregated second of an edge.
    pub fn add_edge(&mut self, e: &crate::observation::EdgeObs) {
        let empty = TDigest::new(self.compression);
        let digest = e.digest.as_ref().unwrap_or(&empty);
        self.add(&e.client, &e.server, e.second, e.requests, e.errors, digest);
    }

    /// Counts `n` calls from `client` to `server` at `time` (one latency value for all).
    fn record(
        &mut self,
        client: &Arc<str>,
        server: &Arc<str>,
        time: UnixNanos,
        latency_ms: f64,
        bad: bool,
        n: u64,
    ) {
        let mut digest = TDigest::new(self.compression);
        if latency_ms.is_finite() && latency_ms >= 0.0 {
            digest.add_weighted(latency_ms, n);
        }
        self.add(
            client,
            server,
            secs(time),
            n,
            if bad { n } else { 0 },
            &digest,
        );
    }

    /// Adds counts and a latency digest to the edge `client → server` at event second
    /// `second` (a gateway's pre-aggregated second, or calls paired here).
    pub fn add(
        &mut self,
        client: &Arc<str>,
        server: &Arc<str>,
        second: u64,
        requests: u64,
        errors: u64,
        latency: &TDigest,
    ) {
        let second = if self.now > 0 {
            second.min(secs(self.now))
        } else {
            second
        };
        let minute = second / 60;
        let key = (client.clone(), server.clone());
        if !self.edges.contains_key(&key) && self.edges.len() >= self.settings.max_edges {
            self.dropped += requests;
            return;
        }
        let edge = self.edges.entry(key).or_default();
        let compression = self.compression;
        let Some(m) = minutes::bucket(&mut edge.minutes, minute, || Minute {
            minute,
            requests: 0,
            errors: 0,
            latency: TDigest::new(compression),
        }) else {
            self.dropped += requests;
            return;
        };
        m.requests += requests;
        m.errors += errors;
        if !latency.is_empty() {
            m.latency.merge(latency);
        }
    }

    /// Every edge over the `window` ending at `now` (counts of the oldest minute prorated to
    /// the part inside the window), sorted by client then server.
    pub fn edges(&self, window: Span, now: UnixNanos) -> Vec<EdgeRow> {
        let mut rows: Vec<EdgeRow> = self
            .edges
            .iter()
            .filter_map(|((client, server), e)| {
                let (requests, errors, latency) = e.over(window, now, self.compression);
                (requests > 0).then(|| EdgeRow {
                    client: client.to_string(),
                    server: server.to_string(),
                    requests,
                    errors,
                    error_ratio: errors as f64 / requests as f64,
                    p99_ms: (!latency.is_empty()).then(|| latency.quantile(0.99)),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.client, &a.server).cmp(&(&b.client, &b.server)));
        rows
    }

    /// The services with a failed call out over `window` ending at `now` (sorted): those
    /// whose bad requests a dependency may explain.
    pub fn failing_callers(&self, window: Span, now: UnixNanos) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = self
            .edges
            .iter()
            .filter(|(_, e)| e.sums(window, now).1 > 0.0)
            .map(|((c, _), _)| c.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The edges out of `caller` over `window` ending at `now`, counts prorated.
    fn out_of(&self, caller: &str, window: Span, now: UnixNanos) -> Vec<OutEdge> {
        self.edges
            .iter()
            .filter(|((c, _), _)| &**c == caller)
            .map(|((_, s), e)| {
                let (r, b) = e.sums(window, now);
                (s.clone(), r, b)
            })
            .collect()
    }

    /// The edges out of every caller over `window` ending at `now`, counts prorated (built
    /// once for any number of walks).
    pub fn adjacency(&self, window: Span, now: UnixNanos) -> Adjacency {
        let mut out: HashMap<Arc<str>, Vec<OutEdge>> = HashMap::new();
        for ((c, s), e) in &self.edges {
            let (r, b) = e.sums(window, now);
            out.entry(c.clone()).or_default().push((s.clone(), r, b));
        }
        Adjacency(out)
    }
}

/// An edge out of a caller over a window: (callee, requests, errors).
pub type OutEdge = (Arc<str>, f64, f64);

/// The edges out of each caller over a window.
#[derive(Debug, Default)]
pub struct Adjacency(HashMap<Arc<str>, Vec<OutEdge>>);

impl Adjacency {
    /// The edges out of `caller`.
    pub fn out(&self, caller: &str) -> Vec<OutEdge> {
        self.0.get(caller).cloned().unwrap_or_default()
    }
}

impl Edge {
    /// (requests, errors) over `window` ending at `now`, the oldest minute prorated.
    fn sums(&self, window: Span, now: UnixNanos) -> (f64, f64) {
        let (mut r, mut b) = (0.0, 0.0);
        for (m, w) in self.weighted(window, now) {
            r += m.requests as f64 * w;
            b += m.errors as f64 * w;
        }
        (r, b)
    }

    fn over(&self, window: Span, now: UnixNanos, compression: f32) -> (u64, u64, TDigest) {
        let (r, b) = self.sums(window, now);
        let mut latency = TDigest::new(compression);
        latency.merge_all(self.weighted(window, now).map(|(m, _)| &m.latency));
        (r.round() as u64, b.round() as u64, latency)
    }

    /// The minutes overlapping `window` ending at `now`, each with the share of it inside.
    fn weighted(&self, window: Span, now: UnixNanos) -> impl Iterator<Item = (&Minute, f64)> {
        minutes::weighted(&self.minutes, window, now)
    }
}

/// Walks from `service`, whose bad requests over `window` number `bad`, along the dependency
/// whose failed calls carry the most of them, while that share is at least `min_share`: the
/// last service reached is the likely root cause. A service on the path whose own bad
/// requests (`own_bad`, None when it sends no telemetry) its dependencies do not explain is
/// where the walk stops. None when `service`'s bad requests are not explained by a dependency.
pub fn root_cause(
    graph: &Graph,
    service: &str,
    bad: f64,
    window: Span,
    now: UnixNanos,
    own_bad: impl Fn(&str) -> Option<f64>,
) -> Option<RootCause> {
    let out = |caller: &str| graph.out_of(caller, window, now);
    walk(out, graph.settings.min_share, service, bad, own_bad)
}

/// [`root_cause`] over the edges `out` gives for each caller (of a graph, or summed once in
/// an [`Adjacency`] for many walks).
pub fn walk(
    out: impl Fn(&str) -> Vec<OutEdge>,
    min_share: f64,
    service: &str,
    bad: f64,
    own_bad: impl Fn(&str) -> Option<f64>,
) -> Option<RootCause> {
    let mut path: Vec<String> = vec![service.to_string()];
    let mut share = 1.0_f64;
    let mut bad = bad;
    loop {
        if bad <= 0.0 {
            break;
        }
        let here = path.last().expect("non-empty");
        let Some((next, _, errors)) = out(here)
            .into_iter()
            .filter(|(s, _, e)| *e > 0.0 && !path.iter().any(|p| **p == **s))
            .max_by(|a, b| a.2.total_cmp(&b.2).then_with(|| b.0.cmp(&a.0)))
        else {
            break;
        };
        let hop = (errors / bad).min(1.0);
        if hop < min_share {
            break;
        }
        share = share.min(hop);
        let next = next.to_string();
        let own = own_bad(&next);
        path.push(next);
        match own {
            Some(b) => bad = b,
            None => break,
        }
    }
    if path.len() < 2 {
        return None;
    }
    let n = path.len();
    Some(RootCause {
        service: path[n - 1].clone(),
        edge: format!("{}→{}", path[n - 2], path[n - 1]),
        share,
        path,
        since: None,
    })
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
