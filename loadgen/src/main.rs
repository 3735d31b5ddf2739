//! batchreg-loadgen: load scenarios against a PolarisMesh v1 server, over gRPC (and for
//! `storm`, `restart` and `discover`, over its HTTP API too).
//!
//! # Layout
//! - `options`: command-line option groups shared by the scenarios
//! - `fleet`: deterministic instances (address, placement, metadata) from a seed
//! - `pool`: gRPC connections to the targets, round-robin per request
//! - `http_pool`: HTTP/1.1 keep-alive connections to the targets, each request on an
//!   idle one
//! - `polaris_json`: request bodies and answers of the HTTP API (Polaris's JSON)
//! - `schedule`: when requests are due (open-loop rate and ramp, closed-loop ramp)
//! - `runner`: bounded closed- or open-loop driver, one histogram per operation, progress bar
//! - `report`: outcome counting, percentiles, table / JSON / .hgrm output
//! - `acked`: the ids of acknowledged registrations, written to `--acked-out`
//! - `verification`: a fleet compared with the server's listings, table / JSON output
//! - `beats`: when each instance of a beating fleet is due, and which stop
//! - `expiry`: the heartbeat run's expiry check, from what its Discover watch lists
//! - `scenario`: one module per scenario (`storm`, `restart`, `churn`, `open-loop`,
//!   `discover`, `heartbeat`, `verify`) and the Discover stream the last three share

mod acked;
mod beats;
mod expiry;
mod fleet;
mod http_pool;
mod options;
mod polaris_json;
mod pool;
mod report;
mod runner;
mod scenario;
mod schedule;
mod verification;

/// Polaris v1 wire types and the gRPC client, compiled from ../proto by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1");
}

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Requests are built, sent and dropped by the thousand a second on every worker thread;
/// the loadgen's own CPU per request is CPU taken from the server it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

use crate::options::OutputOptions;
use crate::report::write_percentile_distribution;
use crate::scenario::{ScenarioRun, churn, discover, heartbeat, open_loop, restart, storm, verify};

