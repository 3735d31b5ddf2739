//! When requests are due: the open-loop schedule (a constant rate after a linear
//! ramp) and, for closed loops with a ramp, when each worker joins.

use std::time::Duration;

/// When each request of an open-loop run is due, as an offset from its start: never
/// earlier for a later index. [`Schedule`] is one; a fleet's beats
/// ([`crate::beats::BeatSchedule`]) are another.
pub trait DueTimes: std::fmt::Debug + Send + Sync + 'static {
    fn offset(&self, index: u64) -> Duration;
}

/// Intended start times of an open-loop run, as offsets from its start: the rate
/// grows linearly from 0 to `rate` over `ramp`, then stays at `rate`.
///
/// Request `i` is due when the integral of the rate reaches `i`, so request 0 is due
/// at once and, without a ramp, request `i` at `i / rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    ramp: Duration,
}

impl Schedule {
    /// `rate` in requests per second; finite and positive (the option parser checks).
    pub fn new(rate: f64, ramp: Duration) -> Self {
        debug_assert!(rate.is_finite() && rate > 0.0, "rate {rate}");
        Schedule { rate, ramp }
    }

    /// The steady rate, reached at the end of the ramp.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Requests due by `elapsed` seconds: the integral of the rate from 0.
    fn due_by(&self, elapsed: f64) -> f64 {
        if elapsed <= 0.0 {
            return 0.0;
        }
        let ramp = self.ramp.as_secs_f64();
        if elapsed <= ramp {
            self.rate * elapsed * elapsed / (2.0 * ramp)
        } else {
            self.rate * (ramp / 2.0 + (elapsed - ramp))
        }
    }

    /// When request `index` is due, from the start: the inverse of [`Self::due_by`].
    pub fn offset(&self, index: u64) -> Duration {
        let ramp = self.ramp.as_secs_f64();
        let index = index as f64;
        let ramp_requests = self.rate * ramp / 2.0;
        let seconds = if index < ramp_requests {
            (2.0 * index * ramp / self.rate).sqrt()
        } else {
            ramp + (index - ramp_requests) / self.rate
        };
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
    }

    /// Requests due strictly before `duration`: `rate × duration` without a ramp.
    pub fn count_within(&self, duration: Duration) -> u64 {
        // The integral gives the count up to float rounding; settle it against
        // `offset` itself so the count and the due times always agree.
        let mut count = self.due_by(duration.as_secs_f64()).ceil() as u64;
        while count > 0 && self.offset(count - 1) >= duration {
            count -= 1;
        }
        while self.offset(count) < duration {
            count += 1;
        }
        count
    }
}

impl DueTimes for Schedule {
    fn offset(&self, index: u64) -> Duration {
        Schedule::offset(self, index)
    }
}

