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
//! execute it once: the id is derived from [`RootCause::since`], the earliest `since` of the
//! explanations (made here or read) that end at that root, which every processor reads from
//! the same records. An explanation holds while its service had failed calls out in the last
//! [`ACTIVE`]: a root that fails again after a quiet minute is a new incident, under a new id.
//! A new owner of a moved service keeps the `since` of the old owner's record while the
//! root is the same.
//!
//! A walk that stops, by itself, at a service without local telemetry and without an
//! explanation yet may be early: that service's owner explains it within a decide step or
//! two. A processor therefore holds such a burn back for [`HOLD`] (engine time) from when
//! that stop was first seen, unless the burning service already has an open episode or the
//! stop already has a root page here (Alertmanager's `group_wait`, for one reason).
//!
//! A processor's explanations wait until it has read the log up to where it stood at start
//! ([`Causes::wait_for_log`]), so that it learns the `since` of the explanations that hold
//! before it makes its own.

use crate::engine::Engine;
use crate::graph::{RootCause, walk};
use crate::policy::{PolicyEngine, ServiceFacts};
use crate::time::{Span, UnixNanos};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The window services' bad requests are explained over.
pub const WINDOW: Span = Span(300);
/// An explanation holds while its service had failed calls out within this window.
pub const ACTIVE: Span = Span(60);
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
    /// The roots whose pages inhibit `service`'s open decisions: while a service anywhere
    /// depends on a root, every processor keeps its own page on that root open (and the
    /// explanation is kept, though the failures stopped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// How many explanations went which way (cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CauseStats {
    /// Explanations (and ends of explanations) made here to publish.
    pub made: u64,
    /// Read from the log (this processor's own included).
    pub received: u64,
    /// Walks extended by another processor's explanation (per decide step and SLO).
    pub extended: u64,
    /// Burns held back waiting for an explanation (per decide step and SLO).
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
    /// Made here, not yet taken to publish (the newest of each service).
    outbox: BTreeMap<String, Explanation>,
    /// Services walks stopped at without telemetry nor explanation: (first, last) seen.
    stops: HashMap<String, (UnixNanos, UnixNanos)>,
    /// The log has not been read up to where it stood at start: explain nothing yet.
    waiting: bool,
    /// The roots some service (here or elsewhere) depends on, as of the last step.
    depended: BTreeSet<String>,
    /// When the last service depending on each root stopped: explanations of that root that
    /// began before are of a past incident (their `since` is not used again).
    closed: HashMap<String, UnixNanos>,
    stats: CauseStats,
}

