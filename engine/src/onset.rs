//! When a fault began: the onset a decision's evidence carries (`first_bad_at`), from which
//! the loop's time to detect is measured (M5).
//!
//! The bad and total events of the last hour are read as cumulative counts over windows ending
//! now, at the counters' own resolution (1 s for the last minute, 10 s to 5 minutes, 1 minute
//! to the hour), so every point is exact. The onset is the most likely change point of the bad
//! ratio: the split of the hour into "before" and "since" whose two binomial ratios, since
//! higher than before, explain the counts best (the largest log-likelihood ratio against one
//! ratio for the whole hour), when that ratio is significant (8 nats). Without a significant
//! rise, the fault is as old as the traffic read: when it began, or the hour's start (a lower
//! bound of its age). Pure, and computed only while a decision is about to be
//! made or an SLO fires.

use crate::engine::Engine;
use crate::time::{NANOS_PER_SEC, Span, UnixNanos};
use crate::window::ProratedSums;

/// The least log-likelihood ratio (nats) a rise needs to date the onset: below it, the
/// ratio is as steady as noise makes it, and the fault is taken to be as old as the traffic.
const MIN_LLR: f64 = 8.0;

/// How far back the onset is looked for.
pub const HORIZON: Span = Span::hours(1);

/// Window lengths (s) at which the cumulative counts are read: every point a bucket boundary of
/// the tier that covers it.
fn steps(horizon_s: u64) -> Vec<u64> {
    let mut out: Vec<u64> = (1..=60).collect();
    out.extend((7..=30).map(|k| k * 10));
    out.extend((6..=60).map(|k| k * 60));
    out.retain(|&w| w <= horizon_s);
    if out.last() != Some(&horizon_s) && horizon_s > 0 {
        out.push(horizon_s);
    }
    out
}

/// Binomial log-likelihood of `bad` in `total` at its own ratio.
fn loglik(bad: f64, total: f64) -> f64 {
    if total <= 0.0 {
        return 0.0;
    }
    let p = (bad / total).clamp(0.0, 1.0);
    let term = |k: f64, q: f64| if k > 0.0 { k * q.ln() } else { 0.0 };
    term(bad, p) + term(total - bad, 1.0 - p)
}

/// The onset, in engine time, of the rise in bad events that `bad_total` reads from the sums
/// over a window of that many seconds ending now. None without bad events; the start of
/// the horizon when no split shows a rise (the fault is older).
pub fn change_point(
    now: UnixNanos,
    horizon_s: u64,
    mut bad_total: impl FnMut(u64) -> (f64, f64),
) -> Option<UnixNanos> {
    let points: Vec<(u64, f64, f64)> = steps(horizon_s)
        .into_iter()
        .map(|w| {
            let (b, t) = bad_total(w);
            (w, b, t)
        })
        .collect();
    let &(w_all, b_all, t_all) = points.last()?;
    if t_all <= 0.0 || b_all <= 0.0 {
        return None;
    }
    let whole = loglik(b_all, t_all);
    let mut best: Option<(f64, u64)> = None;
    for &(w, b, t) in &points {
        let (bb, tb) = (b_all - b, t_all - t);
        if t <= 0.0 {
            continue;
        }
        // The rise must be a rise: since higher than before.
        if tb > 0.0 && b / t <= bb / tb {
            continue;
        }
        let llr = loglik(b, t) + loglik(bb, tb) - whole;
        if best.is_none_or(|(l, _)| llr > l + 1e-9) {
            best = Some((llr, w));
        }
    }
    let (llr, w) = best?;
    let w = if llr >= MIN_LLR && w != w_all {
        w
    } else {
        // No significant rise within the horizon: the fault is as old as the traffic read
        // (the first point holding all of it: when traffic began, else the horizon's start).
        points
            .iter()
            .find(|(_, _, t)| *t >= t_all)
            .map_or(horizon_s, |(w, _, _)| *w)
    };
    let w = if w == w_all { horizon_s } else { w };
    Some(now.saturating_sub(w * NANOS_PER_SEC))
}

/// The onset of the rise in bad events over the series of `service` that `keep`, with
/// `bad_total` reading (bad, total) from their sums; looked for over the last hour, or since
/// the engine began when that is shorter.
pub fn onset(
    engine: &Engine,
    service: &str,
    keep: impl Fn(&crate::observation::SeriesKey) -> bool,
    bad_total: impl Fn(&ProratedSums) -> (f64, f64),
) -> Option<UnixNanos> {
    let now = engine.now();
    let history_s = now.saturating_sub(engine.history_start()) / NANOS_PER_SEC;
    let horizon_s = HORIZON.secs().min(history_s.max(1));
    change_point(now, horizon_s, |w| {
        bad_total(&engine.service_sums_prorated_where(service, Span(w), &keep))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;
    const NOW: u64 = 1_800_003_600 * S;

    /// Per-second (total, bad) of a stream whose ratio rises `ago` seconds before now.
    fn stream(ago: u64, before: f64, after: f64) -> impl FnMut(u64) -> (f64, f64) {
        move |w| {
            let recent = w.min(ago) as f64;
            let older = w.saturating_sub(ago) as f64;
            (
                recent * 100.0 * after + older * 100.0 * before,
                w as f64 * 100.0,
            )
        }
    }

    /// Table: a clean stream that goes bad 45 s, 2 min 30 s, or 20 min before now, or a
    /// noisy baseline that rises; the onset is found at the resolution of the counts that cover
    /// it (1 s, 10 s, 1 min); a stream bad all hour gives the hour's start; a clean one, or one
    /// whose ratio falls, gives none.
    #[test]
    fn the_rise_is_found_where_it_began() {
        for (ago, before, after, want) in [
            (45, 0.0, 0.5, 45),
            (150, 0.0, 0.05, 150),
            (1200, 0.001, 0.02, 1200),
            (300, 0.01, 0.03, 300),
            (7200, 0.5, 0.5, 3600),
        ] {
            let got = change_point(NOW, 3600, stream(ago, before, after));
            assert_eq!(got, Some(NOW - want * S), "{ago} s ago, {before} → {after}");
        }
        assert_eq!(change_point(NOW, 3600, stream(100, 0.0, 0.0)), None);
        // A steady 2 % with a binomial-like jitter per second: no rise to date, so the fault
        // is as old as the hour (not some recent second the noise favours).
        let mut x: u64 = 7;
        let per_second: Vec<(f64, f64)> = (0..3600)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let bad = [0.0, 1.0, 2.0, 3.0, 4.0][((x >> 33) % 5) as usize];
                (bad, 100.0)
            })
            .collect();
        let steady = change_point(NOW, 3600, |w| {
            per_second[..w as usize]
                .iter()
                .fold((0.0, 0.0), |(b, t), (pb, pt)| (b + pb, t + pt))
        });
        assert_eq!(steady, Some(NOW - 3600 * S));
        // Traffic that began 10 minutes ago, bad from its first request: the onset is when
        // it began.
        let young = change_point(NOW, 3600, |w| {
            let w = w.min(600) as f64;
            (w * 10.0, w * 100.0)
        });
        assert_eq!(young, Some(NOW - 600 * S));
        // Bad all hour, only less so lately: the fault is older than the hour.
        assert_eq!(
            change_point(NOW, 3600, stream(100, 0.2, 0.01)),
            Some(NOW - 3600 * S)
        );
    }
}
