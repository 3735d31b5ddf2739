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

pub mod churn;
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

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;

use crate::fleet::MAX_FLEET_SIZE;
use crate::http_pool::{
    HttpAnswer, HttpConnectError, HttpError, HttpPool, HttpTarget, JsonRequest,
};
use crate::options::{ConnectionOptions, LoadOptions, Protocol};
use crate::pool::{ClientPool, ConnectError};
use crate::proto::polaris_grpc_client::PolarisGrpcClient;
use crate::report::{Measurements, OfferedLoad, Outcome, Report, RunSetup};
use crate::runner::RunOutcome;
use crate::{polaris_json, proto};

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

/// The connections of a run that speaks either protocol.
#[derive(Debug, Clone)]
pub enum Connections {
    Grpc(ClientPool),
    Http(HttpPool),
}

/// HTTP path of RegisterInstance.
pub const REGISTER_PATH: &str = "/v1/RegisterInstance";
/// HTTP path of Discover.
pub const DISCOVER_PATH: &str = "/v1/Discover";

/// One prepared unary call, ready to send on its connection.
enum UnaryCall<T> {
    Grpc(PolarisGrpcClient<Channel>, tonic::Request<T>),
    Http(Arc<HttpTarget>, JsonRequest),
}

impl Connections {
    pub fn connection_count(&self) -> usize {
        match self {
            Connections::Grpc(pool) => pool.connection_count(),
            Connections::Http(pool) => pool.connection_count(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Connections::Grpc(_) => Protocol::Grpc,
            Connections::Http(_) => Protocol::Http,
        }
    }

    /// HTTP only: connections opened so far.
    pub fn connections_opened(&self) -> Option<u64> {
        match self {
            Connections::Grpc(_) => None,
            Connections::Http(pool) => Some(pool.connections_opened()),
        }
    }

    /// RegisterInstance of `instance` as request `index`, on that request's
    /// connection: the protobuf message over gRPC, its JSON over HTTP.
    pub fn register(
        &self,
        index: u64,
        instance: proto::Instance,
        headers: &RequestHeaders,
    ) -> impl Future<Output = Outcome> + Send + use<> {
        let request_id = index.to_string();
        let call = match self {
            Connections::Grpc(pool) => {
                let mut request = tonic::Request::new(instance);
                headers.apply(&mut request, &request_id);
                UnaryCall::Grpc(pool.client(index), request)
            }
            Connections::Http(pool) => {
                let target = pool.target(index);
                let mut request =
                    target.post(REGISTER_PATH, polaris_json::instance_body(&instance));
                headers.apply_http(request.headers_mut(), &request_id);
                UnaryCall::Http(target, request)
            }
        };
        async move {
            match call {
                UnaryCall::Grpc(mut client, request) => {
                    outcome_of(client.register_instance(request).await)
                }
                UnaryCall::Http(target, request) => http_outcome(target.send(request).await),
            }
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
        Err(status) => Outcome::Grpc(status.code()),
    }
}

/// The outcome of one HTTP request: the code of its JSON answer, whatever the status
/// (it is code / 1000).
fn http_outcome(answer: Result<HttpAnswer, HttpError>) -> Outcome {
    match answer {
        Ok(answer) => match polaris_json::response_code(&answer.body) {
            Ok(code) => Outcome::Answered(code),
            Err(_) => Outcome::Http(answer.status.as_u16()),
        },
        Err(_) => Outcome::ConnectionFailed,
    }
}

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

    #[test]
    fn http_answers_become_outcomes_by_their_code_not_their_status() {
        let answer = |status: u16, body: &'static str| {
            Ok(HttpAnswer {
                status: hyper::StatusCode::from_u16(status).unwrap(),
                body: bytes::Bytes::from_static(body.as_bytes()),
            })
        };
        assert_eq!(
            http_outcome(answer(200, r#"{"code": 200000, "info": "ok"}"#)),
            Outcome::Answered(Some(200000))
        );
        assert_eq!(
            http_outcome(answer(400, r#"{"code": 400201, "instance": null}"#)),
            Outcome::Answered(Some(400201))
        );
        assert_eq!(
            http_outcome(answer(200, r#"{"info": "no code"}"#)),
            Outcome::Answered(None)
        );
        assert_eq!(
            http_outcome(answer(404, "404 page not found")),
            Outcome::Http(404)
        );
        assert_eq!(http_outcome(answer(502, "")), Outcome::Http(502));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            http_outcome(Err(HttpError::Io(refused))),
            Outcome::ConnectionFailed
        );
    }
}
