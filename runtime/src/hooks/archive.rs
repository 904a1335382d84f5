//! The archive hook, the engine thread's side of the archive: each second is sealed [`SEAL_DELAY_S`] after it
//! ends — late data within that delay is included, later data is in the live windows but not
//! in the archive — and its rows (one per series, with the second's latency digest) are
//! handed to the archive writer, which writes them on its own thread. With
//! `archive.sample_observations`, a systematic sample of the raw requests goes with them.

use crate::hook::{Hook, Tick};
use trike_engine::{Batch, Engine};
use trike_sql::archive::{ArchiveHandle, RawObservation};

/// Seconds after a second ends before it is archived. The engine keeps 1 s digests for 10 s,
/// so this must stay well under that.
pub const SEAL_DELAY_S: u64 = 5;
/// Seconds sealed in one tick, at most (after a long stall, older seconds are skipped: the
/// 1 s counters only reach back 1 minute anyway).
const MAX_SEAL: u64 = 60;

/// Sampled raw requests held between ticks, at most (more are dropped and counted).
const MAX_PENDING_OBSERVATIONS: usize = 1_000_000;

/// Seals seconds into the archive, and samples raw requests into it.
#[derive(Debug)]
pub struct Archiver {
    handle: ArchiveHandle,
    /// The newest second sealed.
    sealed: Option<u64>,
    /// Share of requests kept in the `observations` table.
    sample: f64,
    /// Systematic sampling: a request is kept each time this reaches 1.
    carry: f64,
    pending: Vec<RawObservation>,
}

impl Archiver {
    /// An archiver handing rows to `handle`, keeping a `sample` share (0 to 1) of raw
    /// requests; it starts with the second it first sees.
    pub fn new(handle: ArchiveHandle, sample: f64) -> Self {
        Self {
            handle,
            sealed: None,
            sample: sample.clamp(0.0, 1.0),
            carry: 0.0,
            pending: Vec::new(),
        }
    }

    /// Samples the requests of a batch the engine just applied.
    fn observe(&mut self, batch: &Batch) {
        if self.sample <= 0.0 {
            return;
        }
        for r in &batch.requests {
            self.carry += self.sample;
            if self.carry < 1.0 {
                continue;
            }
            self.carry -= 1.0;
            if self.pending.len() >= MAX_PENDING_OBSERVATIONS {
                self.handle
                    .stats
                    .dropped_rows
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            self.pending.push(RawObservation {
                key: batch.keys[r.key as usize].clone(),
                time: r.time,
                latency_ms: r.latency_ms,
                bad: r.bad,
            });
        }
    }

    /// Seals every second that ended at least [`SEAL_DELAY_S`] before the engine's `now`.
    fn tick(&mut self, engine: &Engine) {
        let now_s = engine.now() / 1_000_000_000;
        let Some(upto) = now_s.checked_sub(SEAL_DELAY_S + 1) else {
            return;
        };
        self.seal(engine, upto);
    }

    /// At a clean stop: seals everything up to the current (partial) second, so the archive
    /// holds all the processor applied.
    fn finish(&mut self, engine: &Engine) {
        self.seal(engine, engine.now() / 1_000_000_000);
    }

    fn seal(&mut self, engine: &Engine, upto: u64) {
        let from = match self.sealed {
            Some(s) if s >= upto => return,
            Some(s) => (s + 1).max(upto.saturating_sub(MAX_SEAL)),
            // Start with the first whole second after start-up.
            None => upto,
        };
        let mut rows = Vec::new();
        for s in from..=upto {
            rows.extend(engine.second_rows(s));
        }
        self.sealed = Some(upto);
        self.handle.seconds(rows);
        self.handle.observations(std::mem::take(&mut self.pending));
    }
}

impl Hook for Archiver {
    fn on_batch(&mut self, batch: &Batch) {
        self.observe(batch);
    }

    fn on_tick(&mut self, tick: &mut Tick<'_>) {
        self.tick(tick.engine);
    }

    fn on_finish(&mut self, tick: &mut Tick<'_>) {
        self.finish(tick.engine);
    }
}
