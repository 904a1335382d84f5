//! The windowed state of one series: counter rings at each resolution, and its minutes of
//! latency digests.

use super::{
    ARCHIVE_SECOND_DIGESTS, COUNTER_TIERS, Cover, DigestSettings, LegacyDigests,
    MAX_SERIES_DIGEST_WINDOW_S, Ring, SERIES_DIGEST_TIERS, TierSpec, cover, evict_digests,
    with_digest,
};
use crate::sketch::TDigest;
use crate::time::UnixNanos;
use serde::{Deserialize, Serialize};

/// Latency thresholds tracked per series (from the service's latency SLOs).
pub const MAX_THRESHOLDS: usize = 2;

/// Counters of one bucket. `u32` saturating: 4 × 10^9 requests per bucket per series is
/// far beyond any real series, and it halves the memory of the 30-day history. Serialised as
/// an array `[requests, errors, within…, timed]` in binary formats (CBOR checkpoints and
/// changelog records: about 10 bytes instead of 50 with the field names), by name otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests.
    pub requests: u32,
    /// Bad requests.
    pub errors: u32,
    /// Requests with latency ≤ each configured threshold (in threshold order).
    pub within: [u32; MAX_THRESHOLDS],
    /// Requests whose latency is known (counters from metrics carry none): the denominator
    /// of latency SLIs.
    pub timed: u32,
}

/// The named fields (human-readable formats, and binary ones before the array form).
#[derive(Serialize, Deserialize)]
#[serde(rename = "Counts")]
struct CountsFields {
    requests: u32,
    errors: u32,
    within: [u32; MAX_THRESHOLDS],
    timed: u32,
}

/// The array form.
type CountsArray = (u32, u32, [u32; MAX_THRESHOLDS], u32);

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            CountsFields {
                requests: self.requests,
                errors: self.errors,
                within: self.within,
                timed: self.timed,
            }
            .serialize(s)
        } else {
            let a: CountsArray = (self.requests, self.errors, self.within, self.timed);
            a.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, SeqAccess, Visitor};
        /// The array or the named fields.
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = CountsFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bucket counters (an array, or a map of named fields)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<CountsFields, A::Error> {
                let (requests, errors, within, timed) =
                    CountsArray::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(CountsFields {
                    requests,
                    errors,
                    within,
                    timed,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<CountsFields, A::Error> {
                CountsFields::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        let f = if d.is_human_readable() {
            CountsFields::deserialize(d)?
        } else {
            d.deserialize_any(Either)?
        };
        Ok(Self {
            requests: f.requests,
            errors: f.errors,
            within: f.within,
            timed: f.timed,
        })
    }
}

fn sat(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

impl Counts {
    /// Counters from totals (saturating at `u32::MAX` each).
    pub fn from_totals(
        requests: u64,
        errors: u64,
        within: [u64; MAX_THRESHOLDS],
        timed: u64,
    ) -> Self {
        let mut c = Self::default();
        c.add(requests, errors, within, timed);
        c
    }

    fn add(&mut self, requests: u64, errors: u64, within: [u64; MAX_THRESHOLDS], timed: u64) {
        self.timed = self.timed.saturating_add(sat(timed));
        self.requests = self.requests.saturating_add(sat(requests));
        self.errors = self.errors.saturating_add(sat(errors));
        for (w, add) in self.within.iter_mut().zip(within) {
            *w = w.saturating_add(sat(add));
        }
    }
}

/// Sums over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowSums {
    /// Requests.
    pub requests: u64,
    /// Bad requests.
    pub errors: u64,
    /// Requests within each threshold.
    pub within: [u64; MAX_THRESHOLDS],
    /// Requests with a known latency.
    pub timed: u64,
    /// Start second of the oldest bucket counted.
    pub start_s: u64,
    /// False when the window is longer than the retained history.
    pub complete: bool,
}

/// Window sums exact at the oldest edge (see [`SeriesState::sums_prorated`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProratedSums {
    /// Requests.
    pub requests: f64,
    /// Bad requests.
    pub errors: f64,
    /// Requests with a known latency.
    pub timed: f64,
    /// Requests within each threshold.
    pub within: [f64; MAX_THRESHOLDS],
    /// False when the window is longer than the retained history.
    pub complete: bool,
}

impl std::ops::AddAssign for ProratedSums {
    fn add_assign(&mut self, o: Self) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.timed += o.timed;
        for (a, b) in self.within.iter_mut().zip(o.within) {
            *a += b;
        }
        self.complete &= o.complete;
    }
}

