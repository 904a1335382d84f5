//! Root-cause attribution (pattern 4, DESIGN §10): which value of which dimension — version,
//! operation, or a configured dimension such as `cloud.region` — carries a service's bad
//! events. For each value: its share of the bad events, its lift (its bad ratio over the
//! whole's) and its excess (the share of the bad events above what the whole's ratio would
//! give it: share × (1 − 1/lift)). Largest excess first, so a narrow value that explains the
//! bad events (one route) comes before a broad one that merely contains it (the region the
//! route runs in); only values with a lift above 1 are listed, and a dimension with a single
//! value says nothing and is left out.

use crate::observation::SeriesKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Values listed, at most.
pub const MAX_VALUES: usize = 5;

/// One value's part in the bad events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// `version`, `operation`, or a configured dimension's name.
    pub dimension: String,
    /// The value.
    pub value: String,
    /// Its share of the bad events, in [0, 1].
    pub share_of_bad: f64,
    /// Its bad ratio over the whole's.
    pub lift: f64,
    /// The share of the bad events beyond its share of the events at the whole's ratio.
    pub excess_share: f64,
    /// Its bad events.
    pub bad: u64,
    /// Its events.
    pub events: u64,
}

type Groups = BTreeMap<(String, String), (u64, u64)>;

/// Events and bad events per (dimension, value), and in all.
fn group<'a>(series: impl IntoIterator<Item = (&'a SeriesKey, u64, u64)>) -> (Groups, u64, u64) {
    let mut by = Groups::new();
    let (mut events, mut bad) = (0u64, 0u64);
    for (key, n, b) in series {
        events += n;
        bad += b;
        let mut add = |dim: &str, value: &str| {
            let e = by.entry((dim.to_string(), value.to_string())).or_default();
            e.0 += n;
            e.1 += b;
        };
        add("version", &key.version);
        add("operation", &key.operation);
        for (name, value) in key.dims.iter() {
            add(name, value);
        }
    }
    (by, events, bad)
}

/// Attributes the bad events of series given as (key, events, bad), against their own
/// whole's ratio.
pub fn attribute<'a>(
    series: impl IntoIterator<Item = (&'a SeriesKey, u64, u64)>,
) -> Vec<Attribution> {
    let (by, events, bad) = group(series);
    if bad == 0 || events == 0 {
        return Vec::new();
    }
    let whole = bad as f64 / events as f64;
    rank(&by, bad, |_| whole)
}