impl Causes {
    /// Explains every service owned here whose failed calls out (within [`ACTIVE`]) carry
    /// its bad requests over [`WINDOW`], queueing what changed (and what holds, every
    /// [`REPUBLISH`]) to publish.
    pub fn explain(&mut self, engine: &Engine) {
        let now = engine.now();
        let graph = engine.graph();
        if !graph.settings().enabled || self.waiting {
            return;
        }
        let callers = graph.failing_callers(ACTIVE, now);
        let mut explained = BTreeSet::new();
        if !callers.is_empty() {
            let adjacency = graph.adjacency(WINDOW, now);
            let sums = engine.sums_by_service(WINDOW);
            let own_bad = |s: &str| {
                let sums = sums.get(s)?;
                (sums.requests > 0.0).then_some(sums.errors)
            };
            let local = |s: &str| engine.has_service(s);
            let min_share = graph.settings().min_share;
            for service in callers {
                let Some(bad) = own_bad(&service) else {
                    continue;
                };
                let out = |caller: &str| adjacency.out(caller);
                let Some(mut rc) = walk(out, min_share, &service, bad, own_bad) else {
                    continue;
                };
                self.extend_path(&mut rc, &local, now);
                let service = service.to_string();
                // The same root as before here, or as the last owner's (a moved service),
                // in the same incident.
                let before = self.local.get(&service).or_else(|| {
                    self.remote
                        .get(&service)
                        .filter(|e| !e.path.is_empty() && e.at + KEEP >= now)
                });
                let since = match before {
                    Some(b) if b.path.last() == rc.path.last() && self.current(b) => b.since,
                    _ => now,
                };
                let changed = self.local.get(&service).is_none_or(|b| b.path != rc.path);
                let depends_on = self
                    .local
                    .get(&service)
                    .map(|b| b.depends_on.clone())
                    .unwrap_or_default();
                let e = Explanation {
                    service: service.clone(),
                    path: rc.path,
                    share: rc.share,
                    since,
                    at: now,
                    depends_on,
                };
                if changed || self.sent.get(&service).is_none_or(|t| now >= t + REPUBLISH) {
                    self.queue(e.clone(), now);
                }
                self.local.insert(service.clone(), e);
                explained.insert(service);
            }
        }
        let ended: Vec<String> = self
            .local
            .keys()
            .filter(|s| !explained.contains(*s))
            .cloned()
            .collect();
        for service in ended {
            // A service still depending on the root keeps its explanation (republished),
            // so the others keep their pages on the root open.
            if let Some(e) = self.local.get_mut(&service)
                && !e.depends_on.is_empty()
            {
                if self.sent.get(&service).is_none_or(|t| now >= t + REPUBLISH) {
                    e.at = now;
                    let e = e.clone();
                    self.queue(e, now);
                }
                continue;
            }
            self.local.remove(&service);
            self.sent.remove(&service);
            // Still owned here: say it ended (a tombstone on the log). A service whose
            // partition moved away is the new owner's to explain; its record ages out.
            if engine.has_service(&service) {
                self.queue(
                    Explanation {
                        service,
                        path: Vec::new(),
                        share: 0.0,
                        since: now,
                        at: now,
                        depends_on: Vec::new(),
                    },
                    now,
                );
            }
        }
        self.remote.retain(|_, e| e.at + KEEP >= now);
        self.stops.retain(|_, (_, last)| *last + STOP_GAP >= now);
        self.closed.retain(|_, at| *at + KEEP >= now);
    }

    /// Whether `e` is of the current incident of its root: it began after the last service
    /// depending on that root stopped.
    fn current(&self, e: &Explanation) -> bool {
        e.path
            .last()
            .and_then(|root| self.closed.get(root))
            .is_none_or(|closed| e.since > *closed)
    }

    /// Explains nothing until [`Causes::log_read`]: the log is being read from the start.
    pub fn wait_for_log(&mut self) {
        self.waiting = true;
    }

    /// The log has been read up to where it stood at start.
    pub fn log_read(&mut self) {
        self.waiting = false;
    }

    fn queue(&mut self, e: Explanation, now: UnixNanos) {
        self.sent.insert(e.service.clone(), now);
        self.stats.made += 1;
        self.outbox.insert(e.service.clone(), e);
    }

    /// The explanations made since the last call, to publish.
    pub fn take(&mut self) -> Vec<Explanation> {
        std::mem::take(&mut self.outbox).into_values().collect()
    }

    /// Puts back an explanation that could not be published (unless a newer one of its
    /// service is queued): it goes out with the next.
    pub fn requeue(&mut self, e: Explanation) {
        self.outbox.entry(e.service.clone()).or_insert(e);
    }