/// What one series keeps. Checkpoints hold it as `counts` (the tiers up to 3 days), `days`
/// (the 30 days of 12 h buckets), `minutes`, `last_event` and `last_arrival`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(try_from = "SeriesStateWire")]
pub struct SeriesState {
    counts: [Ring<Counts>; COUNTER_TIERS.len()],
    /// Latency digests by the minute ([`SERIES_DIGEST_TIERS`]).
    minutes: Ring<TDigest>,
    /// Latency digests by the second, kept for the archive only (empty unless
    /// [`DigestSettings::keep_seconds`]); not part of checkpoints or change sets.
    seconds: Ring<TDigest>,
    /// Newest event time applied.
    pub last_event: UnixNanos,
    /// Arrival time (engine `now`) of the newest data applied.
    pub last_arrival: UnixNanos,
    /// Read from a checkpoint written when series still kept the fine digests: those
    /// digests, until the engine hands them to the series' version.
    legacy: Option<Box<LegacyDigests>>,
}

/// Index of the 30-day tier, written apart as `days`: its buckets were 6 h wide before, and
/// a checkpoint without `days` holds them so.
const DAYS: usize = COUNTER_TIERS.len() - 1;

impl Serialize for SeriesState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SeriesState", 5)?;
        st.serialize_field("counts", &self.counts[..DAYS])?;
        st.serialize_field("days", &self.counts[DAYS])?;
        st.serialize_field("minutes", &self.minutes)?;
        st.serialize_field("last_event", &self.last_event)?;
        st.serialize_field("last_arrival", &self.last_arrival)?;
        st.end()
    }
}

/// A series as checkpoints hold it, in this layout or one before it: all counter tiers in
/// `counts` with 6 h buckets for 30 days and no `days`, at first without the 10 s tier; and
/// `digests` (1 s × 10 s, 10 s × 5 min, and at first 5 min × 1 h) instead of `minutes`.
#[derive(Deserialize)]
struct SeriesStateWire {
    counts: Vec<Ring<Counts>>,
    #[serde(default)]
    days: Option<Ring<Counts>>,
    #[serde(default)]
    minutes: Ring<TDigest>,
    #[serde(default)]
    digests: Vec<Ring<TDigest>>,
    last_event: UnixNanos,
    last_arrival: UnixNanos,
}

/// Counter tiers before the 10 s one was added (1 s × 5 min, then as later).
const OLD_COUNTER_TIERS: usize = COUNTER_TIERS.len() - 1;

fn add_counts(a: &mut Counts, b: &Counts) {
    a.add(
        u64::from(b.requests),
        u64::from(b.errors),
        b.within.map(u64::from),
        u64::from(b.timed),
    )
}

impl TryFrom<SeriesStateWire> for SeriesState {
    type Error = String;

