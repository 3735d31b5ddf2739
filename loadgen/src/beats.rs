//! A fleet's heartbeats: instance `k` of `N` beats every ttl from its phase `k × ttl / N`,
//! so the fleet's beats are spread evenly over each ttl (N/ttl a second), and each is
//! due whether or not the ones before it were answered. From a stop time on, a share
//! of the fleet drawn by seed beats no more while the others go on.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::schedule::DueTimes;

/// Mixed into the fleet's seed to draw the instances that stop, so that the draw is
/// not the one that placed the fleet's hosts.
const STOP_SEED_SALT: u64 = 0x0057_0BBE_A75C_0DE5;

/// One heartbeat: instance `instance`'s beat number `round` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub instance: u64,
    pub round: u64,
}

/// When each beat of a fleet is due, the beats numbered in due order.
///
/// Beat `round` of instance `k` is slot `round × N + k`, due at `slot × ttl / N`: while
/// every instance beats, beat `j` is slot `j`. After a stop the stopped instances' slots
/// are skipped, and beat `j` is the next slot of an instance that goes on.
#[derive(Debug, Clone)]
pub struct BeatSchedule {
    instances: u64,
    ttl: Duration,
    stop: Option<Stop>,
}

/// From when some instances beat no more, and which go on.
#[derive(Debug, Clone)]
struct Stop {
    at: Duration,
    /// Slots due before `at`, of every instance: beats `0..slots_before` are those slots.
    slots_before: u64,
    /// The instances that go on beating, in increasing order.
    survivors: Vec<u64>,
    /// Beats of the survivors are numbered `round × survivors + rank`; the number of
    /// their first beat due at or after `at`.
    first_survivor_beat: u64,
}

impl BeatSchedule {
    /// `instances` (at least one) beating every `ttl` (above zero), none stopping.
    pub fn new(instances: u64, ttl: Duration) -> Self {
        debug_assert!(instances > 0 && !ttl.is_zero());
        BeatSchedule {
            instances,
            ttl,
            stop: None,
        }
    }

