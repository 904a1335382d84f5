//! `trike detect --input FILE.csv`: the streaming anomaly detector, offline. Reads
//! `timestamp,value` rows (Unix seconds, milliseconds or nanoseconds, or RFC 3339), writes
//! `timestamp,value,anomaly_score,label`: the score in [0, 1] is the alert score (the
//! calibrated score at the first anomalous sample of an episode, held under the threshold for
//! the detector's `rest` samples after it: one alert per episode), and the label is `anomaly`
//! for every sample whose score reaches the threshold, `normal` otherwise. A row that cannot
//! be read is reported on stderr with its line number and skipped.

use std::io::{BufRead, Write};
use trike_engine::anomaly::{Detector, DetectorConfig};

/// What a run read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Rows scored.
    pub rows: u64,
    /// Rows labelled anomalous.
    pub anomalies: u64,
    /// Rows skipped as unreadable.
    pub bad_rows: u64,
}

/// Parses a timestamp into Unix seconds.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(x) = s.parse::<f64>() {
        if !(x.is_finite() && x >= 0.0) {
            return None;
        }
        // Seconds, milliseconds, microseconds or nanoseconds, by magnitude.
        let secs = if x > 1e17 {
            x / 1e9
        } else if x > 1e14 {
            x / 1e6
        } else if x > 1e11 {
            x / 1e3
        } else {
            x
        };
        return Some(secs as u64);
    }
    trike_sinks::parse_rfc3339(s)
}

/// Scores every row of `input` into `output`; unreadable rows go to `errors`.
pub fn run(
    input: impl BufRead,
    mut output: impl Write,
    mut errors: impl Write,
    cfg: DetectorConfig,
) -> std::io::Result<Summary> {
    let mut d = Detector::new(cfg);
    let mut sum = Summary::default();
    writeln!(output, "timestamp,value,anomaly_score,label")?;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let mut cols = text.split(',');
        let (ts, val) = (cols.next().unwrap_or(""), cols.next().unwrap_or(""));
        let value = val.trim().parse::<f64>().ok().filter(|v| v.is_finite());
        let Some(t) = parse_timestamp(ts) else {
            if n == 1 && value.is_none() {
                continue; // a header row
            }
            sum.bad_rows += 1;
            writeln!(
                errors,
                "line {n}: timestamp {ts:?} is neither Unix time nor RFC 3339; row skipped"
            )?;
            continue;
        };
        let Some(value) = value else {
            sum.bad_rows += 1;
            writeln!(
                errors,
                "line {n}: value {val:?} is not a finite number; row skipped"
            )?;
            continue;
        };
        let s = d.observe(t, value);
        sum.rows += 1;
        sum.anomalies += u64::from(s.anomaly);
        writeln!(
            output,
            "{},{},{:.6},{}",
            ts.trim(),
            val.trim(),
            s.alert,
            if s.anomaly { "anomaly" } else { "normal" }
        )?;
    }
    output.flush()?;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the three timestamp forms parse to the same instant; junk does not.
    #[test]
    fn timestamps() {
        let want = Some(1_795_346_452);
        for t in [
            "1795346452",
            "1795346452000",
            "1795346452000000000",
            "2026-11-22T11:20:52Z",
            "2026-11-22 11:20:52",
            "2026-11-22T12:20:52.250+01:00",
        ] {
            assert_eq!(parse_timestamp(t), want, "{t}");
        }
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "-5"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    /// Guarantees: a spike in a steady series is labelled, the rest is not; a header is
    /// skipped; bad rows are reported with their line number and skipped, the rest scored.
    #[test]
    fn csv_in_csv_out() {
        let mut input = String::from("timestamp,value\n");
        for i in 0..200u64 {
            let v = if i == 150 {
                500.0
            } else {
                100.0 + (i % 5) as f64
            };
            input.push_str(&format!("{},{v}\n", 1_795_000_000 + i * 60));
        }
        input.push_str("garbage,1\n1795012060,NaN\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let cfg = DetectorConfig {
            season_s: 0,
            ..Default::default()
        };
        let sum = run(input.as_bytes(), &mut out, &mut err, cfg).unwrap();
        assert_eq!(
            sum,
            Summary {
                rows: 200,
                anomalies: 1,
                bad_rows: 2
            }
        );
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "timestamp,value,anomaly_score,label");
        assert_eq!(lines.len(), 201);
        assert!(lines[151].ends_with(",anomaly"), "{}", lines[151]);
        assert!(lines[151].starts_with("1795009000,500,"));
        let err = String::from_utf8(err).unwrap();
        assert!(err.contains("line 202: timestamp \"garbage\""), "{err}");
        assert!(err.contains("line 203: value \"NaN\""), "{err}");
    }
}
