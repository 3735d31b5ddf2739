//! The heartbeat section of a report: the beating fleet, the Discover watch over its
//! services, and what became of the instances that stopped beating.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::{Expectation, Tally, labelled};

/// What a heartbeat run saw besides the beats' answers.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatFigures {
    pub instances: u64,
    pub ttl_s: u32,
    /// How long registering the fleet took, with `--register`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_s: Option<f64>,
    /// Instances listed unhealthy while they were still beating.
    pub wrongly_expired: u64,
    /// Only with `--stop-share`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<ExpiryFigures>,
    pub watch: WatchFigures,
}

/// What became of the instances that stopped beating.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExpiryFigures {
    pub stop_share: f64,
    pub stopped: u64,
    /// From the first beat to the stop.
    pub stop_after_s: f64,
    /// From the stop to the end of the wait for them to be listed unhealthy.
    pub expiry_timeout_s: f64,
    /// Listed unhealthy before the timeout.
    pub turned_unhealthy: u64,
    /// Not listed unhealthy before the timeout.
    pub still_healthy: u64,
    /// Listed unhealthy less than three ttls after their last beat.
    pub early: u64,
    /// From the send of each one's last beat the server took (its last answered
    /// ExecuteSuccess) to the first answer listing it unhealthy: at least the true
    /// delay; absent when none turned unhealthy.
    pub delay_ms: Option<DelaySummary>,
    /// The same from that beat's answer: at most the true delay plus the watch's lag.
    pub delay_from_answer_ms: Option<DelaySummary>,
}

