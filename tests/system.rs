//! The server's own surfaces: its instances in the Polaris system services (over gRPC and
//! HTTP, kept alive by its heartbeats, gone after shutdown, one per replica), the
//! `grpc.health.v1` service and server reflection.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batchreg::proto::{DiscoverResponse, Instance};
use common::discover::{DiscoverRequestType, by_id, discover, request};
use common::mysql::fresh_database;
use common::{TestServer, code, instance};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SUCCESS: u32 = 200_000;
const SYSTEM_SERVICES: [&str; 3] = ["polaris.discover", "polaris.healthcheck", "polaris.checker"];

async fn with_self_registration(tweak: impl FnOnce(&mut batchreg::config::Config)) -> TestServer {
    TestServer::start(|c| {
        c.server.register_self = true;
        tweak(c);
    })
    .await
}

async fn listed(t: &TestServer, service: &str) -> DiscoverResponse {
    let mut client = t.client().await;
    discover(
        &mut client,
        request(DiscoverRequestType::Instance, "Polaris", service, ""),
    )
    .await
}

/// `POST /v1/Discover` for a system service; the answer as JSON.
async fn listed_over_http(t: &TestServer, service: &str) -> serde_json::Value {
    let url = format!("http://{}/v1/Discover", t.server.http_addr());
    let body = serde_json::json!({
        "type": "INSTANCE",
        "service": {"namespace": "Polaris", "name": service}
    });
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn the_one(answer: &DiscoverResponse) -> Instance {
    assert_eq!(answer.code, Some(SUCCESS), "{answer:?}");
    assert_eq!(answer.instances.len(), 1, "{answer:?}");
    answer.instances[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_lists_itself_in_every_system_service_until_it_stops() {
    let t = with_self_registration(|_| {}).await;
    let port = t.server.grpc_addr().port();
    let ids: HashSet<String> = t.server.system_instance_ids().into_iter().collect();
    assert_eq!(ids.len(), 3);
    for service in SYSTEM_SERVICES {
        let listed = the_one(&listed(&t, service).await);
        assert_eq!(listed.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(listed.port, Some(u32::from(port)));
        assert_eq!(listed.protocol.as_deref(), Some("grpc"));
        assert_eq!(
            listed.metadata.get("protocol").map(String::as_str),
            Some("grpc")
        );
        assert_eq!(listed.healthy, Some(true));
        assert_eq!(listed.isolate, Some(false));
        assert_eq!(listed.enable_health_check, Some(true));
        assert!(ids.contains(listed.id.as_deref().unwrap()));

        let json = listed_over_http(&t, service).await;
        assert_eq!(json["code"], SUCCESS);
        let instances = json["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 1, "{json}");
        assert_eq!(instances[0]["host"], "127.0.0.1");
        assert_eq!(instances[0]["port"], port);
        assert_eq!(instances[0]["metadata"]["protocol"], "grpc");
        assert_eq!(instances[0]["id"], listed.id.unwrap());
    }

    // After shutdown the store holds them deregistered; a restart on the same file
    // without self-registration lists nobody.
    let db_path = t.db_path.clone();
    for id in &ids {
        assert!(
            !common::deregistered(&t.db(), id),
            "{id} registered while serving"
        );
    }
    let common::TestServer { server, _dir, .. } = t;
    server.shutdown().await.unwrap();
    let db = rusqlite::Connection::open(&db_path).unwrap();
    for id in &ids {
        assert!(
            common::deregistered(&db, id),
            "{id} still registered after shutdown"
        );
    }
    let again = TestServer::start_at(db_path, |_| {}).await;
    for service in SYSTEM_SERVICES {
        let answer = listed(&again, service).await;
        assert!(answer.instances.is_empty(), "{answer:?}");
    }
    drop(_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_heartbeats_keep_it_healthy_past_its_expiry_window() {
    let t = with_self_registration(|c| c.health.check_interval = Duration::from_millis(200)).await;
    // A neighbour registered with the same ttl that never beats: the control.
    let mut silent = instance("Polaris", "polaris.discover", "10.9.9.9", 1);
    silent.enable_health_check = Some(true);
    silent.health_check = Some(batchreg::proto::HealthCheck {
        r#type: batchreg::proto::health_check::HealthCheckType::Heartbeat as i32,
        heartbeat: Some(batchreg::proto::HeartbeatHealthCheck { ttl: Some(5) }),
    });
    let mut client = t.client().await;
    let answer = client.register_instance(silent).await.unwrap().into_inner();
    assert_eq!(code(&answer), SUCCESS);
    let silent_id = answer.instance.unwrap().id.unwrap();
    let own_id = the_one(&listed(&t, "polaris.healthcheck").await)
        .id
        .unwrap();

    // 3 × ttl = 15 s after the start, plus the checker's round: the silent one expires.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let answer = listed(&t, "polaris.discover").await;
        let by = by_id(&answer);
        if by[&silent_id].healthy == Some(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent instance never expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for service in SYSTEM_SERVICES {
        let answer = listed(&t, service).await;
        let own: Vec<&Instance> = answer
            .instances
            .iter()
            .filter(|i| i.host.as_deref() == Some("127.0.0.1"))
            .collect();
        assert_eq!(own.len(), 1, "{answer:?}");
        assert_eq!(own[0].healthy, Some(true), "{service}: {answer:?}");
    }
    let own = by_id(&listed(&t, "polaris.healthcheck").await);
    assert_eq!(own[&own_id].healthy, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_are_both_listed() {
    let Some(url) = fresh_database("system_replicas") else {
        return;
    };
    let start = |url: String| {
        with_self_registration(move |c| {
            c.store.url = url;
            c.discovery.refresh_interval = Duration::from_millis(100);
        })
    };
    let first = start(url.clone()).await;
    let second = start(url).await;
    let ports: HashSet<u32> = [&first, &second]
        .iter()
        .map(|t| u32::from(t.server.grpc_addr().port()))
        .collect();
    for replica in [&first, &second] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = listed(replica, "polaris.discover").await;
            let seen: HashSet<u32> = answer.instances.iter().filter_map(|i| i.port).collect();
            if seen == ports {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica lists {seen:?}, not both {ports:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The first stops: the second soon lists itself alone.
    let gone = u32::from(first.server.grpc_addr().port());
    let common::TestServer { server, _dir, .. } = first;
    server.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = listed(&second, "polaris.discover").await;
        let seen: HashSet<u32> = answer.instances.iter().filter_map(|i| i.port).collect();
        if !seen.contains(&gone) {
            assert_eq!(seen.len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped replica is still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gRPC connection to the test server, for the clients of other services.
async fn channel_to(t: &TestServer) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", t.server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health_of(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serves_once_loaded_and_not_once_shutdown_begins() {
    let t = TestServer::start(|_| {}).await;
    let channel = channel_to(&t).await;
    let mut health = HealthClient::new(channel);
    for service in ["", "v1.PolarisGRPC"] {
        assert_eq!(
            health_of(&mut health, service).await,
            ServingStatus::Serving as i32
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    t.server.begin_shutdown().await;
    for service in ["", "v1.PolarisGRPC"] {
        assert_eq!(
            health_of(&mut health, service).await,
            ServingStatus::NotServing as i32
        );
    }
    // Requests are still answered until the shutdown proper.
    let mut client = t.client().await;
    let answer = client
        .register_instance(instance("ns", "svc", "10.0.0.1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS);
}

async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    message: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_describes_the_polaris_api() {
    let t = TestServer::start(|_| {}).await;
    let channel = channel_to(&t).await;
    let mut client = ServerReflectionClient::new(channel);
    let MessageResponse::ListServicesResponse(listed) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let names: HashSet<String> = listed.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "v1.PolarisGRPC",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(expected), "{expected} not in {names:?}");
    }

    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &mut client,
        MessageRequest::FileContainingSymbol("v1.PolarisGRPC".to_owned()),
    )
    .await
    else {
        panic!("not a file descriptor");
    };
    use prost::Message;
    let described: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let polaris = described
        .iter()
        .find(|f| f.package.as_deref() == Some("v1"))
        .expect("the v1 file");
    let methods: HashSet<&str> = polaris.service[0]
        .method
        .iter()
        .filter_map(|m| m.name.as_deref())
        .collect();
    for method in [
        "RegisterInstance",
        "DeregisterInstance",
        "Heartbeat",
        "Discover",
        "ReportClient",
    ] {
        assert!(methods.contains(method), "{method} not in {methods:?}");
    }
}
