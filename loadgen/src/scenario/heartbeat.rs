//! Heartbeat: a registered fleet beats as SDKs do, each instance by its id every ttl
//! from its own phase, open loop: a beat is due whether or not the ones before were
//! answered, and its latency counts from when it was due. A Discover watch over the
//! fleet's services checks that no instance that beats is listed unhealthy and, with
//! `--stop-share`, that the instances that stop beating are, three ttls after their
//! last beat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::beats::{BeatSchedule, stopped_instances};
use crate::expiry::{AnsweredBeat, BeatLog, ExpiryCheck, MISSED_BEATS};
use crate::fleet::{Fleet, IdDigest, parse_id};
use crate::options::{
    AckOptions, ConnectionOptions, FleetOptions, LoadOptions, OutputOptions, Protocol,
    ProtocolOptions,
};
use crate::pool::ClientPool;
use crate::proto;
use crate::report::{
    DATA_NO_CHANGE, EXECUTE_SUCCESS, Expectation, HeartbeatFigures, OfferedLoad, Operation,
    Outcome, Report, Tally, WatchFigures,
};
use crate::runner::{Pacer, Pacing, RunPlan, progress_wanted, run_load};
use crate::scenario::discover_stream::{DiscoverStream, HealthListing, instances_request};
use crate::scenario::storm::{self, StormArgs};
use crate::scenario::{
    RequestHeaders, ScenarioRun, SetupError, connect, finish, outcome_of, parse_run_duration,
    run_setup,
};
use crate::schedule::DueTimes;

/// A beat of a registered instance is answered ExecuteSuccess.
const OPERATIONS: &[Operation] = &[Operation {
    name: "heartbeat",
    expectation: Expectation {
        codes: &[EXECUTE_SUCCESS],
    },
}];

/// The watch polls each service with the revision of its last full answer.
const WATCH_EXPECTATION: Expectation = Expectation {
    codes: &[EXECUTE_SUCCESS, DATA_NO_CHANGE],
};

/// From the start of one poll of a watched service to its next.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Added to three ttls for the default `--expiry-timeout`: the server's check interval,
/// its health write and the watch's poll, with room to spare.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);

/// Options of the `heartbeat` scenario.
#[derive(Debug, Clone, Args)]
pub struct HeartbeatArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub load: LoadOptions,

    /// The fleet that beats: a storm with the same options and seed registers it.
    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Beat for DURATION; with --stop-share, the others beat on at least until
    /// --expiry-timeout after the stop.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_run_duration)]
    pub duration: Duration,

    /// Register the fleet first, as `storm` does with the same options.
    #[arg(long)]
    pub register: bool,

    /// With --register: the ids of the registrations acknowledged.
    #[command(flatten)]
    pub acks: AckOptions,

    /// Share of the fleet (0 to 1), drawn by --seed, that stops beating after
    /// --stop-after; each must then be listed unhealthy within --expiry-timeout.
    #[arg(long = "stop-share", value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub stop_share: f64,

    /// When the stopped share's beats end, from the first beat; at least one ttl, so
    /// that every instance has beaten.
    #[arg(long = "stop-after", value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_after: Duration,

    /// How long after the stop every stopped instance must be listed unhealthy
    /// [default: 3 × ttl + 10s].
    #[arg(long = "expiry-timeout", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expiry_timeout: Option<Duration>,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// What a heartbeat run sends, and for how long.
#[derive(Debug)]
struct HeartbeatPlan {
    schedule: BeatSchedule,
    /// The instances that stop beating, in increasing order.
    stopped: Vec<u64>,
    /// Beats due before the run's end.
    beats: u64,
    /// From the first beat to the run's end.
    length: Duration,
    expiry_timeout: Duration,
}

