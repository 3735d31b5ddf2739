//! `v1.PolarisGRPC` over tonic: decodes the wire types, reads the request metadata, calls
//! the client API and encodes its result. Methods not served answer UNIMPLEMENTED; every
//! served one answers gRPC OK with the Polaris code inside `Response`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::{ApiError, ClientApi};
use crate::code::Code;
use crate::naming::{HealthCheckInput, InstanceInput, LocationInput, RequestContext, Written};
use crate::proto;
use crate::proto::polaris_grpc_server::PolarisGrpc;
use crate::telemetry::RequestMetrics;

/// The tonic service: a thin adapter in front of [`ClientApi`].
pub struct PolarisGrpcAdapter {
    api: Arc<ClientApi>,
    register: RequestMetrics,
    deregister: RequestMetrics,
    heartbeat: RequestMetrics,
}

impl PolarisGrpcAdapter {
    pub fn new(api: Arc<ClientApi>) -> Self {
        PolarisGrpcAdapter {
            api,
            register: RequestMetrics::new("register", "grpc"),
            deregister: RequestMetrics::new("deregister", "grpc"),
            heartbeat: RequestMetrics::new("heartbeat", "grpc"),
        }
    }

    pub fn into_server(self) -> proto::polaris_grpc_server::PolarisGrpcServer<Self> {
        proto::polaris_grpc_server::PolarisGrpcServer::new(self)
    }
}

/// Reads `request-id`, `x-polaris-token` and `async-regis`.
fn request_context(metadata: &MetadataMap) -> RequestContext {
    let text = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RequestContext {
        request_id: text("request-id"),
        token: text("x-polaris-token"),
        detached: metadata.contains_key("async-regis"),
    }
}

pub fn instance_from_wire(wire: proto::Instance) -> InstanceInput {
    InstanceInput {
        id: wire.id,
        service: wire.service,
        namespace: wire.namespace,
        vpc_id: wire.vpc_id,
        host: wire.host,
        port: wire.port,
        protocol: wire.protocol,
        version: wire.version,
        priority: wire.priority,
        weight: wire.weight,
        healthy: wire.healthy,
        isolate: wire.isolate,
        enable_health_check: wire.enable_health_check,
        health_check: wire.health_check.map(|hc| HealthCheckInput {
            heartbeat: hc.r#type == proto::health_check::HealthCheckType::Heartbeat as i32,
            ttl: hc.heartbeat.and_then(|hb| hb.ttl),
        }),
        location: wire.location.map(|l| LocationInput {
            region: l.region,
            zone: l.zone,
            campus: l.campus,
        }),
        metadata: wire.metadata,
        logic_set: wire.logic_set,
        service_token: wire.service_token,
    }
}

pub fn instance_to_wire(instance: InstanceInput) -> proto::Instance {
    proto::Instance {
        id: instance.id,
        service: instance.service,
        namespace: instance.namespace,
        vpc_id: Some(instance.vpc_id.unwrap_or_default()),
        host: instance.host,
        port: instance.port,
        protocol: instance.protocol,
        version: instance.version,
        priority: instance.priority,
        weight: instance.weight,
        healthy: instance.healthy,
        isolate: instance.isolate,
        enable_health_check: instance.enable_health_check,
        health_check: instance.health_check.map(|hc| proto::HealthCheck {
            r#type: if hc.heartbeat {
                proto::health_check::HealthCheckType::Heartbeat as i32
            } else {
                proto::health_check::HealthCheckType::Unknown as i32
            },
            heartbeat: Some(proto::HeartbeatHealthCheck { ttl: hc.ttl }),
        }),
        location: instance.location.map(|l| proto::Location {
            region: l.region,
            zone: l.zone,
            campus: l.campus,
        }),
        metadata: instance.metadata,
        logic_set: instance.logic_set,
        // The token is the caller's secret: never echoed back.
        service_token: None,
        ctime: None,
        mtime: None,
        revision: None,
    }
}

/// The answer to a write: its code and text, and the instance echoed (with its id once
/// known): a registration's identity, a deregistration as sent. The one place a result
/// becomes a wire `Response`.
fn write_response(
    result: Result<Written, ApiError>,
    mut instance: InstanceInput,
) -> proto::Response {
    let (code, info) = match result {
        Ok(written) => {
            instance.id = Some(written.id);
            (written.code, written.info.to_owned())
        }
        Err(error) => (error.code(), error.to_string()),
    };
    proto::Response {
        code: Some(code.as_u32()),
        info: Some(info),
        // Health checking off: Polaris answers the code alone.
        instance: (code != Code::HealthCheckNotOpen).then(|| instance_to_wire(instance)),
        client: None,
    }
}

impl PolarisGrpcAdapter {
    /// Decodes, calls the client API, records the request, encodes the answer. The
    /// decoding and queueing happen now: the future returned holds only what the answer
    /// needs, since tonic moves and boxes it.
    fn register(
        &self,
        request: Request<proto::Instance>,
    ) -> impl Future<Output = GrpcResponse<proto::Response>> + use<'_> {
        let started = Instant::now();
        let ctx = request_context(request.metadata());
        let input = instance_from_wire(request.into_inner());
        let echo = Box::new(input.identity());
        let written = self.api.register(&ctx, input);
        async move {
            let result = written.await;
            self.answer(&self.register, started, result, *echo)
        }
    }

    async fn heartbeat(&self, request: Request<proto::Instance>) -> GrpcResponse<proto::Response> {
        let started = Instant::now();
        let ctx = request_context(request.metadata());
        let input = instance_from_wire(request.into_inner());
        let result = self.api.heartbeat(&ctx, &input).await;
        self.answer(&self.heartbeat, started, result, input.identity())
    }

    async fn deregister(&self, request: Request<proto::Instance>) -> GrpcResponse<proto::Response> {
        let started = Instant::now();
        let ctx = request_context(request.metadata());
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
    ) -> GrpcResponse<proto::Response> {
        let code = match &result {
            Ok(written) => written.code,
            Err(error) => error.code(),
        };
        metrics.record(code, started.elapsed());
        GrpcResponse::new(write_response(result, echo))
    }
}

type DiscoverStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::DiscoverResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PolarisGrpc for PolarisGrpcAdapter {
    async fn report_client(
        &self,
        _request: Request<proto::Client>,
    ) -> Result<GrpcResponse<proto::Response>, Status> {
        Err(Status::unimplemented(
            "ReportClient is not served by batchreg",
        ))
    }

    async fn register_instance(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<GrpcResponse<proto::Response>, Status> {
        Ok(self.register(request).await)
    }

    async fn deregister_instance(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<GrpcResponse<proto::Response>, Status> {
        Ok(self.deregister(request).await)
    }

    type DiscoverStream = DiscoverStream;

    async fn discover(
        &self,
        _request: Request<Streaming<proto::DiscoverRequest>>,
    ) -> Result<GrpcResponse<Self::DiscoverStream>, Status> {
        // Served by `api::discover`, in front of this adapter, with encoded answers.
        Err(Status::internal("Discover is routed to api::discover"))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<GrpcResponse<proto::Response>, Status> {
        Ok(PolarisGrpcAdapter::heartbeat(self, request).await)
    }
}
