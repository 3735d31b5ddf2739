//! `v1.PolarisGRPC` over tonic: decodes the wire types, reads the request metadata, calls
//! the client API and encodes its result. Methods not served answer UNIMPLEMENTED; every
//! served one answers gRPC OK with the Polaris code inside `Response`, except a request
//! refused because the server is stopping: UNAVAILABLE, so that the client knows it was
//! not processed (see [`super::drain`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::drain::REFUSED;
use super::wire::{code_of, instance_from_wire, write_response};
use super::{ApiError, ClientApi};
use crate::code::Code;
use crate::naming::{InstanceInput, RequestContext, Written};
use crate::proto;
use crate::proto::polaris_grpc_server::PolarisGrpc;
use crate::telemetry::RequestMetrics;

/// The tonic service: a thin adapter in front of [`ClientApi`].
pub struct PolarisGrpcAdapter {
    api: Arc<ClientApi>,
    register: RequestMetrics,
    deregister: RequestMetrics,
    heartbeat: RequestMetrics,
    report_client: RequestMetrics,
}

impl PolarisGrpcAdapter {
    pub fn new(api: Arc<ClientApi>) -> Self {
        PolarisGrpcAdapter {
            api,
            register: RequestMetrics::new("register", "grpc"),
            deregister: RequestMetrics::new("deregister", "grpc"),
            heartbeat: RequestMetrics::new("heartbeat", "grpc"),
            report_client: RequestMetrics::new("report_client", "grpc"),
        }
    }

    pub fn into_server(self) -> proto::polaris_grpc_server::PolarisGrpcServer<Self> {
        proto::polaris_grpc_server::PolarisGrpcServer::new(self)
    }
}

/// Reads `x-polaris-token` (only while auth is on: nothing else looks at it) and
/// `async-regis`.
fn request_context(metadata: &MetadataMap, auth_on: bool) -> RequestContext {
    RequestContext {
        token: auth_on
            .then(|| {
                metadata
                    .get("x-polaris-token")?
                    .to_str()
                    .ok()
                    .map(str::to_owned)
            })
            .flatten(),
        detached: metadata.contains_key("async-regis"),
    }
}

impl PolarisGrpcAdapter {
    fn request_context<T>(&self, request: &Request<T>) -> RequestContext {
        request_context(request.metadata(), self.api.auth_is_on())
    }

    /// Decodes, calls the client API, records the request, encodes the answer. The
    /// decoding and queueing happen now: the future returned holds only what the answer
    /// needs, since tonic moves and boxes it.
    fn register(
        &self,
        request: Request<proto::Instance>,
    ) -> impl Future<Output = Answer> + use<'_> {
        let started = Instant::now();
        let ctx = self.request_context(&request);
        let input = instance_from_wire(request.into_inner());
        let echo = Box::new(input.identity());
        let written = self.api.register(&ctx, input);
        async move {
            let result = written.await;
            self.answer(&self.register, started, result, *echo)
        }
    }

    async fn heartbeat(&self, request: Request<proto::Instance>) -> Answer {
        let started = Instant::now();
        let ctx = self.request_context(&request);
        let input = instance_from_wire(request.into_inner());
        let result = self.api.heartbeat(&ctx, &input).await;
        self.answer(&self.heartbeat, started, result, input.into_identity())
    }

    async fn deregister(&self, request: Request<proto::Instance>) -> Answer {
        let started = Instant::now();
        let ctx = self.request_context(&request);
        let input = instance_from_wire(request.into_inner());
        let result = self.api.deregister(&ctx, &input).await;
        self.answer(&self.deregister, started, result, input)
    }

    /// Records the request and encodes its answer.
    fn answer(
        &self,
        metrics: &RequestMetrics,
        started: Instant,
        result: Result<Written, ApiError>,
        echo: InstanceInput,
    ) -> Answer {
        if let Err(error) = &result
            && error.not_processed()
        {
            return Err(Status::unavailable(REFUSED));
        }
        metrics.record(code_of(&result), started.elapsed());
        Ok(GrpcResponse::new(write_response(result, echo)))
    }

    /// Runs `call` when the request is accepted; once the server drains, refuses it.
    async fn accepted(&self, call: impl Future<Output = Answer>) -> Answer {
        let Some(_in_flight) = self.api.drain().accept() else {
            return Err(Status::unavailable(REFUSED));
        };
        call.await
    }
}

type Answer = Result<GrpcResponse<proto::Response>, Status>;

type DiscoverStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::DiscoverResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolarisGrpc for PolarisGrpcAdapter {
    async fn report_client(
        &self,
        request: Request<proto::Client>,
    ) -> Result<GrpcResponse<proto::Response>, Status> {
        self.accepted(async {
            let started = Instant::now();
            let peer = request.remote_addr().map(|addr| addr.ip());
            let response = self.api.report_client(request.into_inner(), peer);
            self.report_client
                .record(Code::ExecuteSuccess, started.elapsed());
            Ok(GrpcResponse::new(response))
        })
        .await
    }

    async fn register_instance(&self, request: Request<proto::Instance>) -> Answer {
        // Accepted before anything of it is done: the drain waits for what it queues.
        let Some(_in_flight) = self.api.drain().accept() else {
            return Err(Status::unavailable(REFUSED));
        };
        self.register(request).await
    }

    async fn deregister_instance(&self, request: Request<proto::Instance>) -> Answer {
        self.accepted(self.deregister(request)).await
    }

    type DiscoverStream = DiscoverStream;

    async fn discover(
        &self,
        _request: Request<Streaming<proto::DiscoverRequest>>,
    ) -> Result<GrpcResponse<Self::DiscoverStream>, Status> {
        // Served by `api::discover`, in front of this adapter, with encoded answers.
        Err(Status::internal("Discover is routed to api::discover"))
    }

    async fn heartbeat(&self, request: Request<proto::Instance>) -> Answer {
        self.accepted(PolarisGrpcAdapter::heartbeat(self, request))
            .await
    }
}