    fn try_from(w: SeriesStateWire) -> Result<Self, String> {
        let n = w.counts.len();
        let mut counts = w.counts;
        let days = match w.days {
            Some(days) if n == DAYS => days,
            // Before `days`: the last tier's buckets were 6 h wide; two make one now.
            None if n == COUNTER_TIERS.len() || n == OLD_COUNTER_TIERS => counts
                .pop()
                .map(|six| six.coarsened(2, add_counts))
                .unwrap_or_default(),
            _ => {
                return Err(format!(
                    "a series has {n} counter tiers (this build reads {DAYS} and the days, or {} \
                     or {OLD_COUNTER_TIERS} with 6 h days)",
                    COUNTER_TIERS.len()
                ));
            }
        };
        if counts.len() == OLD_COUNTER_TIERS - 1 {
            // The old 5 minutes of seconds: the 10 s tier is their sums (the 1 s tier keeps
            // them until the next eviction).
            let tens = counts[0].coarsened(10, add_counts);
            counts.insert(1, tens);
        }
        counts.push(days);
        let counts = <[Ring<Counts>; COUNTER_TIERS.len()]>::try_from(counts)
            .map_err(|_| "counter tiers".to_string())?;
        let (minutes, legacy) = match w.digests.len() {
            0 => (w.minutes, None),
            2 | 3 => {
                // The old 10 s digests, merged by the minute; the fine ones go to the version.
                let mut rings = w.digests.into_iter();
                let seconds = rings.next().unwrap_or_default();
                let tens = rings.next().unwrap_or_default();
                let hour = rings.next().unwrap_or_default();
                let minutes = tens.coarsened(6, |a, b| {
                    a.merge(b);
                    a.shrink();
                });
                let legacy = LegacyDigests {
                    seconds,
                    tens,
                    hour,
                };
                (minutes, Some(Box::new(legacy)))
            }
            n => {
                return Err(format!(
                    "a series has {n} digest tiers (this build reads 1 minute ring, or 2 or 3 tiers)"
                ));
            }
        };
        Ok(Self {
            counts,
            minutes,
            seconds: Ring::default(),
            last_event: w.last_event,
            last_arrival: w.last_arrival,
            legacy,
        })
    }
}

