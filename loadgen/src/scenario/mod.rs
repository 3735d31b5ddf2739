//! Scenarios: each builds its requests, runs them and returns a [`ScenarioRun`]
//! (`verify`: a [`crate::verification::Verification`]); connecting, headers,
//! printing and the exit code are shared. `storm`, `restart` and `discover` speak
//! gRPC or HTTP ([`Connections`]), the others gRPC.
//!
//! - `storm`: the whole fleet registers once, closed loop
//! - `restart`: the same fleet registers again, unchanged
//! - `churn`: each instance registers, then deregisters
//! - `open_loop`: registrations at a fixed arrival rate
//! - `discover`: watchers poll services over Discover streams, with revisions or cold
//! - `heartbeat`: the fleet beats every ttl, open loop, while a Discover watch checks
//!   which instances are listed unhealthy
//! - `verify`: the server's listing of each service checked against the fleet
//! - `discover_stream`: one Discover stream, request by request (discover, verify)
//! - `connections`: gRPC or HTTP connections, and a register sent over either

pub mod churn;
mod connections;
pub mod discover;
pub mod discover_stream;
#[cfg(test)]
mod fake_discover;
#[cfg(test)]
pub(crate) mod fake_http;
#[cfg(test)]
mod fake_registry;
pub mod heartbeat;
pub mod open_loop;
pub mod restart;
pub mod storm;
pub mod verify;

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::acked::{AckFileError, RegisterAnswer};
use crate::fleet::MAX_FLEET_SIZE;
use crate::http_pool::{HttpConnectError, HttpPool};
use crate::options::{ConnectionOptions, LoadOptions, Protocol};
use crate::pool::{ClientPool, ConnectError};
use crate::proto;
use crate::report::{Measurements, OfferedLoad, Outcome, Report, RunSetup};
use crate::runner::RunOutcome;

pub use connections::{Connections, DISCOVER_PATH};

/// Name of the register operation in reports.
pub const REGISTER: &str = "register";

/// What a finished scenario hands back for output.
#[derive(Debug)]
pub struct ScenarioRun {
    pub report: Report,
    /// Counts and latency histograms (µs) of each operation, for `--hdr-out`.
    pub operations: Vec<Measurements>,
}

/// A scenario that could not start; the run exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    HttpConnect(#[from] HttpConnectError),
    #[error("--token is not a valid gRPC metadata value")]
    InvalidToken(#[source] tonic::metadata::errors::InvalidMetadataValue),
    #[error("no request is due within --duration {duration:?} at this --rate and --ramp")]
    NothingScheduled { duration: Duration },
    #[error(
        "{requests} fresh instances asked for; a fleet has at most {MAX_FLEET_SIZE} distinct ones"
    )]
    FleetTooLarge { requests: u64 },
    #[error("--ttl 0 registers instances without a health check: nothing to beat")]
    NoHeartbeat,
    #[error(
        "--stop-after {stop_after:?} is shorter than the ttl ({ttl:?}): some instances would stop before their first beat"
    )]
    StopBeforeFirstBeats { stop_after: Duration, ttl: Duration },
    #[error("registering the fleet failed: {summary}")]
    RegistrationFailed { summary: String },
    #[error(transparent)]
    AckFile(#[from] AckFileError),
}

/// gRPC metadata, or HTTP headers, sent with every request.
#[derive(Debug, Clone)]
pub struct RequestHeaders {
    token: Option<AsciiMetadataValue>,
    /// The same token as an HTTP header value.
    http_token: Option<HeaderValue>,
    async_regis: bool,
}

impl RequestHeaders {
    pub fn new(token: Option<&str>, async_regis: bool) -> Result<Self, SetupError> {
        let token: Option<AsciiMetadataValue> = token
            .map(|value| value.parse().map_err(SetupError::InvalidToken))
            .transpose()?;
        let http_token = token.as_ref().map(|token| {
            HeaderValue::from_bytes(token.as_encoded_bytes())
                .expect("a valid metadata value is a valid header value")
        });
        Ok(RequestHeaders {
            token,
            http_token,
            async_regis,
        })
    }