/// When worker `worker` (0-based) of a closed loop joins, from the start, so that the
/// allowed in-flight grows linearly from 1 to `workers` over `ramp`: worker `k`
/// joins at `ramp × k / (workers − 1)`, the last one at the end of the ramp.
pub fn worker_join_offset(worker: u32, workers: u32, ramp: Duration) -> Duration {
    debug_assert!(worker < workers.max(1));
    if workers <= 1 {
        return Duration::ZERO;
    }
    let nanos = ramp.as_nanos() * u128::from(worker) / u128::from(workers - 1);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Offsets compared at microsecond precision (float square roots in the ramp).
    fn micros(offset: Duration) -> u128 {
        (offset.as_nanos() + 500) / 1000
    }

    #[test]
    fn without_a_ramp_request_i_is_due_at_i_over_rate() {
        let schedule = Schedule::new(200.0, Duration::ZERO);
        let offsets: Vec<_> = (0..4).map(|i| schedule.offset(i)).collect();
        assert_eq!(offsets, [millis(0), millis(5), millis(10), millis(15)]);
        assert_eq!(schedule.offset(2000), Duration::from_secs(10));
        let fractional = Schedule::new(0.5, Duration::ZERO);
        assert_eq!(fractional.offset(3), Duration::from_secs(6));
    }

    #[test]
    fn due_times_never_go_backwards() {
        let schedule = Schedule::new(1000.0, Duration::from_secs(3));
        let offsets: Vec<_> = (0..10_000).map(|i| schedule.offset(i)).collect();
        assert!(offsets.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn ramp_grows_the_rate_linearly_then_holds_it() {
        // 100/s after a 2 s ramp: 100 requests fall in the ramp, due at 0.2 × √i s.
        let schedule = Schedule::new(100.0, Duration::from_secs(2));
        assert_eq!(schedule.offset(0), Duration::ZERO);
        assert_eq!(micros(schedule.offset(1)), 200_000);
        assert_eq!(micros(schedule.offset(25)), 1_000_000);
        assert_eq!(micros(schedule.offset(100)), 2_000_000);
        assert_eq!(micros(schedule.offset(101)), 2_010_000);
        assert_eq!(micros(schedule.offset(150)), 2_500_000);

        // Requests per 500 ms window: the rate 100/s × t/2s integrated over each window
        // grows by the same 12.5 in every window of the ramp, then holds at 50; the
        // whole requests due in a window are that, give or take one.
        let ideal: Vec<_> = (0..6)
            .map(|w| schedule.due_by(0.5 * (w + 1) as f64) - schedule.due_by(0.5 * w as f64))
            .collect();
        assert_eq!(ideal, [6.25, 18.75, 31.25, 43.75, 50.0, 50.0]);
        let per_window: Vec<_> = (0..6)
            .map(|window| {
                let from = Duration::from_millis(500 * window);
                let to = Duration::from_millis(500 * (window + 1));
                schedule.count_within(to) - schedule.count_within(from)
            })
            .collect();
        assert_eq!(per_window, [7, 18, 32, 43, 50, 50]);
        for (whole, exact) in per_window.iter().zip(&ideal) {
            assert!((*whole as f64 - exact).abs() < 1.0, "{per_window:?}");
        }
    }

    #[test]
    fn the_rate_at_time_t_is_proportional_to_t_during_the_ramp() {
        let schedule = Schedule::new(1000.0, Duration::from_secs(10));
        for t in [1.0, 2.5, 5.0, 9.0] {
            // Local rate from the spacing of requests due around t.
            let index = schedule.due_by(t) as u64;
            let spacing = schedule.offset(index + 1) - schedule.offset(index);
            let rate = 1.0 / spacing.as_secs_f64();
            let expected = 1000.0 * t / 10.0;
            assert!((rate - expected).abs() / expected < 0.01, "{t}: {rate}");
        }
    }

    #[test]
    fn count_within_a_duration_is_rate_times_duration_without_a_ramp() {
        let schedule = Schedule::new(200.0, Duration::ZERO);
        assert_eq!(schedule.count_within(Duration::from_secs(10)), 2000);
        assert_eq!(schedule.count_within(Duration::ZERO), 0);
        assert_eq!(schedule.count_within(Duration::from_nanos(1)), 1);
        assert_eq!(schedule.count_within(millis(5)), 1);
        assert_eq!(schedule.count_within(millis(6)), 2);
        // Rates whose period is not exact in binary floating point.
        let third = Schedule::new(3.0, Duration::ZERO);
        assert_eq!(third.count_within(Duration::from_secs(7)), 21);
        let odd = Schedule::new(7919.0, Duration::ZERO);
        assert_eq!(odd.count_within(Duration::from_secs(13)), 7919 * 13);
    }

    #[test]
    fn count_within_counts_the_ramp_at_half_rate() {
        let schedule = Schedule::new(100.0, Duration::from_secs(2));
        assert_eq!(schedule.count_within(Duration::from_secs(2)), 100);
        assert_eq!(schedule.count_within(Duration::from_secs(12)), 1100);
        assert_eq!(schedule.count_within(Duration::from_secs(1)), 25);
        for count in [1, 7, 99, 100, 101, 1234] {
            let last = schedule.offset(count - 1);
            assert_eq!(schedule.count_within(last + Duration::from_nanos(1)), count);
            assert_eq!(schedule.count_within(last), count - 1);
        }
    }

    #[test]
    fn closed_loop_workers_join_linearly_over_the_ramp() {
        let ramp = Duration::from_secs(4);
        let joins: Vec<_> = (0..5).map(|k| worker_join_offset(k, 5, ramp)).collect();
        assert_eq!(
            joins,
            [0, 1, 2, 3, 4].map(Duration::from_secs),
            "1 allowed at the start, all 5 at the end"
        );
        assert_eq!(worker_join_offset(0, 1, ramp), Duration::ZERO);
        assert_eq!(worker_join_offset(3, 4, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            worker_join_offset(1, 3, Duration::from_millis(1)),
            Duration::from_micros(500)
        );
    }
}
