//! Open loop: registrations arrive at a fixed rate whatever the server does, as
//! from many independent clients. Each request's latency counts from when it was
//! due, not from when it could be sent, so a server that stalls shows its whole
//! queue in the percentiles (no coordinated omission).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::acked::AckLog;
use crate::fleet::{Fleet, MAX_FLEET_SIZE};
use crate::options::{
    AckOptions, ConnectionOptions, FleetOptions, LoadOptions, OutputOptions, Protocol,
};
use crate::report::{OfferedLoad, Operation};
use crate::runner::{Pacer, Pacing, RunPlan, progress_wanted, run_load};
use crate::scenario::{
    REGISTER, ScenarioRun, SetupError, connect, finish, register_answer_of, restart, run_setup,
    storm,
};
use crate::schedule::Schedule;

/// Highest `--rate` accepted, in requests per second.
const MAX_RATE: f64 = 10_000_000.0;

/// Fresh instances are judged as in a storm.
const FRESH_OPERATIONS: &[Operation] = &[Operation {
    name: REGISTER,
    expectation: storm::EXPECTATION,
}];

/// Re-registered instances are judged as in a restart.
const UNCHANGED_OPERATIONS: &[Operation] = &[Operation {
    name: REGISTER,
    expectation: restart::EXPECTATION,
}];

/// Options of the `open-loop` scenario.
#[derive(Debug, Clone, Args)]
pub struct OpenLoopArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub load: LoadOptions,

    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Requests started per second, answered or not; request i is due i/R seconds
    /// after the start (after the ramp, if any). Fractions are allowed.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: f64,

    /// Send every request due within DURATION (rate × DURATION of them without a
    /// ramp) instead of --count requests.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Gradual start: the rate grows linearly from 0 to R over DURATION (e.g. 10s),
    /// then holds; --duration includes the ramp.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,

    /// Re-register instances 0..--count of the fleet (in turns when more requests
    /// are due) instead of fresh ones: after a storm with the same fleet options and
    /// seed, every one is unchanged, and ExistedResource is expected.
    #[arg(long)]
    pub unchanged: bool,

    /// Send `async-regis: true`: the server answers once the request is queued.
    #[arg(long = "async-regis")]
    pub async_regis: bool,

    #[command(flatten)]
    pub acks: AckOptions,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// Which instances the requests register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Instances {
    /// Request `i` registers fleet instance `i`: as many instances as requests.
    Fresh,
    /// Request `i` registers instance `i mod fleet`.
    Unchanged { fleet: u64 },
}

impl Instances {
    fn fleet_index(self, index: u64) -> u64 {
        match self {
            Instances::Fresh => index,
            Instances::Unchanged { fleet } => index % fleet,
        }
    }
}

/// What an open-loop run sends.
#[derive(Debug)]
struct OpenLoopPlan {
    schedule: Schedule,
    requests: u64,
    instances: Instances,
    fleet: Fleet,
}

impl OpenLoopPlan {
    fn new(args: &OpenLoopArgs) -> Result<Self, SetupError> {
        let schedule = Schedule::new(args.rate, args.ramp);
        let requests = match args.duration {
            Some(duration) => schedule.count_within(duration),
            None => args.fleet.count,
        };
        if requests == 0 {
            return Err(SetupError::NothingScheduled {
                duration: args.duration.unwrap_or_default(),
            });
        }
        let (instances, fleet_size) = if args.unchanged {
            let fleet = args.fleet.count;
            (Instances::Unchanged { fleet }, fleet)
        } else {
            (Instances::Fresh, requests)
        };
        if fleet_size > MAX_FLEET_SIZE {
            return Err(SetupError::FleetTooLarge { requests });
        }
        let fleet = Fleet::new(&FleetOptions {
            count: fleet_size,
            ..args.fleet.clone()
        });
        Ok(OpenLoopPlan {
            schedule,
            requests,
            instances,
            fleet,
        })
    }
}

