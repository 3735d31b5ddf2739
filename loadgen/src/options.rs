//! Command-line option groups shared by every scenario: where to send load, what
//! fleet to register, and how to report. A scenario flattens the groups it needs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::fleet::MAX_FLEET_SIZE;

/// Where the requests go.
#[derive(Debug, Clone, Args)]
pub struct ConnectionOptions {
    /// Server gRPC address (host:port or http://host:port), or with --protocol http
    /// its HTTP address (batchreg's is on port 8090); repeat or comma-separate for
    /// several servers, requests are spread round-robin over them.
    #[arg(
        long = "target",
        value_name = "ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:8091"
    )]
    pub targets: Vec<String>,

    /// Connections in total, spread over the targets: HTTP/2 connections (tonic
    /// channels), or with --protocol http HTTP/1.1 keep-alive connections.
    #[arg(long, value_name = "K", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connections: u32,

    /// Per-request deadline; a request not answered in time counts as `timeout`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Sent as `x-polaris-token` (gRPC metadata, or HTTP header) with every request.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

/// The API a scenario's requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// gRPC: the `v1.PolarisGRPC` service, any number of requests on each connection.
    Grpc,
    /// The HTTP client API: `POST /v1/<Method>` with the message as its JSON body.
    Http,
}

impl Protocol {
    /// As the command line and the report name it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// The protocol of a scenario that speaks both.
#[derive(Debug, Clone, Args)]
pub struct ProtocolOptions {
    /// `http`: the same requests as JSON to `POST /v1/<Method>` of --target's HTTP
    /// API, over --connections HTTP/1.1 keep-alive connections carrying one request at
    /// a time each; a request waits for an idle one, and the wait counts in its latency.
    #[arg(long, value_enum, value_name = "PROTOCOL", default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
}

/// How much of a load scenario's work is outstanding at once.
#[derive(Debug, Clone, Args)]
pub struct LoadOptions {
    /// Requests outstanding at once, over all connections. In open-loop, a request
    /// due while all are busy waits for one, and the wait counts in its latency.
    #[arg(long = "in-flight", value_name = "C", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub in_flight: u32,
}

/// The fleet of instances a scenario registers; see [`crate::fleet::Fleet`].
#[derive(Debug, Clone, Args)]
pub struct FleetOptions {
    /// Distinct instances (churn: register/deregister pairs; open-loop: requests,
    /// unless --duration is given).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=MAX_FLEET_SIZE))]
    pub count: u64,

    #[command(flatten)]
    pub grid: ServiceGridOptions,

    /// Metadata entries per instance (keys `k0`, `k1`, ...).
    #[arg(long, value_name = "M", default_value_t = 3)]
    pub metadata: u32,

    /// Bytes in each metadata value.
    #[arg(long = "metadata-size", value_name = "BYTES", default_value_t = 16)]
    pub metadata_size: u32,

    /// Heartbeat TTL in seconds, registered with each instance (heartbeat: how often
    /// each beats); 0 registers without a health check.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub ttl: u32,

    /// Seed for hosts, ports and metadata values: the same seed gives the same fleet.
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub seed: u64,
}

/// The services a fleet is spread over, and a discover run watches; see
/// [`crate::fleet::ServiceGrid`].
#[derive(Debug, Clone, Args)]
pub struct ServiceGridOptions {
    /// Namespaces the instances are spread over (`loadgen-ns-{i}`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub namespaces: u32,

    /// Services per namespace the instances are spread over (`loadgen-svc-{i}`).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub services: u32,
}

/// Where the ids of acknowledged registrations are saved.
#[derive(Debug, Clone, Default, Args)]
pub struct AckOptions {
    /// Write the instance id of every registration answered 200000 ExecuteSuccess or
    /// 400201 ExistedResource (the server says the instance is stored) to FILE, one per
    /// line, as the answers arrive: the id of the answer's instance. The file is
    /// created before the first request and flushed when the run ends, whatever its
    /// answers; the report gives the count as `acknowledged`. With --async-regis a
    /// 200000 only says that the request was queued.
    #[arg(long = "acked-out", value_name = "FILE")]
    pub acked_out: Option<PathBuf>,
}

/// How the result is shown and saved.
#[derive(Debug, Clone, Args)]
pub struct OutputOptions {
    /// Print the final report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Save the latency percentile distribution (HdrHistogram .hgrm text, ms) to FILE;
    /// churn writes one per operation (x.hgrm → x.register.hgrm, x.deregister.hgrm).
    #[arg(long = "hdr-out", value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,

    /// No live progress bar (it is also off when stderr is not a terminal).
    #[arg(long = "no-progress")]
    pub no_progress: bool,
}
