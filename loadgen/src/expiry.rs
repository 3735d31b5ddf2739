//! The expiry check of a heartbeat run, without I/O. The beats log when the run's first
//! beat was sent, when every instance's first beat was answered, when each stopping
//! instance sent its last beat, and when its last answered beat was sent and answered;
//! the Discover watch reports every fleet instance it sees listed unhealthy, and
//! [`ExpiryCheck`] tells the expiries it waits for from wrong ones.
//!
//! A stopped instance's expiry counts from its last beat the server took: the last one
//! answered ExecuteSuccess (an unanswered one may never have arrived), taken at some
//! moment between its send and its answer. Its delay is reported from both ends: from
//! the send (the delay is at most that, so the 16 s bound is judged on it) and from the
//! answer (at least that, up to the watch's own lag).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::report::{DelaySummary, ExpiryFigures};

/// Listings are judged from this long after every instance's first beat was answered:
/// by then a server (checking at least every second) has marked healthy again the
/// instances that had expired before the run, as those of a fleet registered long ago.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Beats an instance misses before it expires: a server lists it unhealthy no sooner
/// than this many ttls after its last beat.
pub const MISSED_BEATS: u32 = 3;

/// A server counts beats in milliseconds of a clock that may be slewed: an expiry less
/// than this before [`MISSED_BEATS`] ttls is not counted early.
const EARLY_MARGIN: Duration = Duration::from_millis(50);

/// Send times the beats record and the watch reads, without locks.
#[derive(Debug)]
pub struct BeatLog {
    epoch: Instant,
    /// When the run's first beat was sent, in µs after `epoch` plus one; 0 before.
    first_sent: AtomicU64,
    /// Beats of the first round (`0..first_round`: each instance's first).
    first_round: u64,
    /// First-round beats answered, or failed, so far.
    first_round_done: AtomicU64,
    /// When the last of them was, as `first_sent`.
    first_round_ended: AtomicU64,
    /// The instances that stop beating, in increasing order.
    stopped: Vec<u64>,
    /// When each of `stopped` sent its last beat, as `first_sent`.
    last_sent: Vec<AtomicU64>,
    /// Each of `stopped`'s last beat answered ExecuteSuccess so far.
    last_answered: Mutex<Vec<Option<AnsweredBeat>>>,
}

/// A beat the server took, between these two times (after the log's epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredBeat {
    pub sent: Duration,
    pub answered: Duration,
}

impl BeatLog {
    /// A log for a run whose beats `0..first_round` are each instance's first, and
    /// whose `stopped` instances (increasing) stop beating.
    pub fn new(first_round: u64, stopped: Vec<u64>) -> Self {
        debug_assert!(stopped.windows(2).all(|pair| pair[0] < pair[1]));
        BeatLog {
            epoch: Instant::now(),
            first_sent: AtomicU64::new(0),
            first_round,
            first_round_done: AtomicU64::new(0),
            first_round_ended: AtomicU64::new(0),
            last_sent: stopped.iter().map(|_| AtomicU64::new(0)).collect(),
            last_answered: Mutex::new(vec![None; stopped.len()]),
            stopped,
        }
    }

    /// Time since the log was made: the clock of every time it holds.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Records a beat of `instance` sent now: the run's beat `index`, its instance's
    /// last before the stop or not.
    pub fn sent(&self, index: u64, instance: u64, last_before_stop: bool) {
        if index == 0 {
            store_time(&self.first_sent, self.now());
        }
        if last_before_stop && let Some(rank) = self.stopped_rank(instance) {
            store_time(&self.last_sent[rank], self.now());
        }
    }

    /// Where a beat of `instance` is logged once answered: `Some` for an instance that
    /// stops.
    pub fn stopping(&self, instance: u64) -> Option<usize> {
        self.stopped_rank(instance)
    }

