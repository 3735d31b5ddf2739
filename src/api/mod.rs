//! The transport adapters: gRPC (the Polaris v1 client API) and the HTTP port. They
//! convert wire types and codes, nothing more; [`ClientApi`] is what both call.

pub mod discover;
pub mod drain;
pub mod grpc;
pub mod http;
pub mod system;
pub mod wire;

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{Auth, AuthError};
use crate::batch::BatchError;
use crate::code::Code;
use crate::discovery::answer::info as answer_info;
use crate::discovery::{Answered, Discovery};
use crate::health::{Health, HealthError};
use crate::naming::{InstanceInput, Naming, NamingError, RequestContext, Written};
use crate::proto;
use drain::Drain;

/// Why a request of the client API was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Naming(#[from] NamingError),
    #[error(transparent)]
    Health(#[from] HealthError),
}

impl ApiError {
    /// Whether nothing of the request was done because the server is stopping: the
    /// transports refuse it as not processed rather than answer a Polaris code.
    pub fn not_processed(&self) -> bool {
        matches!(
            self,
            ApiError::Naming(NamingError::Batch(BatchError::ShuttingDown))
        )
    }

    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Auth(auth) => auth.code(),
            ApiError::Naming(naming) => naming.code(),
            ApiError::Health(health) => health.code(),
        }
    }
}

/// The Polaris client API without a transport: the auth check, then the layer that
/// serves the method.
pub struct ClientApi {
    auth: Auth,
    /// Heartbeats need a token when auth is on.
    auth_heartbeats: bool,
    naming: Naming,
    discovery: Discovery,
    health: Health,
    drain: Arc<Drain>,
}

/// What the client API is made of.
pub struct Layers {
    pub auth: Auth,
    pub auth_heartbeats: bool,
    pub naming: Naming,
    pub discovery: Discovery,
    pub health: Health,
}

impl ClientApi {
    pub fn new(layers: Layers) -> Self {
        let Layers {
            auth,
            auth_heartbeats,
            naming,
            discovery,
            health,
        } = layers;
        ClientApi {
            auth,
            auth_heartbeats,
            naming,
            discovery,
            health,
            drain: Arc::default(),
        }
    }

    /// The transports' requests in flight, and the drain at shutdown.
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// Takes one heartbeat; the answer carries the instance's id.
    pub async fn heartbeat(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
    ) -> Result<Written, ApiError> {
        if self.auth.is_on() && self.auth_heartbeats {
            // A heartbeat by id alone names its service through the registry.
            let known = match (&input.namespace, &input.service, &input.id) {
                (Some(_), Some(_), _) | (_, _, None) => None,
                (_, _, Some(id)) => self.discovery.cache().instance(id).map(|(entry, _)| entry),
            };
            let namespace = input
                .namespace
                .as_deref()
                .or(known.as_ref().map(|e| &*e.namespace));
            let service = input
                .service
                .as_deref()
                .or(known.as_ref().map(|e| &*e.name));
            self.auth.check(ctx, input, namespace, service)?;
        }
        let id = self.health.heartbeat(input).await?;
        Ok(Written {
            code: Code::ExecuteSuccess,
            info: "heartbeat taken",
            id,
            placed: None,
        })
    }

    /// Answers one Discover request from the registry cache; `healthy_only` (HTTP's
    /// `Filter.OnlyHealthyInstance`; gRPC answers every instance) leaves out unhealthy
    /// instances of an INSTANCE answer.
    pub fn discover(&self, request: &proto::DiscoverRequest, healthy_only: bool) -> Answered {
        self.discovery.answer(request, healthy_only)
    }

    /// `ReportClient`: nothing is stored; the answer tells the client its host (the
    /// peer's address when it sent none) and location. A client with an id gets its
    /// report echoed.
    pub fn report_client(&self, client: proto::Client, peer: Option<IpAddr>) -> proto::Response {
        let host = client
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| peer.map(|ip| ip.to_canonical().to_string()));
        let echoed = if client.id.as_deref().unwrap_or("").is_empty() {
            proto::Client {
                host,
                location: client.location,
                ..Default::default()
            }
        } else {
            proto::Client { host, ..client }
        };
        proto::Response {
            code: Some(Code::ExecuteSuccess.as_u32()),
            info: Some(answer_info(Code::ExecuteSuccess).to_owned()),
            client: Some(echoed),
            instance: None,
        }
    }

    /// The checks and the queueing happen now; the future returned only waits for the
    /// write (see [`Naming::register`]).
    pub fn register(
        &self,
        ctx: &RequestContext,
        input: InstanceInput,
    ) -> impl Future<Output = Result<Written, ApiError>> + use<'_> {
        let queued = self
            .auth
            .check_write(ctx, &input)
            .map(|()| self.naming.register(ctx, input));
        async move {
            let written = queued?.await?;
            if written.code == Code::ExecuteSuccess {
                // A registration counts as a first beat.
                self.health.registered(&written.id, written.placed.as_ref());
            }
            Ok(written)
        }
    }

    pub async fn deregister(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
    ) -> Result<Written, ApiError> {
        self.auth.check_write(ctx, input)?;
        let written = self.naming.deregister(ctx, input).await?;
        self.health.deregistered(&written.id);
        Ok(written)
    }

    /// Whether the request may read `namespace` (and `service`, when given) through the
    /// HTTP port's read API: its token (`x-polaris-token`) must be granted them when auth
    /// is on. Without a namespace, only a grant of every namespace will do.
    pub fn check_read(
        &self,
        ctx: &RequestContext,
        namespace: Option<&str>,
        service: Option<&str>,
    ) -> Result<(), ApiError> {
        // No instance is written: the token can only come from the request.
        self.auth
            .check(ctx, &InstanceInput::default(), namespace, service)?;
        Ok(())
    }

    /// Whether requests need a token.
    pub fn auth_is_on(&self) -> bool {
        self.auth.is_on()
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Stops the pipeline: writes everything queued, answers every request, stops the
    /// expiry checker. Call it once no request can arrive.
    pub async fn stop(self: &Arc<Self>) {
        let api = Arc::clone(self);
        let _ = tokio::task::spawn_blocking(move || api.naming.shutdown()).await;
        self.health.stop().await;
    }
}
