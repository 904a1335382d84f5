//! Root causes across a fleet's processors (DESIGN §10, item "exact across processes").
//!
//! A processor holds the telemetry of the services it owns and the edges out of them (a
//! call is its caller's), so its [`root_cause`] walk from a burning service stops at the
//! first dependency owned elsewhere: checkout's owner sees checkout → payments, but not that
//! payments' failures are db's. So each processor *explains* every service it owns whose
//! failed calls out carry its bad requests — the walk from that service, over [`WINDOW`] —
//! and publishes the [`Explanation`] (the path to the root, the share, since when) for every
//! other processor to read (the runtime's cause log, on a compacted topic keyed by service).
//! A walk that stops at a service without local telemetry then continues along that
//! service's fresh explanation ([`Causes::extend`]), as far as the explanations go, never
//! through a service twice.
//!
//! All processors must page a root under one decision id, so that the actuators' claims
//! execute it once: the id is derived from [`RootCause::since`], the time the explanation of
//! the path's last hop began, which every processor reads from the same record (the local
//! walk's last hop is explained by the processor that owns its caller; a move keeps `since`
//! while the new owner's explanation has the same root).
//!
//! A walk that stops at a service without local telemetry, and without an explanation yet,
//! may be early: that service's owner explains it within a decide step or two. A processor
//! therefore holds such a burn back for [`HOLD`] (engine time) from when that stop was first
//! seen, unless the service already has an open episode (Alertmanager's `group_wait`, for one
//! reason).

use crate::engine::Engine;
use crate::graph::{RootCause, root_cause};
use crate::policy::{PolicyEngine, ServiceFacts};
use crate::time::{Span, UnixNanos};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The window services' bad requests are explained over.
pub const WINDOW: Span = Span(300);
/// How long (engine time) an explanation is used after it was made.
pub const FRESH: UnixNanos = 30 * NS;
/// How often an explanation that holds is published again (so it stays fresh).
pub const REPUBLISH: UnixNanos = 10 * NS;
/// How long a burn blamed on a service without telemetry here, nor an explanation, waits for
/// one.
pub const HOLD: UnixNanos = 3 * NS;
/// A stop not seen for this long is a new one (its next sighting holds again).
const STOP_GAP: UnixNanos = 10 * NS;
/// Explanations read from others are forgotten this long after they were made.
const KEEP: UnixNanos = 600 * NS;
/// Most explanations read from others held at once (the newest win).
pub const MAX_REMOTE: usize = 100_000;
const NS: UnixNanos = 1_000_000_000;

/// One service's bad requests explained by a dependency, as its owner published it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The service explained.
    pub service: String,
    /// From `service` to the root cause; empty: no longer explained by a dependency.
    pub path: Vec<String>,
    /// Share of `service`'s bad requests the failed calls along the path carry.
    pub share: f64,
    /// When this explanation (this root) began.
    pub since: UnixNanos,
    /// When it was made (the owner's engine time).
    pub at: UnixNanos,
    /// Whether `service` has an open decision inhibited by a root page on the root: while
    /// one does, every processor keeps its own page on that root open.
    #[serde(default)]
    pub dependent: bool,
}

/// How many explanations went which way (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CauseStats {
    /// Explanations (and ends of explanations) made here to publish.
    pub made: u64,
    /// Read from the log (this processor's own included).
    pub received: u64,
    /// Walks extended by another processor's explanation.
    pub extended: u64,
    /// Decide steps a burn was held back waiting for an explanation.
    pub held: u64,
}

/// This processor's explanations and everyone's.
#[derive(Debug, Default)]
pub struct Causes {
    /// Of services owned here, by service.
    local: BTreeMap<String, Explanation>,
    /// When each local explanation was last handed out to publish.
    sent: HashMap<String, UnixNanos>,
    /// Read from the log, by service.
    remote: HashMap<String, Explanation>,
    /// Made here, not yet taken to publish.
    outbox: Vec<Explanation>,
    /// Services walks stopped at without telemetry nor explanation: (first, last) seen.
    stops: HashMap<String, (UnixNanos, UnixNanos)>,
    stats: CauseStats,
}