    /// Records that beat `beat` of the stopping instance of rank `rank` (from
    /// [`Self::stopping`]) was answered ExecuteSuccess: it is its last one the server
    /// took unless a later-sent one is.
    pub fn answered(&self, rank: usize, beat: AnsweredBeat) {
        let mut last = self
            .last_answered
            .lock()
            .expect("no beat panicked holding it");
        if last[rank].is_none_or(|known| known.sent <= beat.sent) {
            last[rank] = Some(beat);
        }
    }

    fn last_answered(&self, rank: usize) -> Option<AnsweredBeat> {
        self.last_answered
            .lock()
            .expect("no beat panicked holding it")[rank]
    }

    /// For a beat of the first round, a guard that counts it done when dropped: once
    /// answered, or given up.
    pub fn first_round_beat(self: &Arc<Self>, index: u64) -> Option<FirstRoundBeat> {
        (index < self.first_round).then(|| FirstRoundBeat(Arc::clone(self)))
    }

    fn first_sent(&self) -> Option<Duration> {
        load_time(&self.first_sent)
    }

    /// When the last first-round beat was answered or given up; `None` before.
    fn first_round_ended(&self) -> Option<Duration> {
        load_time(&self.first_round_ended)
    }

    fn last_sent(&self, rank: usize) -> Option<Duration> {
        load_time(&self.last_sent[rank])
    }

    fn stopped_rank(&self, instance: u64) -> Option<usize> {
        self.stopped.binary_search(&instance).ok()
    }
}

/// Counts a first-round beat done when dropped; see [`BeatLog::first_round_beat`].
pub struct FirstRoundBeat(Arc<BeatLog>);

impl Drop for FirstRoundBeat {
    fn drop(&mut self) {
        let log = &self.0;
        if log.first_round_done.fetch_add(1, Ordering::AcqRel) + 1 == log.first_round {
            store_time(&log.first_round_ended, log.now());
        }
    }
}

/// Stores `time` (after the epoch) in µs plus one, so that 0 means none.
fn store_time(slot: &AtomicU64, time: Duration) {
    let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX - 1);
    slot.store(micros + 1, Ordering::Release);
}

fn load_time(slot: &AtomicU64) -> Option<Duration> {
    match slot.load(Ordering::Acquire) {
        0 => None,
        micros => Some(Duration::from_micros(micros - 1)),
    }
}

/// What the watch has seen so far of the stopped instances and of the others.
#[derive(Debug)]
pub struct ExpiryCheck {
    ttl: Duration,
    /// From the first beat to the stop.
    stop_after: Duration,
    /// From the stop to the end of the wait for the stopped instances to turn unhealthy.
    timeout: Duration,
    /// From each stopped instance's last beat the server took to the first listing of
    /// it unhealthy: from the beat's send, and from its answer.
    delays: Vec<Option<(Duration, Duration)>>,
    /// Instances listed unhealthy while they were still beating.
    wrongly_expired: BTreeSet<u64>,
}

impl ExpiryCheck {
    /// A check of a fleet beating every `ttl`, whose stopping instances (those of the
    /// log) stop `stop_after` after the first beat and must be listed unhealthy within
    /// `timeout` of the stop.
    pub fn new(log: &BeatLog, ttl: Duration, stop_after: Duration, timeout: Duration) -> Self {
        ExpiryCheck {
            ttl,
            stop_after,
            timeout,
            delays: vec![None; log.stopped.len()],
            wrongly_expired: BTreeSet::new(),
        }
    }

    /// Takes in that an answer received at `seen` (on the log's clock) listed fleet
    /// instance `instance` unhealthy.
    pub fn listed_unhealthy(&mut self, log: &BeatLog, instance: u64, seen: Duration) {
        let (Some(first), Some(settled)) = (log.first_sent(), log.first_round_ended()) else {
            return;
        };
        if seen < settled + SETTLE {
            return;
        }
        let Some(rank) = log.stopped_rank(instance) else {
            self.wrongly_expired.insert(instance);
            return;
        };
        match log.last_sent(rank) {
            Some(last) if last <= seen => {
                let in_time = seen <= first + self.stop_after + self.timeout;
                if in_time && self.delays[rank].is_none() {
                    // Without an answered beat (all failed), the last one sent.
                    let beat = log.last_answered(rank).unwrap_or(AnsweredBeat {
                        sent: last,
                        answered: last,
                    });
                    self.delays[rank] = Some((
                        seen.saturating_sub(beat.sent),
                        seen.saturating_sub(beat.answered),
                    ));
                }
            }
            // Its beats have not stopped yet.
            _ => {
                self.wrongly_expired.insert(instance);
            }
        }
    }

