//! RFC 3339 timestamps: written as UTC with milliseconds from Unix nanoseconds, and read
//! (any offset, any fraction) into Unix seconds.

/// Formats Unix nanoseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let millis = (nanos / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Unix nanoseconds of an RFC 3339 time, its fraction included (up to nanoseconds); None when
/// it is not one.
pub fn parse_rfc3339_nanos(s: &str) -> Option<u64> {
    let secs = parse_rfc3339(s)?;
    let frac: String = s
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map(|f| f.chars().take_while(char::is_ascii_digit).take(9).collect())
        .unwrap_or_default();
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32)
    };
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Unix seconds of an RFC 3339 time (`2026-12-03T10:00:00Z`, `…+01:00`, a fraction ignored);
/// None when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = &frac[n..];
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz[1..3].parse::<i64>().ok()? * 3600 + tz[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se - offset).ok()
}

#[cfg(test)]
mod tests {
    /// Guarantees: a time with a fraction parses to the nanosecond, and without one to the
    /// second; junk does not parse.
    #[test]
    fn nanoseconds() {
        assert_eq!(
            super::parse_rfc3339_nanos("2000-02-29T00:00:00.123Z"),
            Some(951_782_400_123_000_000)
        );
        assert_eq!(
            super::parse_rfc3339_nanos("2000-02-29T01:00:00.000000007+01:00"),
            Some(951_782_400_000_000_007)
        );
        assert_eq!(
            super::parse_rfc3339_nanos("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000_000)
        );
        assert_eq!(super::parse_rfc3339_nanos("yesterday"), None);
    }

    /// Guarantees: known instants format as RFC 3339.
    #[test]
    fn known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(951_782_400_123_000_000),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            super::rfc3339(1_795_346_452_000_000_000),
            "2026-11-22T11:20:52.000Z"
        );
        for t in [0, 951_782_400, 1_795_346_452] {
            assert_eq!(
                super::parse_rfc3339(&super::rfc3339(t * 1_000_000_000)),
                Some(t)
            );
        }
        assert_eq!(
            super::parse_rfc3339("2026-11-22T12:20:52+01:00"),
            Some(1_795_346_452)
        );
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }
}
