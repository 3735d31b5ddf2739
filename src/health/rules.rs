//! The expiry rules, without I/O: times are passed in (milliseconds on the store's
//! clock), so tests drive them.
//!
//! An instance with a heartbeat health check of `ttl` seconds expires `3 × ttl` after its
//! last beat (its registration counts as a first beat). Nothing is declared expired until
//! one full window (`3 × ttl`) has passed since the checker could last trust the beat
//! table: since the server started, and since the beat table came back after being
//! unreachable. So a registry restart, or an outage of Redis, never marks a live fleet
//! unhealthy.

/// Beats missed before an instance expires.
pub const MISSED_BEATS: i64 = 3;

/// Heartbeats an unknown instance gets answered 200000 before 400202 (its registration
/// may still be in flight): the fifth is refused.
pub const UNKNOWN_BEATS_ALLOWED: u64 = 4;

/// One instance's expiry window, in milliseconds.
pub fn window_ms(ttl_seconds: u32) -> i64 {
    MISSED_BEATS * i64::from(ttl_seconds) * 1_000
}

/// When an instance beating at `beat_ms` expires.
pub fn expiry_after(beat_ms: i64, ttl_seconds: u32) -> i64 {
    beat_ms + window_ms(ttl_seconds)
}

/// What the checker does with one health-checked instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Stays,
    /// Its beats stopped: mark it unhealthy.
    TurnsUnhealthy,
    /// It beats again: mark it healthy.
    TurnsHealthy,
}

/// The verdict for an instance that is `healthy` now, whose beats run out at `expiry_ms`
/// (`None`: the table has no beat of it), given that the table can be trusted since
/// `trusted_since_ms`.
pub fn verdict(
    healthy: bool,
    expiry_ms: Option<i64>,
    ttl_seconds: u32,
    now_ms: i64,
    trusted_since_ms: i64,
) -> Verdict {
    let expired = expiry_ms.is_none_or(|expiry| now_ms >= expiry);
    let full_window_trusted = now_ms >= trusted_since_ms + window_ms(ttl_seconds);
    match (healthy, expired) {
        (true, true) if full_window_trusted => Verdict::TurnsUnhealthy,
        (false, false) => Verdict::TurnsHealthy,
        _ => Verdict::Stays,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u32 = 5;
    const START: i64 = 1_000_000;

    #[test]
    fn an_instance_expires_three_ttls_after_its_last_beat() {
        let beat = START + 60_000;
        let expiry = expiry_after(beat, TTL);
        assert_eq!(expiry, beat + 15_000);
        assert_eq!(
            verdict(true, Some(expiry), TTL, expiry - 1, START),
            Verdict::Stays
        );
        assert_eq!(
            verdict(true, Some(expiry), TTL, expiry, START),
            Verdict::TurnsUnhealthy
        );
        // Already unhealthy, still silent: nothing more to write.
        assert_eq!(
            verdict(false, Some(expiry), TTL, expiry + 5_000, START),
            Verdict::Stays
        );
    }

    #[test]
    fn a_beat_brings_an_unhealthy_instance_back() {
        let now = START + 120_000;
        let beat = now - 10;
        assert_eq!(
            verdict(false, Some(expiry_after(beat, TTL)), TTL, now, START),
            Verdict::TurnsHealthy
        );
        assert_eq!(
            verdict(true, Some(expiry_after(beat, TTL)), TTL, now, START),
            Verdict::Stays
        );
    }

    #[test]
    fn nothing_expires_within_a_full_window_of_the_start() {
        // No beat recorded at all (the table is new, the fleet has not beaten yet).
        assert_eq!(
            verdict(true, None, TTL, START + 14_999, START),
            Verdict::Stays
        );
        assert_eq!(
            verdict(true, None, TTL, START + 15_000, START),
            Verdict::TurnsUnhealthy
        );
        // A stale beat from before the start counts as nothing until the window passed.
        let stale = expiry_after(START - 60_000, TTL);
        assert_eq!(
            verdict(true, Some(stale), TTL, START + 1_000, START),
            Verdict::Stays
        );
    }

    #[test]
    fn nothing_expires_within_a_full_window_of_the_table_coming_back() {
        let back = START + 300_000;
        let silent_during_outage = expiry_after(START + 200_000, TTL);
        assert_eq!(
            verdict(true, Some(silent_during_outage), TTL, back + 14_000, back),
            Verdict::Stays
        );
        assert_eq!(
            verdict(true, Some(silent_during_outage), TTL, back + 15_000, back),
            Verdict::TurnsUnhealthy
        );
    }

    #[test]
    fn windows_follow_the_ttl() {
        assert_eq!(window_ms(1), 3_000);
        assert_eq!(window_ms(60), 180_000);
        let beat = START + 500_000;
        assert_eq!(
            verdict(true, Some(expiry_after(beat, 1)), 1, beat + 3_000, START),
            Verdict::TurnsUnhealthy
        );
        assert_eq!(
            verdict(
                true,
                Some(expiry_after(beat, 60)),
                60,
                beat + 179_999,
                START
            ),
            Verdict::Stays
        );
    }
}