    /// Sets `request-id` (`loadgen-{request_id}`), the token and `async-regis`.
    pub fn apply<T>(&self, request: &mut tonic::Request<T>, request_id: &str) {
        let metadata = request.metadata_mut();
        if let Ok(request_id) = format!("loadgen-{request_id}").parse() {
            metadata.insert("request-id", request_id);
        }
        if let Some(token) = &self.token {
            metadata.insert("x-polaris-token", token.clone());
        }
        if self.async_regis {
            metadata.insert("async-regis", MetadataValue::from_static("true"));
        }
    }

    /// The same as [`Self::apply`], as the headers of an HTTP request.
    pub fn apply_http(&self, headers: &mut HeaderMap, request_id: &str) {
        if let Ok(request_id) = HeaderValue::from_str(&format!("loadgen-{request_id}")) {
            headers.insert("request-id", request_id);
        }
        if let Some(token) = &self.http_token {
            headers.insert("x-polaris-token", token.clone());
        }
        if self.async_regis {
            headers.insert("async-regis", HeaderValue::from_static("true"));
        }
    }
}

/// Opens the connections of `protocol` and checks the headers before any load is sent.
async fn connect_over(
    protocol: Protocol,
    connection: &ConnectionOptions,
    async_regis: bool,
) -> Result<(Connections, RequestHeaders), SetupError> {
    let headers = RequestHeaders::new(connection.token.as_deref(), async_regis)?;
    let connections = match protocol {
        Protocol::Grpc => Connections::Grpc(
            ClientPool::connect(
                &connection.targets,
                connection.connections as usize,
                connection.timeout,
            )
            .await?,
        ),
        Protocol::Http => Connections::Http(
            HttpPool::connect(
                &connection.targets,
                connection.connections as usize,
                connection.timeout,
            )
            .await?,
        ),
    };
    Ok((connections, headers))
}

/// Opens gRPC connections and checks the headers before any load is sent.
async fn connect(
    connection: &ConnectionOptions,
    async_regis: bool,
) -> Result<(ClientPool, RequestHeaders), SetupError> {
    let headers = RequestHeaders::new(connection.token.as_deref(), async_regis)?;
    let pool = ClientPool::connect(
        &connection.targets,
        connection.connections as usize,
        connection.timeout,
    )
    .await?;
    Ok((pool, headers))
}

/// What the report says about the run besides its measurements.
fn run_setup(
    scenario: &'static str,
    connection: &ConnectionOptions,
    load: &LoadOptions,
    protocol: Protocol,
    connections: usize,
    ramp: Duration,
    offered: Option<OfferedLoad>,
) -> RunSetup {
    RunSetup {
        scenario,
        targets: connection.targets.clone(),
        protocol,
        in_flight: load.in_flight,
        connections,
        ramp,
        offered,
    }
}

/// Builds the report of a finished run.
fn finish(setup: RunSetup, measured: RunOutcome) -> ScenarioRun {
    let report = Report::new(setup, measured.elapsed, &measured.operations);
    ScenarioRun {
        report,
        operations: measured.operations,
    }
}

/// The outcome of one unary call.
fn outcome_of(answer: Result<tonic::Response<proto::Response>, tonic::Status>) -> Outcome {
    match answer {
        Ok(response) => Outcome::Answered(response.into_inner().code),
        Err(status) => failure_of(&status),
    }
}

/// The outcome of a registration, with the id of the instance its answer carried.
fn register_answer_of(
    answer: Result<tonic::Response<proto::Response>, tonic::Status>,
) -> RegisterAnswer {
    match answer {
        Ok(response) => {
            let response = response.into_inner();
            RegisterAnswer {
                outcome: Outcome::Answered(response.code),
                instance_id: response.instance.and_then(|instance| instance.id),
            }
        }
        Err(status) => RegisterAnswer {
            outcome: failure_of(&status),
            instance_id: None,
        },
    }
}

/// A failed call: a status the server sent, or one the client made of a failed
/// connection (those carry the transport error as their source). The first failure of
/// each kind is described on stderr, so that a run says what its calls died of.
pub(crate) fn failure_of(status: &tonic::Status) -> Outcome {
    let outcome = match std::error::Error::source(status) {
        Some(_) => Outcome::Transport(status.code()),
        None => Outcome::Grpc(status.code()),
    };
    let first = DESCRIBED
        .lock()
        .expect("no thread panicked holding it")
        .insert(outcome);
    if first {
        let cause = std::error::Error::source(status)
            .map(|source| format!(" ({source})"))
            .unwrap_or_default();
        eprintln!(
            "batchreg-loadgen: first {}: {}{cause}",
            outcome.label(),
            status.message()
        );
    }
    outcome
}

