//! Discover: watchers poll the instances of services over Discover streams, as
//! Polaris SDKs do. Each watcher sends back, for each of its services, the revision
//! of the last full answer, so an unchanged service costs only a DataNoChange;
//! `--cold` never sends one, and every answer is a full listing. Latency counts from
//! the send to the answer; a stream's first poll includes its opening. With
//! `--protocol http` each poll is a `POST /v1/Discover` of the same request as JSON,
//! on whichever keep-alive connection is idle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use crate::fleet::ServiceGrid;
use crate::http_pool::HttpTarget;
use crate::options::{ConnectionOptions, OutputOptions, ProtocolOptions, ServiceGridOptions};
use crate::polaris_json::{self, ListingSummary};
use crate::proto::{DiscoverRequest, DiscoverResponse};
use crate::report::{
    DATA_NO_CHANGE, DiscoverFigures, EXECUTE_SUCCESS, Expectation, Measurements,
    NOT_FOUND_RESOURCE, Operation, Outcome, RunSetup,
};
use crate::runner::{LiveCounters, ProgressDisplay, RunOutcome, progress_wanted};
use crate::scenario::discover_stream::{DiscoverStream, instances_request};
use crate::scenario::{
    Connections, DISCOVER_PATH, RequestHeaders, ScenarioRun, SetupError, connect_over, finish,
    parse_run_duration,
};

/// A poll is answered in full, or with no change since the revision it sent.
const DISCOVER: Operation = Operation {
    name: "discover",
    expectation: Expectation {
        codes: &[EXECUTE_SUCCESS, DATA_NO_CHANGE],
    },
};

/// With `--allow-not-found`, an unknown service is fine too.
const DISCOVER_ALLOWING_NOT_FOUND: Operation = Operation {
    name: "discover",
    expectation: Expectation {
        codes: &[EXECUTE_SUCCESS, DATA_NO_CHANGE, NOT_FOUND_RESOURCE],
    },
};

/// Options of the `discover` scenario.
#[derive(Debug, Clone, Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub protocol: ProtocolOptions,

    /// The services watched are those a fleet with these options is spread over.
    #[command(flatten)]
    pub grid: ServiceGridOptions,

    /// Discover streams, one poll outstanding on each; dealt over the connections
    /// (HTTP: pollers, each poll on an idle connection).
    #[arg(long, value_name = "W", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub watchers: u32,

    /// Services each watcher polls in turn: watcher w takes those of the grid
    /// (namespaces × services, namespaces alternating fastest) from index w on,
    /// wrapping.
    #[arg(long = "services-per-watcher", value_name = "S", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub services_per_watcher: u32,

    /// Never send a revision, so that every answer is a full listing.
    #[arg(long)]
    pub cold: bool,

    /// From one poll of a watcher to its next (an SDK polls every 2s), or from its
    /// answer when that comes later; 0 polls again as soon as the answer arrives.
    /// The watchers' first polls are spread over the first interval.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Send polls for DURATION, then wait for their answers.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_run_duration)]
    pub duration: Duration,

    /// Send N polls in all, over every watcher, instead of polling for --duration.
    #[arg(long, value_name = "N", conflicts_with = "duration", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Accept NotFoundResource (400202): services of the grid nobody registered.
    #[arg(long = "allow-not-found")]
    pub allow_not_found: bool,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// When a discover run stops sending polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunLength {
    /// No poll due this long after the start is sent.
    Time(Duration),
    /// This many polls, over every watcher.
    Polls(u64),
}

impl DiscoverArgs {
    fn length(&self) -> RunLength {
        match self.count {
            Some(polls) => RunLength::Polls(polls),
            None => RunLength::Time(self.duration),
        }
    }
}

/// What every watcher shares.
struct WatchRun {
    grid: ServiceGrid,
    cold: bool,
    interval: Duration,
    watchers: u32,
    services_per_watcher: u32,
    length: RunLength,
    started: Instant,
    /// Polls taken so far, in a run of [`RunLength::Polls`].
    claimed: AtomicU64,
    /// Instances listed by the full answers.
    instances_returned: AtomicU64,
    /// Shared by all watchers: a histogram is too large to keep one per watcher.
    measured: Mutex<Measurements>,
    counters: Arc<LiveCounters>,
}

impl WatchRun {
    /// Whether a poll due at `due` is sent: within the run's time, or one of its polls.
    fn take_poll(&self, due: Instant) -> bool {
        match self.length {
            RunLength::Time(duration) => due < self.started + duration,
            RunLength::Polls(total) => self.claimed.fetch_add(1, Ordering::Relaxed) < total,
        }
    }