impl HeartbeatPlan {
    fn new(args: &HeartbeatArgs) -> Result<Self, SetupError> {
        if args.fleet.ttl == 0 {
            return Err(SetupError::NoHeartbeat);
        }
        let ttl = Duration::from_secs(u64::from(args.fleet.ttl));
        let expiry_timeout = args
            .expiry_timeout
            .unwrap_or(ttl * MISSED_BEATS + EXPIRY_SLACK);
        let fleet = BeatSchedule::new(args.fleet.count, ttl);
        if args.stop_share == 0.0 {
            return Ok(HeartbeatPlan {
                beats: fleet.count_within(args.duration),
                schedule: fleet,
                stopped: Vec::new(),
                length: args.duration,
                expiry_timeout,
            });
        }
        if args.stop_after < ttl {
            return Err(SetupError::StopBeforeFirstBeats {
                stop_after: args.stop_after,
                ttl,
            });
        }
        let stopped = stopped_instances(args.fleet.count, args.stop_share, args.fleet.seed);
        let schedule = fleet.stopping(args.stop_after, &stopped);
        let length = args.duration.max(args.stop_after + expiry_timeout);
        Ok(HeartbeatPlan {
            beats: schedule.count_within(length),
            schedule,
            stopped,
            length,
            expiry_timeout,
        })
    }
}

/// Beats the fleet on schedule while the watch looks at its services, and reports.
pub async fn run(args: HeartbeatArgs) -> Result<ScenarioRun, SetupError> {
    let plan = HeartbeatPlan::new(&args)?;
    let registered = if args.register {
        Some(register(&args).await?)
    } else {
        None
    };
    let acknowledged = registered.as_ref().and_then(|storm| storm.acknowledged);
    let connection = &args.connection;
    let (pool, headers) = connect(connection, false).await?;
    let fleet = Fleet::new(&args.fleet);
    let FleetIds { ids, indices } = FleetIds::new(&fleet);

    let first_round = plan.beats.min(fleet.count());
    let log = Arc::new(BeatLog::new(first_round, plan.stopped));
    let ttl = plan.schedule.ttl();
    let check = ExpiryCheck::new(&log, ttl, args.stop_after, plan.expiry_timeout);
    let fleet_watch = FleetWatch {
        services: watched_services(&fleet),
        indices,
        log: Arc::clone(&log),
        check,
    };
    let (beats_done, beating) = watch::channel(false);
    let watcher = fleet_watch
        .start(
            &connection.targets[0],
            connection.timeout,
            &headers,
            beating,
        )
        .await?;

    let schedule = Arc::new(plan.schedule);
    let offered = OfferedLoad {
        rate_per_s: plan.beats as f64 / plan.length.as_secs_f64(),
        schedule: schedule.offset(plan.beats.saturating_sub(1)),
    };
    let run_plan = RunPlan {
        total: plan.beats,
        in_flight: args.load.in_flight,
        pacing: Pacing::OpenLoop {
            schedule: Arc::clone(&schedule) as Arc<dyn DueTimes>,
            pacer: Pacer::Thread,
        },
        operations: OPERATIONS,
        request_timeout: connection.timeout,
        show_progress: progress_wanted(args.output.no_progress),
    };
    let setup = run_setup(
        "heartbeat",
        connection,
        &args.load,
        Protocol::Grpc,
        pool.connection_count(),
        Duration::ZERO,
        Some(offered),
    );

    let stopping = schedule.stop_at().is_some();
    let measured = run_load(run_plan, move |index, _| {
        let beat = schedule.beat(index).expect("only scheduled beats are sent");
        log.sent(index, beat.instance, schedule.is_last_before_stop(index));
        let instance = proto::Instance {
            id: Some(ids[beat.instance as usize].clone()),
            ..Default::default()
        };
        let mut request = tonic::Request::new(instance);
        headers.apply(&mut request, &index.to_string());
        let mut client = pool.client(index);
        let first_round_beat = log.first_round_beat(index);
        // A stopping instance's beats are logged once answered, for its expiry.
        let logged = log
            .stopping(beat.instance)
            .map(|rank| (rank, Arc::clone(&log), log.now()));
        async move {
            let _done_when_dropped = first_round_beat;
            let outcome = outcome_of(client.heartbeat(request).await);
            if let Some((rank, log, sent)) = logged
                && outcome == Outcome::Answered(Some(EXECUTE_SUCCESS))
            {
                let answered = log.now();
                log.answered(rank, AnsweredBeat { sent, answered });
            }
            outcome
        }
    })
    .await;
    beats_done.send_replace(true);
    let watched = watcher.await.expect("the watch panicked");

    let mut finished = finish(setup, measured);
    finished.report.heartbeat = Some(HeartbeatFigures {
        instances: fleet.count(),
        ttl_s: args.fleet.ttl,
        registered_s: registered.map(|storm| storm.elapsed_s),
        wrongly_expired: watched.check.wrongly_expired(),
        expiry: stopping.then(|| watched.check.figures(args.stop_share)),
        watch: watched.figures,
    });
    finished.report.acknowledged = acknowledged;
    Ok(finished)
}

