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
    let parsed = humantime::parse_rfc3339(&format!("{}Z", time.replacen(' ', "T", 1))).ok()?;
    let since = parsed.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
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