impl SeriesState {
    /// Applies `requests` requests (of which `errors` bad) at event second `t_s`, arriving at
    /// `now_s`. `latency_ms` (with its per-threshold within-counts) is added to the digests when
    /// known. Returns false when the event is older than every tier's retention.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        t_s: u64,
        now_s: u64,
        requests: u64,
        errors: u64,
        within: [u64; MAX_THRESHOLDS],
        latency_ms: Option<f64>,
        digests: DigestSettings,
    ) -> bool {
        let mut applied = false;
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            if let Some((c, _)) =
                ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
            {
                c.add(
                    requests,
                    errors,
                    within,
                    if latency_ms.is_some() { requests } else { 0 },
                );
                applied = true;
            }
        }
        if let Some(ms) = latency_ms {
            self.with_digests(t_s, now_s, digests, |d, buffer| {
                d.add_buffered(ms, requests, buffer)
            });
        }
        applied
    }

    /// Runs `f` (with the per-series buffer limit) on the digests of event second `t_s`:
    /// its minute's, and its second's when they are kept for the archive.
    fn with_digests(
        &mut self,
        t_s: u64,
        now_s: u64,
        digests: DigestSettings,
        f: impl Fn(&mut TDigest, usize),
    ) {
        let buffer = digests.series_buffer();
        let c = digests.compression;
        with_digest(
            &mut self.minutes,
            SERIES_DIGEST_TIERS[0],
            t_s,
            now_s,
            c,
            |d| f(d, buffer),
        );
        if digests.keep_seconds {
            with_digest(
                &mut self.seconds,
                ARCHIVE_SECOND_DIGESTS,
                t_s,
                now_s,
                c,
                |d| f(d, buffer),
            );
        }
    }

    /// Second `t_s` as the 1 s tiers hold it: its counters (None when the second is out of
    /// the 1-minute 1 s history or empty) and its latency digest (only when 1 s digests are
    /// kept for the archive, and within their 10 seconds).
    pub fn second(&self, t_s: u64) -> Option<(Counts, Option<&TDigest>)> {
        let (_, c) = self.counts[0].range_indexed(t_s, t_s + 1).next()?;
        if c.requests == 0 {
            return None;
        }
        let d = self
            .seconds
            .range_indexed(t_s, t_s + 1)
            .next()
            .map(|(_, d)| d)
            .filter(|d| !d.is_empty());
        Some((*c, d))
    }

    /// Applies a whole second at once (a replayed archive row): `counts` added to every
    /// counter tier and `digest` merged into every digest tier at event second `t_s`, arriving
    /// at `now_s`. Returns false when the second is older than every tier's retention.
    pub fn apply_second(
        &mut self,
        t_s: u64,
        now_s: u64,
        counts: &Counts,
        digest: Option<&TDigest>,
        digests: DigestSettings,
    ) -> bool {
        let mut applied = false;
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            if let Some((c, _)) =
                ring.bucket_mut(t_s / spec.width_s, now_s / spec.width_s, spec.slots)
            {
                c.add(
                    u64::from(counts.requests),
                    u64::from(counts.errors),
                    counts.within.map(u64::from),
                    u64::from(counts.timed),
                );
                applied = true;
            }
        }
        if let Some(digest) = digest.filter(|d| !d.is_empty()) {
            self.with_digests(t_s, now_s, digests, |d, buffer| {
                d.merge_buffered(digest, buffer)
            });
        }
        applied
    }

    /// Adds all of `other`'s history into this state (counts add up bucket by bucket, digests
    /// merge): window sums over both afterwards equal the sums of the two before. Used to fold
    /// an idle series into its service version's aggregate.
    pub fn absorb(&mut self, other: &SeriesState) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            mine.absorb(theirs, |a, b| {
                a.add(
                    u64::from(b.requests),
                    u64::from(b.errors),
                    b.within.map(u64::from),
                    u64::from(b.timed),
                );
            });
        }
        for (mine, theirs) in [
            (&mut self.minutes, &other.minutes),
            (&mut self.seconds, &other.seconds),
        ] {
            mine.absorb(theirs, |a, b| {
                if a.is_empty() {
                    *a = b.clone();
                } else if !b.is_empty() {
                    a.merge(b);
                }
            });
        }
        self.last_event = self.last_event.max(other.last_event);
        self.last_arrival = self.last_arrival.max(other.last_arrival);
    }

    /// The buckets that hold second `from_s` or later, in every tier (what changed since a
    /// mark, when every second applied since is `from_s` or later), with the newest times.
    /// The archive's 1 s digests are left out.
    pub fn since(&self, from_s: u64) -> SeriesState {
        Self {
            counts: std::array::from_fn(|i| {
                self.counts[i].since(from_s / COUNTER_TIERS[i].width_s)
            }),
            minutes: self.minutes.since(from_s / SERIES_DIGEST_TIERS[0].width_s),
            seconds: Ring::default(),
            last_event: self.last_event,
            last_arrival: self.last_arrival,
            legacy: None,
        }
    }

    /// Puts the buckets of `changes` (from [`SeriesState::since`]) in place of this state's.
    pub fn overwrite(&mut self, changes: &SeriesState) {
        for (mine, theirs) in self.counts.iter_mut().zip(&changes.counts) {
            mine.overwrite(theirs);
        }
        self.minutes.overwrite(&changes.minutes);
        self.last_event = self.last_event.max(changes.last_event);
        self.last_arrival = self.last_arrival.max(changes.last_arrival);
    }

    /// Drops buckets out of retention at `now_s`.
    pub fn evict(&mut self, now_s: u64) {
        for (ring, spec) in self.counts.iter_mut().zip(COUNTER_TIERS) {
            ring.evict(now_s / spec.width_s, spec.slots);
        }
        evict_digests(&mut self.minutes, SERIES_DIGEST_TIERS[0], now_s);
        evict_digests(&mut self.seconds, ARCHIVE_SECOND_DIGESTS, now_s);
    }

    /// True when no bucket remains.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(Ring::is_empty)
    }

    /// Counter sums over the `window_s` seconds ending in second `now_s`.
    pub fn sums(&self, now_s: u64, window_s: u64) -> WindowSums {
        let c: Cover = cover(&COUNTER_TIERS, now_s, window_s);
        let mut out = WindowSums {
            start_s: c.start_s,
            complete: c.complete,
            ..Default::default()
        };
        for seg in &c.segments {
            for b in self.counts[seg.tier].range(seg.from_idx, seg.to_idx) {
                out.requests += u64::from(b.requests);
                out.errors += u64::from(b.errors);
                out.timed += u64::from(b.timed);
                for (o, w) in out.within.iter_mut().zip(b.within) {
                    *o += u64::from(w);
                }
            }
        }
        out
    }

    /// Like [`SeriesState::sums`], but exact to the second at the window's oldest edge: a
    /// coarse bucket that straddles the edge counts in proportion to its overlap (requests are
    /// assumed uniform within a bucket). This is what burn rates use, so a long window is not
    /// diluted by up to one coarse bucket of older traffic.
    pub fn sums_prorated(&self, now_s: u64, window_s: u64) -> ProratedSums {
        let c: Cover = cover(&COUNTER_TIERS, now_s, window_s);
        let from = (now_s + 1).saturating_sub(window_s);
        let mut out = ProratedSums {
            complete: c.complete,
            ..Default::default()
        };
        for seg in &c.segments {
            let w = COUNTER_TIERS[seg.tier].width_s;
            for (idx, b) in self.counts[seg.tier].range_indexed(seg.from_idx, seg.to_idx) {
                let start = idx * w;
                let f = if start < from {
                    (start + w).saturating_sub(from) as f64 / w as f64
                } else {
                    1.0
                };
                out.requests += f * f64::from(b.requests);
                out.errors += f * f64::from(b.errors);
                out.timed += f * f64::from(b.timed);
                for (o, x) in out.within.iter_mut().zip(b.within) {
                    *o += f * f64::from(x);
                }
            }
        }
        out
    }

    /// The fine digests a checkpoint of an old layout held for this series (see
    /// [`crate::window::VersionDigests::absorb_legacy`]); None afterwards.
    pub fn take_legacy(&mut self) -> Option<Box<LegacyDigests>> {
        self.legacy.take()
    }

    /// The merged latency digest of the window (its oldest edge exact to the minute), or
    /// `None` when the window is longer than the series' digest history (5 min).
    pub fn digest(&self, now_s: u64, window_s: u64, compression: f32) -> Option<TDigest> {
        let c = cover(&SERIES_DIGEST_TIERS, now_s, window_s);
        if !c.complete || window_s > MAX_SERIES_DIGEST_WINDOW_S {
            return None;
        }
        let mut merged = TDigest::new(compression);
        let parts = c
            .segments
            .iter()
            .flat_map(|s| self.minutes.range(s.from_idx, s.to_idx));
        merged.merge_all(parts);
        Some(merged)
    }

    /// Heap bytes held by this series' windows.
    pub fn heap_bytes(&self) -> usize {
        let (counters, digests) = self.heap_bytes_split();
        counters + digests
    }

    /// Heap bytes of the counter rings and of the digest rings (with their centroids).
    pub fn heap_bytes_split(&self) -> (usize, usize) {
        let counters = self.counts.iter().map(Ring::heap_bytes).sum::<usize>();
        let digests = [&self.minutes, &self.seconds]
            .into_iter()
            .map(|r| r.heap_bytes() + r.values().map(TDigest::heap_bytes).sum::<usize>())
            .sum();
        (counters, digests)
    }

    /// Newest bucket second across the finest counter ring (for idleness checks).
    pub fn newest_second(&self) -> Option<u64> {
        self.counts[0].newest_idx()
    }

    /// The tiers, for documentation and tests.
    pub fn tiers() -> (&'static [TierSpec], &'static [TierSpec]) {
        (&COUNTER_TIERS, &SERIES_DIGEST_TIERS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: in CBOR a bucket's counters are a short array (under half the named form
    /// with large counts, a fifth with small ones),
    /// the named form (older checkpoints) still reads, and JSON keeps the names.
    #[test]
    fn counters_are_arrays_in_cbor_and_names_in_json() {
        let c = Counts::from_totals(123_456, 78, [100_000, 120_000], 123_000);
        let mut array = Vec::new();
        ciborium::into_writer(&c, &mut array).unwrap();
        let mut named = Vec::new();
        let fields = CountsFields {
            requests: c.requests,
            errors: c.errors,
            within: c.within,
            timed: c.timed,
        };
        ciborium::into_writer(&fields, &mut named).unwrap();
        assert!(array.len() * 2 < named.len(), "{array:?} vs {named:?}");
        let mut small = Vec::new();
        ciborium::into_writer(&Counts::from_totals(3, 0, [3, 2], 3), &mut small).unwrap();
        assert_eq!(small.len(), 7, "{small:?}");
        for bytes in [&array, &named] {
            assert_eq!(ciborium::from_reader::<Counts, _>(&bytes[..]).unwrap(), c);
        }
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"requests\":123456"), "{json}");
        assert_eq!(serde_json::from_str::<Counts>(&json).unwrap(), c);
    }
}