/// Registers the fleet as a storm with the same options would; its report.
async fn register(args: &HeartbeatArgs) -> Result<Report, SetupError> {
    let storm_args = StormArgs {
        connection: args.connection.clone(),
        protocol: ProtocolOptions {
            protocol: Protocol::Grpc,
        },
        load: args.load.clone(),
        fleet: args.fleet.clone(),
        async_regis: false,
        ramp: Duration::ZERO,
        acks: args.acks.clone(),
        output: OutputOptions {
            json: false,
            hdr_out: None,
            no_progress: args.output.no_progress,
        },
    };
    let report = storm::run(storm_args).await?.report;
    if !report.is_success() {
        return Err(SetupError::RegistrationFailed {
            summary: report.unexpected_summary(),
        });
    }
    Ok(report)
}

/// Each instance's id, built once: beats carry it, and the watch maps the ids it is
/// listed with back to instances.
struct FleetIds {
    /// By fleet index.
    ids: Vec<String>,
    /// Fleet index by id.
    indices: HashMap<IdDigest, u64>,
}

impl FleetIds {
    fn new(fleet: &Fleet) -> Self {
        let count = usize::try_from(fleet.count()).expect("a fleet that fits in memory");
        let mut ids = Vec::with_capacity(count);
        let mut indices = HashMap::with_capacity(count);
        for index in 0..fleet.count() {
            let digest = fleet.id_digest(index);
            ids.push(hex::encode(digest));
            indices.insert(digest, index);
        }
        FleetIds { ids, indices }
    }
}

/// The services of the grid that hold instances of the fleet: all of them unless the
/// fleet has fewer instances than the grid has cells.
fn watched_services(fleet: &Fleet) -> Vec<(String, String)> {
    let cells = fleet.grid().cells().min(fleet.count());
    (0..cells)
        .map(|cell| {
            let (namespace, service) = fleet.grid().cell(cell);
            (namespace.to_owned(), service.to_owned())
        })
        .collect()
}

/// The watch over the fleet's services: a Discover stream per service, all on one
/// connection, each polled every [`POLL_INTERVAL`] on its own. Polled in turn on one
/// stream, a service waited for the full answers of the others (10,000 instances each
/// while their health changes) before its next poll, and that wait counted in the
/// delays the watch reports.
struct FleetWatch {
    services: Vec<(String, String)>,
    indices: HashMap<IdDigest, u64>,
    log: Arc<BeatLog>,
    check: ExpiryCheck,
}

/// What the watch saw.
struct Watched {
    check: ExpiryCheck,
    figures: WatchFigures,
}

/// What the polls of every service share.
struct WatchShared {
    indices: HashMap<IdDigest, u64>,
    log: Arc<BeatLog>,
    check: Mutex<ExpiryCheck>,
}

