//! The transport adapters: gRPC (the Polaris v1 client API) and the HTTP port. They
//! convert wire types and codes, nothing more; [`ClientApi`] is what both call.

pub mod discover;
pub mod grpc;
pub mod http;

use crate::auth::{Auth, AuthError};
use crate::code::Code;
use crate::discovery::{Answered, Discovery};
use crate::naming::{InstanceInput, Naming, NamingError, RequestContext, Written};
use crate::proto;

/// Why a request of the client API was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Naming(#[from] NamingError),
}

impl ApiError {
    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            ApiError::Auth(auth) => auth.code(),
            ApiError::Naming(naming) => naming.code(),
        }
    }
}

/// The Polaris client API without a transport: the auth check, then the layer that
/// serves the method.
pub struct ClientApi {
    auth: Auth,
    naming: Naming,
    discovery: Discovery,
}

impl ClientApi {
    pub fn new(auth: Auth, naming: Naming, discovery: Discovery) -> Self {
        ClientApi {
            auth,
            naming,
            discovery,
        }
    }

    /// Answers one Discover request from the registry cache.
    pub fn discover(&self, request: &proto::DiscoverRequest) -> Answered {
        self.discovery.answer(request)
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
        async move { Ok(queued?.await?) }
    }

    pub async fn deregister(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
    ) -> Result<Written, ApiError> {
        self.auth.check_write(ctx, input)?;
        Ok(self.naming.deregister(ctx, input).await?)
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }
}
