//! Time as the engine sees it: Unix nanoseconds passed in by the caller, never read from a clock,
//! and window lengths written the Prometheus way (`30s`, `5m`, `1h`, `30d`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Nanoseconds since the Unix epoch.
pub type UnixNanos = u64;

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Whole seconds of a Unix-nanosecond time.
pub const fn secs(t: UnixNanos) -> u64 {
    t / NANOS_PER_SEC
}

/// A window length in whole seconds, written and parsed as `30s`, `5m`, `1h`, `3d`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

impl Span {
    /// Length in seconds.
    pub const fn secs(self) -> u64 {
        self.0
    }
    /// From minutes.
    pub const fn minutes(m: u64) -> Self {
        Self(m * 60)
    }
    /// From hours.
    pub const fn hours(h: u64) -> Self {
        Self(h * 3600)
    }
    /// From days.
    pub const fn days(d: u64) -> Self {
        Self(d * 86_400)
    }
    /// Length in nanoseconds.
    pub const fn nanos(self) -> u64 {
        self.0 * NANOS_PER_SEC
    }
}

/// Why a duration string did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration: write a number and a unit, like 30s, 5m, 1h or 30d")]
pub struct SpanParseError {
    /// What was given.
    pub input: String,
}

impl FromStr for Span {
    type Err = SpanParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SpanParseError {
            input: s.to_string(),
        };
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut any = false;
        for ch in s.trim().chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let n: u64 = digits.parse().map_err(|_| err())?;
            digits.clear();
            let unit = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(err()),
            };
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
            any = true;
        }
        if !digits.is_empty() || !any || total == 0 {
            return Err(err());
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if s.is_multiple_of(len) {
                return write!(f, "{}{unit}", s / len);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the window names used across Trike parse and print back the same.
    #[test]
    fn parse_and_print() {
        for (text, secs) in [
            ("1s", 1),
            ("5m", 300),
            ("1h", 3600),
            ("30d", 2_592_000),
            ("90s", 90),
        ] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.secs(), secs, "{text}");
            assert_eq!(span.to_string(), text);
        }
        assert_eq!("1h30m".parse::<Span>().unwrap().secs(), 5400);
        for bad in ["", "5", "m", "5x", "0s", "-5m"] {
            assert!(bad.parse::<Span>().is_err(), "{bad:?} should not parse");
        }
    }
}
