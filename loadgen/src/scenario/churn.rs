//! Churn: each instance registers and, once answered, deregisters (same namespace,
//! service, host and port), as short-lived instances do. Both latencies are kept
//! apart.
//!
//! Its instances come from the top of the fleet's index space, so they never meet
//! the instances `0..count` a storm or restart with the same seed registers: a churn
//! run after a storm leaves the storm's fleet in place.

use std::time::Duration;

use clap::Args;

use crate::fleet::{Fleet, MAX_FLEET_SIZE};
use crate::options::{ConnectionOptions, FleetOptions, LoadOptions, OutputOptions, Protocol};
use crate::proto;
use crate::report::{EXECUTE_SUCCESS, Expectation, Operation};
use crate::runner::{Pacing, RunPlan, progress_wanted, run_load};
use crate::scenario::{REGISTER, ScenarioRun, SetupError, connect, finish, outcome_of, run_setup};

/// A fresh instance registers, and a registered one deregisters, with success.
pub const EXPECTATION: Expectation = Expectation {
    codes: &[EXECUTE_SUCCESS],
};

/// Operation index of the register, then of its deregister.
const REGISTER_STEP: usize = 0;
const DEREGISTER_STEP: usize = 1;

const OPERATIONS: &[Operation] = &[
    Operation {
        name: REGISTER,
        expectation: EXPECTATION,
    },
    Operation {
        name: "deregister",
        expectation: EXPECTATION,
    },
];

/// Options of the `churn` scenario.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub load: LoadOptions,

    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Gradual start: the allowed in-flight grows linearly from 1 to --in-flight
    /// over DURATION (e.g. 10s); 0 starts at full in-flight.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// Fleet index of churn request `index`: counted down from the top of the index
/// space, away from the `0..count` a storm uses.
fn fleet_index(index: u64) -> u64 {
    debug_assert!(index < MAX_FLEET_SIZE);
    MAX_FLEET_SIZE - 1 - index
}

/// The message of operation `step` of churn request `index`: the instance's register
/// request, or the deregister naming the same namespace, service, host and port.
fn message(fleet: &Fleet, index: u64, step: usize) -> proto::Instance {
    let instance = fleet_index(index);
    if step == REGISTER_STEP {
        return fleet.instance(instance);
    }
    debug_assert_eq!(step, DEREGISTER_STEP);
    let (namespace, service) = fleet.placement(instance);
    let (host, port) = fleet.address(instance);
    proto::Instance {
        namespace: Some(namespace.to_owned()),
        service: Some(service.to_owned()),
        host: Some(host.to_string()),
        port: Some(u32::from(port)),
        ..Default::default()
    }
}

