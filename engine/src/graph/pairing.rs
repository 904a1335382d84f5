//! Pairing the two halves of a call: a CLIENT (or PRODUCER) span, and the SERVER (or
//! CONSUMER) span whose parent it is. They arrive separately, usually in different requests
//! from different services, so the first half waits, keyed by (trace id, client span id), for
//! at most `wait` of arrival time. A client half still alone then counts toward the peer it
//! names; once a (caller, peer) pair has been seen so, its calls count at once (the callee
//! sends no spans: a database), until one of them pairs with a server span again. A client
//! half naming no peer, and a server half whose caller sent nothing, are dropped. The engine
//! ([`super::Graph`]) and a gateway's partials builder both pair with it.

use super::{GraphSettings, GraphStats};
use crate::observation::{CallObs, CallSide};
use crate::time::UnixNanos;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A call with both ends known: what an edge counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The calling service.
    pub client: Arc<str>,
    /// The called service (the server span's, else the peer the client names).
    pub server: Arc<str>,
    /// End of the client span (event time).
    pub time: UnixNanos,
    /// The client span's latency.
    pub latency_ms: f64,
    /// Either side failed.
    pub bad: bool,
}

#[derive(Clone, Debug)]
enum Half {
    Client(ClientHalf),
    Server(ServerHalf),
    /// A client half already counted toward its peer (the pair is known to have no server
    /// spans), remembered for `wait` so that a server half coming after all shows the pair
    /// does have them, and its next calls wait to be paired again.
    Counted {
        service: Arc<str>,
        peer: Arc<str>,
    },
}

/// A client span's part of a call: the call as the caller saw it.
#[derive(Clone, Debug)]
struct ClientHalf {
    service: Arc<str>,
    peer: Option<Arc<str>>,
    time: UnixNanos,
    latency_ms: f64,
    bad: bool,
}

/// A server span's part of a call: who was called, and whether it failed.
#[derive(Clone, Debug)]
struct ServerHalf {
    service: Arc<str>,
    bad: bool,
}

#[derive(Clone, Debug)]
struct Waiting {
    half: Half,
    arrived: UnixNanos,
}

type CallId = ([u8; 16], [u8; 8]);

/// A (caller, peer) pair without server spans is forgotten after this long unused.
const SPANLESS_TTL: u64 = 3600 * crate::time::NANOS_PER_SEC;

/// Halves waiting for their other half.
#[derive(Clone, Debug, Default)]
pub struct Pairing {
    settings: GraphSettings,
    waiting: HashMap<CallId, Waiting>,
    /// Arrival order of `waiting` (entries already paired are skipped when met).
    order: VecDeque<(UnixNanos, CallId)>,
    /// (caller, peer) pairs whose calls were last seen without a server span, with when they
    /// were last used.
    spanless: HashMap<(Arc<str>, Arc<str>), UnixNanos>,
    last_sweep_minute: u64,
    stats: GraphStats,
}

impl Pairing {
    /// Nothing waiting.
    pub fn new(settings: GraphSettings) -> Self {
        Self {
            settings,
            ..Default::default()
        }
    }

    /// Halves paired, counted by peer, dropped (cumulative); `dropped` is the edges' to count.
    pub fn stats(&self) -> GraphStats {
        self.stats
    }

