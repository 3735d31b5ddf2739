//! Startup storm: every instance of the fleet registers once, as fast as the
//! in-flight bound allows, the way a fleet does when it (re)starts at once. Over gRPC
//! or, with `--protocol http`, as the same instances' JSON to the HTTP API.

use std::time::Duration;

use std::sync::Arc;

use clap::Args;

use crate::acked::AckLog;
use crate::fleet::Fleet;
use crate::options::{
    AckOptions, ConnectionOptions, FleetOptions, LoadOptions, OutputOptions, ProtocolOptions,
};
use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE, Expectation, Operation};
use crate::runner::{Pacing, RunPlan, progress_wanted, run_load};
use crate::scenario::{REGISTER, ScenarioRun, SetupError, connect_over, finish, run_setup};

/// A first registration succeeds; a repeated one (same content) is `ExistedResource`.
pub const EXPECTATION: Expectation = Expectation {
    codes: &[EXECUTE_SUCCESS, EXISTED_RESOURCE],
};

const OPERATIONS: &[Operation] = &[Operation {
    name: REGISTER,
    expectation: EXPECTATION,
}];

/// Options of the `storm` scenario, and of `restart`, which registers the same fleet.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub protocol: ProtocolOptions,

    #[command(flatten)]
    pub load: LoadOptions,

    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Send `async-regis: true`: the server answers once the request is queued.
    #[arg(long = "async-regis")]
    pub async_regis: bool,

    /// Gradual start: the allowed in-flight grows linearly from 1 to --in-flight
    /// over DURATION (e.g. 10s); 0 starts at full in-flight.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub ramp: Duration,

    #[command(flatten)]
    pub acks: AckOptions,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// Registers the whole fleet once and reports.
pub async fn run(args: StormArgs) -> Result<ScenarioRun, SetupError> {
    register_fleet("storm", OPERATIONS, args).await
}

/// The fleet a storm (or a restart) registers: instances `0..count` of the fleet
/// the options and seed describe.
pub fn fleet_of(args: &StormArgs) -> Fleet {
    Fleet::new(&args.fleet)
}

