//! Load driver: `in_flight` workers pull request indices from one counter until all
//! are taken, so at most `in_flight` requests are outstanding however large the run.
//! In a closed loop a worker sends its next request once the previous one is
//! answered; in an open loop request `i` is due at a fixed time and its latency counts
//! from then, so a stalled server cannot hide its queue (coordinated omission). Every
//! worker records into one set of tallies and histograms per operation, behind a mutex
//! held only for the recording; the live counters of the progress bar are atomics.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::report::{Measurements, Operation, Outcome};
use crate::schedule::{DueTimes, worker_join_offset};

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// The "current rate" shown is measured over this many recent ticks.
const RATE_WINDOW_TICKS: usize = 5;
/// The pacer thread wakes at most once per tick and releases every request due by then.
/// Released one by one at 20,000/s, each request cost a wake of the pacer, a wake of a
/// worker and a write of its own on each side of the connection; a 100,000-instance
/// fleet then kept both cores of a 2-core host so busy (loadgen 0.9, bare server 0.6 of
/// a core) that any hiccup left hundreds of beats queued in the pipe (p99 from send
/// 35–50 ms). Released every millisecond, about 20 at a time, they share wakes and
/// writes: a third less CPU on both sides. A request leaves at most a tick after it is
/// due, and that delay counts in its latency from the due time.
pub const PACER_TICK: Duration = Duration::from_millis(1);

/// When each request starts.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// A worker sends its next request when its previous one is answered. Workers join
    /// one by one over `ramp` ([`worker_join_offset`]), so the allowed in-flight grows
    /// linearly from 1 to `in_flight`.
    ClosedLoop { ramp: Duration },
    /// Request `i` is due at `schedule.offset(i)` from the start, answered or not the
    /// ones before; when all `in_flight` slots are busy it waits for one, and its
    /// latency counts from the due time all the same.
    OpenLoop {
        schedule: Arc<dyn DueTimes>,
        pacer: Pacer,
    },
}

/// What releases open-loop requests at their due times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacer {
    /// A thread of its own sleeping to each due time, waking at most once per
    /// [`PACER_TICK`]: late by at most that tick plus tens of µs. A tokio timer fires on
    /// the next millisecond tick after the runtime wakes, 1 to 2 ms late, and more when
    /// the runtime is busy.
    Thread,
    /// A task on tokio's timer: follows `tokio::time::pause`, for tests.
    #[cfg(test)]
    Timer,
}

/// What to run: `total` requests, indices `0..total`; each request sends the plan's
/// operations in order (a register, then its deregister).
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub total: u64,
    pub in_flight: u32,
    pub pacing: Pacing,
    pub operations: &'static [Operation],
    /// Deadline of one operation from its send; a late one is a `Timeout`.
    pub request_timeout: Duration,
    pub show_progress: bool,
}

/// Everything measured by one run.
#[derive(Debug)]
pub struct RunOutcome {
    pub elapsed: Duration,
    /// One entry per operation of the plan, in its order.
    pub operations: Vec<Measurements>,
}

/// Counters the progress bar reads while the workers run.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Requests with all their operations done.
    pub done: AtomicU64,
    /// Answers the operation's expectation does not accept.
    pub errors: AtomicU64,
}

/// What every worker shares.
struct Shared<Request> {
    plan: RunPlan,
    /// When the run starts: set once every worker is ready, so the cost of setting
    /// workers up never counts as latency.
    started: watch::Sender<Option<Instant>>,
    /// One permit per worker that is ready to run.
    ready: Semaphore,
    request: Request,
    next_index: AtomicU64,
    counters: Arc<LiveCounters>,
    /// Set once every index is taken, so workers still waiting to join stop waiting.
    exhausted: watch::Sender<bool>,
    /// Open loop: one permit per request, released in order at its due time, so
    /// index `i` is never taken before it is due.
    released: Arc<Semaphore>,
    /// One per operation of the plan, shared by all workers: a histogram is about
    /// 200 KB, too large to keep one per worker and operation.
    measured: Vec<Mutex<Measurements>>,
}