impl Causes {
    /// Explains every service owned here whose failed calls out carry its bad requests over
    /// [`WINDOW`], queueing what changed (and what holds, every [`REPUBLISH`]) to publish.
    pub fn explain(&mut self, engine: &Engine) {
        let now = engine.now();
        let graph = engine.graph();
        if !graph.settings().enabled {
            return;
        }
        let own_bad = |s: &str| {
            let sums = engine.service_sums_prorated(s, WINDOW);
            (sums.requests > 0.0).then_some(sums.errors)
        };
        let local = |s: &str| engine.service_freshness(s).is_some();
        let mut explained = BTreeSet::new();
        for service in graph.failing_callers(WINDOW, now) {
            let Some(bad) = own_bad(&service) else {
                continue;
            };
            let Some(mut rc) = root_cause(graph, &service, bad, WINDOW, now, own_bad) else {
                continue;
            };
            self.extend_path(&mut rc, &local, now);
            let service = service.to_string();
            let before = self
                .local
                .get(&service)
                .or_else(|| self.fresh(&service, now));
            let since = match before {
                Some(b) if b.path.last() == rc.path.last() => b.since,
                _ => now,
            };
            let changed = self.local.get(&service).is_none_or(|b| b.path != rc.path);
            let dependent = self.local.get(&service).is_some_and(|b| b.dependent);
            let e = Explanation {
                service: service.clone(),
                path: rc.path,
                share: rc.share,
                since,
                at: now,
                dependent,
            };
            if changed || self.sent.get(&service).is_none_or(|t| now >= t + REPUBLISH) {
                self.queue(e.clone(), now);
            }
            self.local.insert(service.clone(), e);
            explained.insert(service);
        }
        let ended: Vec<String> = self
            .local
            .keys()
            .filter(|s| !explained.contains(*s))
            .cloned()
            .collect();
        for service in ended {
            self.local.remove(&service);
            self.sent.remove(&service);
            // Still owned here: say it ended. (A service whose partition moved away is the
            // new owner's to explain; its record ages out.)
            if local(&service) {
                self.queue(
                    Explanation {
                        service,
                        path: Vec::new(),
                        share: 0.0,
                        since: now,
                        at: now,
                        dependent: false,
                    },
                    now,
                );
            }
        }
        self.remote.retain(|_, e| e.at + KEEP >= now);
        self.stops.retain(|_, (_, last)| *last + STOP_GAP >= now);
    }

    fn queue(&mut self, e: Explanation, now: UnixNanos) {
        self.sent.insert(e.service.clone(), now);
        self.stats.made += 1;
        self.outbox.push(e);
    }

    /// The explanations made since the last call, to publish.
    pub fn take(&mut self) -> Vec<Explanation> {
        std::mem::take(&mut self.outbox)
    }

    /// Takes an explanation read from the log.
    pub fn apply(&mut self, e: Explanation) {
        self.stats.received += 1;
        if let Some(old) = self.remote.get(&e.service)
            && old.at > e.at
        {
            return;
        }
        if !self.remote.contains_key(&e.service) && self.remote.len() >= MAX_REMOTE {
            // Full: the oldest goes.
            if let Some(oldest) = self
                .remote
                .values()
                .min_by_key(|e| e.at)
                .map(|e| e.service.clone())
            {
                self.remote.remove(&oldest);
            }
        }
        self.remote.insert(e.service.clone(), e);
    }

    /// `service`'s explanation read from the log, when it holds and is fresh at `now`.
    fn fresh(&self, service: &str, now: UnixNanos) -> Option<&Explanation> {
        self.remote
            .get(service)
            .filter(|e| e.path.len() >= 2 && e.path[0] == service && e.at + FRESH >= now)
    }

    /// Continues `rc`, a walk that stopped at a service without telemetry here (`local`
    /// says which have), along that service's fresh explanation, and so on; then sets its
    /// service, edge and [`RootCause::since`].
    pub fn extend(&mut self, rc: &mut RootCause, local: impl Fn(&str) -> bool, now: UnixNanos) {
        if self.extend_path(rc, &local, now) {
            self.stats.extended += 1;
        }
        rc.since = self.since(rc, now);
    }