    /// Instances listed unhealthy while they were still beating.
    pub fn wrongly_expired(&self) -> u64 {
        self.wrongly_expired.len() as u64
    }

    /// What became of the stopped instances; `stop_share` as asked.
    pub fn figures(&self, stop_share: f64) -> ExpiryFigures {
        let mut delays: Vec<Duration> = self.delays.iter().flatten().map(|d| d.0).collect();
        delays.sort_unstable();
        let mut from_answer: Vec<Duration> = self.delays.iter().flatten().map(|d| d.1).collect();
        from_answer.sort_unstable();
        let stopped = self.delays.len() as u64;
        let turned_unhealthy = delays.len() as u64;
        let early_below = (self.ttl * MISSED_BEATS).saturating_sub(EARLY_MARGIN);
        ExpiryFigures {
            stop_share,
            stopped,
            stop_after_s: self.stop_after.as_secs_f64(),
            expiry_timeout_s: self.timeout.as_secs_f64(),
            turned_unhealthy,
            still_healthy: stopped - turned_unhealthy,
            early: delays.iter().filter(|&&delay| delay < early_below).count() as u64,
            delay_ms: DelaySummary::from_sorted(&delays),
            delay_from_answer_ms: DelaySummary::from_sorted(&from_answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(1);
    const STOP_AFTER: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn secs(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }

    /// A log of instances 3 and 7 stopping, the first beat at `first`, the first round
    /// answered by `settled`, instance 3's last beat at `last_of_3`, instance 7's never
    /// logged; times set by hand.
    fn log(first: Duration, settled: Duration, last_of_3: Duration) -> BeatLog {
        let log = BeatLog::new(10, vec![3, 7]);
        store_time(&log.first_sent, first);
        store_time(&log.first_round_ended, settled);
        store_time(&log.last_sent[0], last_of_3);
        log
    }

    #[test]
    fn the_log_keeps_the_first_beat_and_the_stopped_ones_last() {
        let log = BeatLog::new(10, vec![3, 7]);
        assert_eq!((log.first_sent(), log.last_sent(0)), (None, None));
        log.sent(0, 0, false);
        log.sent(1, 3, false);
        assert!(log.first_sent().is_some());
        assert_eq!(log.last_sent(0), None, "not its last beat");
        log.sent(2, 3, true);
        log.sent(3, 4, true);
        assert!(log.last_sent(0).is_some());
        assert_eq!(log.last_sent(1), None);
        assert_eq!(log.stopped_rank(4), None);
        assert_eq!(log.stopped_rank(7), Some(1));
    }

    #[test]
    fn the_first_round_ends_when_its_last_beat_is_answered_or_given_up() {
        let log = Arc::new(BeatLog::new(3, vec![]));
        let guards: Vec<_> = (0..5).map(|index| log.first_round_beat(index)).collect();
        assert_eq!(guards.iter().filter(|guard| guard.is_some()).count(), 3);
        let mut guards = guards.into_iter().flatten();
        drop(guards.next());
        drop(guards.next());
        assert_eq!(log.first_round_ended(), None);
        drop(guards.next());
        assert!(log.first_round_ended().is_some());
    }

    #[test]
    fn a_stopped_instance_counts_from_its_last_beat_to_its_first_unhealthy_listing() {
        let log = log(secs(0.0), secs(0.9), secs(0.6));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&log, 3, secs(3.7));
        check.listed_unhealthy(&log, 3, secs(3.8));
        let figures = check.figures(0.5);
        assert_eq!((figures.stopped, figures.turned_unhealthy), (2, 1));
        assert_eq!((figures.still_healthy, figures.early), (1, 0));
        let delay = figures.delay_ms.unwrap();
        assert!((delay.min - 3100.0).abs() < 1e-6 && (delay.max - 3100.0).abs() < 1e-6);
        // No answer logged: counted from the send at both ends.
        assert_eq!(figures.delay_from_answer_ms, Some(delay));
        assert_eq!(check.wrongly_expired(), 0);
        assert_eq!(figures.stop_share, 0.5);
        assert_eq!((figures.stop_after_s, figures.expiry_timeout_s), (1.0, 5.0));
    }

    #[test]
    fn the_delay_counts_from_the_last_answered_beat_at_both_ends() {
        let log = log(secs(0.0), secs(0.9), secs(0.6));
        let rank = log.stopping(3).unwrap();
        assert_eq!(log.stopping(5), None);
        // The beat sent at 0.6 s failed; the one before was sent at 0.1 s and
        // answered at 0.125 s. A late answer of an older beat changes nothing.
        let taken = AnsweredBeat {
            sent: secs(0.1),
            answered: secs(0.125),
        };
        log.answered(rank, taken);
        log.answered(
            rank,
            AnsweredBeat {
                sent: secs(0.0),
                answered: secs(0.5),
            },
        );
        assert_eq!(log.last_answered(rank), Some(taken));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&log, 3, secs(3.2));
        let figures = check.figures(0.5);
        let (from_send, from_answer) = (
            figures.delay_ms.unwrap(),
            figures.delay_from_answer_ms.unwrap(),
        );
        assert!((from_send.max - 3100.0).abs() < 1e-6, "{from_send:?}");
        assert!((from_answer.max - 3075.0).abs() < 1e-6, "{from_answer:?}");
        assert_eq!(figures.early, 0);
    }

    #[test]
    fn a_listing_past_the_timeout_leaves_the_instance_still_healthy() {
        let log = log(secs(0.0), secs(0.9), secs(0.6));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&log, 3, secs(6.5));
        let figures = check.figures(0.5);
        assert_eq!((figures.turned_unhealthy, figures.still_healthy), (0, 2));
        assert_eq!(figures.delay_ms, None);
    }