    /// Takes an explanation read from the log (an empty path: it ended).
    pub fn apply(&mut self, e: Explanation) {
        self.stats.received += 1;
        if e.path.is_empty() {
            self.remote.remove(&e.service);
            return;
        }
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
    /// service, edge and [`RootCause::since`]. Whether it grew.
    pub fn extend(
        &mut self,
        rc: &mut RootCause,
        local: impl Fn(&str) -> bool,
        now: UnixNanos,
    ) -> bool {
        let grew = self.extend_path(rc, &local, now);
        self.stats.extended += u64::from(grew);
        rc.since = self.since(&rc.service, now);
        grew
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

    /// When the earliest explanation (made here, or read and fresh) that ends at `root`
    /// began: the same at every processor that has read the same records.
    fn since(&self, root: &str, now: UnixNanos) -> Option<UnixNanos> {
        let fresh = self
            .remote
            .values()
            .filter(|e| e.path.len() >= 2 && e.at + FRESH >= now);
        self.local
            .values()
            .chain(fresh)
            .filter(|e| e.path.last().is_some_and(|r| r == root) && self.current(e))
            .map(|e| e.since)
            .min()
    }

    /// Whether a burn blamed on `rc` should wait for an explanation: it stops at a service
    /// without telemetry here nor an explanation, first seen as such less than [`HOLD`] ago.
    pub fn hold(&mut self, rc: &RootCause, local: impl Fn(&str) -> bool, now: UnixNanos) -> bool {
        if local(&rc.service) || self.fresh(&rc.service, now).is_some() {
            return false;
        }
        if self.waiting {
            // The log is being read: its explanation may be in it.
            self.stats.held += 1;
            return true;
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
        let local = |s: &str| engine.has_service(s);
        // Until the log is read, who depends on what elsewhere is unknown: no root page
        // here closes for want of dependents elsewhere.
        let blamed = if self.waiting {
            policy.root_services()
        } else {
            self.blamed_elsewhere(local, now)
        };
        policy.set_blamed_elsewhere(blamed);
        for f in facts {
            for s in &mut f.slos {
                let Some(rc) = s.root_cause.as_mut() else {
                    continue;
                };
                // A walk that went on along another's explanation stops where that owner's
                // did; a root paged here already needs no wait.
                let wait = !self.extend(rc, local, now)
                    && !policy.has_root(&rc.service)
                    && !policy.has_open_episode(&f.service)
                    && self.hold(rc, local, now);
                if wait {
                    s.firing.clear();
                    for t in &mut s.tiers {
                        t.firing = false;
                    }
                }
            }
        }
    }

    /// After `policy`'s step at `now`: records in each explanation made here the roots whose
    /// pages inhibit its service's decisions (publishing the changes), and, for each root no
    /// service depends on any longer (here or elsewhere), closes its incident: explanations
    /// of it begin again, so its next page has a new id.
    pub fn mark_dependents(&mut self, policy: &PolicyEngine, now: UnixNanos) {
        let mut changed = Vec::new();
        for e in self.local.values_mut() {
            let depends_on = policy.roots_inhibiting(&e.service);
            if depends_on != e.depends_on {
                e.depends_on = depends_on;
                e.at = now;
                changed.push(e.clone());
            }
        }
        for e in changed {
            self.queue(e, now);
        }
        let remote = self
            .remote
            .values()
            .filter(|e| e.at + FRESH >= now)
            .flat_map(|e| &e.depends_on);
        let depended: BTreeSet<String> = policy
            .depended_roots()
            .chain(self.local.values().flat_map(|e| &e.depends_on))
            .chain(remote)
            .cloned()
            .collect();
        let gone: Vec<String> = self.depended.difference(&depended).cloned().collect();
        for root in gone {
            self.closed.insert(root.clone(), now);
            let restart: Vec<String> = self
                .local
                .values()
                .filter(|e| e.path.last() == Some(&root))
                .map(|e| e.service.clone())
                .collect();
            for service in restart {
                if let Some(e) = self.local.get_mut(&service) {
                    // (A kept explanation whose failures stopped ends at the next step.)
                    e.since = now + 1;
                    e.at = now;
                    let e = e.clone();
                    self.queue(e, now);
                }
            }
        }
        self.depended = depended;
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
            .filter(|e| e.at + FRESH >= now && !local(&e.service))
            .flat_map(|e| e.depends_on.iter().cloned())
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