/// Runs `request(index, op)` for every index in `0..plan.total` and, within an index,
/// every operation `op` of `plan.operations` in order, with at most `plan.in_flight`
/// requests outstanding.
pub async fn run_load<Request, Answer>(plan: RunPlan, request: Request) -> RunOutcome
where
    Request: Fn(u64, usize) -> Answer + Send + Sync + 'static,
    Answer: Future<Output = Outcome> + Send + 'static,
{
    debug_assert!(!plan.operations.is_empty());
    let counters = Arc::new(LiveCounters::default());
    let progress = plan
        .show_progress
        .then(|| ProgressDisplay::start(Some(plan.total), Arc::clone(&counters)));
    let worker_count = plan
        .in_flight
        .min(plan.total.try_into().unwrap_or(u32::MAX));
    let measured = plan
        .operations
        .iter()
        .map(|op| Mutex::new(Measurements::new(*op)))
        .collect();
    let pacing = plan.pacing.clone();
    let total = plan.total;

    let shared = Arc::new(Shared {
        plan,
        started: watch::Sender::new(None),
        ready: Semaphore::new(0),
        request,
        next_index: AtomicU64::new(0),
        counters,
        exhausted: watch::Sender::new(false),
        released: Arc::new(Semaphore::new(0)),
        measured,
    });
    let workers: Vec<_> = (0..worker_count)
        .map(|worker| tokio::spawn(run_worker(worker, Arc::clone(&shared))))
        .collect();
    shared
        .ready
        .acquire_many(worker_count)
        .await
        .expect("the ready semaphore is never closed")
        .forget();
    let started = Instant::now();
    shared.started.send_replace(Some(started));
    if let Pacing::OpenLoop { schedule, pacer } = pacing {
        let release = Release {
            schedule,
            total,
            workers: worker_count,
            permits: Arc::downgrade(&shared.released),
        };
        match pacer {
            Pacer::Thread => {
                std::thread::Builder::new()
                    .name("loadgen-pacer".to_owned())
                    .spawn(move || release.on_thread(started.into_std()))
                    .expect("spawn the pacer thread");
            }
            #[cfg(test)]
            Pacer::Timer => {
                tokio::spawn(release.on_timer(started));
            }
        }
    }

    for worker in workers {
        worker.await.expect("load worker panicked");
    }
    let elapsed = started.elapsed();
    let operations = shared
        .measured
        .iter()
        .map(|m| m.lock().expect("no worker panicked holding it").clone())
        .collect();
    if let Some(progress) = progress {
        progress.finish().await;
    }
    RunOutcome {
        elapsed,
        operations,
    }
}

