//! Naming: validates a request, computes the instance id, and hands the write to the batch
//! layer; says what the store did as a code and a text, or why it did not. A plain async
//! API: the transport adapters and the tests call it alike.

pub mod instance_id;
pub mod validate;
mod writes;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::batch::{BatchController, BatchError, BatchResult, BatchSettings, BatchWrite};
use crate::code::Code;
use crate::discovery::cache::{Placed, RegistryCache};
use crate::store::resilient::{ResilientWriter, RetryPolicy};
use crate::store::{
    DeregisterOutcome, InstanceRecord, RegisterOptions, RegisterOutcome, Store, StoreError,
};
use crate::telemetry::StoreMetrics;
pub use validate::ValidationError;
use writes::{DeregisterWrite, RegisterWrite, Registration};

/// An instance as a client sent it, with the wire types gone. Absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceInput {
    pub id: Option<String>,
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub vpc_id: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
    pub version: Option<String>,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
    pub healthy: Option<bool>,
    pub isolate: Option<bool>,
    pub enable_health_check: Option<bool>,
    pub health_check: Option<HealthCheckInput>,
    pub location: Option<LocationInput>,
    pub metadata: HashMap<String, String>,
    pub logic_set: Option<String>,
    pub service_token: Option<String>,
}

impl InstanceInput {
    pub fn is_empty(&self) -> bool {
        *self == InstanceInput::default()
    }

    /// The fields that name the instance, the ones a registration's answer echoes (as
    /// Polaris does): id, service, namespace, vpc_id, host and port.
    pub fn identity(&self) -> InstanceInput {
        InstanceInput {
            id: self.id.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            vpc_id: self.vpc_id.clone(),
            host: self.host.clone(),
            port: self.port,
            ..InstanceInput::default()
        }
    }

    /// [`Self::identity`], taking the instance apart instead of copying.
    pub fn into_identity(self) -> InstanceInput {
        InstanceInput {
            id: self.id,
            service: self.service,
            namespace: self.namespace,
            vpc_id: self.vpc_id,
            host: self.host,
            port: self.port,
            ..InstanceInput::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthCheckInput {
    pub heartbeat: bool,
    pub ttl: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocationInput {
    pub region: Option<String>,
    pub zone: Option<String>,
    pub campus: Option<String>,
}

/// What the transport read beside the message.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// `x-polaris-token`: read only while auth is on.
    pub token: Option<String>,
    /// `async-regis`: answer once queued, do not wait for the write.
    pub detached: bool,
}

/// What a write did, as the client is told: the code, a human text, and the instance's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub code: Code,
    pub info: &'static str,
    pub id: String,
    /// A registered instance as the cache holds it (not known for a write answered
    /// before it is done).
    pub placed: Option<Placed>,
}

impl Written {
    fn new(code: Code, info: &'static str, id: String) -> Self {
        Written {
            code,
            info,
            id,
            placed: None,
        }
    }
}

/// Why the naming layer did not carry out a write.
#[derive(Debug, thiserror::Error)]
pub enum NamingError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("service {service} in namespace {namespace} does not exist")]
    ServiceNotFound { namespace: String, service: String },
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl NamingError {
    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            NamingError::Invalid(invalid) => invalid.code(),
            NamingError::ServiceNotFound { .. } => Code::NotFoundService,
            NamingError::Batch(batch) => batch.code(),
        }
    }
}

/// Naming settings, validated by the config.
#[derive(Debug, Clone)]
pub struct NamingSettings {
    /// Create namespaces and services on first use; otherwise answer NotFoundService.
    pub auto_create_services: bool,
    /// Answer ExecuteSuccess instead of ExistedResource for an unchanged re-registration.
    pub existed_as_success: bool,
    pub register: BatchSettings,
    pub deregister: BatchSettings,
    pub retry: RetryPolicy,
}

/// The registration API over the two batch controllers.
pub struct Naming {
    register: BatchController<RegisterWrite>,
    deregister: BatchController<DeregisterWrite>,
    cache: Arc<RegistryCache>,
    /// The store has no other writer, so the cache holds all it holds: an unchanged
    /// re-registration is answered from the cache, without the store.
    cache_is_authoritative: bool,
    existed_as_success: bool,
    auto_create_services: bool,
}

