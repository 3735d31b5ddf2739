//! Admission by waiting time: a request is refused at once when the queue already holds
//! more work than the store workers write within `max_queue_wait` at the rate they are
//! sustaining, so that an accepted request's wait stays bounded when the store slows
//! down, not only the queue's length.
//!
//! The rate is the time a store worker spends on a full batch (from taking it to taking
//! the next, under a backlog: writing, answering, and waiting for a core on a busy
//! machine), averaged over recent batches of at least half `max_batch`: under a
//! backlog every batch is full, so a request that joins the queue is answered after the
//! batches in the workers now and the queue ahead of it: `1 + queued / max_batch /
//! workers` such times. Smaller batches are not measured (a lone request says little
//! about how fast a backlog drains), nor are batches whose writer met an outage. Until a
//! full batch has been measured (a storm that meets a freshly started server), the queue
//! is held to `COLD_ROUNDS` rounds of full batches.
//!
//! The estimate can be overtaken: a store that slows down tenfold within a second leaves
//! what was admitted at the earlier rate waiting longer. So a request that has waited in
//! the queue more than `max_queue_wait` when a store worker takes it is not written but
//! answered 429001 too (it was not processed; its client may retry). Time waiting
//! for an unreachable or stalled store does not count: an outage is ridden through (see
//! `store.outage_wait`). While a writer waits for an unreachable database no request is
//! refused for time, and the queue's length still bounds it; a request that joined the
//! queue before the store came back is not refused for time afterwards either, however
//! long the backlog takes to drain.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::resilient::OutageWatch;

/// Rounds of full batches (`max_batch` per worker) admitted before the store's rate has
/// been measured.
const COLD_ROUNDS: usize = 8;

/// Weight of the newest full batch in the average, as 1/N.
const SMOOTHING: u64 = 8;
/// A batch counts as at most this many times the average: one batch held up by a
/// database that paused and came back says little about its rate.
const MAX_SAMPLE_RATIO: u64 = 2;

/// The admission check of one batch controller, shared by its submitters and workers.
pub struct Admission {
    /// Zero: no refusal by time.
    max_queue_wait: Duration,
    max_batch: usize,
    workers: usize,
    /// Average time of a full batch in a store worker, in nanoseconds; 0 until measured.
    full_batch_nanos: AtomicU64,
    /// When the last write that took longer than `max_queue_wait` (a stalled store)
    /// ended.
    stalled: Mutex<Option<Instant>>,
    /// One per store worker's writer.
    outages: Vec<OutageWatch>,
}

impl Admission {
    pub fn new(max_queue_wait: Duration, max_batch: usize, outages: Vec<OutageWatch>) -> Self {
        debug_assert!(max_batch > 0 && !outages.is_empty());
        Admission {
            max_queue_wait,
            max_batch,
            workers: outages.len(),
            full_batch_nanos: AtomicU64::new(0),
            stalled: Mutex::new(None),
            outages,
        }
    }

    /// Whether a request may join a queue holding `queued` requests.
    pub fn admits(&self, queued: usize) -> bool {
        if self.max_queue_wait.is_zero() || queued < self.max_batch * self.workers {
            return true;
        }
        let refused = match self.estimate(queued) {
            Some(wait) => wait > self.max_queue_wait,
            None => queued >= COLD_ROUNDS * self.max_batch * self.workers,
        };
        !refused || self.store_unreachable()
    }

    /// How long a request joining `queued` others waits for its answer at the measured
    /// rate: the batches in the workers, then the queue; `None` before a full batch was
    /// measured.
    pub fn estimate(&self, queued: usize) -> Option<Duration> {
        let full_batch = self.full_batch_nanos.load(Ordering::Relaxed);
        if full_batch == 0 {
            return None;
        }
        let rounds = 1.0 + queued as f64 / (self.max_batch * self.workers) as f64;
        Some(Duration::from_nanos((rounds * full_batch as f64) as u64))
    }