/// One worker: joins (after its ramp offset in a closed loop), then takes indices
/// until none is left.
async fn run_worker<Request, Answer>(worker: u32, shared: Arc<Shared<Request>>)
where
    Request: Fn(u64, usize) -> Answer + Send + Sync + 'static,
    Answer: Future<Output = Outcome> + Send + 'static,
{
    let plan = &shared.plan;
    shared.ready.add_permits(1);
    let mut start = shared.started.subscribe();
    let started = start
        .wait_for(Option::is_some)
        .await
        .expect("the run outlives its workers")
        .expect("waited until the start is set");
    if let Pacing::ClosedLoop { ramp } = &plan.pacing {
        let join_at = started + worker_join_offset(worker, plan.in_flight, *ramp);
        let mut exhausted = shared.exhausted.subscribe();
        tokio::select! {
            () = tokio::time::sleep_until(join_at) => {}
            _ = exhausted.wait_for(|&done| done) => {}
        }
    }
    loop {
        if let Pacing::OpenLoop { .. } = plan.pacing {
            let Ok(permit) = shared.released.acquire().await else {
                break;
            };
            permit.forget();
        }
        let index = shared.next_index.fetch_add(1, Ordering::Relaxed);
        if index >= plan.total {
            shared.exhausted.send_replace(true);
            break;
        }
        // The first operation is due now in a closed loop, at its scheduled time in an
        // open loop (already passed: its permit is out); each later one when the one
        // before it is answered.
        let mut due = match &plan.pacing {
            Pacing::ClosedLoop { .. } => Instant::now(),
            Pacing::OpenLoop { schedule, .. } => started + schedule.offset(index),
        };
        for (op, measured) in shared.measured.iter().enumerate() {
            let sent = Instant::now();
            let outcome = tokio::time::timeout(plan.request_timeout, (shared.request)(index, op))
                .await
                .unwrap_or(Outcome::Timeout);
            let answered = Instant::now();
            let accepted = {
                let mut measurements = measured.lock().expect("no worker panicked holding it");
                measurements.record(outcome, answered - due, answered - sent);
                measurements.operation.expectation.accepts(outcome)
            };
            if !accepted {
                shared.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
            due = answered;
        }
        shared.counters.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Releases the permits of an open-loop run: one per request at its due time, then
/// one per worker so that every worker wakes to find the indices gone. Stops early
/// if the run is gone.
struct Release {
    schedule: Arc<dyn DueTimes>,
    total: u64,
    workers: u32,
    permits: Weak<Semaphore>,
}

impl Release {
    /// Requests due within `elapsed` of the start, counting on from `released`.
    fn due_within(&self, released: u64, elapsed: Duration) -> u64 {
        let mut due = released;
        while due < self.total && self.schedule.offset(due) <= elapsed {
            due += 1;
        }
        due
    }

    /// Adds `count` permits; false when the run is gone.
    fn add(&self, count: u64) -> bool {
        let Some(permits) = self.permits.upgrade() else {
            return false;
        };
        permits.add_permits(usize::try_from(count).unwrap_or(Semaphore::MAX_PERMITS));
        true
    }

    /// When to wake next, after waking at `woke` with every request due by then
    /// released up to `released`: when the next one is due, but not within a tick of
    /// the last wake.
    fn next_wake(&self, released: u64, woke: Duration) -> Duration {
        self.schedule.offset(released).max(woke + PACER_TICK)
    }

    fn on_thread(self, started: std::time::Instant) {
        let mut released = 0;
        let mut woke = Duration::ZERO;
        while released < self.total {
            let elapsed = started.elapsed();
            let due = self.due_within(released, elapsed);
            if due == released {
                std::thread::sleep(self.next_wake(released, woke).saturating_sub(elapsed));
                woke = started.elapsed();
                continue;
            }
            if !self.add(due - released) {
                return;
            }
            released = due;
        }
        self.add(u64::from(self.workers));
    }

    #[cfg(test)]
    async fn on_timer(self, started: Instant) {
        let mut released = 0;
        while released < self.total {
            let elapsed = started.elapsed();
            let due = self.due_within(released, elapsed);
            if due == released {
                tokio::time::sleep_until(started + self.schedule.offset(released)).await;
                continue;
            }
            if !self.add(due - released) {
                return;
            }
            released = due;
        }
        self.add(u64::from(self.workers));
    }
}

/// Whether a live progress bar can be drawn: wanted and stderr is a terminal.
pub fn progress_wanted(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

/// Progress bar on stderr, redrawn by its own task from the live counters.
pub struct ProgressDisplay {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    /// A bar up to `total` requests; without one (a run bounded by time), a counter.
    pub fn start(total: Option<u64>, counters: Arc<LiveCounters>) -> Self {
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{elapsed_precise} [{wide_bar:.cyan/blue}] {pos}/{len} {msg}"
        } else {
            "{elapsed_precise} {pos} {msg}"
        };
        let style = ProgressStyle::with_template(template)
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

    pub async fn finish(self) {
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
    use crate::report::{EXECUTE_SUCCESS, Expectation};
    use crate::schedule::Schedule;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    const ACCEPT_SUCCESS: Expectation = Expectation {
        codes: &[EXECUTE_SUCCESS],
    };
    const REGISTER_ONLY: &[Operation] = &[Operation {
        name: "register",
        expectation: ACCEPT_SUCCESS,
    }];
    const REGISTER_THEN_DEREGISTER: &[Operation] = &[
        Operation {
            name: "register",
            expectation: ACCEPT_SUCCESS,
        },
        Operation {
            name: "deregister",
            expectation: ACCEPT_SUCCESS,
        },
    ];

    fn plan(total: u64, in_flight: u32) -> RunPlan {
        RunPlan {
            total,
            in_flight,
            pacing: Pacing::ClosedLoop {
                ramp: Duration::ZERO,
            },
            operations: REGISTER_ONLY,
            request_timeout: Duration::from_secs(5),
            show_progress: false,
        }
    }

    /// An open loop paced on tokio's timer, which `start_paused` tests control.
    fn open_loop(total: u64, in_flight: u32, schedule: Schedule) -> RunPlan {
        RunPlan {
            pacing: Pacing::OpenLoop {
                schedule: Arc::new(schedule),
                pacer: Pacer::Timer,
            },
            ..plan(total, in_flight)
        }
    }

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Whether a µs histogram holds exactly these values, up to its precision.
    fn holds(histogram: &hdrhistogram::Histogram<u64>, millis: &[u64]) -> bool {
        let mut expected: Vec<_> = millis.iter().map(|ms| ms * 1000).collect();
        expected.sort_unstable();
        let recorded: Vec<_> = histogram
            .iter_recorded()
            .flat_map(|step| {
                let value = step.value_iterated_to();
                std::iter::repeat_n(value, step.count_at_value() as usize)
            })
            .collect();
        recorded.len() == expected.len()
            && recorded
                .iter()
                .zip(&expected)
                .all(|(got, want)| histogram.equivalent(*got, *want))
    }

    /// Answers success after `delay`, logging when each request was sent and how many
    /// were outstanding then.
    #[derive(Clone)]
    struct SlowServer {
        started: Instant,
        delay: Duration,
        outstanding: Arc<AtomicUsize>,
        /// (index, sent since the start, outstanding including this one)
        sends: Arc<Mutex<Vec<(u64, Duration, usize)>>>,
    }

    impl SlowServer {
        fn new(delay: Duration) -> Self {
            SlowServer {
                started: Instant::now(),
                delay,
                outstanding: Arc::default(),
                sends: Arc::default(),
            }
        }

        fn answer(&self, index: u64) -> impl Future<Output = Outcome> + Send + use<> {
            let server = self.clone();
            async move {
                let now = server.outstanding.fetch_add(1, Ordering::SeqCst) + 1;
                let sent = server.started.elapsed();
                server.sends.lock().unwrap().push((index, sent, now));
                // A zero sleep may still wait for the timer's next tick.
                if !server.delay.is_zero() {
                    tokio::time::sleep(server.delay).await;
                }
                server.outstanding.fetch_sub(1, Ordering::SeqCst);
                Outcome::Answered(Some(EXECUTE_SUCCESS))
            }
        }

        fn sends(&self) -> Vec<(u64, Duration, usize)> {
            let mut sends = self.sends.lock().unwrap().clone();
            sends.sort_by_key(|(index, ..)| *index);
            sends
        }
    }

    #[tokio::test]
    async fn runs_every_index_once_within_the_bound() {
        let outstanding = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (outstanding_in, peak_in, seen_in) = (
            Arc::clone(&outstanding),
            Arc::clone(&peak),
            Arc::clone(&seen),
        );
        let outcome = run_load(plan(1000, 16), move |index, _| {
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
        let [register] = &outcome.operations[..] else {
            panic!("one operation");
        };
        assert_eq!(register.tally.total(), 1000);
        assert_eq!(register.latency.len(), 1000);
        assert_eq!(register.tally.unexpected(ACCEPT_SUCCESS).len(), 1);
        assert!(peak.load(Ordering::SeqCst) <= 16);
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_is_a_timeout() {
        let outcome = run_load(plan(3, 3), |index, _| async move {
            if index == 1 {
                std::future::pending::<()>().await;
            }
            Outcome::Answered(Some(EXECUTE_SUCCESS))
        })
        .await;
        assert_eq!(
            outcome.operations[0].tally.sorted(),
            [
                (Outcome::Answered(Some(EXECUTE_SUCCESS)), 2),
                (Outcome::Timeout, 1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_latency_is_the_service_time() {
        let server = SlowServer::new(millis(250));
        let requests = server.clone();
        let outcome = run_load(plan(5, 1), move |index, _| requests.answer(index)).await;
        let register = &outcome.operations[0];
        assert!(holds(&register.latency, &[250; 5]));
        assert!(holds(&register.service, &[250; 5]));
        assert_eq!(outcome.elapsed, millis(1250));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_latency_counts_from_the_intended_start() {
        // Due every 100 ms, but one slot and a server taking 250 ms: request i waits
        // 150 ms longer than the one before for its slot, and that wait is latency.
        let server = SlowServer::new(millis(250));
        let requests = server.clone();
        let schedule = Schedule::new(10.0, Duration::ZERO);
        let outcome = run_load(open_loop(5, 1, schedule), move |index, _| {
            requests.answer(index)
        })
        .await;
        let register = &outcome.operations[0];
        assert!(
            holds(&register.latency, &[250, 400, 550, 700, 850]),
            "{:?}",
            register
                .latency
                .iter_recorded()
                .map(|s| s.value_iterated_to())
                .collect::<Vec<_>>()
        );
        assert!(holds(&register.service, &[250; 5]));
        let sent: Vec<_> = server.sends().iter().map(|(_, at, _)| *at).collect();
        assert_eq!(sent, [0, 250, 500, 750, 1000].map(millis));
        assert_eq!(outcome.elapsed, millis(1250));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_schedule_when_slots_are_free() {
        let server = SlowServer::new(millis(250));
        let requests = server.clone();
        let schedule = Schedule::new(10.0, Duration::ZERO);
        let outcome = run_load(open_loop(10, 8, schedule), move |index, _| {
            requests.answer(index)
        })
        .await;
        let register = &outcome.operations[0];
        assert!(holds(&register.latency, &[250; 10]));
        let sends = server.sends();
        let sent: Vec<_> = sends.iter().map(|(_, at, _)| *at).collect();
        assert_eq!(sent, (0..10).map(|i| millis(100 * i)).collect::<Vec<_>>());
        // 250 ms answers at 10/s: never more than 3 outstanding, though 8 may be.
        assert_eq!(sends.iter().map(|(.., now)| *now).max(), Some(3));
        assert_eq!(outcome.elapsed, millis(900 + 250));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_follows_the_ramp() {
        let server = SlowServer::new(millis(1));
        let requests = server.clone();
        let schedule = Schedule::new(100.0, Duration::from_secs(2));
        let total = 150;
        run_load(open_loop(total, 16, schedule), move |index, _| {
            requests.answer(index)
        })
        .await;
        let sends = server.sends();
        assert_eq!(sends.len(), total as usize);
        for (index, sent, _) in sends {
            // The timer fires on the first millisecond tick at or after the due time.
            let due = schedule.offset(index);
            assert!(
                sent >= due && sent - due < millis(1),
                "{index}: due {due:?}, sent {sent:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pacer_thread_releases_requests_on_time_never_early() {
        // Real time: 2000/s for 0.25 s, answered at once, so the latency from the due
        // time is how late the request left.
        let server = SlowServer::new(Duration::ZERO);
        let requests = server.clone();
        let schedule = Schedule::new(2000.0, Duration::ZERO);
        let plan = RunPlan {
            pacing: Pacing::OpenLoop {
                schedule: Arc::new(schedule),
                pacer: Pacer::Thread,
            },
            ..plan(500, 64)
        };
        let outcome = run_load(plan, move |index, _| requests.answer(index)).await;
        let register = &outcome.operations[0];
        assert_eq!(register.tally.total(), 500);
        for (index, sent, _) in server.sends() {
            assert!(sent >= schedule.offset(index), "{index} left at {sent:?}");
        }
        // Released once a tick: half a tick late on the median, plus the sleep's own
        // lateness; leave room for a busy host.
        let median_late = register.latency.value_at_quantile(0.5);
        assert!(median_late < 1500, "median {median_late} µs late");
        assert!(outcome.elapsed >= schedule.offset(499));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_ends_when_the_last_request_is_answered() {
        // 64 slots, 3 requests: the idle workers must not wait for more permits.
        let server = SlowServer::new(millis(20));
        let requests = server.clone();
        let schedule = Schedule::new(100.0, Duration::ZERO);
        let outcome = run_load(open_loop(3, 64, schedule), move |index, _| {
            requests.answer(index)
        })
        .await;
        assert_eq!(outcome.operations[0].tally.total(), 3);
        assert_eq!(outcome.elapsed, millis(20 + 20));
    }

    #[test]
    fn release_counts_what_is_due_from_where_it_stopped() {
        let release = Release {
            schedule: Arc::new(Schedule::new(1000.0, Duration::ZERO)),
            total: 10,
            workers: 2,
            permits: Weak::new(),
        };
        assert_eq!(release.due_within(0, Duration::ZERO), 1);
        assert_eq!(release.due_within(1, Duration::from_micros(999)), 1);
        assert_eq!(release.due_within(1, millis(3)), 4);
        assert_eq!(release.due_within(4, Duration::from_secs(60)), 10);
        assert!(!release.add(1), "no run to release into");
    }

    #[test]
    fn the_pacer_wakes_at_the_next_due_time_but_at_most_once_a_tick() {
        // 20,000/s: one due every 50 µs, released a tick's worth at a time.
        let fast = Release {
            schedule: Arc::new(Schedule::new(20_000.0, Duration::ZERO)),
            total: 1_000_000,
            workers: 2,
            permits: Weak::new(),
        };
        let woke = Duration::from_micros(7_010);
        let released = fast.due_within(0, woke);
        assert_eq!(released, 141);
        assert_eq!(fast.next_wake(released, woke), woke + PACER_TICK);
        assert_eq!(fast.due_within(released, woke + PACER_TICK), 161);
        // 100/s: one due every 10 ms, each released at its own due time.
        let slow = Release {
            schedule: Arc::new(Schedule::new(100.0, Duration::ZERO)),
            ..fast
        };
        assert_eq!(slow.due_within(0, woke), 1);
        assert_eq!(slow.next_wake(1, woke), millis(10));
        assert_eq!(slow.next_wake(2, millis(10)), millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_ramp_grows_the_in_flight_from_one() {
        // Four workers join at 0, 1, 2 and 3 s; each request takes 100 ms.
        let server = SlowServer::new(millis(100));
        let requests = server.clone();
        let ramp = Duration::from_secs(3);
        let plan = RunPlan {
            pacing: Pacing::ClosedLoop { ramp },
            ..plan(200, 4)
        };
        let outcome = run_load(plan, move |index, _| requests.answer(index)).await;
        assert_eq!(outcome.operations[0].tally.total(), 200);
        let sends = server.sends();
        for (index, sent, outstanding) in &sends {
            let allowed = 1 + (sent.as_millis() / 1000).min(3) as usize;
            assert!(
                *outstanding <= allowed,
                "{index} at {sent:?}: {outstanding} outstanding, {allowed} allowed"
            );
        }
        let peak_before = |second: u64| {
            sends
                .iter()
                .filter(|(_, sent, _)| *sent < Duration::from_secs(second))
                .map(|(.., outstanding)| *outstanding)
                .max()
        };
        assert_eq!(
            [1, 2, 3, 4].map(peak_before),
            [Some(1), Some(2), Some(3), Some(4)]
        );
        // 10 + 20 + 30 requests during the ramp, then 4 every 100 ms: 140 more in 3.5 s.
        assert_eq!(outcome.elapsed, millis(6500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_run_does_not_wait_for_the_ramp_to_end() {
        let plan = RunPlan {
            pacing: Pacing::ClosedLoop {
                ramp: Duration::from_secs(600),
            },
            ..plan(20, 100)
        };
        let outcome = run_load(plan, |_, _| async {
            tokio::time::sleep(millis(10)).await;
            Outcome::Answered(Some(EXECUTE_SUCCESS))
        })
        .await;
        assert_eq!(outcome.operations[0].tally.total(), 20);
        assert!(
            outcome.elapsed < Duration::from_secs(600),
            "{:?}",
            outcome.elapsed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn operations_of_a_request_run_in_order_and_are_measured_apart() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let events_in = Arc::clone(&events);
        let plan = RunPlan {
            operations: REGISTER_THEN_DEREGISTER,
            ..plan(50, 8)
        };
        let outcome = run_load(plan, move |index, op| {
            let events = Arc::clone(&events_in);
            async move {
                events.lock().unwrap().push((index, op, "sent"));
                // Registers take 30 ms, deregisters 10 ms.
                tokio::time::sleep(millis(if op == 0 { 30 } else { 10 })).await;
                events.lock().unwrap().push((index, op, "answered"));
                Outcome::Answered(Some(EXECUTE_SUCCESS))
            }
        })
        .await;
        let events = events.lock().unwrap().clone();
        for index in 0..50 {
            let own: Vec<_> = events
                .iter()
                .filter(|(i, ..)| *i == index)
                .map(|(_, op, what)| (*op, *what))
                .collect();
            assert_eq!(
                own,
                [(0, "sent"), (0, "answered"), (1, "sent"), (1, "answered")]
            );
        }
        let [register, deregister] = &outcome.operations[..] else {
            panic!("two operations");
        };
        assert_eq!(register.operation.name, "register");
        assert_eq!(deregister.operation.name, "deregister");
        assert_eq!(register.tally.total(), 50);
        assert_eq!(deregister.tally.total(), 50);
        assert!(holds(&register.latency, &[30; 50]));
        assert!(holds(&deregister.latency, &[10; 50]));
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
