//! The batchreg binary: parses the command line and calls [`batchreg::run`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "batchreg",
    version,
    about = "Service-registration server for very large fleets (PolarisMesh v1 API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How log lines are written to stderr: plain text (coloured only on a terminal), or
    /// one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve {
        /// TOML configuration file; every key has a default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Apply the store's pending migrations and exit.
    Migrate {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the example configuration (every key at its default).
    ConfigExample,
}

fn load_settings(
    path: Option<&PathBuf>,
) -> Result<batchreg::config::Settings, batchreg::config::ConfigError> {
    let mut config = match path {
        Some(path) => batchreg::config::Config::from_file(path)?,
        None => batchreg::config::Config::default(),
    };
    config.apply_env(|key| std::env::var(key).ok());
    config.validate()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::ConfigExample => {
            print!("{}", batchreg::config::EXAMPLE);
            Ok(())
        }
        Command::Migrate { config } => load_settings(config.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|settings| {
                batchreg::store::open(&settings.store)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        Command::Serve { config } => load_settings(config.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|settings| {
                let runtime = batchreg::server::runtime().map_err(|e| e.to_string())?;
                let served = runtime.block_on(async {
                    let shutdown = shutdown_signal().map_err(|e| e.to_string())?;
                    batchreg::run(settings, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
                // A start cut short leaves the cache's loading thread behind: not waited for.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                served
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("batchreg: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, before the server starts, so that a
/// signal that arrives while it starts is not lost; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signal received: draining");
    })
}
