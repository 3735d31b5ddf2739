//! A Discover server on 127.0.0.1 for the tests: answers instance requests by the
//! Polaris rules from a fixed listing, and keeps every request it receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::Fleet;
use crate::proto::discover_request::DiscoverRequestType;
use crate::proto::discover_response::DiscoverResponseType;
use crate::proto::polaris_grpc_server::{PolarisGrpc, PolarisGrpcServer};
use crate::proto::{self, DiscoverRequest, DiscoverResponse};
use crate::report::{DATA_NO_CHANGE, EXECUTE_SUCCESS, NOT_FOUND_RESOURCE};

const BAD_REQUEST: u32 = 400000;
const INVALID_SERVICE_NAME: u32 = 400120;
const DEFAULT_NAMESPACE: &str = "default";

/// The instances of one service and the revision they have.
#[derive(Debug)]
struct ListedService {
    revision: String,
    instances: Vec<proto::Instance>,
}

/// Answers Discover from a listing that never changes.
#[derive(Debug, Clone)]
pub struct FakeDiscover {
    services: Arc<HashMap<(String, String), ListedService>>,
    requests: Arc<Mutex<Vec<DiscoverRequest>>>,
}

/// A running [`FakeDiscover`]; stops when dropped.
pub struct FakeServer {
    pub address: String,
    requests: Arc<Mutex<Vec<DiscoverRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Instances `0..count` of `fleet` as a server stores them: with their ids.
pub fn registered_fleet(fleet: &Fleet) -> Vec<proto::Instance> {
    (0..fleet.count())
        .map(|index| proto::Instance {
            id: Some(fleet.instance_id(index)),
            ..fleet.instance(index)
        })
        .collect()
}

impl FakeDiscover {
    /// Lists each instance under its namespace and service; a service's revision is
    /// `rev-{instances}`.
    pub fn listing(instances: impl IntoIterator<Item = proto::Instance>) -> Self {
        let mut grouped: HashMap<(String, String), Vec<proto::Instance>> = HashMap::new();
        for instance in instances {
            let key = service_key(instance.namespace.as_deref(), instance.service.as_deref());
            grouped.entry(key).or_default().push(instance);
        }
        let services = grouped
            .into_iter()
            .map(|(key, instances)| {
                let revision = format!("rev-{}", instances.len());
                (
                    key,
                    ListedService {
                        revision,
                        instances,
                    },
                )
            })
            .collect();
        FakeDiscover {
            services: Arc::new(services),
            requests: Arc::default(),
        }
    }

    /// Serves on a free port of 127.0.0.1.
    pub async fn start(self) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = Arc::clone(&self.requests);
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(PolarisGrpcServer::new(self))
            .serve_with_incoming(incoming);
        let task = tokio::spawn(async move {
            server.await.expect("the fake server runs");
        });
        FakeServer {
            address,
            requests,
            task,
        }
    }

    /// The answer to one request: the listing, DataNoChange for the current
    /// revision, or the code of what is wrong with the request.
    fn answer(&self, request: &DiscoverRequest) -> DiscoverResponse {
        let refuse = |code| DiscoverResponse {
            code: Some(code),
            r#type: DiscoverResponseType::Instance as i32,
            service: request.service.clone(),
            ..Default::default()
        };
        if request.r#type != DiscoverRequestType::Instance as i32 {
            return refuse(BAD_REQUEST);
        }
        let asked = request.service.clone().unwrap_or_default();
        if asked.name.as_deref().unwrap_or_default().is_empty() {
            return refuse(INVALID_SERVICE_NAME);
        }
        let key = service_key(asked.namespace.as_deref(), asked.name.as_deref());
        let Some(listed) = self.services.get(&key) else {
            return refuse(NOT_FOUND_RESOURCE);
        };
        let service = proto::Service {
            namespace: Some(key.0),
            name: Some(key.1),
            revision: Some(listed.revision.clone()),
            ..Default::default()
        };
        let unchanged = asked.revision.as_deref() == Some(listed.revision.as_str());
        DiscoverResponse {
            code: Some(if unchanged {
                DATA_NO_CHANGE
            } else {
                EXECUTE_SUCCESS
            }),
            r#type: DiscoverResponseType::Instance as i32,
            service: Some(service),
            instances: if unchanged {
                Vec::new()
            } else {
                listed.instances.clone()
            },
            ..Default::default()
        }
    }
}

/// (namespace, service), an empty namespace read as `default`.
fn service_key(namespace: Option<&str>, service: Option<&str>) -> (String, String) {
    let namespace = namespace
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE);
    (namespace.to_owned(), service.unwrap_or_default().to_owned())
}

impl FakeServer {
    /// Every request received so far, in the order of arrival.
    pub fn requests(&self) -> Vec<DiscoverRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tonic::async_trait]
impl PolarisGrpc for FakeDiscover {
    async fn report_client(
        &self,
        _: Request<proto::Client>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("Discover only"))
    }

    async fn register_instance(
        &self,
        _: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("Discover only"))
    }

    async fn deregister_instance(
        &self,
        _: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("Discover only"))
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
                let answer = fake.answer(&request);
                fake.requests.lock().unwrap().push(request);
                if answers.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outgoing)))
    }

    async fn heartbeat(
        &self,
        _: Request<proto::Instance>,
    ) -> Result<Response<proto::Response>, Status> {
        Err(Status::unimplemented("Discover only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::discover_stream::instances_request;

    fn instance(namespace: &str, service: &str, port: u32) -> proto::Instance {
        proto::Instance {
            namespace: Some(namespace.to_owned()),
            service: Some(service.to_owned()),
            host: Some("10.0.0.1".to_owned()),
            port: Some(port),
            ..Default::default()
        }
    }

    #[test]
    fn answers_follow_the_polaris_rules() {
        let fake = FakeDiscover::listing([
            instance("default", "a", 1),
            instance("default", "a", 2),
            instance("ns", "b", 3),
        ]);
        let full = fake.answer(&instances_request("", "a", None));
        assert_eq!(full.code, Some(EXECUTE_SUCCESS));
        assert_eq!(full.instances.len(), 2);
        let revision = full.service.unwrap().revision;
        assert_eq!(revision.as_deref(), Some("rev-2"));
        let unchanged = fake.answer(&instances_request("default", "a", revision));
        assert_eq!(unchanged.code, Some(DATA_NO_CHANGE));
        assert!(unchanged.instances.is_empty());
        let stale = fake.answer(&instances_request("default", "a", Some("old".to_owned())));
        assert_eq!(stale.code, Some(EXECUTE_SUCCESS));
        let code = |request: DiscoverRequest| fake.answer(&request).code;
        assert_eq!(
            code(instances_request("default", "b", None)),
            Some(NOT_FOUND_RESOURCE)
        );
        assert_eq!(
            code(instances_request("ns", "", None)),
            Some(INVALID_SERVICE_NAME)
        );
        let routing = DiscoverRequest {
            r#type: DiscoverRequestType::Routing as i32,
            ..instances_request("ns", "b", None)
        };
        assert_eq!(code(routing), Some(BAD_REQUEST));
    }
}
