//! The times batchreg writes (an instance's ctime and mtime): the database's clock, read
//! through this process's clock and the offset between the two, as UTC text to the
//! millisecond (`2026-12-01 13:15:00.123`), the form the time columns hold and return.
//! Written by batchreg rather than by the database, so that a write knows what it stored
//! without reading it back; aligned with the database's clock, so that replicas'
//! changes are ordered by one clock for the change feed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// This process's clock, corrected by the offset to the database's.
#[derive(Debug, Default)]
pub struct Clock {
    /// The database's clock minus this process's, in milliseconds.
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, on the database's clock.
    pub fn now(&self) -> String {
        format_time(self.now_time())
    }

    /// Now, on the database's clock, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        self.now_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    fn now_time(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset.unsigned_abs())
        } else {
            now - Duration::from_millis(offset.unsigned_abs())
        }
    }

    /// Takes the offset from one reading of the database's clock (`database_unix_ms`),
    /// taken between `sent` and `received` on this process's clock: the reading is
    /// placed at the middle of the round trip.
    pub fn align(&self, database_unix_ms: i64, sent: SystemTime, received: SystemTime) {
        let unix_ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        };
        let middle = (unix_ms(sent) + unix_ms(received)) / 2;
        self.offset_ms
            .store(database_unix_ms - middle, Ordering::Relaxed);
    }

    /// The database's clock minus this process's, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

/// `time` as UTC `YYYY-MM-DD HH:MM:SS.mmm`.
pub fn format_time(time: SystemTime) -> String {
    // RFC 3339 with milliseconds, `2026-12-01T13:15:00.123Z`, in the columns' form.
    let mut text = humantime::format_rfc3339_millis(time).to_string();
    text.truncate(23);
    text.replace_range(10..11, " ");
    text
}

/// Milliseconds since the Unix epoch in the same form.
pub fn format_ms(unix_ms: i64) -> String {
    format_time(UNIX_EPOCH + Duration::from_millis(unix_ms.max(0).unsigned_abs()))
}

/// A time of the time columns' form, in milliseconds since the Unix epoch.
pub fn parse_ms(time: &str) -> Option<i64> {
    // The columns' own form is read directly (the cache compares times on every write
    // and change-feed row); anything else goes through the RFC 3339 parser.
    if let Some(ms) = parse_column_ms(time.as_bytes()) {
        return Some(ms);
    }
    let parsed = humantime::parse_rfc3339(&format!("{}Z", time.replacen(' ', "T", 1))).ok()?;
    let since = parsed.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (1970 to 9999, fraction of 0 to 9 digits, read to the
/// millisecond), in milliseconds since the Unix epoch; `None` for any other text.
fn parse_column_ms(text: &[u8]) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = text.get(range)?;
        digits.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if text.len() < 19 || separators.iter().any(|&(at, sep)| text[at] != sep) {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fraction = &text[19..];
    let millis = match fraction {
        [] => 0,
        [b'.', digits @ ..]
            if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            // Read to the millisecond: the first three digits, padded with zeros.
            digits
                .iter()
                .chain(&[b'0'; 3])
                .take(3)
                .fold(0, |ms, &b| ms * 10 + i64::from(b - b'0'))
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from 1970-01-01 to the date (the proleptic Gregorian calendar, in eras of
    // 400 years counted from March).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// `time` minus `by`, in the same form (for the change feed's overlap and retention).
pub fn earlier(time: &str, by: Duration) -> String {
    let parsed =
        humantime::parse_rfc3339(&format!("{}Z", time.replacen(' ', "T", 1))).unwrap_or(UNIX_EPOCH);
    format_time(parsed.checked_sub(by).unwrap_or(UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 3339 parser's reading of a column's time.
    fn parse_ms_slowly(time: &str) -> Option<i64> {
        let parsed = humantime::parse_rfc3339(&format!("{}Z", time.replacen(' ', "T", 1))).ok()?;
        i64::try_from(parsed.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
    }

    #[test]
    fn column_times_are_read_directly_as_the_rfc_3339_parser_reads_them() {
        for time in [
            "1970-01-01 00:00:00.000",
            "1970-01-01 00:00:00",
            "2000-02-29 23:59:59.999",
            "2024-02-29 12:00:00.5",
            "2026-12-01 13:15:00.123456",
            "2100-03-01 00:00:00.001",
            "9999-12-31 23:59:59.999",
        ] {
            assert_eq!(
                parse_column_ms(time.as_bytes()),
                parse_ms_slowly(time),
                "{time}"
            );
            assert!(parse_column_ms(time.as_bytes()).is_some(), "{time}");
        }
        for bad in [
            "2026-13-01 00:00:00.000",
            "2026-02-29 00:00:00.000",
            "2100-02-29 00:00:00.000",
            "2026-12-01T13:15:00.123",
            "2026-12-01 24:00:00.000",
            "2026-12-01 13:15:00.",
            "2026-12-01 13:15:00.12a",
            "2026-12-01 13:15:00.1234567890",
            "2026-12-0 13:15:00.000",
            "1969-12-31 23:59:59.999",
            "",
        ] {
            assert_eq!(parse_column_ms(bad.as_bytes()), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_written_time_reads_back_as_written(ms in 0i64..253_402_300_800_000) {
            let text = format_ms(ms);
            proptest::prop_assert_eq!(parse_ms(&text), Some(ms));
            proptest::prop_assert_eq!(parse_ms_slowly(&text), Some(ms));
        }
    }

    #[test]
    fn times_are_utc_text_to_the_millisecond() {
        let time = UNIX_EPOCH + Duration::from_millis(1_764_595_200_123);
        assert_eq!(format_time(time), "2025-12-01 13:20:00.123");
        assert_eq!(
            earlier("2025-12-01 13:20:00.123", Duration::from_secs(5)),
            "2025-12-01 13:19:55.123"
        );
        assert_eq!(parse_ms("2025-12-01 13:20:00.123"), Some(1_764_595_200_123));
        assert_eq!(format_ms(1_764_595_200_123), "2025-12-01 13:20:00.123");
        assert_eq!(parse_ms("not a time"), None);
    }

    #[test]
    fn the_offset_is_measured_from_the_middle_of_the_round_trip() {
        let clock = Clock::default();
        let sent = UNIX_EPOCH + Duration::from_millis(1_000_000);
        let received = sent + Duration::from_millis(10);
        clock.align(1_003_005, sent, received);
        assert_eq!(clock.offset_ms(), 3_000);
        let ahead =
            humantime::parse_rfc3339(&format!("{}Z", clock.now().replacen(' ', "T", 1))).unwrap();
        let behind = SystemTime::now();
        let diff = ahead.duration_since(behind).unwrap_or_default();
        assert!(diff >= Duration::from_millis(2_900), "{diff:?}");
    }
}
