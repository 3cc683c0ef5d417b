//! RFC 3339 timestamps and plain dates, to microseconds since the epoch.

/// Parse `YYYY-MM-DD`, or `YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH:MM]` (no
/// offset means UTC), into microseconds since 1970-01-01T00:00:00Z.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut micros = days_from_civil(year, month, day) * 86_400 * 1_000_000;
    if b.len() == 10 {
        return Some(micros);
    }
    if !(b[10] == b'T' || b[10] == b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    micros += ((hour * 60 + minute) * 60 + second) * 1_000_000;
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &text[start..i.min(start + 6)];
        micros += frac.parse::<i64>().ok()? * 10i64.pow(6 - frac.len() as u32);
    }
    match b.get(i) {
        None => Some(micros),
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(micros),
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60 * 1_000_000;
            Some(if sign == b'+' { micros - offset } else { micros + offset })
        }
        _ => None,
    }
}

/// The first instant of the year 0000 and the last of 9999: the range
/// [`format_timestamp`] writes with four-digit years, which is what
/// [`parse_timestamp`] reads back.
pub(crate) const TIMESTAMP_RANGE: std::ops::RangeInclusive<i64> =
    -62_167_219_200_000_000..=253_402_300_799_999_999;

/// Microseconds since the epoch as RFC 3339 in UTC, with a fraction only
/// when there is one: what [`parse_timestamp`] reads back to the same value.
pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(86_400 * 1_000_000);
    let rest = micros.rem_euclid(86_400 * 1_000_000);
    let (year, month, day) = civil_from_days(days);
    let (seconds, fraction) = (rest / 1_000_000, rest % 1_000_000);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    if fraction != 0 {
        out.push_str(&format!(".{fraction:06}"));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day since 1970-01-01 (the inverse of
/// [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::{format_timestamp, parse_timestamp};

    #[test]
    fn formatting_reads_back_to_the_same_instant() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(1_709_208_000_250_000), "2024-02-29T12:00:00.250000Z");
        for micros in [-1, -86_400_000_001, 951_782_400_000_000, 4_102_444_799_999_999, 1_234_567] {
            assert_eq!(parse_timestamp(&format_timestamp(micros)), Some(micros), "{micros}");
        }
    }

    #[test]
    fn the_range_is_the_years_0000_to_9999() {
        let (first, last) = (*super::TIMESTAMP_RANGE.start(), *super::TIMESTAMP_RANGE.end());
        assert_eq!(parse_timestamp("0000-01-01"), Some(first));
        assert_eq!(parse_timestamp("9999-12-31T23:59:59.999999Z"), Some(last));
        for micros in [first, last] {
            assert_eq!(parse_timestamp(&format_timestamp(micros)), Some(micros));
        }
        for outside in [first - 1, last + 1] {
            assert_eq!(parse_timestamp(&format_timestamp(outside)), None, "{}", format_timestamp(outside));
        }
    }

    #[test]
    fn parses_dates_and_rfc3339() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("1970-01-02T00:00:01Z"), Some(86_401_000_000));
        assert_eq!(parse_timestamp("2024-02-29 12:00:00"), Some(1_709_208_000_000_000));
        assert_eq!(parse_timestamp("2024-02-29T13:00:00+01:00"), Some(1_709_208_000_000_000));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.25Z"), Some(250_000));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in
            ["2023-02-29", "2024-13-01", "2024-01-01T25:00:00", "yesterday", "2024-01-01T00:00:00.Z", "12"]
        {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }
}