    #[test]
    fn an_instance_unhealthy_while_it_beats_is_wrongly_expired() {
        let log = log(secs(0.0), secs(0.9), secs(0.6));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        // Instance 5 never stops; instance 7's last beat is not sent yet.
        check.listed_unhealthy(&log, 5, secs(3.5));
        check.listed_unhealthy(&log, 5, secs(4.5));
        check.listed_unhealthy(&log, 7, secs(3.5));
        assert_eq!(check.wrongly_expired(), 2);
        assert_eq!(check.figures(0.5).turned_unhealthy, 0);
    }

    #[test]
    fn listings_before_the_fleet_has_settled_are_not_judged() {
        // The fleet may have expired before the run: its first beats make it healthy,
        // once answered (late ones here, at 1.5 s).
        let log = log(secs(0.0), secs(1.5), secs(0.6));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&log, 5, secs(3.4));
        check.listed_unhealthy(&log, 3, secs(3.4));
        assert_eq!(check.wrongly_expired(), 0);
        assert_eq!(check.figures(0.5).turned_unhealthy, 0);
        check.listed_unhealthy(&log, 5, secs(3.6));
        assert_eq!(check.wrongly_expired(), 1);
        let unstarted = BeatLog::new(10, vec![3]);
        let mut check = ExpiryCheck::new(&unstarted, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&unstarted, 5, secs(100.0));
        assert_eq!(check.wrongly_expired(), 0);
    }

    #[test]
    fn an_expiry_sooner_than_three_ttls_is_early() {
        let log = log(secs(0.0), secs(0.9), secs(0.6));
        let mut check = ExpiryCheck::new(&log, TTL, STOP_AFTER, TIMEOUT);
        check.listed_unhealthy(&log, 3, secs(3.5));
        let figures = check.figures(0.5);
        assert_eq!((figures.turned_unhealthy, figures.early), (1, 1));
    }
}
