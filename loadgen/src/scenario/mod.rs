//! Scenarios: each builds its requests, runs them through [`crate::runner`] and
//! returns a [`ScenarioRun`]; printing and the exit code are shared.

pub mod storm;

use hdrhistogram::Histogram;

use crate::pool::ConnectError;
use crate::report::Report;

/// What a finished scenario hands back for output.
#[derive(Debug)]
pub struct ScenarioRun {
    pub report: Report,
    /// Latency of every request in microseconds, for `--hdr-out`.
    pub latency: Histogram<u64>,
}

/// A scenario that could not start; the run exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("--token is not a valid gRPC metadata value")]
    InvalidToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
}
