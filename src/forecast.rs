//! `trike forecast --input FILE.csv [--holdout 0.2]`: the capacity forecast, offline. Reads
//! `timestamp,value` rows as `trike detect` does, averages them per hour, fits the forecast
//! on all but the last `holdout` share of the hours and reports its mean (and weighted)
//! absolute percentage error on them (forecast without updates, so the error grows with the days ahead, as it
//! does when a limit is days away).

use std::collections::BTreeMap;
use std::io::BufRead;

/// What a run found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// Hours with data.
    pub hours: usize,
    /// Hours held back.
    pub held_back: usize,
    /// MAPE and WAPE on them (None: too few hours).
    pub errors: Option<trike_engine::forecast::HoldoutErrors>,
    /// The fitted trend, per day.
    pub trend_per_day: f64,
}

/// The hourly means of readable rows (unreadable ones are skipped: `trike detect` names them).
pub fn hourly_means(input: impl BufRead) -> std::io::Result<Vec<(u64, f64)>> {
    let mut hours: BTreeMap<u64, (f64, u32)> = BTreeMap::new();
    for line in input.lines() {
        let line = line?;
        let mut cols = line.trim().split(',');
        let (ts, val) = (cols.next().unwrap_or(""), cols.next().unwrap_or(""));
        let (Some(t), Ok(v)) = (
            crate::detect::parse_timestamp(ts),
            val.trim().parse::<f64>(),
        ) else {
            continue;
        };
        if v.is_finite() {
            let e = hours.entry(t / 3600).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    Ok(hours
        .into_iter()
        .map(|(h, (sum, n))| (h, sum / f64::from(n)))
        .collect())
}

/// Fits and scores the forecast on `input`'s hourly means.
pub fn run(input: impl BufRead, holdout: f64) -> std::io::Result<Report> {
    let values = hourly_means(input)?;
    let cut = ((values.len() as f64) * (1.0 - holdout)).round() as usize;
    let mut m = trike_engine::forecast::Forecaster::default();
    for &(h, v) in &values[..cut.min(values.len())] {
        m.observe(h, v);
    }
    Ok(Report {
        hours: values.len(),
        held_back: values.len() - cut.min(values.len()),
        errors: trike_engine::forecast::holdout_errors(&values, holdout),
        trend_per_day: m.trend_per_day(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: rows are averaged per hour (any timestamp form), unreadable rows skipped;
    /// a steadily growing daily cycle is forecast within 5 % over its held-back last fifth.
    #[test]
    fn hourly_means_and_a_held_back_tail() {
        let mut csv = String::from("timestamp,value\nnonsense,1\n");
        for i in 0..(21 * 24 * 12) {
            let t = 1_700_006_400 + i * 300; // 5-minute rows from a day boundary
            let hour = (i / 12) % 24;
            let v = 50.0
                + (i as f64) / 288.0
                + 10.0 * (hour as f64 / 24.0 * std::f64::consts::TAU).sin();
            csv.push_str(&format!("{t},{v}\n"));
        }
        let means = hourly_means(csv.as_bytes()).unwrap();
        assert_eq!(means.len(), 21 * 24);
        let r = run(csv.as_bytes(), 0.2).unwrap();
        assert_eq!((r.hours, r.held_back), (504, 101));
        assert!((r.trend_per_day - 1.0).abs() < 0.05, "{r:?}");
        assert!(r.errors.unwrap().mape < 0.05, "{r:?}");
    }
}