    /// Halves waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.waiting.len() * 120 + self.order.len() * 40 + self.spanless.len() * 56
    }

    /// Takes one half of a call that arrived at `now`; a call it completes is pushed to `out`.
    pub fn call(&mut self, c: &CallObs, now: UnixNanos, out: &mut Vec<Call>) {
        let id = (c.trace_id, c.span_id);
        let waiting = self.waiting.remove(&id);
        // A pair known to have no server spans counts its calls at once, unless this call's
        // server half is already here.
        if waiting.is_none()
            && let CallSide::Client { peer: Some(peer) } = &c.side
            && let Some(used) = self.spanless.get_mut(&(c.service.clone(), peer.clone()))
        {
            *used = now;
            self.stats.by_peer += 1;
            out.push(Call {
                client: c.service.clone(),
                server: peer.clone(),
                time: c.time,
                latency_ms: c.latency_ms,
                bad: c.bad,
            });
            let marker = Half::Counted {
                service: c.service.clone(),
                peer: peer.clone(),
            };
            self.wait(id, marker, now, out);
            return;
        }
        let half = match &c.side {
            CallSide::Client { peer } => Half::Client(ClientHalf {
                service: c.service.clone(),
                peer: peer.clone(),
                time: c.time,
                latency_ms: c.latency_ms,
                bad: c.bad,
            }),
            CallSide::Server => Half::Server(ServerHalf {
                service: c.service.clone(),
                bad: c.bad,
            }),
        };
        let Some(other) = waiting else {
            self.wait(id, half, now, out);
            return;
        };
        let arrived = other.arrived;
        let (client, server) = match (other.half, half) {
            (Half::Client(c), Half::Server(s)) | (Half::Server(s), Half::Client(c)) => (c, s),
            // The server half of a call counted toward its peer: the pair has server spans
            // after all, so its next calls wait to be paired (this one stays counted).
            (Half::Counted { service, peer }, Half::Server(_)) => {
                self.spanless.remove(&(service, peer));
                return;
            }
            // The same side twice (a resent span): the first one waits on, in its place.
            (first, _) => {
                self.waiting.insert(
                    id,
                    Waiting {
                        half: first,
                        arrived,
                    },
                );
                return;
            }
        };
        self.stats.paired += 1;
        if let Some(peer) = &client.peer {
            self.spanless
                .remove(&(client.service.clone(), peer.clone()));
        }
        out.push(Call {
            client: client.service,
            server: server.service,
            time: client.time,
            latency_ms: client.latency_ms,
            bad: client.bad || server.bad,
        });
    }

    /// Keeps `half` waiting (the oldest stops waiting first when `max_pending` wait).
    fn wait(&mut self, id: CallId, half: Half, now: UnixNanos, out: &mut Vec<Call>) {
        if self.waiting.len() >= self.settings.max_pending {
            self.expire_oldest(now, out);
        }
        self.waiting.insert(id, Waiting { half, arrived: now });
        self.order.push_back((now, id));
    }

    /// Moves arrival time to `now`: halves that waited `wait` stop waiting (client halves
    /// naming a peer are pushed to `out` as calls to it).
    pub fn advance(&mut self, now: UnixNanos, out: &mut Vec<Call>) {
        let wait = self.settings.wait.nanos();
        while let Some(&(arrived, id)) = self.order.front() {
            if arrived + wait > now {
                break;
            }
            self.order.pop_front();
            self.expire(arrived, id, false, now, out);
        }
        let minute = now / (60 * crate::time::NANOS_PER_SEC);
        if minute != self.last_sweep_minute {
            self.last_sweep_minute = minute;
            self.spanless.retain(|_, used| *used + SPANLESS_TTL > now);
        }
    }

    /// Stops the oldest half waiting (`max_pending` are waiting), however long it waited.
    fn expire_oldest(&mut self, now: UnixNanos, out: &mut Vec<Call>) {
        while let Some((arrived, id)) = self.order.pop_front() {
            if self.expire(arrived, id, true, now, out) {
                return;
            }
        }
    }

    /// Stops the half `id` waiting, if it is the one that arrived at `arrived` (not paired
    /// since); returns whether it was.
    fn expire(
        &mut self,
        arrived: UnixNanos,
        id: CallId,
        early: bool,
        now: UnixNanos,
        out: &mut Vec<Call>,
    ) -> bool {
        let current = self.waiting.get(&id).is_some_and(|w| w.arrived == arrived);
        if !current {
            return false;
        }
        let w = self.waiting.remove(&id).expect("present");
        if matches!(w.half, Half::Counted { .. }) {
            // Counted already; nothing came to show the pair has server spans.
            return true;
        }
        if early {
            self.stats.evicted += 1;
        }
        match w.half {
            Half::Client(ClientHalf {
                service,
                peer: Some(peer),
                time,
                latency_ms,
                bad,
            }) => {
                self.stats.by_peer += 1;
                // (Not when it stopped waiting early: no span had time to come.)
                if !early && self.spanless.len() < self.settings.max_edges {
                    self.spanless.insert((service.clone(), peer.clone()), now);
                }
                out.push(Call {
                    client: service,
                    server: peer,
                    time,
                    latency_ms,
                    bad,
                });
            }
            _ => self.stats.unpaired += 1,
        }
        true
    }
}