    /// Whether `rc` grew.
    fn extend_path(
        &self,
        rc: &mut RootCause,
        local: &impl Fn(&str) -> bool,
        now: UnixNanos,
    ) -> bool {
        let before = rc.path.len();
        loop {
            let last = rc.path.last().expect("a walk has a start").clone();
            if local(&last) {
                break;
            }
            let Some(e) = self.fresh(&last, now) else {
                break;
            };
            let grown = rc.path.len();
            for s in &e.path[1..] {
                if rc.path.contains(s) {
                    break;
                }
                rc.path.push(s.clone());
            }
            if rc.path.len() == grown {
                break;
            }
            rc.share = rc.share.min(e.share);
        }
        let n = rc.path.len();
        if n >= 2 {
            rc.service = rc.path[n - 1].clone();
            rc.edge = format!("{}→{}", rc.path[n - 2], rc.path[n - 1]);
        }
        n > before
    }

    /// When the explanation of `rc`'s last hop began: that of the hop's caller (made here or
    /// read), when it ends at the same root.
    fn since(&self, rc: &RootCause, now: UnixNanos) -> Option<UnixNanos> {
        let n = rc.path.len();
        let caller = rc.path.get(n.checked_sub(2)?)?;
        let e = self.local.get(caller).or_else(|| self.fresh(caller, now))?;
        (e.path.last() == Some(&rc.service)).then_some(e.since)
    }

    /// Whether a burn blamed on `rc` should wait for an explanation: it stops at a service
    /// without telemetry here nor an explanation, first seen as such less than [`HOLD`] ago.
    pub fn hold(&mut self, rc: &RootCause, local: impl Fn(&str) -> bool, now: UnixNanos) -> bool {
        if local(&rc.service) || self.fresh(&rc.service, now).is_some() {
            return false;
        }
        let seen = self.stops.entry(rc.service.clone()).or_insert((now, now));
        if seen.1 + STOP_GAP < now {
            *seen = (now, now);
        }
        seen.1 = now;
        let held = now < seen.0 + HOLD;
        self.stats.held += u64::from(held);
        held
    }

    /// Before `policy` steps on `facts`: extends the root causes of their burning SLOs along
    /// others' explanations, holds back (clears the firing tiers of) those that wait for one
    /// (see [`Causes::hold`]) unless their service has an open episode, and tells `policy`
    /// which roots services owned elsewhere depend on. After the step, [`Causes::mark_dependents`].
    pub fn apply_to(
        &mut self,
        engine: &Engine,
        policy: &mut PolicyEngine,
        facts: &mut [ServiceFacts],
    ) {
        let now = engine.now();
        let local = |s: &str| engine.service_freshness(s).is_some();
        policy.set_blamed_elsewhere(self.blamed_elsewhere(local, now));
        for f in facts {
            let open = policy.has_open_episode(&f.service);
            for s in &mut f.slos {
                let Some(rc) = s.root_cause.as_mut() else {
                    continue;
                };
                self.extend(rc, local, now);
                if !open && self.hold(rc, local, now) {
                    s.firing.clear();
                    for t in &mut s.tiers {
                        t.firing = false;
                    }
                }
            }
        }
    }

    /// Marks each explanation made here whose service has an open decision inhibited by a
    /// root page on its root (`policy`'s, after its step at `now`), publishing the changes.
    pub fn mark_dependents(&mut self, policy: &PolicyEngine, now: UnixNanos) {
        let mut changed = Vec::new();
        for e in self.local.values_mut() {
            let dependent = e
                .path
                .last()
                .is_some_and(|root| policy.is_dependent(&e.service, root));
            if dependent != e.dependent {
                e.dependent = dependent;
                e.at = now;
                changed.push(e.clone());
            }
        }
        for e in changed {
            self.queue(e, now);
        }
    }

    /// The roots that services owned elsewhere (`local` says which are here) are dependents
    /// of, by their fresh explanations: the root pages to keep open here.
    pub fn blamed_elsewhere(
        &self,
        local: impl Fn(&str) -> bool,
        now: UnixNanos,
    ) -> BTreeSet<String> {
        self.remote
            .values()
            .filter(|e| e.dependent && !local(&e.service))
            .filter_map(|e| self.fresh(&e.service, now)?.path.last().cloned())
            .collect()
    }

    /// The explanations made here (of services owned here), by service.
    pub fn local(&self) -> impl Iterator<Item = &Explanation> {
        self.local.values()
    }

    /// Counts so far.
    pub fn stats(&self) -> CauseStats {
        self.stats
    }
}

#[cfg(test)]
#[path = "causes_tests.rs"]
pub(crate) mod tests;
