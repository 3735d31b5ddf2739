//! The transport's own ceiling: a `v1.PolarisGRPC` server on the same tonic stack and
//! runtime as batchreg that answers at once, with no auth, validation, batching, store or
//! cache. Its RegisterInstance, DeregisterInstance and Heartbeat answer `200000` with
//! the instance sent. Its Discover answers, on the same stream, `200001` to a request
//! that carries the revision it last sent, and otherwise `200000` with `--instances`
//! instances of `--metadata` entries each, encoded for every answer. A loadgen run
//! against it measures what gRPC alone costs on this machine, so batchreg's rates can be
//! read against the fastest any server on this transport could answer.
//!
//! cargo bench --bench grpc_ceiling -- --listen 127.0.0.1:18195 &
//! batchreg-loadgen storm --target 127.0.0.1:18195 --count 100000 --in-flight 512
//! batchreg-loadgen discover --target 127.0.0.1:18195 --watchers 64 [--cold]
//! batchreg-loadgen heartbeat --target 127.0.0.1:18195 ...
//!
//! It serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::pin::Pin;

use batchreg::proto;
use batchreg::proto::polaris_grpc_server::{PolarisGrpc, PolarisGrpcServer};
use clap::Parser;
use tonic::{Request, Response, Status, Streaming};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18195")]
    listen: SocketAddr,
    /// Instances in each full Discover answer.
    #[arg(long, default_value_t = 100)]
    instances: u32,
    /// Metadata entries of each of them.
    #[arg(long, default_value_t = 3)]
    metadata: u32,
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// The revision of the one service this server lists.
const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// Answers every write `200000` with what was sent, and Discover as the module says.
struct Echo {
    instances: Vec<proto::Instance>,
}

impl Echo {
    /// `count` instances as batchreg lists them: every field set.
    fn new(count: u32, metadata: u32) -> Self {
        let text = |value: String| Some(value);
        let instances = (0..count)
            .map(|i| proto::Instance {
                id: text(format!("{:040x}", u64::from(i) * 7919)),
                service: text("loadgen-svc-0".to_owned()),
                namespace: text("loadgen-ns-0".to_owned()),
                vpc_id: text(String::new()),
                host: text(format!("10.0.{}.{}", i / 250, i % 250)),
                port: Some(8080),
                protocol: text("grpc".to_owned()),
                version: text("1.0.0".to_owned()),
                priority: Some(0),
                weight: Some(100),
                enable_health_check: Some(true),
                health_check: Some(proto::HealthCheck {
                    r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
                    heartbeat: Some(proto::HeartbeatHealthCheck { ttl: Some(5) }),
                }),
                healthy: Some(true),
                isolate: Some(false),
                location: Some(proto::Location {
                    region: text(String::new()),
                    zone: text(String::new()),
                    campus: text(String::new()),
                }),
                metadata: (0..metadata)
                    .map(|k| (format!("k{k}"), format!("value-{i:010}-{k}")))
                    .collect(),
                logic_set: text(String::new()),
                ctime: text("2026-12-01 10:00:00".to_owned()),
                mtime: text("2026-12-01 10:00:00".to_owned()),
                revision: text(format!("{:032x}", i)),
                service_token: None,
            })
            .collect();
        Echo { instances }
    }

    fn answer(&self, request: proto::DiscoverRequest) -> proto::DiscoverResponse {
        let mut service = request.service.unwrap_or_default();
        if service.revision.as_deref() == Some(REVISION) {
            return proto::DiscoverResponse {
                code: Some(200_001),
                info: Some("discover data is no change".to_owned()),
                r#type: request.r#type,
                service: Some(service),
                ..Default::default()
            };
        }
        service.revision = Some(REVISION.to_owned());
        proto::DiscoverResponse {
            code: Some(200_000),
            info: Some("execute success".to_owned()),
            r#type: request.r#type,
            service: Some(service),
            instances: self.instances.clone(),
            services: Vec::new(),
        }
    }
}

type DiscoverStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::DiscoverResponse, Status>> + Send>>;

fn success(instance: proto::Instance) -> Response<proto::Response> {
    Response::new(proto::Response {
        code: Some(200_000),
        info: Some("execute success".to_owned()),
        instance: Some(instance),
        client: None,
    })
}

#[tonic::async_trait]
impl PolarisGrpc for Echo {
    async fn register_instance(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Ok(success(request.into_inner()))
    }

    async fn deregister_instance(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Ok(success(request.into_inner()))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Ok(success(request.into_inner()))
    }

    async fn report_client(
        &self,
        _request: Request<proto::Client>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    type DiscoverStream = DiscoverStream;

    async fn discover(
        &self,
        request: Request<Streaming<proto::DiscoverRequest>>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        use tokio_stream::StreamExt;
        let echo = Echo {
            instances: self.instances.clone(),
        };
        let answers = request
            .into_inner()
            .map(move |request| request.map(|request| echo.answer(request)));
        Ok(Response::new(Box::pin(answers)))
    }
}

fn main() {
    let args = Args::parse();
    // The same runtime batchreg's main builds.
    let runtime = batchreg::server::runtime().expect("tokio runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .expect("bind the listen address");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        eprintln!("grpc_ceiling serving on {}", args.listen);
        tonic::transport::Server::builder()
            .add_service(PolarisGrpcServer::new(Echo::new(
                args.instances,
                args.metadata,
            )))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .expect("serve");
    });
}
