//! Discover over real gRPC against an in-process server on the SQLite store: what each
//! answer lists, with every field; revisions; bad requests answered on the same stream;
//! revisions that survive a restart.

mod common;

use batchreg::proto::discover_request::DiscoverRequestType;
use batchreg::proto::discover_response::DiscoverResponseType;
use batchreg::proto::polaris_grpc_client::PolarisGrpcClient;
use batchreg::proto::{self, Instance};
use common::discover::{by_id, discover, discover_all, request};
use common::{TestServer, code, expected_id, instance};
use tonic::transport::Channel;

const SUCCESS: u32 = 200_000;
const NO_CHANGE: u32 = 200_001;

async fn register(client: &mut PolarisGrpcClient<Channel>, sent: Instance) -> u32 {
    code(&client.register_instance(sent).await.unwrap().into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_exactly_what_was_registered_with_every_field() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let mut sent = Vec::new();
    for port in 0..20 {
        let mut one = instance("disc", "svc", "10.5.0.1", 7_000 + port);
        one.priority = Some(port);
        one.location = Some(proto::Location {
            region: Some("r1".into()),
            zone: Some("z1".into()),
            campus: Some("c1".into()),
        });
        one.logic_set = Some("set-a".into());
        one.service_token = Some("secret".into());
        assert_eq!(register(&mut client, one.clone()).await, SUCCESS);
        sent.push(one);
    }
    // Another service's instance is not listed.
    assert_eq!(
        register(&mut client, instance("disc", "other", "10.5.0.9", 1)).await,
        SUCCESS
    );

    let answer = discover(
        &mut client,
        request(DiscoverRequestType::Instance, "disc", "svc", ""),
    )
    .await;
    assert_eq!(answer.code, Some(SUCCESS), "{:?}", answer.info);
    assert_eq!(answer.r#type, DiscoverResponseType::Instance as i32);
    let service = answer.service.clone().unwrap();
    assert_eq!(service.name.as_deref(), Some("svc"));
    assert_eq!(service.namespace.as_deref(), Some("disc"));
    assert_eq!(service.token, None);
    let revision = service.revision.clone().unwrap();
    assert_eq!(revision.len(), 40);
    let listed = by_id(&answer);
    assert_eq!(listed.len(), 20);
    let db = t.db();
    for one in &sent {
        let id = expected_id("disc", "svc", "10.5.0.1", one.port.unwrap());
        let got = listed.get(&id).expect("listed");
        let stored = common::row(&db, &id).unwrap();
        assert_eq!(got.service.as_deref(), Some("svc"));
        assert_eq!(got.namespace.as_deref(), Some("disc"));
        assert_eq!(got.host, one.host);
        assert_eq!(got.port, one.port);
        assert_eq!(got.protocol, one.protocol);
        assert_eq!(got.version, one.version);
        assert_eq!(got.priority, one.priority);
        assert_eq!(got.weight, Some(100));
        assert_eq!(got.healthy, Some(true));
        assert_eq!(got.isolate, Some(false));
        assert_eq!(got.enable_health_check, Some(true));
        assert_eq!(
            got.health_check
                .as_ref()
                .unwrap()
                .heartbeat
                .as_ref()
                .unwrap()
                .ttl,
            Some(5)
        );
        assert_eq!(got.location, one.location);
        assert_eq!(got.metadata, one.metadata);
        assert_eq!(got.logic_set.as_deref(), Some("set-a"));
        assert_eq!(got.vpc_id.as_deref(), Some(""));
        assert_eq!(got.revision.as_deref(), Some(stored.revision.as_str()));
        assert_eq!(got.ctime.as_deref(), Some(&stored.ctime[..19]));
        assert_eq!(got.mtime.as_deref(), Some(&stored.mtime[..19]));
        assert_eq!(got.service_token, None, "the token is never sent");
    }

    // The same revision: nothing to send.
    let again = discover(
        &mut client,
        request(DiscoverRequestType::Instance, "disc", "svc", &revision),
    )
    .await;
    assert_eq!(again.code, Some(NO_CHANGE));
    assert!(again.instances.is_empty());
    assert_eq!(again.service.unwrap().name.as_deref(), Some("svc"));
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_show_with_a_new_revision_and_deregistered_instances_are_gone() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let first = instance("disc", "svc", "10.6.0.1", 1);
    let second = instance("disc", "svc", "10.6.0.2", 2);
    for one in [first.clone(), second.clone()] {
        assert_eq!(register(&mut client, one).await, SUCCESS);
    }
    let ask = |revision: &str| request(DiscoverRequestType::Instance, "disc", "svc", revision);
    let before = discover(&mut client, ask("")).await;
    let r1 = before.service.unwrap().revision.unwrap();

    // Changed metadata: a new revision, the new values.
    let mut changed = first.clone();
    changed.metadata.insert("env".into(), "prod".into());
    assert_eq!(register(&mut client, changed).await, SUCCESS);
    let after = discover(&mut client, ask(&r1)).await;
    assert_eq!(after.code, Some(SUCCESS));
    let r2 = after.service.clone().unwrap().revision.unwrap();
    assert_ne!(r2, r1);
    let id = expected_id("disc", "svc", "10.6.0.1", 1);
    assert_eq!(
        by_id(&after)[&id].metadata.get("env").map(String::as_str),
        Some("prod")
    );
    // An unchanged re-registration changes nothing.
    let mut same = first.clone();
    same.metadata.insert("env".into(), "prod".into());
    assert_eq!(register(&mut client, same).await, 400_201);
    assert_eq!(discover(&mut client, ask(&r2)).await.code, Some(NO_CHANGE));

    // Isolated and unhealthy instances are listed too: clients filter.
    let mut isolated = second.clone();
    isolated.isolate = Some(true);
    isolated.healthy = Some(false);
    assert_eq!(register(&mut client, isolated).await, SUCCESS);
    let listed = by_id(&discover(&mut client, ask(&r2)).await);
    let second_id = expected_id("disc", "svc", "10.6.0.2", 2);
    assert_eq!(listed[&second_id].isolate, Some(true));
    assert_eq!(listed[&second_id].healthy, Some(false));

    // Deregistered: gone from the next answer, read-your-writes.
    let gone = client
        .deregister_instance(first)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS);
    let listed = by_id(&discover(&mut client, ask("")).await);
    assert!(!listed.contains_key(&id));
    assert!(listed.contains_key(&second_id));
    let gone = client
        .deregister_instance(second)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS);
    // A service without instances is still known, with the revision of nothing.
    let empty = discover(&mut client, ask("")).await;
    assert_eq!(empty.code, Some(SUCCESS));
    assert!(empty.instances.is_empty());
    assert_eq!(
        empty.service.unwrap().revision.as_deref(),
        Some("da39a3ee5e6b4b0d3255bfef95601890afd80709")
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_answers_bad_and_good_requests_in_order() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    assert_eq!(
        register(&mut client, instance("default", "svc", "10.7.0.1", 1)).await,
        SUCCESS
    );
    let mut no_type = request(DiscoverRequestType::Instance, "default", "svc", "");
    no_type.r#type = 77;
    let requests = vec![
        request(DiscoverRequestType::Instance, "default", "", ""),
        no_type,
        request(DiscoverRequestType::Lane, "default", "svc", ""),
        request(DiscoverRequestType::Instance, "default", "missing", ""),
        // An empty namespace means "default".
        request(DiscoverRequestType::Instance, "", "svc", ""),
        request(DiscoverRequestType::Routing, "default", "svc", ""),
        request(DiscoverRequestType::RateLimit, "default", "svc", ""),
        request(DiscoverRequestType::CircuitBreaker, "default", "svc", ""),
        request(DiscoverRequestType::FaultDetector, "default", "svc", ""),
        request(DiscoverRequestType::Services, "", "", ""),
    ];
    let answers = discover_all(&mut client, requests).await;
    let codes: Vec<u32> = answers.iter().map(|a| a.code.unwrap()).collect();
    assert_eq!(
        codes,
        [
            400_120, 400_004, 400_004, 400_202, SUCCESS, SUCCESS, SUCCESS, SUCCESS, SUCCESS,
            SUCCESS
        ]
    );
    // An unknown service is echoed, as Polaris does.
    assert_eq!(
        answers[3].service.as_ref().unwrap().name.as_deref(),
        Some("missing")
    );
    assert_eq!(answers[3].r#type, DiscoverResponseType::Instance as i32);
    assert_eq!(answers[4].instances.len(), 1);
    for rules in &answers[5..9] {
        assert!(rules.instances.is_empty());
    }
    let services = &answers[9];
    assert_eq!(services.r#type, DiscoverResponseType::Services as i32);
    let names: Vec<(String, String)> = services
        .services
        .iter()
        .map(|s| (s.namespace.clone().unwrap(), s.name.clone().unwrap()))
        .collect();
    assert_eq!(names, [("default".to_owned(), "svc".to_owned())]);
    let revision = services.service.as_ref().unwrap().revision.clone().unwrap();
    let again = discover(
        &mut client,
        request(DiscoverRequestType::Services, "", "", &revision),
    )
    .await;
    assert_eq!(again.code, Some(NO_CHANGE));
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_come_back_the_same_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.db");
    let start = || {
        let path = path.clone();
        TestServer::start_at(path, |_| {})
    };
    let t = start().await;
    let mut client = t.client().await;
    for port in 0..5 {
        assert_eq!(
            register(&mut client, instance("disc", "svc", "10.8.0.1", port)).await,
            SUCCESS
        );
    }
    let ask = request(DiscoverRequestType::Instance, "disc", "svc", "");
    let before = discover(&mut client, ask.clone()).await;
    t.server.shutdown().await.unwrap();

    let t = start().await;
    let mut client = t.client().await;
    let after = discover(&mut client, ask).await;
    assert_eq!(after.service, before.service);
    assert_eq!(by_id(&after), by_id(&before));
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let first = TestServer::start_at(path.clone(), |_| {}).await;
    let mut config = batchreg::config::Config::default();
    config.server.grpc_listen = "127.0.0.1:0".to_owned();
    config.server.http_listen = "127.0.0.1:0".to_owned();
    config.store.url = format!("sqlite://{}", path.display());
    let error = batchreg::Server::start(config.validate().unwrap())
        .await
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("in use by another batchreg process"),
        "{message}"
    );
    first.server.shutdown().await.unwrap();
}
