//! The transport's own ceiling: a `v1.PolarisGRPC` server on the same tonic stack and
//! runtime as batchreg whose RegisterInstance answers `200000` with the instance at once
//! (no auth, validation, batching or store). A loadgen storm against it measures what
//! gRPC alone costs on this machine, so batchreg's storm rates can be read against the
//! fastest any server on this transport could answer.
//!
//! cargo bench --bench grpc_ceiling -- --listen 127.0.0.1:18195 &
//! batchreg-loadgen storm --target 127.0.0.1:18195 --count 100000 --in-flight 512
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
    /// Accepted and ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Answers every registration and deregistration `200000` with what was sent.
struct Echo;

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
        _request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("not measured"))
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
        _request: Request<Streaming<proto::DiscoverRequest>>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        Err(Status::unimplemented("not measured"))
    }
}

fn main() {
    let args = Args::parse();
    // The same runtime batchreg's main builds.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
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
            .add_service(PolarisGrpcServer::new(Echo))
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .expect("serve");
    });
}
