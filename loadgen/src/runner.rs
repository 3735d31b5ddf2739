//! Closed-loop driver: `in_flight` workers pull request indices from one counter
//! until all are taken, so at most `in_flight` requests are outstanding however
//! large the run. Each worker keeps its own tally and histogram (no shared locks on
//! the hot path); they are merged when the run ends.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::{Expectation, Outcome, Tally, new_latency_histogram};

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// The "current rate" shown is measured over this many recent ticks.
const RATE_WINDOW_TICKS: usize = 5;

/// What to run: `total` requests, indices `0..total`.
#[derive(Debug, Clone, Copy)]
pub struct RunPlan {
    pub total: u64,
    pub in_flight: u32,
    /// Deadline of one request; a request not answered in time is a `Timeout`.
    pub request_timeout: Duration,
    /// Answers not accepted here count as errors in the progress bar.
    pub expectation: Expectation,
    pub show_progress: bool,
}

/// Everything measured by one run.
#[derive(Debug)]
pub struct RunOutcome {
    pub elapsed: Duration,
    pub tally: Tally,
    /// Latency of every request, answered or not, in microseconds.
    pub latency: Histogram<u64>,
}

/// Counters the progress bar reads while the workers run.
#[derive(Debug, Default)]
struct LiveCounters {
    done: AtomicU64,
    errors: AtomicU64,
}

/// Runs `request(index)` for every index in `0..plan.total` with at most
/// `plan.in_flight` outstanding.
pub async fn run_closed_loop<Request, Answer>(plan: RunPlan, request: Request) -> RunOutcome
where
    Request: Fn(u64) -> Answer + Send + Sync + 'static,
    Answer: Future<Output = Outcome> + Send + 'static,
{
    let request = Arc::new(request);
    let next_index = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(LiveCounters::default());
    let progress = plan
        .show_progress
        .then(|| ProgressDisplay::start(plan.total, Arc::clone(&counters)));

    let started = Instant::now();
    let workers: Vec<_> = (0..plan
        .in_flight
        .min(plan.total.try_into().unwrap_or(u32::MAX)))
        .map(|_| {
            let request = Arc::clone(&request);
            let next_index = Arc::clone(&next_index);
            let counters = Arc::clone(&counters);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut latency = new_latency_histogram();
                loop {
                    let index = next_index.fetch_add(1, Ordering::Relaxed);
                    if index >= plan.total {
                        break;
                    }
                    let sent = Instant::now();
                    let outcome = tokio::time::timeout(plan.request_timeout, request(index))
                        .await
                        .unwrap_or(Outcome::Timeout);
                    latency.saturating_record(sent.elapsed().as_micros() as u64);
                    tally.record(outcome);
                    if !plan.expectation.accepts(outcome) {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    counters.done.fetch_add(1, Ordering::Relaxed);
                }
                (tally, latency)
            })
        })
        .collect();

    let mut tally = Tally::default();
    let mut latency = new_latency_histogram();
    for worker in workers {
        let (worker_tally, worker_latency) = worker.await.expect("load worker panicked");
        tally.merge(&worker_tally);
        latency
            .add(&worker_latency)
            .expect("histograms share bounds");
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.finish().await;
    }
    RunOutcome {
        elapsed,
        tally,
        latency,
    }
}

/// Whether a live progress bar can be drawn: wanted and stderr is a terminal.
pub fn progress_wanted(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

/// Progress bar on stderr, redrawn by its own task from the live counters.
struct ProgressDisplay {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    fn start(total: u64, counters: Arc<LiveCounters>) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} {msg}",
        )
        .expect("valid progress template")
        .progress_chars("=> ");
        bar.set_style(style);
        let ticker = tokio::spawn(Self::redraw(bar.clone(), counters));
        ProgressDisplay { bar, ticker }
    }

    async fn redraw(bar: ProgressBar, counters: Arc<LiveCounters>) {
        let mut interval = tokio::time::interval(PROGRESS_TICK);
        let mut recent = RecentRate::default();
        loop {
            interval.tick().await;
            let done = counters.done.load(Ordering::Relaxed);
            let errors = counters.errors.load(Ordering::Relaxed);
            let rate = recent.observe(Instant::now(), done);
            bar.set_position(done);
            bar.set_message(format!("{rate:.0} req/s, {errors} errors"));
        }
    }

    async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}

/// Rate over the last few samples of a growing counter.
#[derive(Debug, Default)]
struct RecentRate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RecentRate {
    /// Records `done` at `now` and returns the rate (per second) over the window.
    fn observe(&mut self, now: Instant, done: u64) -> f64 {
        self.samples.push_back((now, done));
        if self.samples.len() > RATE_WINDOW_TICKS + 1 {
            self.samples.pop_front();
        }
        let (first_at, first_done) = self.samples[0];
        let seconds = now.duration_since(first_at).as_secs_f64();
        if seconds > 0.0 {
            done.saturating_sub(first_done) as f64 / seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::EXECUTE_SUCCESS;
    use std::sync::atomic::AtomicUsize;

    const ACCEPT_SUCCESS: Expectation = Expectation {
        codes: &[EXECUTE_SUCCESS],
    };

    fn plan(total: u64, in_flight: u32) -> RunPlan {
        RunPlan {
            total,
            in_flight,
            request_timeout: Duration::from_secs(5),
            expectation: ACCEPT_SUCCESS,
            show_progress: false,
        }
    }

    #[tokio::test]
    async fn runs_every_index_once_within_the_bound() {
        let outstanding = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (outstanding_in, peak_in, seen_in) = (
            Arc::clone(&outstanding),
            Arc::clone(&peak),
            Arc::clone(&seen),
        );
        let outcome = run_closed_loop(plan(1000, 16), move |index| {
            let outstanding = Arc::clone(&outstanding_in);
            let peak = Arc::clone(&peak_in);
            let seen = Arc::clone(&seen_in);
            async move {
                let now = outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                seen.lock().unwrap().push(index);
                outstanding.fetch_sub(1, Ordering::SeqCst);
                if index % 10 == 0 {
                    Outcome::Answered(Some(429001))
                } else {
                    Outcome::Answered(Some(EXECUTE_SUCCESS))
                }
            }
        })
        .await;
        assert_eq!(outcome.tally.total(), 1000);
        assert_eq!(outcome.latency.len(), 1000);
        assert_eq!(outcome.tally.unexpected(ACCEPT_SUCCESS).len(), 1);
        assert!(peak.load(Ordering::SeqCst) <= 16);
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_a_timeout() {
        let outcome = run_closed_loop(plan(3, 3), |index| async move {
            if index == 1 {
                std::future::pending::<()>().await;
            }
            Outcome::Answered(Some(EXECUTE_SUCCESS))
        })
        .await;
        assert_eq!(
            outcome.tally.sorted(),
            [
                (Outcome::Answered(Some(EXECUTE_SUCCESS)), 2),
                (Outcome::Timeout, 1)
            ]
        );
    }

    #[test]
    fn recent_rate_uses_the_window() {
        let start = Instant::now();
        let mut rate = RecentRate::default();
        assert_eq!(rate.observe(start, 0), 0.0);
        assert_eq!(rate.observe(start + Duration::from_secs(1), 100), 100.0);
        for second in 2..=10 {
            rate.observe(start + Duration::from_secs(second), 100 * second);
        }
        let last = rate.observe(start + Duration::from_secs(11), 100 * 10 + 1000);
        // Window is the last RATE_WINDOW_TICKS intervals: 5 s, 1400 requests.
        assert_eq!(last, 1400.0 / 5.0);
    }
}
