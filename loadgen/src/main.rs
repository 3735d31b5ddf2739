//! batchreg-loadgen: load scenarios against a PolarisMesh v1 gRPC server.
//!
//! # Layout
//! - `options`: command-line option groups shared by the scenarios
//! - `fleet`: deterministic instances (address, placement, metadata) from a seed
//! - `pool`: gRPC connections to the targets, round-robin per request
//! - `runner`: bounded closed-loop driver, per-worker histograms, progress bar
//! - `report`: outcome counting, percentiles, table / JSON / .hgrm output
//! - `scenario`: one module per scenario (`storm`)

mod fleet;
mod options;
mod pool;
mod report;
mod runner;
mod scenario;

/// Polaris v1 wire types and the gRPC client, compiled from ../proto by build.rs.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("v1");
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::options::OutputOptions;
use crate::report::write_percentile_distribution;
use crate::scenario::{ScenarioRun, storm};

/// Exit status when the load could not be run at all (connection, arguments, files).
const EXIT_SETUP_FAILED: u8 = 2;
/// Exit status when some answers were not the ones the scenario expects.
const EXIT_UNEXPECTED_ANSWERS: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "batchreg-loadgen",
    version,
    about = "Load generator for batchreg and other PolarisMesh v1 gRPC servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Register a whole fleet at once, as after a mass (re)start.
    Storm(storm::StormArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, output) = match cli.scenario {
        Scenario::Storm(args) => {
            let output = args.output.clone();
            (storm::run(args).await, output)
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
        let written = std::fs::File::create(path).and_then(|file| {
            let mut writer = std::io::BufWriter::new(file);
            write_percentile_distribution(&run.latency, &mut writer)?;
            std::io::Write::flush(&mut writer)
        });
        if let Err(error) = written {
            eprintln!("batchreg-loadgen: cannot write {}: {error}", path.display());
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    }
    if report.is_success() {
        return ExitCode::SUCCESS;
    }
    let unexpected: Vec<_> = report
        .unexpected
        .iter()
        .map(|(label, count)| format!("{label} x{count}"))
        .collect();
    eprintln!(
        "batchreg-loadgen: unexpected answers: {}",
        unexpected.join(", ")
    );
    ExitCode::from(EXIT_UNEXPECTED_ANSWERS)
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

    #[test]
    fn storm_defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["batchreg-loadgen", "storm"]).unwrap();
        let Scenario::Storm(args) = cli.scenario;
        assert_eq!(args.connection.targets, ["127.0.0.1:8091"]);
        assert_eq!(args.connection.connections, 8);
        assert_eq!(args.connection.in_flight, 512);
        assert_eq!(args.connection.timeout, std::time::Duration::from_secs(30));
        assert_eq!(args.fleet.count, 100_000);
        assert_eq!(args.fleet.metadata, 3);
        assert_eq!(args.fleet.metadata_size, 16);
        assert_eq!(args.fleet.ttl, 5);
        assert_eq!(args.fleet.namespaces, 1);
        assert_eq!(args.fleet.services, 10);
        assert_eq!(args.fleet.seed, 1);
        assert!(!args.async_regis && !args.output.json && !args.output.no_progress);
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
        let Scenario::Storm(args) = cli.scenario;
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
}