    /// The same fleet, where the `stopped` instances (increasing, below the fleet's
    /// size) send no beat due at or after `at`.
    pub fn stopping(self, at: Duration, stopped: &[u64]) -> Self {
        debug_assert!(stopped.windows(2).all(|pair| pair[0] < pair[1]));
        debug_assert!(stopped.iter().all(|&instance| instance < self.instances));
        let slots_before = self.slots_before(at);
        let mut skipped = stopped.iter().peekable();
        let survivors: Vec<u64> = (0..self.instances)
            .filter(|instance| skipped.next_if_eq(&instance).is_none())
            .collect();
        let (round, instance) = (slots_before / self.instances, slots_before % self.instances);
        let first_survivor_beat = round * survivors.len() as u64
            + survivors.partition_point(|&survivor| survivor < instance) as u64;
        BeatSchedule {
            stop: Some(Stop {
                at,
                slots_before,
                survivors,
                first_survivor_beat,
            }),
            ..self
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the stopped instances' beats end; `None` when none stops.
    pub fn stop_at(&self) -> Option<Duration> {
        self.stop.as_ref().map(|stop| stop.at)
    }

    /// When instance `instance` first beats, from the start: `instance × ttl / N`.
    #[cfg(test)]
    pub fn phase(&self, instance: u64) -> Duration {
        debug_assert!(instance < self.instances);
        self.slot_offset(instance)
    }

    /// Beat `index`; `None` past the last one, when every instance stops.
    pub fn beat(&self, index: u64) -> Option<Beat> {
        let slot = self.slot(index)?;
        Some(Beat {
            instance: slot % self.instances,
            round: slot / self.instances,
        })
    }

    /// Whether beat `index` is its instance's last before the stop (the next would be
    /// due after it): a stopped instance's last beat.
    pub fn is_last_before_stop(&self, index: u64) -> bool {
        self.stop.as_ref().is_some_and(|stop| {
            index < stop.slots_before && index + self.instances >= stop.slots_before
        })
    }

    /// Beats due strictly before `duration`.
    pub fn count_within(&self, duration: Duration) -> u64 {
        // Beat j is slot j or a later one, so no more are due than slots; due times
        // never decrease, so the first beat due at or after `duration` is bisected.
        let (mut low, mut high) = (0, self.slots_before(duration));
        while low < high {
            let middle = low + (high - low) / 2;
            if self.offset(middle) < duration {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    fn slot(&self, index: u64) -> Option<u64> {
        let Some(stop) = self.stop.as_ref().filter(|stop| index >= stop.slots_before) else {
            return Some(index);
        };
        let survivors = stop.survivors.len() as u64;
        if survivors == 0 {
            return None;
        }
        let beat = stop.first_survivor_beat + (index - stop.slots_before);
        Some(beat / survivors * self.instances + stop.survivors[(beat % survivors) as usize])
    }

    /// When slot `slot` is due: `slot × ttl / N`, to the nanosecond below.
    fn slot_offset(&self, slot: u64) -> Duration {
        let nanos = u128::from(slot) * self.ttl.as_nanos() / u128::from(self.instances);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Slots due strictly before `at`: those with `slot × ttl < at × N`.
    fn slots_before(&self, at: Duration) -> u64 {
        let scaled = at.as_nanos() * u128::from(self.instances);
        u64::try_from(scaled.div_ceil(self.ttl.as_nanos())).unwrap_or(u64::MAX)
    }
}

impl DueTimes for BeatSchedule {
    /// When beat `index` is due; `Duration::MAX` past the last one.
    fn offset(&self, index: u64) -> Duration {
        self.slot(index)
            .map_or(Duration::MAX, |slot| self.slot_offset(slot))
    }
}

/// The instances of a fleet of `count` that stop beating: `share` (0 to 1) of them,
/// rounded, drawn by `seed`, in increasing order. The same seed draws the same ones.
pub fn stopped_instances(count: u64, share: f64, seed: u64) -> Vec<u64> {
    debug_assert!((0.0..=1.0).contains(&share), "share {share}");
    let count = usize::try_from(count).expect("a fleet that fits in memory");
    let amount = ((share * count as f64).round() as usize).min(count);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ STOP_SEED_SALT);
    let mut stopped: Vec<u64> = rand::seq::index::sample(&mut rng, count, amount)
        .into_iter()
        .map(|index| index as u64)
        .collect();
    stopped.sort_unstable();
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Every beat a fleet sends up to `horizon`, in due order, worked out slot by slot.
    fn beats_by_hand(
        instances: u64,
        ttl: Duration,
        stop: Option<(Duration, &[u64])>,
        horizon: Duration,
    ) -> Vec<(Beat, Duration)> {
        let schedule = BeatSchedule::new(instances, ttl);
        (0..)
            .map(|slot| {
                let beat = Beat {
                    instance: slot % instances,
                    round: slot / instances,
                };
                (
                    beat,
                    schedule.phase(beat.instance) + ttl * beat.round as u32,
                )
            })
            .take_while(|(_, due)| *due < horizon)
            .filter(|(beat, due)| match stop {
                Some((at, stopped)) => *due < at || !stopped.contains(&beat.instance),
                None => true,
            })
            .collect()
    }

    #[test]
    fn phases_are_spread_evenly_over_one_ttl() {
        let schedule = BeatSchedule::new(4, Duration::from_secs(1));
        let phases: Vec<_> = (0..4).map(|k| schedule.phase(k)).collect();
        assert_eq!(phases, [0, 250, 500, 750].map(millis));
        let seven = BeatSchedule::new(7, Duration::from_secs(7));
        assert_eq!(seven.phase(3), Duration::from_secs(3));
    }

    #[test]
    fn beat_i_of_instance_k_is_due_at_its_phase_plus_i_ttl() {
        let ttl = Duration::from_secs(5);
        let schedule = BeatSchedule::new(7, ttl);
        let beats: Vec<_> = (0..70)
            .map(|index| {
                let beat = schedule.beat(index).unwrap();
                (beat, schedule.offset(index))
            })
            .collect();
        assert_eq!(beats, beats_by_hand(7, ttl, None, ttl * 10));
        assert_eq!(
            schedule.beat(9),
            Some(Beat {
                instance: 2,
                round: 1
            })
        );
        assert_eq!(schedule.offset(9), schedule.phase(2) + ttl);
        // The fleet as a whole beats at N/ttl: one every ttl/N.
        assert_eq!(
            BeatSchedule::new(4, Duration::from_secs(1)).offset(6),
            millis(1500)
        );
    }

    #[test]
    fn beats_due_within_a_duration_are_n_per_ttl() {
        let schedule = BeatSchedule::new(4, Duration::from_secs(1));
        assert_eq!(schedule.count_within(Duration::ZERO), 0);
        assert_eq!(schedule.count_within(Duration::from_nanos(1)), 1);
        assert_eq!(schedule.count_within(Duration::from_secs(1)), 4);
        assert_eq!(schedule.count_within(millis(1001)), 5);
        assert_eq!(schedule.count_within(Duration::from_secs(30)), 120);
        // 100,000 instances at ttl 5: 20,000 beats a second.
        let large = BeatSchedule::new(100_000, Duration::from_secs(5));
        assert_eq!(large.count_within(Duration::from_secs(30)), 600_000);
        assert_eq!(large.offset(20_000), Duration::from_secs(1));
    }

    #[test]
    fn stopped_instances_send_no_beat_due_after_the_stop() {
        let ttl = Duration::from_secs(1);
        let stopped = [2, 5, 7];
        let at = millis(2500);
        let schedule = BeatSchedule::new(10, ttl).stopping(at, &stopped);
        assert_eq!(schedule.stop_at(), Some(at));
        let horizon = Duration::from_secs(9);
        let expected = beats_by_hand(10, ttl, Some((at, &stopped)), horizon);
        let total = schedule.count_within(horizon);
        assert_eq!(total as usize, expected.len());
        let beats: Vec<_> = (0..total)
            .map(|index| (schedule.beat(index).unwrap(), schedule.offset(index)))
            .collect();
        assert_eq!(beats, expected);
        // 25 slots before the stop, then 7 survivors a round.
        assert_eq!(schedule.count_within(at), 25);
        assert_eq!(
            schedule.beat(25),
            Some(Beat {
                instance: 6,
                round: 2
            })
        );
        assert_eq!(total, 25 + 3 + 6 * 7);

        // A stopped instance's last beat is the one flagged: round 2 of instance 2,
        // round 1 of instances 5 and 7.
        let last: Vec<_> = (0..total)
            .filter(|&index| schedule.is_last_before_stop(index))
            .map(|index| schedule.beat(index).unwrap())
            .filter(|beat| stopped.contains(&beat.instance))
            .map(|beat| (beat.instance, beat.round))
            .collect();
        assert_eq!(last, [(5, 1), (7, 1), (2, 2)]);
        for (instance, round) in last {
            let later = expected
                .iter()
                .any(|(beat, _)| beat.instance == instance && beat.round > round);
            assert!(!later, "instance {instance} beat after round {round}");
        }
    }

    #[test]
    fn a_stop_between_rounds_resumes_with_the_first_survivor() {
        let ttl = Duration::from_secs(2);
        let stopped = [0, 1, 9];
        let at = Duration::from_secs(4);
        let schedule = BeatSchedule::new(10, ttl).stopping(at, &stopped);
        let horizon = Duration::from_secs(11);
        let expected = beats_by_hand(10, ttl, Some((at, &stopped)), horizon);
        let beats: Vec<_> = (0..schedule.count_within(horizon))
            .map(|index| (schedule.beat(index).unwrap(), schedule.offset(index)))
            .collect();
        assert_eq!(beats, expected);
        assert_eq!(
            schedule.beat(20),
            Some(Beat {
                instance: 2,
                round: 2
            })
        );
    }

    #[test]
    fn when_every_instance_stops_the_beats_end_at_the_stop() {
        let schedule =
            BeatSchedule::new(4, Duration::from_secs(1)).stopping(millis(1500), &[0, 1, 2, 3]);
        assert_eq!(schedule.count_within(Duration::from_secs(60)), 6);
        assert_eq!(schedule.beat(6), None);
        assert_eq!(schedule.offset(6), Duration::MAX);
    }

    #[test]
    fn the_stopped_share_is_drawn_by_seed() {
        let stopped = stopped_instances(10_000, 0.1, 1);
        assert_eq!(stopped.len(), 1000);
        assert!(stopped.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(stopped.iter().all(|&index| index < 10_000));
        assert_eq!(stopped, stopped_instances(10_000, 0.1, 1));
        let other = stopped_instances(10_000, 0.1, 2);
        let shared = other.iter().filter(|i| stopped.binary_search(i).is_ok());
        assert!(shared.count() < 200, "another seed draws other instances");
        // Spread over the fleet, so over its services and its phases.
        for tenth in 0..10 {
            let within = stopped
                .iter()
                .filter(|&&index| index / 1000 == tenth)
                .count();
            assert!(
                (50..150).contains(&within),
                "{within} stopped in tenth {tenth}"
            );
        }
        assert_eq!(stopped_instances(10, 0.25, 1).len(), 3, "rounded");
        assert!(stopped_instances(500, 0.0, 1).is_empty());
        assert_eq!(stopped_instances(5, 1.0, 1), [0, 1, 2, 3, 4]);
    }
}