/// Attributes a canary's bad events (its series) against the baseline's (`reference`): each
/// value's lift and excess are against the baseline's ratio for the same value (with half a
/// bad event in one more event as a prior, so a value the baseline never failed has a finite
/// lift), or the baseline's whole ratio for a value it does not have.
pub fn attribute_against<'a>(
    series: impl IntoIterator<Item = (&'a SeriesKey, u64, u64)>,
    reference: impl IntoIterator<Item = (&'a SeriesKey, u64, u64)>,
) -> Vec<Attribution> {
    let (by, events, bad) = group(series);
    if bad == 0 || events == 0 {
        return Vec::new();
    }
    let (base, base_events, base_bad) = group(reference);
    let smoothed = |n: u64, b: u64| (b as f64 + 0.5) / (n as f64 + 1.0);
    let whole = smoothed(base_events, base_bad);
    rank(&by, bad, |k| {
        base.get(k).map_or(whole, |&(n, b)| smoothed(n, b))
    })
}

/// The values with a lift above 1, largest excess first, at most [`MAX_VALUES`].
fn rank(by: &Groups, bad: u64, reference: impl Fn(&(String, String)) -> f64) -> Vec<Attribution> {
    let mut values_per_dim: BTreeMap<&str, usize> = BTreeMap::new();
    for (dim, _) in by.keys() {
        *values_per_dim.entry(dim).or_default() += 1;
    }
    let mut out: Vec<Attribution> = by
        .iter()
        .filter(|((dim, _), (n, _))| values_per_dim[dim.as_str()] > 1 && *n > 0)
        .map(|(k, &(n, b))| {
            let r = reference(k);
            Attribution {
                dimension: k.0.clone(),
                value: k.1.clone(),
                share_of_bad: b as f64 / bad as f64,
                lift: (b as f64 / n as f64) / r,
                excess_share: (b as f64 - n as f64 * r) / bad as f64,
                bad: b,
                events: n,
            }
        })
        .filter(|a| a.lift > 1.0)
        .collect();
    out.sort_by(|a, b| {
        b.excess_share
            .total_cmp(&a.excess_share)
            .then(b.share_of_bad.total_cmp(&a.share_of_bad))
            .then(a.dimension.cmp(&b.dimension))
    });
    out.truncate(MAX_VALUES);
    out
}

/// The phrase naming the value that carries most of the bad events, when one does (half of
/// them or more, at 1.5 times the reference ratio or more): `"; mostly operation /pay (92 %
/// of the bad events, 8.4x the service's ratio)"`, where `against` names the reference ("the
/// service's", "the baseline's").
pub fn phrase(list: &[Attribution], against: &str) -> String {
    match list.first() {
        Some(a) if a.share_of_bad >= 0.5 && a.lift >= 1.5 => format!(
            "; mostly {} {} ({:.0} % of the bad events, {:.1}x {against} ratio)",
            a.dimension,
            a.value,
            100.0 * a.share_of_bad,
            a.lift
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: one failing route of three is named first with its share and lift, before
    /// the region it runs in (which holds more bad events, but explains fewer); the version
    /// (one value) says nothing; no bad events, no attribution.
    #[test]
    fn the_failing_route_is_named() {
        let dims = |region: &str| -> std::sync::Arc<[(std::sync::Arc<str>, std::sync::Arc<str>)]> {
            vec![("cloud.region".into(), region.into())].into()
        };
        let mut keys = Vec::new();
        for (route, region) in [("/pay", "eu"), ("/cart", "eu"), ("/ship", "us")] {
            let mut k = SeriesKey::new("checkout", route, "1.2");
            k.dims = dims(region);
            keys.push(k);
        }
        let counts = [(1000, 300), (1000, 10), (1000, 10)];
        let list = attribute(keys.iter().zip(counts).map(|(k, (n, b))| (k, n, b)));
        let top = &list[0];
        assert_eq!(
            (top.dimension.as_str(), top.value.as_str()),
            ("operation", "/pay")
        );
        assert!((top.share_of_bad - 300.0 / 320.0).abs() < 1e-12);
        assert!((top.lift - (0.3 / (320.0 / 3000.0))).abs() < 1e-9);
        assert!(list.iter().all(|a| a.dimension != "version"));
        assert!(
            list.iter()
                .any(|a| a.dimension == "cloud.region" && a.value == "eu")
        );
        assert!(list.iter().all(|a| a.lift > 1.0));
        assert_eq!(
            phrase(&list, "the service's"),
            "; mostly operation /pay (94 % of the bad events, 2.8x the service's ratio)"
        );
        assert!(attribute(keys.iter().map(|k| (k, 10, 0))).is_empty());

        // A canary's /pay fails where the baseline's does not: against the baseline, /pay
        // has the lift; /cart fails as much in both arms and is not listed.
        let canary: Vec<SeriesKey> = ["/pay", "/cart"]
            .iter()
            .map(|r| SeriesKey::new("checkout", r, "1.3"))
            .collect();
        let baseline: Vec<SeriesKey> = ["/pay", "/cart"]
            .iter()
            .map(|r| SeriesKey::new("checkout", r, "1.2"))
            .collect();
        let list = attribute_against(
            canary
                .iter()
                .zip([(500, 50), (500, 50)])
                .map(|(k, (n, b))| (k, n, b)),
            baseline
                .iter()
                .zip([(5000, 0), (5000, 500)])
                .map(|(k, (n, b))| (k, n, b)),
        );
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].value, "/pay");
        assert!((list[0].share_of_bad - 0.5).abs() < 1e-12);
        assert!(list[0].lift > 100.0, "{list:?}");
    }
}