/// Exit status when the load could not be run at all (connection, arguments, files).
const EXIT_SETUP_FAILED: u8 = 2;
/// Exit status when some answers were not the ones the scenario expects (`verify`:
/// an instance is missing or listed differently; `heartbeat`: an instance listed
/// unhealthy while beating, or not in time after it stopped).
const EXIT_UNEXPECTED_ANSWERS: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "batchreg-loadgen",
    version,
    about = "Load generator for batchreg and other PolarisMesh v1 servers (gRPC or HTTP API)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Register a whole fleet at once, as after a mass (re)start.
    ///
    /// With --protocol http, each instance is sent as JSON to POST /v1/RegisterInstance
    /// of --target's HTTP API, over --connections HTTP/1.1 keep-alive connections: the
    /// same fleet, so the server gives each instance the same id.
    Storm(storm::StormArgs),
    /// Register the same fleet as `storm` again, unchanged.
    ///
    /// The same fleet options and seed give the same instances, so after a storm the
    /// server should find every one already stored: ExistedResource is expected, or
    /// ExecuteSuccess from a server set to answer success for unchanged instances.
    Restart(storm::StormArgs),
    /// Register instances and deregister each once its register is answered.
    ///
    /// --count pairs; each deregister names the same namespace, service, host and
    /// port as its register, over the same connection. ExecuteSuccess is expected of
    /// both, and their counts and latencies are reported apart. The instances are
    /// never those of a storm with the same seed, so a churn leaves a storm's fleet
    /// in place.
    Churn(churn::ChurnArgs),
    /// Register at a constant arrival rate, latency counted from each intended start.
    ///
    /// Request i is due i/R seconds after the start (after a --ramp, during which the
    /// rate grows from 0 to R), whether or not earlier requests are answered. At most
    /// --in-flight requests are outstanding: a request due while all are busy waits
    /// for one, and the wait counts in its latency, so a stalled server cannot hide
    /// its queue (coordinated omission). The report gives the offered and the
    /// achieved rate, and the latency both from the intended start and from the send.
    OpenLoop(open_loop::OpenLoopArgs),
    /// Poll the instances of services over Discover streams, as SDKs watch them.
    ///
    /// --watchers streams are dealt over the connections; watcher w polls
    /// --services-per-watcher services of the fleet's grid (namespaces × services)
    /// from index w on, in turn. Each sends, for each service, the revision of its
    /// last full answer (200000), so an unchanged service is answered DataNoChange
    /// (200001); with --cold none is sent and every answer is a full listing. The
    /// report adds the instances returned, in all and per full answer. Any other
    /// answer (but 400202 with --allow-not-found) fails the run. With --protocol http
    /// each poll is a POST /v1/Discover of the same request as JSON, on an idle one of
    /// --connections HTTP/1.1 keep-alive connections.
    Discover(discover::DiscoverArgs),
    /// Beat a registered fleet by id, each instance every ttl, open loop, while a
    /// Discover watch checks which instances are listed unhealthy.
    ///
    /// The fleet is the one a storm with the same fleet options and seed registers
    /// (--register registers it first). Instance k of N beats at k/N of a ttl, then every
    /// ttl, whether or not its beats before were answered; latency counts from each
    /// beat's due time, and at most --in-flight beats are outstanding (as in
    /// open-loop). Any answer but ExecuteSuccess fails the run.
    ///
    /// The watch polls every service of the fleet, in turn, on one Discover stream of
    /// its own connection (to the first --target), a round every 100 ms, sending the
    /// revision of each service's last full answer; a fleet spread over many services
    /// is polled less often (the report gives the interval reached). From 2 s after
    /// every instance's first beat was answered (a fleet may have expired before the
    /// run), any instance listed unhealthy while it still beats fails the run; beats
    /// that leave 3 ttl late expire their instance too, and the latency shows them.
    /// With --stop-share S, a share S of the fleet drawn by --seed sends
    /// no beat due after --stop-after: each must be listed unhealthy within
    /// --expiry-timeout of the stop, and no sooner than 3 ttl after its last beat.
    /// The report gives the delay from each one's last beat's send to the first answer
    /// listing it unhealthy (min, p50, p99, max).
    Heartbeat(heartbeat::HeartbeatArgs),
    /// Check that the server lists every instance a storm with the same fleet
    /// options and seed registered.
    ///
    /// One cold Discover per service of the fleet, one at a time: every instance must
    /// be listed with its id, host, port and metadata. Instances the fleet does not
    /// know are reported but accepted. Services take the connections (and targets)
    /// in turn. Exits 0 when none is missing or different, 1 otherwise, 2 when the
    /// check could not be made: no connection, or a service answered with a failure,
    /// a code other than 200000 or 400202, or not before --timeout.
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    // As batchreg's server: without the LIFO slot when the build has `tokio_unstable`
    // (the workspace's `.cargo/config.toml`), so that a connection's task sends the
    // requests woken meanwhile together rather than one write per request.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = builder.build().expect("tokio runtime");
    runtime.block_on(run(Cli::parse()))
}

