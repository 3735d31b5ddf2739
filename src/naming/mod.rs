//! Naming: validates a request, computes the instance id, and hands the write to the batch
//! layer; turns what the store did into the Polaris answer. A plain async API: the gRPC
//! adapter and the tests call it alike.

pub mod instance_id;
pub mod validate;

use std::collections::HashMap;

use crate::batch::{
    BatchController, BatchError, BatchSettings, BatchWrite, DeregisterWrite, RegisterWrite,
};
use crate::code::{Code, RequestError, code_of};
use crate::store::resilient::{ResilientWriter, RetryPolicy, StoreLabels};
use crate::store::{DeregisterOutcome, RegisterOptions, RegisterOutcome, Store, StoreError};
pub use validate::ValidationError;

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
    pub request_id: Option<String>,
    /// `x-polaris-token`.
    pub token: Option<String>,
    /// `async-regis`: answer once queued, do not wait for the write.
    pub detached: bool,
}

/// The answer to one request: code, human text, and the instance it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: Code,
    pub info: String,
    pub instance: InstanceInput,
}

impl Answer {
    pub fn success(code: Code, info: impl Into<String>, instance: InstanceInput) -> Self {
        Answer {
            code,
            info: info.into(),
            instance,
        }
    }

    pub fn failed(err: RequestError, instance: InstanceInput) -> Self {
        Answer {
            code: code_of(&err),
            info: err.to_string(),
            instance,
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
    existed_as_success: bool,
    auto_create_services: bool,
}

impl Naming {
    /// Opens `concurrency` store writers for each controller and starts them.
    pub fn start(store: &dyn Store, settings: &NamingSettings) -> Result<Self, StoreError> {
        let options = RegisterOptions {
            create_services: settings.auto_create_services,
        };
        let engine = store.engine();
        let writer = |operation: &'static str| -> Result<ResilientWriter, StoreError> {
            let labels = StoreLabels { engine, operation };
            Ok(ResilientWriter::new(store.writer()?, settings.retry).labels(labels))
        };
        let concurrency = store.concurrency();
        let mut registers = Vec::with_capacity(concurrency);
        let mut deregisters = Vec::with_capacity(concurrency);
        for _ in 0..concurrency {
            let mut register = writer("register")?;
            if let Err(error) = register.inner().prepare_for_registrations() {
                tracing::warn!(%error, "store writer not ready; its first batch connects");
            }
            registers.push(RegisterWrite {
                writer: register,
                options,
            });
            deregisters.push(DeregisterWrite {
                writer: writer("deregister")?,
            });
        }
        Ok(Naming {
            register: BatchController::start("register", settings.register, registers),
            deregister: BatchController::start("deregister", settings.deregister, deregisters),
            existed_as_success: settings.existed_as_success,
            auto_create_services: settings.auto_create_services,
        })
    }

    /// Registers one instance.
    pub async fn register(&self, ctx: &RequestContext, mut input: InstanceInput) -> Answer {
        let record = match validate::register_record(&input) {
            Ok(record) => record,
            Err(err) => return Answer::failed(err.into(), input),
        };
        input.id = Some(record.id.clone());
        let (namespace, service) = (record.namespace.clone(), record.service.clone());
        if ctx.detached {
            return match self.register.submit_detached(record) {
                Ok(()) => Answer::success(
                    Code::ExecuteSuccess,
                    "accepted; written asynchronously",
                    input,
                ),
                Err(err) => Answer::failed(err.into(), input),
            };
        }
        let outcome = match submit_and_wait(&self.register, record).await {
            Ok(outcome) => outcome,
            Err(err) => return Answer::failed(err.into(), input),
        };
        match outcome {
            RegisterOutcome::Created => {
                Answer::success(Code::ExecuteSuccess, "instance registered", input)
            }
            RegisterOutcome::Replaced => {
                Answer::success(Code::ExecuteSuccess, "instance updated", input)
            }
            RegisterOutcome::Unchanged if self.existed_as_success => Answer::success(
                Code::ExecuteSuccess,
                "instance already registered, unchanged",
                input,
            ),
            RegisterOutcome::Unchanged => Answer::success(
                Code::ExistedResource,
                "instance already registered, unchanged",
                input,
            ),
            RegisterOutcome::ServiceNotFound => {
                debug_assert!(!self.auto_create_services);
                Answer::failed(RequestError::ServiceNotFound { namespace, service }, input)
            }
        }
    }

    /// Deregisters one instance; an unknown instance is a success (nothing to do).
    pub async fn deregister(&self, ctx: &RequestContext, mut input: InstanceInput) -> Answer {
        let id = match validate::deregister_id(&input) {
            Ok(id) => id,
            Err(err) => return Answer::failed(err.into(), input),
        };
        input.id = Some(id.clone());
        if ctx.detached {
            return match self.deregister.submit_detached(id) {
                Ok(()) => Answer::success(
                    Code::ExecuteSuccess,
                    "accepted; deleted asynchronously",
                    input,
                ),
                Err(err) => Answer::failed(err.into(), input),
            };
        }
        match submit_and_wait(&self.deregister, id).await {
            Ok(DeregisterOutcome::Deleted) => {
                Answer::success(Code::ExecuteSuccess, "instance deregistered", input)
            }
            Ok(DeregisterOutcome::Absent) => Answer::success(
                Code::ExecuteSuccess,
                "instance not registered; nothing to do",
                input,
            ),
            Err(err) => Answer::failed(err.into(), input),
        }
    }

    /// Requests waiting in the register and deregister queues.
    pub fn queue_depths(&self) -> (usize, usize) {
        (self.register.queue_depth(), self.deregister.queue_depth())
    }

    /// Writes everything queued and answers every request, then stops the threads.
    /// Blocks: call it from a blocking context.
    pub fn shutdown(&self) {
        self.register.shutdown();
        self.deregister.shutdown();
    }
}

async fn submit_and_wait<W: BatchWrite>(
    controller: &BatchController<W>,
    op: W::Op,
) -> Result<W::Outcome, BatchError> {
    let rx = controller.submit(op)?;
    rx.await.unwrap_or(Err(BatchError::Abandoned))
}