    /// A store worker spent `took` on a batch of `size` requests; `met_outage` when its
    /// writer waited for the database meanwhile.
    pub fn record(&self, size: usize, took: Duration, met_outage: bool) {
        if met_outage || size == 0 || size * 2 < self.max_batch {
            return;
        }
        let sample = took.as_nanos() as f64 * self.max_batch as f64 / size as f64;
        let sample = (sample as u64).max(1);
        // Workers may race here; a lost sample does not matter to an average.
        let old = self.full_batch_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            let sample = sample.min(old.saturating_mul(MAX_SAMPLE_RATIO));
            old - old / SMOOTHING + sample / SMOOTHING
        };
        self.full_batch_nanos.store(new.max(1), Ordering::Relaxed);
    }

    /// Whether a request taken after waiting `waited` in the queue is too late to be
    /// written: over `max_queue_wait`, unless it joined the queue before the store came
    /// back from being unreachable or stalled (the wait was for the store, and the
    /// backlog it left takes its time to drain).
    pub fn too_late(&self, waited: Duration) -> bool {
        if self.max_queue_wait.is_zero() || waited <= self.max_queue_wait {
            return false;
        }
        if self.store_unreachable() {
            return false;
        }
        let stalled = *self.stalled.lock().expect("stall lock");
        let calm_since = self
            .outages
            .iter()
            .filter_map(OutageWatch::ended)
            .chain(stalled)
            .max();
        calm_since.is_none_or(|since| waited < since.elapsed())
    }

    /// A write took `took`: longer than `max_queue_wait` means the store stalled (a
    /// paused database answers no error), and the wait until now does not count.
    pub fn written(&self, took: Duration) {
        if !self.max_queue_wait.is_zero() && took > self.max_queue_wait {
            *self.stalled.lock().expect("stall lock") = Some(Instant::now());
        }
    }

    fn store_unreachable(&self) -> bool {
        self.outages.iter().any(OutageWatch::waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn admission(max_queue_wait: Duration, workers: usize) -> Admission {
        Admission::new(
            max_queue_wait,
            100,
            (0..workers).map(|_| OutageWatch::default()).collect(),
        )
    }

    #[test]
    fn before_a_full_batch_was_measured_the_queue_is_held_to_a_few_rounds() {
        let a = admission(Duration::from_secs(1), 2);
        assert_eq!(a.estimate(1_000), None);
        assert!(a.admits(1_599), "eight rounds of two batches of 100");
        assert!(!a.admits(1_600));
        // A small batch is not a measure of how fast a backlog drains.
        a.record(10, Duration::from_secs(5), false);
        assert!(!a.admits(1_600));
        // Measured: 100 ms a full batch, 1 s for the queue.
        a.record(100, 100 * MS, false);
        assert!(a.admits(1_800));
    }

    #[test]
    fn the_queue_is_judged_by_full_batches_over_the_workers() {
        let a = admission(Duration::from_secs(1), 2);
        a.record(100, 100 * MS, false);
        // 1,800 queued = 18 batches = 9 rounds of 100 ms on two workers, after the
        // round in the workers now.
        assert_eq!(a.estimate(1_800), Some(Duration::from_secs(1)));
        assert!(a.admits(1_800));
        assert!(!a.admits(1_900));
        // Half a batch in 50 ms counts as a full one in 100 ms.
        let b = admission(Duration::from_secs(1), 1);
        b.record(50, 50 * MS, false);
        assert_eq!(b.estimate(900), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_short_queue_is_always_admitted() {
        let a = admission(MS, 2);
        a.record(100, Duration::from_secs(10), false);
        assert!(a.admits(199), "less than one round of full batches");
        assert!(!a.admits(200));
    }

    #[test]
    fn the_average_follows_the_store_as_it_slows_down() {
        let a = admission(Duration::from_secs(1), 1);
        a.record(100, 10 * MS, false);
        assert!(a.admits(5_000), "51 batches of 10 ms");
        for _ in 0..80 {
            a.record(100, 100 * MS, false);
        }
        assert!(!a.admits(5_000), "51 batches of ~100 ms");
        let estimate = a.estimate(0).unwrap();
        assert!(estimate > 95 * MS && estimate <= 100 * MS, "{estimate:?}");
    }

    #[test]
    fn a_batch_held_up_for_seconds_counts_as_twice_the_average() {
        let a = admission(Duration::from_secs(1), 1);
        a.record(100, 80 * MS, false);
        a.record(100, 160 * MS, false);
        assert_eq!(a.estimate(0), Some(90 * MS), "an eighth of the way up");
        a.record(100, Duration::from_secs(4), false);
        let estimate = a.estimate(0).unwrap();
        assert!(estimate > 100 * MS && estimate < 105 * MS, "{estimate:?}");
    }

    #[test]
    fn batches_that_met_an_outage_are_not_measured() {
        let a = admission(Duration::from_secs(1), 1);
        a.record(100, 10 * MS, false);
        a.record(100, Duration::from_secs(8), true);
        assert_eq!(a.estimate(0), Some(10 * MS));
    }

    #[test]
    fn nothing_is_refused_for_time_while_the_store_is_unreachable() {
        let a = admission(Duration::from_secs(1), 2);
        a.record(100, Duration::from_secs(1), false);
        assert!(!a.admits(10_000));
        a.outages[1].set_waiting(true);
        assert!(a.admits(10_000), "the outage is ridden through");
        a.outages[1].set_waiting(false);
        assert!(!a.admits(10_000));
    }

    #[test]
    fn a_request_waiting_over_max_queue_wait_is_too_late() {
        let a = admission(Duration::from_secs(1), 1);
        assert!(!a.too_late(Duration::from_millis(999)));
        assert!(a.too_late(Duration::from_millis(1_001)));
        // A wait for an unreachable store does not count, nor one for a stalled store.
        a.outages[0].set_waiting(true);
        assert!(!a.too_late(Duration::from_secs(5)), "during the outage");
        a.outages[0].set_waiting(false);
        assert!(!a.too_late(Duration::from_secs(5)), "just after it");
        let b = admission(Duration::from_secs(1), 1);
        b.written(Duration::from_secs(4));
        assert!(
            !b.too_late(Duration::from_secs(5)),
            "just after a stalled write"
        );
        b.written(Duration::from_millis(10));
        assert!(
            !b.too_late(Duration::from_secs(5)),
            "a fast write is no new stall"
        );
        // The backlog a stall left takes 1.5 s to drain: what joined the queue before
        // the store came back is written; what joined after waits its 1 s at most.
        let c = admission(Duration::from_secs(1), 1);
        *c.stalled.lock().unwrap() = Some(Instant::now() - Duration::from_millis(1_500));
        assert!(
            !c.too_late(Duration::from_secs(5)),
            "queued during the stall"
        );
        assert!(c.too_late(Duration::from_millis(1_200)), "queued after it");
        assert!(!admission(Duration::ZERO, 1).too_late(Duration::from_secs(60)));
    }

    #[test]
    fn zero_max_queue_wait_turns_the_check_off() {
        let a = admission(Duration::ZERO, 1);
        a.record(100, Duration::from_secs(10), false);
        assert!(a.admits(1_000_000));
    }
}
