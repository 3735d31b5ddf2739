//! Startup storm: every instance of the fleet registers once, as fast as the
//! in-flight bound allows, the way a fleet does when it (re)starts at once.

use clap::Args;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::fleet::Fleet;
use crate::options::{ConnectionOptions, FleetOptions, OutputOptions};
use crate::pool::ClientPool;
use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE, Expectation, Outcome, Report, RunSetup};
use crate::runner::{RunPlan, progress_wanted, run_closed_loop};
use crate::scenario::{ScenarioRun, SetupError};

/// A first registration succeeds; a repeated one (same content) is `ExistedResource`.
pub const EXPECTATION: Expectation = Expectation {
    codes: &[EXECUTE_SUCCESS, EXISTED_RESOURCE],
};

/// Options of the `storm` scenario.
#[derive(Debug, Clone, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub connection: ConnectionOptions,

    #[command(flatten)]
    pub fleet: FleetOptions,

    /// Send `async-regis: true`: the server answers once the request is queued.
    #[arg(long = "async-regis")]
    pub async_regis: bool,

    #[command(flatten)]
    pub output: OutputOptions,
}

/// gRPC metadata sent with every register request.
#[derive(Debug, Clone)]
struct RequestHeaders {
    token: Option<AsciiMetadataValue>,
    async_regis: bool,
}

impl RequestHeaders {
    fn new(token: Option<&str>, async_regis: bool) -> Result<Self, SetupError> {
        let token = token
            .map(|value| value.parse().map_err(SetupError::InvalidToken))
            .transpose()?;
        Ok(RequestHeaders { token, async_regis })
    }

    fn apply<T>(&self, request: &mut tonic::Request<T>, index: u64) {
        let metadata = request.metadata_mut();
        if let Ok(request_id) = format!("loadgen-{index}").parse() {
            metadata.insert("request-id", request_id);
        }
        if let Some(token) = &self.token {
            metadata.insert("x-polaris-token", token.clone());
        }
        if self.async_regis {
            metadata.insert("async-regis", MetadataValue::from_static("true"));
        }
    }
}

/// Registers the whole fleet once and reports.
pub async fn run(args: StormArgs) -> Result<ScenarioRun, SetupError> {
    let connection = &args.connection;
    let headers = RequestHeaders::new(connection.token.as_deref(), args.async_regis)?;
    let pool = ClientPool::connect(
        &connection.targets,
        connection.connections as usize,
        connection.timeout,
    )
    .await?;
    let fleet = Fleet::new(&args.fleet);
    let plan = RunPlan {
        total: fleet.count(),
        in_flight: connection.in_flight,
        request_timeout: connection.timeout,
        expectation: EXPECTATION,
        show_progress: progress_wanted(args.output.no_progress),
    };
    let setup = RunSetup {
        scenario: "storm",
        targets: connection.targets.clone(),
        in_flight: connection.in_flight,
        connections: pool.connection_count(),
        expectation: EXPECTATION,
    };

    let measured = run_closed_loop(plan, move |index| {
        let mut client = pool.client(index);
        let mut request = tonic::Request::new(fleet.instance(index));
        headers.apply(&mut request, index);
        async move {
            match client.register_instance(request).await {
                Ok(response) => Outcome::Answered(response.into_inner().code),
                Err(status) => Outcome::Grpc(status.code()),
            }
        }
    })
    .await;

    let report = Report::new(setup, measured.elapsed, &measured.tally, &measured.latency);
    Ok(ScenarioRun {
        report,
        latency: measured.latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::BTreeMap;

    /// `StormArgs` as a stand-alone command, for parsing in tests.
    #[derive(Debug, Parser)]
    struct StormCommand {
        #[command(flatten)]
        args: StormArgs,
    }

    impl StormArgs {
        fn try_parse_from<'a>(
            words: impl IntoIterator<Item = &'a str>,
        ) -> Result<Self, clap::Error> {
            StormCommand::try_parse_from(words).map(|command| command.args)
        }
    }

    #[test]
    fn headers_carry_token_async_flag_and_request_id() {
        let headers = RequestHeaders::new(Some("secret"), true).unwrap();
        let mut request = tonic::Request::new(());
        headers.apply(&mut request, 7);
        let metadata = request.metadata();
        assert_eq!(metadata.get("x-polaris-token").unwrap(), "secret");
        assert_eq!(metadata.get("async-regis").unwrap(), "true");
        assert_eq!(metadata.get("request-id").unwrap(), "loadgen-7");
    }

    #[test]
    fn plain_headers_carry_only_the_request_id() {
        let headers = RequestHeaders::new(None, false).unwrap();
        let mut request = tonic::Request::new(());
        headers.apply(&mut request, 0);
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
    fn storm_accepts_success_and_existed_resource_only() {
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(200000))));
        assert!(EXPECTATION.accepts(Outcome::Answered(Some(400201))));
        assert!(!EXPECTATION.accepts(Outcome::Answered(Some(500001))));
    }

    #[tokio::test]
    async fn a_silent_server_ends_in_timeouts_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let silent_server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let args = StormArgs::try_parse_from([
            "storm",
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
}