/// Sends registrations on the schedule and reports.
pub async fn run(args: OpenLoopArgs) -> Result<ScenarioRun, SetupError> {
    let OpenLoopPlan {
        schedule,
        requests,
        instances,
        fleet,
    } = OpenLoopPlan::new(&args)?;
    let connection = &args.connection;
    let (pool, headers) = connect(connection, args.async_regis).await?;
    let acks = Arc::new(AckLog::create(&args.acks)?);
    let operations = match instances {
        Instances::Fresh => FRESH_OPERATIONS,
        Instances::Unchanged { .. } => UNCHANGED_OPERATIONS,
    };
    let plan = RunPlan {
        total: requests,
        in_flight: args.load.in_flight,
        pacing: Pacing::OpenLoop {
            schedule: Arc::new(schedule),
            pacer: Pacer::Thread,
        },
        operations,
        request_timeout: connection.timeout,
        show_progress: progress_wanted(args.output.no_progress),
    };
    let offered = OfferedLoad {
        rate_per_s: schedule.rate(),
        schedule: schedule.offset(requests - 1),
    };
    let setup = run_setup(
        "open-loop",
        connection,
        &args.load,
        Protocol::Grpc,
        pool.connection_count(),
        args.ramp,
        Some(offered),
    );

    let recording = Arc::clone(&acks);
    let measured = run_load(plan, move |index, _| {
        let mut client = pool.client(index);
        let instance = fleet.instance(instances.fleet_index(index));
        let mut request = tonic::Request::new(instance);
        headers.apply(&mut request, &index.to_string());
        let acks = Arc::clone(&recording);
        async move {
            let answer = register_answer_of(client.register_instance(request).await);
            acks.record(&answer);
            answer.outcome
        }
    })
    .await;
    let mut finished = finish(setup, measured);
    finished.report.acknowledged = acks.finish()?;
    Ok(finished)
}