impl FleetWatch {
    /// Starts the watch on a runtime of its own, on a thread of its own, with its own
    /// connection to `target`, once connected; what it saw comes once `beating` turns
    /// true. Decoding a full answer (10,000 instances) takes milliseconds of a thread:
    /// on the beats' runtime, it held up the beats queued behind it on that worker, and
    /// their latency from send grew while health changed. Apart, the kernel shares the
    /// cores between the watch and the beats as it does between any two threads.
    async fn start(
        self,
        target: &str,
        timeout: Duration,
        headers: &RequestHeaders,
        beating: watch::Receiver<bool>,
    ) -> Result<oneshot::Receiver<Watched>, SetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the watch");
        let (connected, connecting) = oneshot::channel();
        let (watched, watching) = oneshot::channel();
        let (target, headers) = (target.to_owned(), headers.clone());
        std::thread::Builder::new()
            .name("loadgen-watch".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let pool = match ClientPool::connect(&[target], 1, timeout).await {
                        Ok(pool) => pool,
                        Err(error) => {
                            let _ = connected.send(Err(error));
                            return;
                        }
                    };
                    let _ = connected.send(Ok(()));
                    let streams = (0..self.services.len())
                        .map(|slot| {
                            DiscoverStream::new(
                                pool.grpc(0),
                                headers.clone(),
                                format!("heartbeat-watch-{slot}"),
                                timeout,
                            )
                        })
                        .collect();
                    let _ = watched.send(self.run(streams, beating).await);
                });
            })
            .expect("spawn the watch thread");
        connecting
            .await
            .expect("the watch thread reports its connection")?;
        Ok(watching)
    }

    /// Polls every service on its stream of `streams` (one each, in order), each
    /// every [`POLL_INTERVAL`] (or as soon as its last poll ends, when one takes
    /// longer), until `beating` turns true.
    async fn run(
        self,
        streams: Vec<DiscoverStream<HealthListing>>,
        beating: watch::Receiver<bool>,
    ) -> Watched {
        debug_assert_eq!(streams.len(), self.services.len());
        let started = Instant::now();
        let services = self.services.len() as u64;
        let shared = Arc::new(WatchShared {
            indices: self.indices,
            log: self.log,
            check: Mutex::new(self.check),
        });
        let polls: Vec<_> = self
            .services
            .into_iter()
            .zip(streams)
            .map(|(service, stream)| {
                tokio::spawn(poll_service(
                    Arc::clone(&shared),
                    service,
                    stream,
                    beating.clone(),
                ))
            })
            .collect();
        let mut tally = Tally::default();
        for poll in polls {
            tally.merge(&poll.await.expect("a service's watch panicked"));
        }
        let figures = WatchFigures::new(
            services,
            &tally,
            WATCH_EXPECTATION,
            tally.total() / services.max(1),
            started.elapsed(),
        );
        let shared = Arc::into_inner(shared).expect("every poll has ended");
        Watched {
            check: shared
                .check
                .into_inner()
                .expect("no poll panicked holding it"),
            figures,
        }
    }
}