/// Exact percentiles of a few delays, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DelaySummary {
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl DelaySummary {
    /// Nearest-rank percentiles of `delays`, sorted in increasing order; `None` when empty.
    pub fn from_sorted(delays: &[Duration]) -> Option<Self> {
        debug_assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
        let (first, last) = (delays.first()?, delays.last()?);
        let at = |quantile: f64| {
            let rank = (quantile * delays.len() as f64).ceil() as usize;
            millis(delays[rank.clamp(1, delays.len()) - 1])
        };
        Some(DelaySummary {
            min: millis(*first),
            p50: at(0.50),
            p99: at(0.99),
            max: millis(*last),
        })
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// How the fleet's services were watched: their polls and answers.
#[derive(Debug, Clone, Serialize)]
pub struct WatchFigures {
    pub services: u64,
    pub polls: u64,
    /// Count per outcome label.
    pub codes: BTreeMap<String, u64>,
    /// Count per outcome label the watch does not accept; empty on success.
    pub unexpected: BTreeMap<String, u64>,
    /// Mean time between two polls of one service.
    pub poll_interval_ms: f64,
}

impl WatchFigures {
    /// Figures of a watch of `services` that polled each of them `rounds` times over
    /// `elapsed`, its answers in `tally`.
    pub fn new(
        services: u64,
        tally: &Tally,
        expectation: Expectation,
        rounds: u64,
        elapsed: Duration,
    ) -> Self {
        let poll_interval_ms = if rounds > 0 {
            millis(elapsed) / rounds as f64
        } else {
            0.0
        };
        WatchFigures {
            services,
            polls: tally.total(),
            codes: labelled(&tally.sorted()),
            unexpected: labelled(&tally.unexpected(expectation)),
            poll_interval_ms,
        }
    }
}

impl HeartbeatFigures {
    pub fn is_success(&self) -> bool {
        self.failures().is_empty()
    }

    /// What went wrong, one phrase each.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.wrongly_expired > 0 {
            failures.push(format!(
                "{} instances listed unhealthy while beating",
                self.wrongly_expired
            ));
        }
        if let Some(expiry) = &self.expiry {
            if expiry.still_healthy > 0 {
                failures.push(format!(
                    "{} stopped instances still healthy after {:.3} s",
                    expiry.still_healthy, expiry.expiry_timeout_s
                ));
            }
            if expiry.early > 0 {
                failures.push(format!(
                    "{} stopped instances unhealthy less than 3 ttl after their last beat",
                    expiry.early
                ));
            }
        }
        for (label, count) in &self.watch.unexpected {
            failures.push(format!("watch {label} x{count}"));
        }
        failures
    }

    /// The lines that describe the fleet, among the report's header lines.
    pub fn write_fleet(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "fleet        {} instances, ttl {} s",
            self.instances, self.ttl_s
        );
        if let Some(registered_s) = self.registered_s {
            let _ = writeln!(out, "registered   in {registered_s:.3} s, before the beats");
        }
    }

    /// The watch and expiry lines, after the report's latency table.
    pub fn write_expiry(&self, out: &mut String) {
        let watch = &self.watch;
        let codes: Vec<_> = watch
            .codes
            .iter()
            .map(|(label, count)| format!("{label} x{count}"))
            .collect();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "watch        {} services on one stream, each polled every {:.1} ms: {} polls ({})",
            watch.services,
            watch.poll_interval_ms,
            watch.polls,
            codes.join(", ")
        );
        let _ = writeln!(
            out,
            "wrongly      {} instances listed unhealthy while beating",
            self.wrongly_expired
        );
        let Some(expiry) = &self.expiry else {
            return;
        };
        let _ = writeln!(
            out,
            "stopped      {} of {} ({}) at {:.3} s, timeout {:.3} s",
            expiry.stopped,
            self.instances,
            expiry.stop_share,
            expiry.stop_after_s,
            expiry.expiry_timeout_s
        );
        let _ = writeln!(
            out,
            "unhealthy    {} in time, {} still healthy, {} early",
            expiry.turned_unhealthy, expiry.still_healthy, expiry.early
        );
        if let Some(delay) = expiry.delay_ms {
            let _ = writeln!(
                out,
                "{:<16}{:>10} {:>10} {:>10} {:>10}",
                "expiry ms", "min", "p50", "p99", "max"
            );
            let _ = writeln!(
                out,
                "{:<16}{:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                "from last beat", delay.min, delay.p50, delay.p99, delay.max
            );
            if let Some(delay) = expiry.delay_from_answer_ms {
                let _ = writeln!(
                    out,
                    "{:<16}{:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                    "from its answer", delay.min, delay.p50, delay.p99, delay.max
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DATA_NO_CHANGE, EXECUTE_SUCCESS, NOT_FOUND_RESOURCE, Outcome};

    const WATCH: Expectation = Expectation {
        codes: &[EXECUTE_SUCCESS, DATA_NO_CHANGE],
    };

    fn figures(wrongly_expired: u64, expiry: Option<ExpiryFigures>) -> HeartbeatFigures {
        let mut tally = Tally::default();
        tally.record(Outcome::Answered(Some(EXECUTE_SUCCESS)));
        tally.record(Outcome::Answered(Some(DATA_NO_CHANGE)));
        HeartbeatFigures {
            instances: 200,
            ttl_s: 1,
            registered_s: Some(0.25),
            wrongly_expired,
            expiry,
            watch: WatchFigures::new(1, &tally, WATCH, 2, Duration::from_millis(201)),
        }
    }

    fn expiry(still_healthy: u64) -> ExpiryFigures {
        let delays: Vec<_> = (0..40).map(|i| Duration::from_millis(3100 + i)).collect();
        ExpiryFigures {
            stop_share: 0.2,
            stopped: 40,
            stop_after_s: 1.0,
            expiry_timeout_s: 5.0,
            turned_unhealthy: 40 - still_healthy,
            still_healthy,
            early: 0,
            delay_ms: DelaySummary::from_sorted(&delays),
            delay_from_answer_ms: DelaySummary::from_sorted(&delays),
        }
    }

    #[test]
    fn delay_percentiles_are_nearest_ranks() {
        let delays: Vec<_> = (1..=200).map(Duration::from_millis).collect();
        let summary = DelaySummary::from_sorted(&delays).unwrap();
        assert_eq!(
            (summary.min, summary.p50, summary.p99, summary.max),
            (1.0, 100.0, 198.0, 200.0)
        );
        let one = DelaySummary::from_sorted(&[Duration::from_millis(7)]).unwrap();
        assert_eq!((one.min, one.p50, one.p99, one.max), (7.0, 7.0, 7.0, 7.0));
        assert_eq!(DelaySummary::from_sorted(&[]), None);
    }

    #[test]
    fn a_clean_run_succeeds_and_prints_every_figure() {
        let figures = figures(0, Some(expiry(0)));
        assert!(figures.is_success(), "{:?}", figures.failures());
        assert_eq!(figures.watch.poll_interval_ms, 100.5);
        let mut table = String::new();
        figures.write_fleet(&mut table);
        figures.write_expiry(&mut table);
        for line in [
            "fleet        200 instances, ttl 1 s",
            "registered   in 0.250 s",
            "watch        1 services on one stream, each polled every 100.5 ms: 2 polls (200000 x1, 200001 x1)",
            "wrongly      0 instances",
            "stopped      40 of 200 (0.2) at 1.000 s, timeout 5.000 s",
            "unhealthy    40 in time, 0 still healthy, 0 early",
            "from last beat      3100.0     3119.0     3139.0     3139.0",
        ] {
            assert!(table.contains(line), "{line}\n{table}");
        }
        let json = serde_json::to_value(&figures).unwrap();
        assert_eq!(json["expiry"]["delay_ms"]["p50"], 3119.0);
        assert_eq!(json["watch"]["codes"]["200001"], 1);
        assert_eq!(json["wrongly_expired"], 0);
    }

    #[test]
    fn stopped_instances_still_healthy_wrong_expiries_and_watch_errors_fail() {
        let mut failing = figures(2, Some(expiry(3)));
        let mut tally = Tally::default();
        tally.record(Outcome::Answered(Some(NOT_FOUND_RESOURCE)));
        failing.watch = WatchFigures::new(1, &tally, WATCH, 1, Duration::from_millis(100));
        assert_eq!(
            failing.failures(),
            [
                "2 instances listed unhealthy while beating",
                "3 stopped instances still healthy after 5.000 s",
                "watch 400202 x1",
            ]
        );
        let without_stops = figures(0, None);
        assert!(without_stops.is_success());
        let json = serde_json::to_value(&without_stops).unwrap();
        assert!(json.get("expiry").is_none());
        let mut table = String::new();
        without_stops.write_expiry(&mut table);
        assert!(!table.contains("stopped"), "{table}");
    }
}