impl Naming {
    /// Opens `concurrency` store writers for each controller and starts them. Each write
    /// updates `cache` before it is answered.
    pub fn start(
        store: &dyn Store,
        cache: Arc<RegistryCache>,
        settings: &NamingSettings,
    ) -> Result<Self, StoreError> {
        let options = RegisterOptions {
            create_services: settings.auto_create_services,
        };
        let writer = |operation: &'static str| -> Result<ResilientWriter, StoreError> {
            let metrics = StoreMetrics::new(store.engine(), operation, store.error_reasons());
            Ok(ResilientWriter::new(
                store.writer()?,
                settings.retry,
                metrics,
            ))
        };
        let concurrency = store.concurrency();
        let mut registers = Vec::with_capacity(concurrency);
        let mut deregisters = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mut register = writer("register")?;
            if let Err(error) = register.prepare_for_registrations() {
                tracing::warn!(%error, "store writer not ready; its first batch connects");
            }
            registers.push(RegisterWrite {
                writer: register,
                options,
                cache: Arc::clone(&cache),
            });
            deregisters.push(DeregisterWrite {
                writer: writer("deregister")?,
                cache: Arc::clone(&cache),
            });
        }
        Ok(Naming {
            register: BatchController::start("register", settings.register, registers),
            deregister: BatchController::start("deregister", settings.deregister, deregisters),
            cache,
            cache_is_authoritative: store.single_writer(),
            existed_as_success: settings.existed_as_success,
            auto_create_services: settings.auto_create_services,
        })
    }

    /// Registers one instance; its values move into the record written. Validation and
    /// queueing happen now; the future returned only waits for the batch, and holds
    /// little (it is moved and boxed along the transport's path).
    pub fn register(
        &self,
        ctx: &RequestContext,
        input: InstanceInput,
    ) -> impl Future<Output = Result<Written, NamingError>> + use<'_> {
        let queued = self.queue_register(ctx, input);
        async move {
            let (registration, id, names) = match queued? {
                Queued::Detached(id) => {
                    return Ok(Written::new(
                        Code::ExecuteSuccess,
                        "accepted; written asynchronously",
                        id,
                    ));
                }
                Queued::Done(registration, id) => (registration, id, None),
                Queued::Waiting { rx, id, names } => {
                    (rx.await.unwrap_or(Err(BatchError::Abandoned))?, id, names)
                }
            };
            let (code, info) = match registration.outcome {
                RegisterOutcome::Created => (Code::ExecuteSuccess, "instance registered"),
                RegisterOutcome::Replaced => (Code::ExecuteSuccess, "instance updated"),
                RegisterOutcome::Unchanged => {
                    let code = if self.existed_as_success {
                        Code::ExecuteSuccess
                    } else {
                        Code::ExistedResource
                    };
                    (code, "instance already registered, unchanged")
                }
                RegisterOutcome::ServiceNotFound => {
                    let (namespace, service) = names.unwrap_or_default();
                    return Err(NamingError::ServiceNotFound { namespace, service });
                }
            };
            Ok(Written {
                placed: registration.placed,
                ..Written::new(code, info, id)
            })
        }
    }

    /// Validates a registration and queues its record, unless the cache shows it
    /// unchanged and holds all the store holds.
    fn queue_register(
        &self,
        ctx: &RequestContext,
        input: InstanceInput,
    ) -> Result<Queued<Registration>, NamingError> {
        let record = validate::register_record(input)?;
        let id = record.id.clone();
        if self.cache_is_authoritative
            && let Some(placed) = self.cached_unchanged(&record)
        {
            let registration = Registration {
                outcome: RegisterOutcome::Unchanged,
                placed: Some(placed),
            };
            return Ok(Queued::Done(registration, id));
        }
        if ctx.detached {
            self.register.submit_detached(record)?;
            return Ok(Queued::Detached(id));
        }
        // Only a server that does not create services answers ServiceNotFound, naming them.
        let names = (!self.auto_create_services)
            .then(|| (record.namespace.clone(), record.service.clone()));
        let rx = self.register.submit(record)?;
        Ok(Queued::Waiting { rx, id, names })
    }

    /// Deregisters one instance; an unknown instance is a success (nothing to do).
    pub async fn deregister(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
    ) -> Result<Written, NamingError> {
        let id = validate::deregister_id(input)?;
        if ctx.detached {
            self.deregister.submit_detached(id.clone())?;
            return Ok(Written::new(
                Code::ExecuteSuccess,
                "accepted; deleted asynchronously",
                id,
            ));
        }
        let info = match submit_and_wait(&self.deregister, id.clone()).await? {
            DeregisterOutcome::Deleted { .. } => "instance deregistered",
            DeregisterOutcome::Absent => "instance not registered; nothing to do",
        };
        Ok(Written::new(Code::ExecuteSuccess, info, id))
    }

    /// The instance, when the cache holds this exact instance. A write of the same id
    /// still queued is concurrent with this request, and may come after it.
    fn cached_unchanged(&self, record: &InstanceRecord) -> Option<Placed> {
        let (service, held) = self.cache.instance(&record.id)?;
        let unchanged = *service.namespace == *record.namespace
            && *service.name == *record.service
            && held.has_revision(&record.revision(record.isolate.unwrap_or(held.isolate)));
        unchanged.then_some(Placed {
            id: held.id,
            ttl: held.ttl,
        })
    }

    /// Writes everything queued and answers every request, then stops the threads.
    /// Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        self.register.shutdown();
        self.deregister.shutdown();
    }
}

/// A write in a batch queue.
enum Queued<T> {
    /// async-regis: nobody waits for it.
    Detached(String),
    /// Answered without a write.
    Done(T, String),
    Waiting {
        rx: oneshot::Receiver<BatchResult<T>>,
        id: String,
        /// The namespace and service, when an answer may have to name them.
        names: Option<(String, String)>,
    },
}

async fn submit_and_wait<W: BatchWrite>(
    controller: &BatchController<W>,
    op: W::Op,
) -> Result<W::Outcome, BatchError> {
    let rx = controller.submit(op)?;
    rx.await.unwrap_or(Err(BatchError::Abandoned))
}