/// Reads `--rate`: a positive, finite number of requests per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE {
        Ok(rate)
    } else {
        Err(format!("must be above 0 and at most {MAX_RATE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{parse_args, silent_server};
    use std::collections::BTreeMap;

    fn plan(words: &[&str]) -> Result<OpenLoopPlan, SetupError> {
        OpenLoopPlan::new(&parse_args::<OpenLoopArgs>(words.iter().copied()).unwrap())
    }

    #[test]
    fn rate_is_required_positive_and_finite() {
        assert!(parse_args::<OpenLoopArgs>([]).is_err());
        for bad in ["0", "-5", "inf", "NaN", "fast", "1e12"] {
            assert!(
                parse_args::<OpenLoopArgs>(["--rate", bad]).is_err(),
                "{bad} accepted"
            );
        }
        let args = parse_args::<OpenLoopArgs>(["--rate", "0.5"]).unwrap();
        assert_eq!(args.rate, 0.5);
        assert_eq!(args.ramp, Duration::ZERO);
        assert_eq!(args.duration, None);
        assert!(!args.unchanged);
    }

    #[test]
    fn count_decides_the_requests_by_default() {
        let plan = plan(&["--rate", "200"]).unwrap();
        assert_eq!(plan.requests, 100_000);
        assert_eq!(plan.instances, Instances::Fresh);
        let plan = self::plan(&["--rate", "200", "--count", "500"]).unwrap();
        assert_eq!(plan.requests, 500);
        assert_eq!(plan.fleet.count(), 500);
    }

    #[test]
    fn duration_makes_rate_times_duration_requests() {
        let plan = plan(&["--rate", "200", "--duration", "10s"]).unwrap();
        assert_eq!(plan.requests, 2000);
        assert_eq!(plan.fleet.count(), 2000);
        assert_eq!(plan.schedule.offset(1999), Duration::from_millis(9995));
        // A ramp runs at half the rate on average: 1 s at 0→200/s, then 9 s at 200/s.
        let ramped = self::plan(&["--rate", "200", "--duration", "10s", "--ramp", "1s"]).unwrap();
        assert_eq!(ramped.requests, 100 + 1800);
    }

    #[test]
    fn an_empty_schedule_is_refused() {
        let error = plan(&["--rate", "1", "--duration", "0s"]).unwrap_err();
        assert!(
            matches!(error, SetupError::NothingScheduled { .. }),
            "{error}"
        );
    }

    #[test]
    fn fresh_requests_register_distinct_storm_instances() {
        let plan = plan(&["--rate", "100", "--duration", "3s", "--seed", "4"]).unwrap();
        let storm = parse_args::<storm::StormArgs>(["--count", "300", "--seed", "4"]).unwrap();
        let storm_fleet = storm::fleet_of(&storm);
        for index in 0..plan.requests {
            let fleet_index = plan.instances.fleet_index(index);
            assert_eq!(fleet_index, index);
            assert_eq!(
                plan.fleet.instance(fleet_index),
                storm_fleet.instance(index)
            );
        }
    }

    #[test]
    fn unchanged_requests_cycle_over_the_fleet() {
        let plan = plan(&[
            "--rate",
            "100",
            "--duration",
            "25s",
            "--count",
            "1000",
            "--unchanged",
        ])
        .unwrap();
        assert_eq!(plan.requests, 2500);
        assert_eq!(plan.instances, Instances::Unchanged { fleet: 1000 });
        assert_eq!(plan.fleet.count(), 1000);
        let indices: Vec<_> = [0, 999, 1000, 2499]
            .map(|index| plan.instances.fleet_index(index))
            .to_vec();
        assert_eq!(indices, [0, 999, 0, 499]);
    }

    #[test]
    fn unchanged_runs_are_judged_as_restarts() {
        use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE, Outcome};
        for operations in [FRESH_OPERATIONS, UNCHANGED_OPERATIONS] {
            let expectation = operations[0].expectation;
            assert!(expectation.accepts(Outcome::Answered(Some(EXECUTE_SUCCESS))));
            assert!(expectation.accepts(Outcome::Answered(Some(EXISTED_RESOURCE))));
        }
        assert_eq!(
            UNCHANGED_OPERATIONS[0].expectation.codes,
            restart::EXPECTATION.codes
        );
    }

    #[tokio::test]
    async fn against_a_silent_server_requests_still_leave_on_schedule() {
        let (address, silent_server) = silent_server().await;
        // 20/s for 0.5 s: 10 requests, due every 50 ms, each timing out after 200 ms.
        let args = parse_args::<OpenLoopArgs>([
            "--target",
            &address,
            "--rate",
            "20",
            "--duration",
            "500ms",
            "--timeout",
            "200ms",
            "--no-progress",
        ])
        .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), run(args))
            .await
            .expect("the open loop returns");
        silent_server.abort();
        match outcome {
            Ok(run) => {
                let report = &run.report;
                assert_eq!(report.scenario, "open-loop");
                assert_eq!(report.count, 10);
                assert_eq!(
                    report.unexpected,
                    BTreeMap::from([("timeout".to_owned(), 10)])
                );
                let open_loop = report.open_loop.as_ref().expect("open-loop section");
                assert_eq!(open_loop.offered_rate_per_s, 20.0);
                assert_eq!(open_loop.schedule_s, 0.45);
                // Not held back by the silent server: the last one left when due.
                assert!(report.elapsed_s < 0.45 + 0.2 + 0.5, "{}", report.elapsed_s);
                assert!(open_loop.achieved_rate_per_s > 10.0);
                assert!(report.latency_ms.p50 >= 200.0);
            }
            // Some h2 versions wait for the server's SETTINGS before the channel is up.
            Err(error) => assert!(matches!(error, SetupError::Connect(_)), "{error:?}"),
        }
    }
}