/// Registers and deregisters `count` instances, each pair on one worker, and reports.
/// A deregister is sent even when its register failed: it cleans up a register that
/// timed out but was written, and an unexpected answer to either is reported.
pub async fn run(args: ChurnArgs) -> Result<ScenarioRun, SetupError> {
    let connection = &args.connection;
    // Never async-regis: the deregister must find the register written.
    let (pool, headers) = connect(connection, false).await?;
    let fleet = Fleet::new(&args.fleet);
    let plan = RunPlan {
        total: fleet.count(),
        in_flight: args.load.in_flight,
        pacing: Pacing::ClosedLoop { ramp: args.ramp },
        operations: OPERATIONS,
        request_timeout: connection.timeout,
        show_progress: progress_wanted(args.output.no_progress),
    };
    let setup = run_setup(
        "churn",
        connection,
        &args.load,
        Protocol::Grpc,
        pool.connection_count(),
        args.ramp,
        None,
    );

    let measured = run_load(plan, move |index, step| {
        // Both operations of a pair go over the same connection.
        let mut client = pool.client(index);
        let mut request = tonic::Request::new(message(&fleet, index, step));
        headers.apply(&mut request, &format!("{index}-{}", OPERATIONS[step].name));
        async move {
            let answer = if step == REGISTER_STEP {
                client.register_instance(request).await
            } else {
                client.deregister_instance(request).await
            };
            outcome_of(answer)
        }
    })
    .await;
    Ok(finish(setup, measured))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{EXISTED_RESOURCE, Outcome};
    use crate::scenario::{parse_args, silent_server};
    use std::collections::{BTreeMap, HashSet};

    fn fleet(words: &[&str]) -> Fleet {
        let args = parse_args::<ChurnArgs>(words.iter().copied()).unwrap();
        Fleet::new(&args.fleet)
    }

    #[test]
    fn each_deregister_names_the_instance_its_register_created() {
        let fleet = fleet(&["--count", "500", "--namespaces", "3", "--services", "7"]);
        for index in 0..500 {
            let register = message(&fleet, index, REGISTER_STEP);
            let deregister = message(&fleet, index, DEREGISTER_STEP);
            assert_eq!(deregister.namespace, register.namespace);
            assert_eq!(deregister.service, register.service);
            assert_eq!(deregister.host, register.host);
            assert_eq!(deregister.port, register.port);
            assert!(register.host.is_some() && register.port.is_some());
            // Nothing else: a deregister carries no content to validate.
            assert_eq!(deregister.id, None);
            assert!(deregister.metadata.is_empty() && deregister.health_check.is_none());
        }
    }

    #[test]
    fn pairs_are_distinct_instances() {
        let fleet = fleet(&["--count", "10000"]);
        let addresses: HashSet<_> = (0..10_000)
            .map(|index| fleet.address(fleet_index(index)))
            .collect();
        assert_eq!(addresses.len(), 10_000);
    }

    #[test]
    fn churn_never_touches_the_storm_fleet_of_the_same_seed() {
        use crate::scenario::storm::{StormArgs, fleet_of};
        let storm = parse_args::<StormArgs>(["--count", "20000", "--seed", "9"]).unwrap();
        let storm_fleet = fleet_of(&storm);
        let storm_keys: HashSet<_> = (0..storm_fleet.count())
            .map(|index| {
                let instance = storm_fleet.instance(index);
                (
                    instance.namespace,
                    instance.service,
                    instance.host,
                    instance.port,
                )
            })
            .collect();
        let churn_fleet = fleet(&["--count", "20000", "--seed", "9"]);
        for index in 0..churn_fleet.count() {
            let instance = message(&churn_fleet, index, REGISTER_STEP);
            let key = (
                instance.namespace,
                instance.service,
                instance.host,
                instance.port,
            );
            assert!(
                !storm_keys.contains(&key),
                "churn {index} is a storm instance"
            );
        }
    }

    #[test]
    fn only_success_is_expected_of_either_operation() {
        for operation in OPERATIONS {
            assert!(
                operation
                    .expectation
                    .accepts(Outcome::Answered(Some(EXECUTE_SUCCESS)))
            );
            assert!(
                !operation
                    .expectation
                    .accepts(Outcome::Answered(Some(EXISTED_RESOURCE)))
            );
        }
        assert_eq!(OPERATIONS[REGISTER_STEP].name, "register");
        assert_eq!(OPERATIONS[DEREGISTER_STEP].name, "deregister");
    }

    #[tokio::test]
    async fn against_a_silent_server_every_register_and_deregister_times_out() {
        let (address, silent_server) = silent_server().await;
        let args = parse_args::<ChurnArgs>([
            "--target",
            &address,
            "--count",
            "4",
            "--in-flight",
            "2",
            "--timeout",
            "200ms",
            "--no-progress",
        ])
        .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), run(args))
            .await
            .expect("the churn returns");
        silent_server.abort();
        match outcome {
            Ok(run) => {
                let report = &run.report;
                assert_eq!(report.scenario, "churn");
                assert_eq!(report.count, 8);
                let ops: Vec<_> = report
                    .operations
                    .iter()
                    .map(|op| (op.op, op.count))
                    .collect();
                assert_eq!(ops, [("register", 4), ("deregister", 4)]);
                for op in &report.operations {
                    assert_eq!(op.unexpected, BTreeMap::from([("timeout".to_owned(), 4)]));
                }
                assert_eq!(
                    report.unexpected_summary(),
                    "register timeout x4, deregister timeout x4"
                );
                // Each pair waited for its register's deadline before its deregister.
                assert!(report.elapsed_s >= 2.0 * 0.2 * 2.0, "{}", report.elapsed_s);
            }
            // Some h2 versions wait for the server's SETTINGS before the channel is up.
            Err(error) => assert!(matches!(error, SetupError::Connect(_)), "{error:?}"),
        }
    }
}
