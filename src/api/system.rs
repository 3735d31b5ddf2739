//! The server's own instances in the system services `Polaris/polaris.discover`,
//! `polaris.healthcheck` and `polaris.checker`, so that SDKs configured for second-level
//! addressing find every replica: registered at start (host `server.advertise_host`, port
//! the gRPC port, metadata `protocol=grpc`), kept alive by heartbeats every ttl, and
//! deregistered at shutdown. They are the server's own writes: no token is asked for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ApiError, ClientApi};
use crate::code::Code;
use crate::naming::{HealthCheckInput, InstanceInput, RequestContext};

/// The namespace of the system services.
pub const NAMESPACE: &str = "Polaris";
/// The system services each replica registers itself in.
pub const SERVICES: [&str; 3] = ["polaris.discover", "polaris.healthcheck", "polaris.checker"];
/// The ttl of the server's own instances, in seconds (Polaris's `heartbeat_interval`).
pub const TTL_SECONDS: u32 = 5;

/// Where this replica is reached.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub host: String,
    pub grpc_port: u16,
}

/// This replica's registered system instances and the task beating for them.
pub struct SystemInstances {
    instances: Vec<InstanceInput>,
    stop: watch::Sender<bool>,
    beats: JoinHandle<()>,
}

/// The instance this replica registers in `service`.
fn system_instance(service: &str, at: &Advertised, checked: bool) -> InstanceInput {
    InstanceInput {
        service: Some(service.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        host: Some(at.host.clone()),
        port: Some(u32::from(at.grpc_port)),
        protocol: Some("grpc".to_owned()),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        healthy: Some(true),
        isolate: Some(false),
        enable_health_check: Some(checked),
        health_check: checked.then_some(HealthCheckInput {
            heartbeat: true,
            ttl: Some(TTL_SECONDS),
        }),
        metadata: HashMap::from([
            ("protocol".to_owned(), "grpc".to_owned()),
            ("polaris_service".to_owned(), service.to_owned()),
        ]),
        ..InstanceInput::default()
    }
}

impl SystemInstances {
    /// Registers this replica in every system service and starts beating for them (when
    /// heartbeats are on; otherwise they are registered without a health check).
    pub async fn register(api: &Arc<ClientApi>, at: &Advertised) -> Result<Self, ApiError> {
        let checked = api.health.is_on();
        let ctx = RequestContext::default();
        let mut instances = Vec::with_capacity(SERVICES.len());
        for service in SERVICES {
            let input = system_instance(service, at, checked);
            let written = api.naming.register(&ctx, input.clone()).await?;
            if written.code == Code::ExecuteSuccess {
                api.health.registered(&written.id, written.placed.as_ref());
            }
            instances.push(InstanceInput {
                id: Some(written.id),
                ..input.identity()
            });
        }
        let (stop, stopped) = watch::channel(false);
        let beats = tokio::spawn(beat(Arc::clone(api), instances.clone(), checked, stopped));
        Ok(SystemInstances {
            instances,
            stop,
            beats,
        })
    }

    /// The ids registered, one per system service.
    pub fn ids(&self) -> Vec<String> {
        self.instances.iter().filter_map(|i| i.id.clone()).collect()
    }

    /// Stops beating and deregisters every system instance (waiting for the writes).
    pub async fn deregister(self, api: &ClientApi) {
        let _ = self.stop.send(true);
        let _ = self.beats.await;
        let ctx = RequestContext::default();
        for instance in &self.instances {
            match api.naming.deregister(&ctx, instance).await {
                Ok(written) => api.health.deregistered(&written.id),
                Err(error) => tracing::warn!(
                    %error,
                    service = instance.service.as_deref().unwrap_or(""),
                    "could not deregister this server from its system service"
                ),
            }
        }
    }
}

/// Beats for each system instance every ttl until stopped.
async fn beat(
    api: Arc<ClientApi>,
    instances: Vec<InstanceInput>,
    checked: bool,
    mut stopped: watch::Receiver<bool>,
) {
    if !checked {
        let _ = stopped.wait_for(|stop| *stop).await;
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(u64::from(TTL_SECONDS)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = every.tick() => {}
        }
        for instance in &instances {
            if let Err(error) = api.health.heartbeat(instance).await {
                tracing::warn!(%error, "this server's own heartbeat was refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_instance_carries_the_advertised_address_and_grpc_protocol() {
        let at = Advertised {
            host: "10.1.2.3".to_owned(),
            grpc_port: 8091,
        };
        let checked = system_instance("polaris.discover", &at, true);
        assert_eq!(checked.namespace.as_deref(), Some("Polaris"));
        assert_eq!(checked.host.as_deref(), Some("10.1.2.3"));
        assert_eq!(checked.port, Some(8091));
        assert_eq!(checked.metadata["protocol"], "grpc");
        assert_eq!(checked.health_check.unwrap().ttl, Some(TTL_SECONDS));
        let unchecked = system_instance("polaris.checker", &at, false);
        assert_eq!(unchecked.enable_health_check, Some(false));
        assert!(unchecked.health_check.is_none());
    }
}