/// Registers instances `0..count` of [`fleet_of`] once each in a closed loop,
/// judged by `operations[0]`'s expectation; `storm` and `restart` differ only there.
pub(crate) async fn register_fleet(
    scenario: &'static str,
    operations: &'static [Operation],
    args: StormArgs,
) -> Result<ScenarioRun, SetupError> {
    debug_assert_eq!(operations.len(), 1);
    let connection = &args.connection;
    let (connections, headers) =
        connect_over(args.protocol.protocol, connection, args.async_regis).await?;
    let fleet = fleet_of(&args);
    let acks = Arc::new(AckLog::create(&args.acks)?);
    let plan = RunPlan {
        total: fleet.count(),
        in_flight: args.load.in_flight,
        pacing: Pacing::ClosedLoop { ramp: args.ramp },
        operations,
        request_timeout: connection.timeout,
        show_progress: progress_wanted(args.output.no_progress),
    };
    let setup = run_setup(
        scenario,
        connection,
        &args.load,
        connections.protocol(),
        connections.connection_count(),
        args.ramp,
        None,
    );

    let sending = connections.clone();
    let recording = Arc::clone(&acks);
    let measured = run_load(plan, move |index, _| {
        let call = sending.register(index, fleet.instance(index), &headers);
        let acks = Arc::clone(&recording);
        async move {
            let answer = call.await;
            acks.record(&answer);
            answer.outcome
        }
    })
    .await;
    let mut finished = finish(setup, measured);
    finished.report.connections_opened = connections.connections_opened();
    finished.report.acknowledged = acks.finish()?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{parse_args, silent_server};
    use std::collections::BTreeMap;

    #[test]
    fn ramp_defaults_to_none_and_reads_durations() {
        let plain = parse_args::<StormArgs>([]).unwrap();
        assert_eq!(plain.ramp, Duration::ZERO);
        let ramped = parse_args::<StormArgs>(["--ramp", "1m 30s"]).unwrap();
        assert_eq!(ramped.ramp, Duration::from_secs(90));
        assert!(parse_args::<StormArgs>(["--ramp", "fast"]).is_err());
    }

    #[test]
    fn storm_accepts_success_and_existed_resource_only() {
        use crate::report::Outcome;
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(200000))));
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(400201))));
        assert!(!EXPECTATION.accepts(Outcome::Answered(Some(500001))));
    }

    #[tokio::test]
    async fn a_silent_server_ends_in_timeouts_not_a_hang() {
        let (address, silent_server) = silent_server().await;
        let args = parse_args::<StormArgs>([
            "--target",
            &address,
            "--count",
            "5",
            "--connections",
            "2",
            "--timeout",
            "300ms",
            "--no-progress",
        ])
        .unwrap();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), run(args))
            .await
            .expect("the storm returns");
        silent_server.abort();
        match outcome {
            Ok(run) => {
                assert_eq!(run.report.scenario, "storm");
                assert_eq!(
                    run.report.codes,
                    BTreeMap::from([("timeout".to_owned(), 5)])
                );
                assert!(!run.report.is_success());
            }
            // Some h2 versions wait for the server's SETTINGS before the channel is up.
            Err(error) => assert!(matches!(error, SetupError::Connect(_)), "{error:?}"),
        }
    }

    /// Storm words for a small fleet sent over HTTP to `address`.
    fn http_storm(address: &str) -> StormArgs {
        parse_args::<StormArgs>([
            "--protocol",
            "http",
            "--target",
            address,
            "--count",
            "20",
            "--namespaces",
            "2",
            "--services",
            "3",
            "--connections",
            "3",
            "--in-flight",
            "8",
            "--token",
            "secret",
            "--no-progress",
        ])
        .unwrap()
    }

    #[test]
    fn protocol_defaults_to_grpc_and_reads_http() {
        use crate::options::Protocol;
        let plain = parse_args::<StormArgs>([]).unwrap();
        assert_eq!(plain.protocol.protocol, Protocol::Grpc);
        let http = parse_args::<StormArgs>(["--protocol", "http"]).unwrap();
        assert_eq!(http.protocol.protocol, Protocol::Http);
        assert!(parse_args::<StormArgs>(["--protocol", "h3"]).is_err());
    }

    #[tokio::test]
    async fn an_http_storm_sends_the_fleet_as_json_on_the_connections_it_opened() {
        use crate::scenario::fake_http::FakeHttp;
        let server = FakeHttp::default().start().await;
        let args = http_storm(&server.address);
        let fleet = fleet_of(&args);
        let run = run(args).await.unwrap();
        assert_eq!(
            run.report.codes,
            BTreeMap::from([("200000".to_owned(), 20)])
        );
        assert!(run.report.is_success());
        assert_eq!(run.report.protocol.name(), "http");
        assert_eq!(run.report.connections, 3);
        assert_eq!(run.report.connections_opened, Some(3));
        assert_eq!(server.connections_accepted(), 3);

        let mut received = server.received();
        assert_eq!(received.len(), 20);
        received.sort_by_key(|r| {
            let id = r.headers["request-id"].to_str().unwrap().to_owned();
            id.trim_start_matches("loadgen-").parse::<u64>().unwrap()
        });
        for (index, request) in received.iter().enumerate() {
            let index = index as u64;
            assert_eq!(request.path, "/v1/RegisterInstance");
            assert_eq!(request.headers["x-polaris-token"], "secret");
            assert_eq!(
                request.headers["request-id"],
                format!("loadgen-{index}").as_str()
            );
            let sent = crate::polaris_json::instance_body(&fleet.instance(index));
            let sent: serde_json::Value = serde_json::from_slice(&sent).unwrap();
            assert_eq!(request.body, sent, "instance {index}");
        }
    }

    #[tokio::test]
    async fn an_http_restart_is_answered_existed_resource() {
        use crate::scenario::fake_http::FakeHttp;
        let server = FakeHttp::default().start().await;
        run(http_storm(&server.address)).await.unwrap();
        let again = crate::scenario::restart::run(http_storm(&server.address))
            .await
            .unwrap();
        assert_eq!(
            again.report.codes,
            BTreeMap::from([("400201".to_owned(), 20)])
        );
        assert!(again.report.is_success());
    }

    fn temp_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("loadgen-storm-{}-{name}", std::process::id()))
    }

    /// Asserts that `path` holds the ids of the fleet's first `count` instances, in
    /// any order, and removes it.
    fn assert_acknowledged(path: &std::path::Path, fleet: &Fleet, count: u64) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<_> = text.lines().map(str::to_owned).collect();
        lines.sort();
        let mut expected: Vec<_> = (0..count).map(|index| fleet.instance_id(index)).collect();
        expected.sort();
        assert_eq!(lines, expected);
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn every_acknowledged_id_is_written_to_acked_out() {
        use crate::scenario::fake_registry::FakeRegistry;
        let server = FakeRegistry::expiring_after(1000.0).start().await;
        let path = temp_file("grpc-acked");
        let args = parse_args::<StormArgs>([
            "--target",
            &server.address,
            "--count",
            "50",
            "--in-flight",
            "8",
            "--seed",
            "9",
            "--no-progress",
            "--acked-out",
            path.to_str().unwrap(),
        ])
        .unwrap();
        let fleet = fleet_of(&args);
        let run = run(args).await.unwrap();
        assert_eq!(run.report.acknowledged, Some(50));
        assert_eq!(
            run.report.answered,
            BTreeMap::from([("200000".to_owned(), 50)])
        );
        assert!(run.report.failed.is_empty());
        assert_acknowledged(&path, &fleet, 50);
    }

    #[tokio::test]
    async fn an_http_restart_acknowledges_the_instances_already_stored() {
        use crate::scenario::fake_http::FakeHttp;
        let server = FakeHttp::default().start().await;
        let path = temp_file("http-acked");
        let mut args = http_storm(&server.address);
        args.acks.acked_out = Some(path.clone());
        let fleet = fleet_of(&args);
        run(args.clone()).await.unwrap();
        let again = crate::scenario::restart::run(args).await.unwrap();
        assert_eq!(again.report.acknowledged, Some(20));
        assert_acknowledged(&path, &fleet, 20);
    }

    #[tokio::test]
    async fn a_silent_http_server_ends_in_timeouts_not_a_hang() {
        let (address, silent_server) = silent_server().await;
        let acked = temp_file("silent-acked");
        std::fs::write(&acked, "stale\n").unwrap();
        let args = parse_args::<StormArgs>([
            "--protocol",
            "http",
            "--target",
            &address,
            "--count",
            "5",
            "--connections",
            "2",
            "--in-flight",
            "2",
            "--timeout",
            "300ms",
            "--no-progress",
            "--acked-out",
            acked.to_str().unwrap(),
        ])
        .unwrap();
        let run = tokio::time::timeout(std::time::Duration::from_secs(10), run(args))
            .await
            .expect("the storm returns")
            .expect("TCP connections open");
        silent_server.abort();
        assert_eq!(
            run.report.codes,
            BTreeMap::from([("timeout".to_owned(), 5)])
        );
        // Each abandoned request closed its connection; the next one reopened it.
        assert_eq!(run.report.connections_opened, Some(5));
        // Nothing answered: no answer, nothing acknowledged, the file emptied.
        assert!(run.report.answered.is_empty());
        assert_eq!(run.report.failed, run.report.codes);
        assert_eq!(run.report.acknowledged, Some(0));
        assert_eq!(std::fs::read_to_string(&acked).unwrap(), "");
        std::fs::remove_file(&acked).unwrap();
    }
}
