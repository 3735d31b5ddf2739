//! A registry on 127.0.0.1 for the tests, with heartbeats: it registers instances, takes
//! their beats by id, and every 250 ms marks unhealthy those whose last beat (or
//! registration) is `window` ttls old (3 by the Polaris rule) and healthy again those
//! that beat since. Discover lists each instance with its health; a service's revision
//! changes with every change to it. It keeps the time of every beat it answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::id_digest;
use crate::proto::discover_response::DiscoverResponseType;
use crate::proto::polaris_grpc_server::{PolarisGrpc, PolarisGrpcServer};
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::report::{DATA_NO_CHANGE, EXECUTE_SUCCESS, NOT_FOUND_RESOURCE};

/// How often the expiry checker runs.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Beats of an unknown instance answered ExecuteSuccess before NotFoundResource.
const UNKNOWN_BEATS_ALLOWED: u32 = 4;

/// The registry's state, behind one lock.
#[derive(Debug, Default)]
struct Registry {
    /// By id.
    instances: HashMap<String, Registered>,
    /// Revision of each (namespace, service), bumped by every change to its listing.
    revisions: HashMap<(String, String), u64>,
    unknown_beats: HashMap<String, u32>,
    /// Every beat answered, by id: when it arrived.
    beats: HashMap<String, Vec<Instant>>,
}

#[derive(Debug)]
struct Registered {
    /// As listed: with its id and health.
    instance: proto::Instance,
    ttl: Duration,
    last_beat: Instant,
}

impl Registered {
    fn key(&self) -> (String, String) {
        let instance = &self.instance;
        (
            instance.namespace.clone().unwrap_or_default(),
            instance.service.clone().unwrap_or_default(),
        )
    }
}

/// The registry; serves until dropped.
#[derive(Clone)]
pub struct FakeRegistry {
    state: Arc<Mutex<Registry>>,
    /// Ttls without a beat after which an instance is marked unhealthy.
    window: f64,
}

/// A running [`FakeRegistry`]; stops when dropped.
pub struct FakeRegistryServer {
    pub address: String,
    state: Arc<Mutex<Registry>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeRegistry {
    /// A registry that expires instances `window` ttls after their last beat.
    pub fn expiring_after(window: f64) -> Self {
        FakeRegistry {
            state: Arc::default(),
            window,
        }
    }

    /// Serves on a free port of 127.0.0.1, its expiry checker running.
    pub async fn start(self) -> FakeRegistryServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::clone(&self.state);
        let checker = tokio::spawn(self.clone().check_expiries());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(PolarisGrpcServer::new(self))
            .serve_with_incoming(incoming);
        let serving = tokio::spawn(async move {
            server.await.expect("the fake registry runs");
        });
        FakeRegistryServer {
            address,
            state,
            tasks: vec![checker, serving],
        }
    }

    async fn check_expiries(self) {
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let mut state = self.state.lock().unwrap();
            let mut changed = Vec::new();
            for registered in state.instances.values_mut() {
                let expired = now - registered.last_beat >= registered.ttl.mul_f64(self.window);
                let healthy = registered.instance.healthy != Some(false);
                if healthy == expired {
                    registered.instance.healthy = Some(!expired);
                    changed.push(registered.key());
                }
            }
            for key in changed {
                *state.revisions.entry(key).or_default() += 1;
            }
        }
    }

    fn answer(&self, request: &DiscoverRequest) -> DiscoverResponse {
        let asked = request.service.clone().unwrap_or_default();
        let key = (
            asked.namespace.clone().unwrap_or_default(),
            asked.name.clone().unwrap_or_default(),
        );
        let state = self.state.lock().unwrap();
        let Some(revision) = state.revisions.get(&key) else {
            return DiscoverResponse {
                code: Some(NOT_FOUND_RESOURCE),
                service: Some(asked),
                ..Default::default()
            };
        };
        let revision = format!("rev-{revision}");
        let service = proto::Service {
            revision: Some(revision.clone()),
            ..asked.clone()
        };
        if asked.revision.as_deref() == Some(revision.as_str()) {
            return DiscoverResponse {
                code: Some(DATA_NO_CHANGE),
                r#type: DiscoverResponseType::Instance as i32,
                service: Some(service),
                ..Default::default()
            };
        }
        DiscoverResponse {
            code: Some(EXECUTE_SUCCESS),
            r#type: DiscoverResponseType::Instance as i32,
            service: Some(service),
            instances: state
                .instances
                .values()
                .filter(|registered| registered.key() == key)
                .map(|registered| registered.instance.clone())
                .collect(),
            ..Default::default()
        }
    }
}

impl FakeRegistryServer {
    /// When each beat of instance `id` arrived.
    pub fn beats_of(&self, id: &str) -> Vec<Instant> {
        let state = self.state.lock().unwrap();
        state.beats.get(id).cloned().unwrap_or_default()
    }
}

impl Drop for FakeRegistryServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn answered(code: u32) -> Result<Response<proto::Response>, Status> {
    Ok(Response::new(proto::Response {
        code: Some(code),
        ..Default::default()
    }))
}

#[tonic::async_trait]
impl PolarisGrpc for FakeRegistry {
    async fn report_client(
        &self,
        _: Request<proto::Client>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn register_instance(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        let instance = request.into_inner();
        let port = u16::try_from(instance.port.unwrap_or_default()).unwrap_or_default();
        let id = hex::encode(id_digest(
            instance.namespace.as_deref().unwrap_or_default(),
            instance.service.as_deref().unwrap_or_default(),
            instance.host.as_deref().unwrap_or_default(),
            port,
        ));
        let ttl = instance
            .health_check
            .as_ref()
            .and_then(|check| check.heartbeat.as_ref()?.ttl)
            .unwrap_or(5);
        let registered = Registered {
            instance: proto::Instance {
                id: Some(id.clone()),
                healthy: Some(true),
                ..instance
            },
            ttl: Duration::from_secs(u64::from(ttl)),
            last_beat: Instant::now(),
        };
        let mut state = self.state.lock().unwrap();
        *state.revisions.entry(registered.key()).or_default() += 1;
        state.instances.insert(id.clone(), registered);
        Ok(Response::new(proto::Response {
            code: Some(EXECUTE_SUCCESS),
            instance: Some(proto::Instance {
                id: Some(id),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn deregister_instance(
        &self,
        _: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    type DiscoverStream = ReceiverStream<Result<DiscoverResponse, Status>>;

    async fn discover(
        &self,
        request: Request<Streaming<DiscoverRequest>>,
    ) -> Result<Response<Self::DiscoverStream>, Status> {
        let mut incoming = request.into_inner();
        let (answers, outgoing) = mpsc::channel(4);
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = incoming.message().await {
                if answers.send(Ok(fake.answer(&request))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        let id = request.into_inner().id.unwrap_or_default();
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let Some(registered) = state.instances.get_mut(&id) else {
            let beats = state.unknown_beats.entry(id).or_default();
            *beats += 1;
            return answered(if *beats <= UNKNOWN_BEATS_ALLOWED {
                EXECUTE_SUCCESS
            } else {
                NOT_FOUND_RESOURCE
            });
        };
        registered.last_beat = now;
        state.beats.entry(id).or_default().push(now);
        answered(EXECUTE_SUCCESS)
    }
}