async fn run(cli: Cli) -> ExitCode {
    let (result, output) = match cli.scenario {
        Scenario::Storm(args) => {
            let output = args.output.clone();
            (storm::run(args).await, output)
        }
        Scenario::Restart(args) => {
            let output = args.output.clone();
            (restart::run(args).await, output)
        }
        Scenario::Churn(args) => {
            let output = args.output.clone();
            (churn::run(args).await, output)
        }
        Scenario::OpenLoop(args) => {
            let output = args.output.clone();
            (open_loop::run(args).await, output)
        }
        Scenario::Discover(args) => {
            let output = args.output.clone();
            (discover::run(args).await, output)
        }
        Scenario::Heartbeat(args) => {
            let output = args.output.clone();
            (heartbeat::run(args).await, output)
        }
        Scenario::Verify(args) => {
            let json = args.json;
            return judge_verification(verify::run(args).await, json);
        }
    };
    match result {
        Ok(run) => emit(&run, &output),
        Err(error) => {
            eprintln!("batchreg-loadgen: {}", error_chain(&error));
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

/// Prints the report, saves the histogram if asked, and picks the exit status.
fn emit(run: &ScenarioRun, output: &OutputOptions) -> ExitCode {
    let report = &run.report;
    if output.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(path) = &output.hdr_out {
        let several = run.operations.len() > 1;
        for measured in &run.operations {
            let path = if several {
                path_for_operation(path, measured.operation.name)
            } else {
                path.clone()
            };
            let written = std::fs::File::create(&path).and_then(|file| {
                let mut writer = std::io::BufWriter::new(file);
                write_percentile_distribution(&measured.latency, &mut writer)?;
                std::io::Write::flush(&mut writer)
            });
            if let Err(error) = written {
                eprintln!("batchreg-loadgen: cannot write {}: {error}", path.display());
                return ExitCode::from(EXIT_SETUP_FAILED);
            }
        }
    }
    if report.is_success() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "batchreg-loadgen: unexpected answers: {}",
        report.unexpected_summary()
    );
    ExitCode::from(EXIT_UNEXPECTED_ANSWERS)
}

/// Prints what `verify` found and picks the exit status.
fn judge_verification(
    result: Result<verification::Verification, verify::VerifyError>,
    json: bool,
) -> ExitCode {
    let found = match result {
        Ok(found) => found,
        Err(error) => {
            eprintln!("batchreg-loadgen: {}", error_chain(&error));
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    if json {
        println!("{}", found.to_json());
    } else {
        print!("{}", found.to_table());
    }
    if found.is_complete() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "batchreg-loadgen: {} instances missing, {} listed differently",
        found.missing, found.mismatched
    );
    ExitCode::from(EXIT_UNEXPECTED_ANSWERS)
}

/// `--hdr-out` file of one of several operations: `run.hgrm` → `run.register.hgrm`.
fn path_for_operation(path: &Path, operation: &str) -> PathBuf {
    let mut name = path.file_stem().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(operation);
    if let Some(extension) = path.extension() {
        name.push(".");
        name.push(extension);
    }
    path.with_file_name(name)
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        // Wrapping errors often repeat their source's message: show it once.
        let message = inner.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(words: &[&str]) -> Scenario {
        let words = std::iter::once("batchreg-loadgen").chain(words.iter().copied());
        Cli::try_parse_from(words).unwrap().scenario
    }

    #[test]
    fn storm_defaults_match_the_documented_ones() {
        let Scenario::Storm(args) = parse(&["storm"]) else {
            panic!("storm");
        };
        assert_eq!(args.connection.targets, ["127.0.0.1:8091"]);
        assert_eq!(args.connection.connections, 8);
        assert_eq!(args.load.in_flight, 512);
        assert_eq!(args.connection.timeout, std::time::Duration::from_secs(30));
        assert_eq!(args.fleet.count, 100_000);
        assert_eq!(args.fleet.metadata, 3);
        assert_eq!(args.fleet.metadata_size, 16);
        assert_eq!(args.fleet.ttl, 5);
        assert_eq!(args.fleet.grid.namespaces, 1);
        assert_eq!(args.fleet.grid.services, 10);
        assert_eq!(args.fleet.seed, 1);
        assert!(!args.async_regis && !args.output.json && !args.output.no_progress);
    }

    #[test]
    fn discover_and_verify_defaults_match_the_documented_ones() {
        let Scenario::Discover(args) = parse(&["discover"]) else {
            panic!("discover");
        };
        assert_eq!(args.connection.targets, ["127.0.0.1:8091"]);
        assert_eq!(args.connection.connections, 8);
        assert_eq!(args.connection.timeout, std::time::Duration::from_secs(30));
        assert_eq!((args.grid.namespaces, args.grid.services), (1, 10));
        assert_eq!(args.watchers, 64);
        assert_eq!(args.services_per_watcher, 1);
        assert_eq!(args.interval, std::time::Duration::ZERO);
        assert_eq!(args.duration, std::time::Duration::from_secs(10));
        assert_eq!(args.count, None);
        assert!(!args.cold && !args.allow_not_found);
        assert!(!args.output.json && !args.output.no_progress);

        let Scenario::Verify(args) = parse(&["verify"]) else {
            panic!("verify");
        };
        assert_eq!(args.connection.targets, ["127.0.0.1:8091"]);
        assert_eq!(args.fleet.count, 100_000);
        assert_eq!(
            (args.fleet.grid.namespaces, args.fleet.grid.services),
            (1, 10)
        );
        assert_eq!((args.fleet.metadata, args.fleet.metadata_size), (3, 16));
        assert_eq!(args.fleet.seed, 1);
        assert!(!args.json);

        // Neither keeps a number of requests in flight, nor does verify save latencies.
        for words in [
            &["discover", "--in-flight", "5"][..],
            &["verify", "--in-flight", "5"],
            &["verify", "--hdr-out", "x.hgrm"],
        ] {
            let words = std::iter::once("batchreg-loadgen").chain(words.iter().copied());
            assert!(Cli::try_parse_from(words).is_err());
        }
    }

    #[test]
    fn targets_may_repeat_or_be_comma_separated() {
        let cli = Cli::try_parse_from([
            "batchreg-loadgen",
            "storm",
            "--target",
            "a:1,b:2",
            "--target",
            "c:3",
            "--timeout",
            "250ms",
        ])
        .unwrap();
        let Scenario::Storm(args) = cli.scenario else {
            panic!("storm");
        };
        assert_eq!(args.connection.targets, ["a:1", "b:2", "c:3"]);
        assert_eq!(
            args.connection.timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn zero_in_flight_is_refused() {
        assert!(Cli::try_parse_from(["batchreg-loadgen", "storm", "--in-flight", "0"]).is_err());
    }

    #[test]
    fn restart_registers_the_same_fleet_as_storm() {
        let fleet_words = [
            "--count",
            "5000",
            "--seed",
            "31",
            "--namespaces",
            "3",
            "--services",
            "4",
            "--metadata",
            "5",
            "--metadata-size",
            "40",
            "--ttl",
            "9",
        ];
        let Scenario::Storm(storm_args) = parse(&[&["storm"], &fleet_words[..]].concat()) else {
            panic!("storm");
        };
        let Scenario::Restart(restart_args) = parse(&[&["restart"], &fleet_words[..]].concat())
        else {
            panic!("restart");
        };
        let (storm_fleet, restart_fleet) =
            (storm::fleet_of(&storm_args), storm::fleet_of(&restart_args));
        assert_eq!(restart_fleet.count(), 5000);
        for index in 0..5000 {
            assert_eq!(storm_fleet.instance(index), restart_fleet.instance(index));
        }
        // The defaults agree too, and another seed is another fleet.
        let (Scenario::Storm(storm_default), Scenario::Restart(restart_default)) =
            (parse(&["storm"]), parse(&["restart"]))
        else {
            panic!("storm and restart");
        };
        let (storm_default, restart_default) = (
            storm::fleet_of(&storm_default),
            storm::fleet_of(&restart_default),
        );
        assert_eq!(storm_default.count(), restart_default.count());
        for index in [0, 1, 77, 99_999] {
            assert_eq!(
                storm_default.instance(index),
                restart_default.instance(index)
            );
        }
        let Scenario::Restart(reseeded) = parse(&["restart", "--count", "5000", "--seed", "32"])
        else {
            panic!("restart");
        };
        assert_ne!(
            storm::fleet_of(&reseeded).instance(0),
            storm_fleet.instance(0)
        );
    }

    #[test]
    fn every_scenario_takes_the_shared_options() {
        let shared = [
            "--target",
            "h:1",
            "--in-flight",
            "7",
            "--count",
            "9",
            "--json",
            "--no-progress",
        ];
        for (scenario, extra) in [
            ("storm", &["--ramp", "2s"][..]),
            ("restart", &["--ramp", "2s"][..]),
            ("churn", &["--ramp", "2s"][..]),
            ("open-loop", &["--rate", "50", "--ramp", "2s"][..]),
            (
                "heartbeat",
                &["--duration", "5s", "--stop-share", "0.1"][..],
            ),
        ] {
            let words = [&["batchreg-loadgen", scenario], &shared[..], extra].concat();
            let cli = Cli::try_parse_from(words);
            assert!(cli.is_ok(), "{scenario}: {:?}", cli.err());
        }
        assert!(
            Cli::try_parse_from(["batchreg-loadgen", "churn", "--async-regis"]).is_err(),
            "churn must wait for its registers"
        );
    }

    #[test]
    fn open_loop_reads_rate_duration_ramp_and_unchanged() {
        let Scenario::OpenLoop(args) = parse(&[
            "open-loop",
            "--rate",
            "200",
            "--duration",
            "10s",
            "--ramp",
            "500ms",
            "--unchanged",
        ]) else {
            panic!("open-loop");
        };
        assert_eq!(args.rate, 200.0);
        assert_eq!(args.duration, Some(std::time::Duration::from_secs(10)));
        assert_eq!(args.ramp, std::time::Duration::from_millis(500));
        assert!(args.unchanged);
    }

    #[test]
    fn each_operation_gets_its_own_histogram_file() {
        assert_eq!(
            path_for_operation(Path::new("out/churn.hgrm"), "register"),
            Path::new("out/churn.register.hgrm")
        );
        assert_eq!(
            path_for_operation(Path::new("latency"), "deregister"),
            Path::new("latency.deregister")
        );
    }
}