    fn record(&self, outcome: Outcome, latency: Duration) {
        let accepted = {
            let mut measurements = self
                .measured
                .lock()
                .expect("no watcher panicked holding it");
            measurements.record(outcome, latency, latency);
            measurements.operation.expectation.accepts(outcome)
        };
        if !accepted {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the watchers until the run's time or polls are used up, and reports.
pub async fn run(args: DiscoverArgs) -> Result<ScenarioRun, SetupError> {
    let connection = &args.connection;
    let (connections, headers) = connect_over(args.protocol.protocol, connection, false).await?;
    let operation = if args.allow_not_found {
        DISCOVER_ALLOWING_NOT_FOUND
    } else {
        DISCOVER
    };
    let length = args.length();
    let counters = Arc::new(LiveCounters::default());
    let progress = progress_wanted(args.output.no_progress).then(|| {
        let total = match length {
            RunLength::Polls(total) => Some(total),
            RunLength::Time(_) => None,
        };
        ProgressDisplay::start(total, Arc::clone(&counters))
    });
    let run = Arc::new(WatchRun {
        grid: ServiceGrid::new(&args.grid),
        cold: args.cold,
        interval: args.interval,
        watchers: args.watchers,
        services_per_watcher: args.services_per_watcher,
        length,
        started: Instant::now(),
        claimed: AtomicU64::new(0),
        instances_returned: AtomicU64::new(0),
        measured: Mutex::new(Measurements::new(operation)),
        counters,
    });
    let watchers: Vec<_> = (0..args.watchers)
        .map(|watcher| {
            let poller = Poller::new(
                &connections,
                u64::from(watcher),
                &headers,
                connection.timeout,
            );
            tokio::spawn(watch(watcher, Arc::clone(&run), poller))
        })
        .collect();
    for watcher in watchers {
        watcher.await.expect("watcher panicked");
    }
    let elapsed = run.started.elapsed();
    if let Some(progress) = progress {
        progress.finish().await;
    }

    let measured = run
        .measured
        .lock()
        .expect("no watcher panicked holding it")
        .clone();
    let figures = DiscoverFigures::new(
        args.watchers,
        args.services_per_watcher,
        args.cold,
        run.instances_returned.load(Ordering::Relaxed),
        measured
            .tally
            .count(Outcome::Answered(Some(EXECUTE_SUCCESS))),
    );
    let setup = RunSetup {
        scenario: "discover",
        targets: connection.targets.clone(),
        protocol: connections.protocol(),
        in_flight: args.watchers,
        connections: connections.connection_count(),
        ramp: Duration::ZERO,
        offered: None,
    };
    let outcome = RunOutcome {
        elapsed,
        operations: vec![measured],
    };
    let mut finished = finish(setup, outcome);
    finished.report.discover = Some(figures);
    finished.report.connections_opened = connections.connections_opened();
    Ok(finished)
}

/// How a watcher polls: on its own Discover stream, or by HTTP requests.
enum Poller {
    /// Boxed: a stream is some 500 bytes, and a watcher holds its poller throughout.
    Stream(Box<DiscoverStream>),
    Http {
        target: Arc<HttpTarget>,
        headers: RequestHeaders,
        /// Sent as `request-id` with each poll.
        request_id: String,
        timeout: Duration,
    },
}

impl Poller {
    /// The poller of watcher `watcher`: its stream on connection `watcher` (the
    /// connections taking turns), or its target's HTTP connections.
    fn new(
        connections: &Connections,
        watcher: u64,
        headers: &RequestHeaders,
        timeout: Duration,
    ) -> Self {
        let request_id = format!("watch-{watcher}");
        match connections {
            Connections::Grpc(pool) => Poller::Stream(Box::new(DiscoverStream::new(
                pool.grpc(watcher),
                headers.clone(),
                request_id,
                timeout,
            ))),
            Connections::Http(pool) => Poller::Http {
                target: pool.target(watcher),
                headers: headers.clone(),
                request_id,
                timeout,
            },
        }
    }

    /// Sends `request` and reads what the run counts of its answer; the outcome of a
    /// poll that got none.
    async fn ask(&mut self, request: DiscoverRequest) -> Result<ListingSummary, Outcome> {
        match self {
            Poller::Stream(stream) => stream
                .ask(request)
                .await
                .map(summary_of)
                .map_err(|error| error.outcome()),
            Poller::Http {
                target,
                headers,
                request_id,
                timeout,
            } => {
                let mut post = target.post(DISCOVER_PATH, polaris_json::discover_body(&request));
                headers.apply_http(post.headers_mut(), request_id);
                let answer = tokio::time::timeout(*timeout, target.send(post))
                    .await
                    .map_err(|_| Outcome::Timeout)?
                    .map_err(|_| Outcome::ConnectionFailed)?;
                polaris_json::listing_summary(&answer.body)
                    .map_err(|_| Outcome::Http(answer.status.as_u16()))
            }
        }
    }
}

/// What a poll counts of a gRPC answer.
fn summary_of(answer: DiscoverResponse) -> ListingSummary {
    ListingSummary {
        code: answer.code,
        revision: answer.service.and_then(|service| service.revision),
        instances: answer.instances.len() as u64,
    }
}

/// One watcher: polls its services in turn until the run is over.
async fn watch(watcher: u32, run: Arc<WatchRun>, mut poller: Poller) {
    let cells = watched_cells(watcher, run.services_per_watcher, run.grid.cells());
    // The revision of the last full answer for each service, sent with its next poll.
    let mut revisions: Vec<Option<String>> = vec![None; cells.len()];
    let mut due = run.started + first_poll_offset(watcher, run.watchers, run.interval);
    for slot in (0..cells.len()).cycle() {
        if !run.take_poll(due) {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let (namespace, service) = run.grid.cell(cells[slot]);
        let sent = Instant::now();
        let answer = poller
            .ask(instances_request(
                namespace,
                service,
                revisions[slot].clone(),
            ))
            .await;
        let answered = Instant::now();
        let outcome = match &answer {
            Ok(answer) => Outcome::Answered(answer.code),
            Err(outcome) => *outcome,
        };
        if let Ok(full) = answer
            && full.code == Some(EXECUTE_SUCCESS)
        {
            run.instances_returned
                .fetch_add(full.instances, Ordering::Relaxed);
            if !run.cold {
                revisions[slot] = full.revision;
            }
        }
        run.record(outcome, answered - sent);
        due = (due + run.interval).max(answered);
    }
}

/// The grid cells watcher `watcher` polls: `per_watcher` of them from its own index
/// on, wrapping around the grid's `cells`.
fn watched_cells(watcher: u32, per_watcher: u32, cells: u64) -> Vec<u64> {
    debug_assert!(cells > 0);
    (0..u64::from(per_watcher))
        .map(|offset| (u64::from(watcher) + offset) % cells)
        .collect()
}

/// When watcher `watcher` first polls, from the start: the watchers are spread
/// evenly over the first interval, as SDKs started at different times are.
fn first_poll_offset(watcher: u32, watchers: u32, interval: Duration) -> Duration {
    debug_assert!(watcher < watchers);
    let nanos = interval.as_nanos() * u128::from(watcher) / u128::from(watchers);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Fleet;
    use crate::options::FleetOptions;
    use crate::scenario::fake_discover::{FakeDiscover, registered_fleet};
    use crate::scenario::{parse_args, silent_server};
    use std::collections::BTreeMap;

    /// A fleet of `count` instances over `services` services of one namespace.
    fn fleet(count: u64, services: u32) -> Fleet {
        Fleet::new(&FleetOptions {
            count,
            grid: ServiceGridOptions {
                namespaces: 1,
                services,
            },
            metadata: 3,
            metadata_size: 16,
            ttl: 5,
            seed: 1,
        })
    }

    async fn discover(address: &str, words: &[&str]) -> ScenarioRun {
        let words = [&["--target", address, "--no-progress"], words].concat();
        let args = parse_args::<DiscoverArgs>(words).unwrap();
        run(args).await.expect("the fake server is up")
    }

    fn codes(run: &ScenarioRun) -> Vec<(&str, u64)> {
        let codes = &run.report.codes;
        codes
            .iter()
            .map(|(code, count)| (code.as_str(), *count))
            .collect()
    }

    #[test]
    fn count_replaces_duration_and_the_two_conflict() {
        let default = parse_args::<DiscoverArgs>([]).unwrap();
        assert_eq!(default.length(), RunLength::Time(Duration::from_secs(10)));
        let counted = parse_args::<DiscoverArgs>(["--count", "500"]).unwrap();
        assert_eq!(counted.length(), RunLength::Polls(500));
        let timed = parse_args::<DiscoverArgs>(["--duration", "2m", "--interval", "2s"]).unwrap();
        assert_eq!(timed.length(), RunLength::Time(Duration::from_secs(120)));
        assert_eq!(timed.interval, Duration::from_secs(2));
        assert!(parse_args::<DiscoverArgs>(["--count", "5", "--duration", "1s"]).is_err());
        assert!(parse_args::<DiscoverArgs>(["--duration", "0s"]).is_err());
        assert!(parse_args::<DiscoverArgs>(["--count", "0"]).is_err());
        assert!(parse_args::<DiscoverArgs>(["--watchers", "0"]).is_err());
        assert!(parse_args::<DiscoverArgs>(["--in-flight", "5"]).is_err());
    }

    #[test]
    fn watchers_take_the_grid_from_their_own_index_wrapping() {
        assert_eq!(watched_cells(0, 1, 10), [0]);
        assert_eq!(watched_cells(3, 4, 10), [3, 4, 5, 6]);
        assert_eq!(watched_cells(8, 4, 10), [8, 9, 0, 1]);
        assert_eq!(watched_cells(25, 2, 10), [5, 6]);
    }

    #[test]
    fn the_grid_is_the_one_a_storm_with_the_same_options_fills() {
        let args = parse_args::<DiscoverArgs>(["--namespaces", "2", "--services", "5"]).unwrap();
        let grid = ServiceGrid::new(&args.grid);
        let storm = parse_args::<crate::scenario::storm::StormArgs>([
            "--namespaces",
            "2",
            "--services",
            "5",
            "--count",
            "100",
        ])
        .unwrap();
        let storm_fleet = crate::scenario::storm::fleet_of(&storm);
        let watched: Vec<_> = (0..grid.cells()).map(|cell| grid.cell(cell)).collect();
        let registered: std::collections::BTreeSet<_> =
            (0..100).map(|index| storm_fleet.placement(index)).collect();
        assert_eq!(watched.len(), 10);
        assert_eq!(
            watched
                .iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            registered
        );
    }

    #[test]
    fn first_polls_are_spread_over_the_interval() {
        let interval = Duration::from_secs(2);
        let offsets: Vec<_> = (0..4).map(|w| first_poll_offset(w, 4, interval)).collect();
        assert_eq!(offsets, [0, 500, 1000, 1500].map(Duration::from_millis));
        assert_eq!(first_poll_offset(3, 4, Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_revision_of_the_last_full_answer_is_sent_back() {
        let server = FakeDiscover::listing(registered_fleet(&fleet(5, 1)))
            .start()
            .await;
        let run = discover(
            &server.address,
            &["--services", "1", "--watchers", "1", "--count", "3"],
        )
        .await;
        assert_eq!(codes(&run), [("200000", 1), ("200001", 2)]);
        assert!(run.report.is_success());
        let figures = run.report.discover.as_ref().unwrap();
        assert_eq!(figures.instances_returned, 5);
        assert_eq!(figures.instances_per_full_answer, 5.0);
        let requests = server.requests();
        let revisions: Vec<_> = requests
            .iter()
            .map(|request| request.service.as_ref().unwrap().revision.as_deref())
            .collect();
        assert_eq!(revisions, [None, Some("rev-5"), Some("rev-5")]);
        let service = requests[0].service.as_ref().unwrap();
        assert_eq!(service.namespace.as_deref(), Some("loadgen-ns-0"));
        assert_eq!(service.name.as_deref(), Some("loadgen-svc-0"));
    }

    #[tokio::test]
    async fn cold_watchers_never_send_a_revision() {
        let server = FakeDiscover::listing(registered_fleet(&fleet(5, 1)))
            .start()
            .await;
        let words = [
            "--services",
            "1",
            "--watchers",
            "2",
            "--count",
            "6",
            "--cold",
        ];
        let run = discover(&server.address, &words).await;
        assert_eq!(codes(&run), [("200000", 6)]);
        let figures = run.report.discover.as_ref().unwrap();
        assert_eq!(figures.instances_returned, 30);
        assert!(figures.cold);
        let requests = server.requests();
        assert_eq!(requests.len(), 6);
        assert!(
            requests
                .iter()
                .all(|r| r.service.as_ref().unwrap().revision.is_none())
        );
    }

    #[tokio::test]
    async fn each_code_is_counted_and_not_found_fails_unless_allowed() {
        // Service 1 of 2 has no instance: the server does not know it.
        let server = FakeDiscover::listing(registered_fleet(&fleet(1, 2)))
            .start()
            .await;
        let words = [
            "--services",
            "2",
            "--watchers",
            "1",
            "--services-per-watcher",
            "2",
            "--count",
            "4",
        ];
        let run = discover(&server.address, &words).await;
        assert_eq!(codes(&run), [("200000", 1), ("200001", 1), ("400202", 2)]);
        assert_eq!(
            run.report.unexpected,
            BTreeMap::from([("400202".to_owned(), 2)])
        );
        assert!(!run.report.is_success());

        let allowed = discover(
            &server.address,
            &[&words[..], &["--allow-not-found"]].concat(),
        )
        .await;
        assert_eq!(
            codes(&allowed),
            [("200000", 1), ("200001", 1), ("400202", 2)]
        );
        assert!(allowed.report.is_success());
        let services: Vec<_> = server
            .requests()
            .iter()
            .take(4)
            .map(|r| r.service.clone().unwrap().name.unwrap())
            .collect();
        assert_eq!(
            services,
            [
                "loadgen-svc-0",
                "loadgen-svc-1",
                "loadgen-svc-0",
                "loadgen-svc-1"
            ]
        );
    }

    #[tokio::test]
    async fn a_silent_server_ends_in_timeouts_not_a_hang() {
        let (address, silent_server) = silent_server().await;
        let args = parse_args::<DiscoverArgs>([
            "--target",
            &address,
            "--watchers",
            "1",
            "--count",
            "2",
            "--timeout",
            "200ms",
            "--no-progress",
        ])
        .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), run(args))
            .await
            .expect("the discover run returns");
        silent_server.abort();
        match outcome {
            Ok(run) => {
                assert_eq!(codes(&run), [("timeout", 2)]);
                assert!(!run.report.is_success());
            }
            // Some h2 versions wait for the server's SETTINGS before the channel is up.
            Err(error) => assert!(matches!(error, SetupError::Connect(_)), "{error:?}"),
        }
    }

    #[tokio::test]
    async fn http_polls_send_the_same_requests_and_count_alike() {
        use crate::scenario::fake_http::FakeHttp;
        // Service 1 of 2 has no instance: the server does not know it.
        let listing = registered_fleet(&fleet(5, 2));
        let listing: Vec<_> = listing
            .into_iter()
            .filter(|i| i.service.as_deref() == Some("loadgen-svc-0"))
            .collect();
        let grpc = FakeDiscover::listing(listing.clone()).start().await;
        let http = FakeHttp::listing(listing).start().await;
        let words = [
            "--services",
            "2",
            "--watchers",
            "1",
            "--services-per-watcher",
            "2",
            "--count",
            "6",
            "--allow-not-found",
            "--connections",
            "2",
        ];
        let over_grpc = discover(&grpc.address, &words).await;
        let over_http = discover(
            &http.address,
            &[&words[..], &["--protocol", "http"]].concat(),
        )
        .await;
        for run in [&over_grpc, &over_http] {
            assert_eq!(codes(run), [("200000", 1), ("200001", 2), ("400202", 3)]);
            assert!(run.report.is_success());
            assert_eq!(run.report.discover.as_ref().unwrap().instances_returned, 3);
        }
        assert_eq!(over_grpc.report.connections_opened, None);
        assert_eq!(over_http.report.connections_opened, Some(2));
        assert_eq!(over_http.report.protocol.name(), "http");

        let received = http.received();
        assert!(received.iter().all(|r| r.path == "/v1/Discover"));
        assert!(
            received
                .iter()
                .all(|r| r.headers["request-id"] == "loadgen-watch-0")
        );
        let sent: Vec<_> = received
            .iter()
            .map(|r| {
                (
                    r.body["service"]["name"].clone(),
                    r.body["service"]["revision"].clone(),
                )
            })
            .collect();
        let grpc_sent: Vec<_> = grpc
            .requests()
            .iter()
            .map(|r| {
                let service = r.service.as_ref().unwrap();
                (
                    serde_json::json!(service.name),
                    serde_json::json!(service.revision),
                )
            })
            .collect();
        assert_eq!(sent, grpc_sent);
        assert_eq!(received[2].body["service"]["revision"], "rev-3");
        assert_eq!(received[0].body["type"], "INSTANCE");
    }

    #[tokio::test]
    async fn an_http_answer_that_is_no_polaris_json_is_counted_by_its_status() {
        use crate::scenario::fake_http::FakeHttp;
        let server = FakeHttp::default().without_api().start().await;
        let words = ["--protocol", "http", "--watchers", "1", "--count", "2"];
        let run = discover(&server.address, &words).await;
        assert_eq!(codes(&run), [("http:404", 2)]);
        assert!(!run.report.is_success());
    }
}