/// The kinds of failure already described on stderr.
static DESCRIBED: LazyLock<Mutex<HashSet<Outcome>>> = LazyLock::new(Mutex::default);

/// Reads a `--duration`: a length of time above zero.
fn parse_run_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("must be above 0".to_owned());
    }
    Ok(duration)
}

/// Parses one scenario's options alone, as its subcommand would.
#[cfg(test)]
pub(crate) fn parse_args<'a, A: clap::Args>(
    words: impl IntoIterator<Item = &'a str>,
) -> Result<A, clap::Error> {
    #[derive(Debug, clap::Parser)]
    struct ScenarioCommand<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    let words = std::iter::once("loadgen").chain(words);
    <ScenarioCommand<A> as clap::Parser>::try_parse_from(words).map(|command| command.args)
}

/// A 127.0.0.1 listener that accepts connections and never answers; its address.
#[cfg(test)]
pub(crate) async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (address, server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_token_async_flag_and_request_id() {
        let headers = RequestHeaders::new(Some("secret"), true).unwrap();
        let mut request = tonic::Request::new(());
        headers.apply(&mut request, "7");
        let metadata = request.metadata();
        assert_eq!(metadata.get("x-polaris-token").unwrap(), "secret");
        assert_eq!(metadata.get("async-regis").unwrap(), "true");
        assert_eq!(metadata.get("request-id").unwrap(), "loadgen-7");
    }

    #[test]
    fn plain_headers_carry_only_the_request_id() {
        let headers = RequestHeaders::new(None, false).unwrap();
        let mut request = tonic::Request::new(());
        headers.apply(&mut request, "0");
        assert!(request.metadata().get("x-polaris-token").is_none());
        assert!(request.metadata().get("async-regis").is_none());
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        assert!(matches!(
            RequestHeaders::new(Some("bad\ntoken"), false),
            Err(SetupError::InvalidToken(_))
        ));
    }

    #[test]
    fn answers_and_failures_become_outcomes() {
        let answered = tonic::Response::new(proto::Response {
            code: Some(400201),
            ..Default::default()
        });
        assert_eq!(outcome_of(Ok(answered)), Outcome::Answered(Some(400201)));
        assert_eq!(
            outcome_of(Err(tonic::Status::unavailable("down"))),
            Outcome::Grpc(tonic::Code::Unavailable)
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            outcome_of(Err(tonic::Status::from_error(Box::new(refused)))),
            Outcome::Transport(tonic::Code::Unknown)
        );
    }

    #[test]
    fn a_registration_answer_keeps_its_instance_id() {
        let answered = tonic::Response::new(proto::Response {
            code: Some(200000),
            instance: Some(proto::Instance {
                id: Some("abc".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            register_answer_of(Ok(answered)),
            RegisterAnswer {
                outcome: Outcome::Answered(Some(200000)),
                instance_id: Some("abc".to_owned()),
            }
        );
        let bare = tonic::Response::new(proto::Response {
            code: Some(500001),
            ..Default::default()
        });
        assert_eq!(register_answer_of(Ok(bare)).instance_id, None);
        assert_eq!(
            register_answer_of(Err(tonic::Status::cancelled("gone"))).outcome,
            Outcome::Grpc(tonic::Code::Cancelled)
        );
    }

    #[test]
    fn http_headers_carry_the_same_token_async_flag_and_request_id() {
        let headers = RequestHeaders::new(Some("secret"), true).unwrap();
        let mut http = HeaderMap::new();
        headers.apply_http(&mut http, "7");
        assert_eq!(http["x-polaris-token"], "secret");
        assert_eq!(http["async-regis"], "true");
        assert_eq!(http["request-id"], "loadgen-7");
        let plain = RequestHeaders::new(None, false).unwrap();
        let mut http = HeaderMap::new();
        plain.apply_http(&mut http, "0");
        assert_eq!(http.len(), 1);
    }
}