/// Polls one service until `beating` turns true; the answers' outcomes.
async fn poll_service(
    shared: Arc<WatchShared>,
    (namespace, service): (String, String),
    mut stream: DiscoverStream<HealthListing>,
    mut beating: watch::Receiver<bool>,
) -> Tally {
    let mut revision: Option<String> = None;
    let mut tally = Tally::default();
    loop {
        let poll = Instant::now();
        let request = instances_request(&namespace, &service, revision.clone());
        let asked = stream.ask(request).await;
        let seen = shared.log.now();
        match asked {
            Err(error) => tally.record(error.outcome()),
            Ok(answer) => {
                tally.record(Outcome::Answered(answer.code));
                if answer.code == Some(EXECUTE_SUCCESS) {
                    revision = answer.service.and_then(|listed| listed.revision);
                    let unhealthy: Vec<u64> = answer
                        .instances
                        .iter()
                        .filter(|instance| instance.healthy == Some(false))
                        .filter_map(|instance| parse_id(instance.id.as_deref()?))
                        .filter_map(|digest| shared.indices.get(&digest).copied())
                        .collect();
                    if !unhealthy.is_empty() {
                        let mut check = shared.check.lock().expect("no poll panicked holding it");
                        for index in unhealthy {
                            check.listed_unhealthy(&shared.log, index, seen);
                        }
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = beating.wait_for(|&done| done) => break,
            () = tokio::time::sleep_until(poll + POLL_INTERVAL) => {}
        }
    }
    tally
}

/// Reads `--stop-share`: a share of the fleet, from 0 to 1.
fn parse_share(text: &str) -> Result<f64, String> {
    let share: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err("must be from 0 to 1".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::fake_registry::FakeRegistry;
    use crate::scenario::parse_args;
    use std::collections::BTreeMap;

    fn plan(words: &[&str]) -> Result<HeartbeatPlan, SetupError> {
        HeartbeatPlan::new(&parse_args::<HeartbeatArgs>(words.iter().copied()).unwrap())
    }

    fn secs(value: u64) -> Duration {
        Duration::from_secs(value)
    }

    #[test]
    fn by_default_the_whole_fleet_beats_for_half_a_minute() {
        let args = parse_args::<HeartbeatArgs>([]).unwrap();
        assert_eq!(args.duration, secs(30));
        assert_eq!((args.fleet.count, args.fleet.ttl), (100_000, 5));
        assert_eq!(args.stop_share, 0.0);
        assert_eq!(args.stop_after, secs(10));
        assert_eq!(args.expiry_timeout, None);
        assert!(!args.register);
        let plan = plan(&[]).unwrap();
        // 100,000 instances at ttl 5: 20,000 beats a second.
        assert_eq!(plan.beats, 600_000);
        assert_eq!(plan.length, secs(30));
        assert!(plan.stopped.is_empty());
        assert_eq!(plan.schedule.stop_at(), None);
        assert_eq!(plan.expiry_timeout, secs(25));
    }

    #[test]
    fn shares_durations_and_ttls_are_checked() {
        for bad in ["-0.1", "1.5", "NaN", "half"] {
            let parsed = parse_args::<HeartbeatArgs>(["--stop-share", bad]);
            assert!(parsed.is_err(), "{bad} accepted");
        }
        assert!(parse_args::<HeartbeatArgs>(["--duration", "0s"]).is_err());
        assert!(matches!(
            plan(&["--ttl", "0"]),
            Err(SetupError::NoHeartbeat)
        ));
        let early = plan(&["--stop-share", "0.1", "--stop-after", "4s"]);
        assert!(
            matches!(early, Err(SetupError::StopBeforeFirstBeats { .. })),
            "{early:?}"
        );
        // Without a share to stop, --stop-after plays no part.
        assert!(plan(&["--stop-after", "1s"]).is_ok());
    }

    #[test]
    fn the_others_beat_on_until_the_expiry_timeout_after_the_stop() {
        let words = [
            "--count",
            "1000",
            "--stop-share",
            "0.1",
            "--stop-after",
            "20s",
            "--seed",
            "7",
        ];
        let stopping = plan(&words).unwrap();
        assert_eq!(stopping.stopped, stopped_instances(1000, 0.1, 7));
        assert_eq!(stopping.stopped.len(), 100);
        assert_eq!(stopping.schedule.stop_at(), Some(secs(20)));
        assert_eq!(stopping.expiry_timeout, secs(25));
        assert_eq!(stopping.length, secs(45));
        // 20 s of the whole fleet at ttl 5, then 25 s of the 900 others.
        assert_eq!(stopping.beats, 4000 + 900 * 5);
        let longer =
            plan(&[&words[..], &["--duration", "60s", "--expiry-timeout", "5s"]].concat()).unwrap();
        assert_eq!(longer.length, secs(60));
        assert_eq!(longer.expiry_timeout, secs(5));
        assert_eq!(longer.beats, 4000 + 900 * 8);
    }

    /// Runs a heartbeat against `server` with these options besides the target.
    async fn heartbeat(address: &str, words: &[&str]) -> ScenarioRun {
        let words = [&["--target", address, "--no-progress"], words].concat();
        let args = parse_args::<HeartbeatArgs>(words).unwrap();
        run(args).await.expect("the fake registry is up")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopped_instances_are_listed_unhealthy_three_ttls_after_their_last_beat() {
        let server = FakeRegistry::expiring_after(3.0).start().await;
        let fleet_words = ["--count", "200", "--services", "4", "--ttl", "1"];
        let words = [
            &fleet_words[..],
            &[
                "--register",
                "--duration",
                "1s",
                "--stop-share",
                "0.2",
                "--stop-after",
                "1s",
                "--expiry-timeout",
                "5s",
            ],
        ]
        .concat();
        let run = heartbeat(&server.address, &words).await;
        let report = &run.report;
        assert!(report.is_success(), "{}", report.to_table());
        // The whole fleet in the first second, then the 160 others for 5 s.
        assert_eq!(report.count, 200 + 160 * 5);
        assert_eq!(report.codes, BTreeMap::from([("200000".to_owned(), 1000)]));
        let heartbeat = report.heartbeat.as_ref().unwrap();
        assert!(heartbeat.registered_s.is_some());
        assert_eq!(heartbeat.wrongly_expired, 0);
        assert_eq!(heartbeat.watch.services, 4);
        assert!(heartbeat.watch.unexpected.is_empty());
        let expiry = heartbeat.expiry.as_ref().unwrap();
        assert_eq!(
            (
                expiry.stopped,
                expiry.turned_unhealthy,
                expiry.still_healthy
            ),
            (40, 40, 0)
        );
        let delay = expiry.delay_ms.unwrap();
        assert!(delay.min >= 3000.0 && delay.max <= 4500.0, "{delay:?}");

        // Each stopped instance beat once, in the first second; the others 6 times,
        // a ttl apart on average (each arrival may be late by a busy host's delay).
        let fleet = Fleet::new(&parse_args::<HeartbeatArgs>(fleet_words).unwrap().fleet);
        let stopped = stopped_instances(200, 0.2, 1);
        for index in 0..200 {
            let beats = server.beats_of(&fleet.instance_id(index));
            let expected = if stopped.contains(&index) { 1 } else { 6 };
            assert_eq!(beats.len(), expected, "instance {index}");
            if let [first, .., last] = beats[..] {
                let mean_gap = (last - first) / (beats.len() as u32 - 1);
                let around_a_ttl = Duration::from_millis(800)..Duration::from_millis(1200);
                assert!(
                    around_a_ttl.contains(&mean_gap),
                    "instance {index}: {mean_gap:?}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_listed_unhealthy_while_they_beat_fail_the_run() {
        // This registry expires an instance half a ttl after its last beat.
        let server = FakeRegistry::expiring_after(0.5).start().await;
        let words = [
            "--count",
            "20",
            "--services",
            "2",
            "--ttl",
            "1",
            "--register",
            "--duration",
            "4s",
        ];
        let run = heartbeat(&server.address, &words).await;
        let report = &run.report;
        assert!(report.unexpected.is_empty(), "every beat was answered");
        let heartbeat = report.heartbeat.as_ref().unwrap();
        assert_eq!(heartbeat.wrongly_expired, 20);
        assert!(heartbeat.expiry.is_none());
        assert!(!report.is_success());
        assert_eq!(
            report.unexpected_summary(),
            "20 instances listed unhealthy while beating"
        );
    }
}
