//! Registration over real gRPC against an in-process server on the SQLite store: each
//! request's own answer, and the rows in the database.

mod common;

use std::collections::HashMap;

use batchreg::proto::{self, Instance};
use common::{TestServer, code, deregistered, expected_id, instance, metadata, row, ttl};
use tonic::Request;

const SUCCESS: u32 = 200_000;
const EXISTED: u32 = 400_201;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_registrations_are_all_stored() {
    let t = TestServer::start(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(t.client().await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5_000u32 {
        let mut client = clients[i as usize % clients.len()].clone();
        let service = format!("svc-{}", i % 7);
        let host = format!("10.1.{}.{}", i / 250, i % 250);
        tasks.spawn(async move {
            let sent = instance("storm", &service, &host, 20_000 + i);
            let answer = client
                .register_instance(sent.clone())
                .await
                .expect("gRPC OK")
                .into_inner();
            (sent, answer)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (sent, answer) = joined.unwrap();
        assert_eq!(code(&answer), SUCCESS, "{answer:?}");
        assert!(!answer.info.clone().unwrap_or_default().is_empty());
        let echoed = answer.instance.expect("answer carries the instance");
        let (ns, svc, host, port) = (
            sent.namespace.unwrap(),
            sent.service.unwrap(),
            sent.host.unwrap(),
            sent.port.unwrap(),
        );
        assert_eq!(
            echoed.id.as_deref(),
            Some(expected_id(&ns, &svc, &host, port).as_str())
        );
        assert_eq!(echoed.service.as_deref(), Some(svc.as_str()));
        assert_eq!(echoed.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(echoed.host.as_deref(), Some(host.as_str()));
        assert_eq!(echoed.port, Some(port));
        assert_eq!(echoed.vpc_id.as_deref(), Some(""));
        answered += 1;
    }
    assert_eq!(answered, 5_000);

    assert_eq!(t.live_instances(), 5_000);
    assert_eq!(t.count("health_check"), 5_000);
    assert_eq!(t.count("instance_metadata"), 15_000);
    assert_eq!(t.count("service"), 7);
    assert_eq!(t.count("namespace"), 1);
    let db = t.db();
    for i in (0..5_000u32).step_by(97) {
        let (service, host, port) = (
            format!("svc-{}", i % 7),
            format!("10.1.{}.{}", i / 250, i % 250),
            20_000 + i,
        );
        let id = expected_id("storm", &service, &host, port);
        let stored = row(&db, &id).expect("row stored");
        assert_eq!((stored.host.as_str(), stored.port), (host.as_str(), port));
        assert_eq!(
            (stored.namespace.as_str(), stored.service.as_str()),
            ("storm", service.as_str())
        );
        assert_eq!(
            (
                stored.weight,
                stored.protocol.as_str(),
                stored.version.as_str()
            ),
            (100, "grpc", "1.0.0")
        );
        assert!(stored.healthy && !stored.isolate);
        assert_eq!(ttl(&db, &id), Some(5));
        assert_eq!(
            metadata(&db, &id),
            vec![
                ("env".to_owned(), "test".to_owned()),
                ("idx".to_owned(), port.to_string()),
                ("zone".to_owned(), format!("z{}", port % 3)),
            ]
        );
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unchanged_reregistration_writes_nothing() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let sent = instance("default", "echo", "10.0.0.1", 8080);
    let first = client
        .register_instance(sent.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&first), SUCCESS);
    let id = expected_id("default", "echo", "10.0.0.1", 8080);
    let before = row(&t.db(), &id).unwrap();

    std::thread::sleep(std::time::Duration::from_millis(5));
    let again = client.register_instance(sent).await.unwrap().into_inner();
    assert_eq!(code(&again), EXISTED, "{again:?}");
    assert_eq!(again.instance.unwrap().id.as_deref(), Some(id.as_str()));
    let after = row(&t.db(), &id).unwrap();
    assert_eq!(
        before, after,
        "an unchanged re-registration must not rewrite the row"
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn existed_as_success_switch_answers_success() {
    let t = TestServer::start(|c| c.naming.existed_as_success = true).await;
    let mut client = t.client().await;
    let sent = instance("default", "echo", "10.0.0.1", 8080);
    for _ in 0..2 {
        let answer = client
            .register_instance(sent.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&answer), SUCCESS);
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn changed_reregistration_replaces_in_place_and_keeps_ctime() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let mut sent = instance("default", "echo", "10.0.0.1", 8080);
    sent.isolate = Some(true);
    assert_eq!(
        code(
            &client
                .register_instance(sent.clone())
                .await
                .unwrap()
                .into_inner()
        ),
        SUCCESS
    );
    let id = expected_id("default", "echo", "10.0.0.1", 8080);
    let before = row(&t.db(), &id).unwrap();

    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut changed = sent.clone();
    changed.weight = Some(7);
    changed.version = Some("2.0.0".to_owned());
    changed.isolate = None; // omitted: the stored flag is kept
    changed.metadata = HashMap::from([("only".to_owned(), "one".to_owned())]);
    changed.health_check = None;
    changed.enable_health_check = Some(false);
    let answer = client
        .register_instance(changed)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");

    let db = t.db();
    let after = row(&db, &id).unwrap();
    assert_eq!(after.ctime, before.ctime, "ctime kept");
    assert_ne!(after.mtime, before.mtime, "mtime moves");
    assert_ne!(after.revision, before.revision);
    assert_eq!((after.weight, after.version.as_str()), (7, "2.0.0"));
    assert!(after.isolate, "isolate kept when the request omits it");
    assert_eq!(
        metadata(&db, &id),
        vec![("only".to_owned(), "one".to_owned())]
    );
    assert_eq!(
        ttl(&db, &id),
        None,
        "health check removed with enable_health_check = false"
    );
    assert_eq!(t.live_instances(), 1);
    t.server.shutdown().await.unwrap();
}

/// Each bad field, its Polaris code.
fn bad_requests() -> Vec<(&'static str, Instance, u32)> {
    let good = || instance("default", "echo", "10.0.0.1", 8080);
    let with = |f: &dyn Fn(&mut Instance)| {
        let mut i = good();
        f(&mut i);
        i
    };
    vec![
        ("empty", Instance::default(), 400_002),
        ("no namespace", with(&|i| i.namespace = None), 400_110),
        (
            "bad namespace",
            with(&|i| i.namespace = Some("bad ns!".into())),
            400_110,
        ),
        (
            "long namespace",
            with(&|i| i.namespace = Some("n".repeat(65))),
            400_110,
        ),
        ("no service", with(&|i| i.service = None), 400_120),
        (
            "bad service",
            with(&|i| i.service = Some("svc#1".into())),
            400_120,
        ),
        (
            "long service",
            with(&|i| i.service = Some("s".repeat(129))),
            400_120,
        ),
        ("long id", with(&|i| i.id = Some("i".repeat(129))), 400_130),
        ("no host", with(&|i| i.host = None), 400_131),
        (
            "long host",
            with(&|i| i.host = Some("h".repeat(129))),
            400_131,
        ),
        ("no port", with(&|i| i.port = None), 400_132),
        ("port too big", with(&|i| i.port = Some(65_536)), 400_132),
        (
            "long protocol",
            with(&|i| i.protocol = Some("p".repeat(33))),
            400_136,
        ),
        (
            "long version",
            with(&|i| i.version = Some("v".repeat(33))),
            400_137,
        ),
        (
            "long logic_set",
            with(&|i| i.logic_set = Some("l".repeat(129))),
            400_138,
        ),
        (
            "too much metadata",
            with(&|i| i.metadata = (0..65).map(|n| (format!("k{n}"), "v".into())).collect()),
            400_150,
        ),
        (
            "long metadata key",
            with(&|i| i.metadata = HashMap::from([("k".repeat(129), "v".into())])),
            400_150,
        ),
        (
            "long metadata value",
            with(&|i| i.metadata = HashMap::from([("k".into(), "v".repeat(4097))])),
            400_150,
        ),
        (
            "weight too big",
            with(&|i| i.weight = Some(65_536)),
            400_103,
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_its_code_and_nothing_is_written() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    for (what, sent, expected) in bad_requests() {
        let answer = client
            .register_instance(sent)
            .await
            .expect("gRPC OK")
            .into_inner();
        assert_eq!(code(&answer), expected, "{what}: {answer:?}");
        assert!(
            !answer.info.unwrap_or_default().is_empty(),
            "{what}: info says why"
        );
        assert!(
            answer.instance.is_some(),
            "{what}: answer carries the instance"
        );
    }
    for table in [
        "instance",
        "health_check",
        "instance_metadata",
        "service",
        "namespace",
    ] {
        assert_eq!(t.count(table), 0, "{table} must stay empty");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn limits_are_inclusive() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let mut sent = instance(&"n".repeat(64), &"s".repeat(128), &"h".repeat(128), 65_535);
    sent.weight = Some(65_535);
    sent.protocol = Some("p".repeat(32));
    sent.version = Some("v".repeat(32));
    sent.metadata = (0..64)
        .map(|n| (format!("k{n}"), "v".repeat(4096)))
        .collect();
    sent.metadata.insert("k0".repeat(64), "x".into());
    sent.metadata.remove("k1");
    let answer = client.register_instance(sent).await.unwrap().into_inner();
    assert_eq!(code(&answer), SUCCESS, "{:?}", answer.info);
    let id = answer.instance.unwrap().id.unwrap();
    let stored = row(&t.db(), &id).unwrap();
    assert_eq!((stored.port, stored.weight), (65_535, 65_535));
    assert_eq!(metadata(&t.db(), &id).len(), 64);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_supplied_id_and_vpc_id_are_used() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let mut with_id = instance("default", "echo", "10.0.0.1", 1);
    with_id.id = Some("my-own-id".into());
    let answer = client
        .register_instance(with_id)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.instance.unwrap().id.as_deref(), Some("my-own-id"));
    assert!(row(&t.db(), "my-own-id").is_some());

    let mut with_vpc = instance("default", "echo", "10.0.0.1", 2);
    with_vpc.vpc_id = Some("vpc-7".into());
    let answer = client
        .register_instance(with_vpc)
        .await
        .unwrap()
        .into_inner();
    let expected = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(b"default##echo##vpc-7##10.0.0.1##2"))
    };
    let echoed = answer.instance.unwrap();
    assert_eq!(echoed.id.as_deref(), Some(expected.as_str()));
    assert_eq!(echoed.vpc_id.as_deref(), Some("vpc-7"));
    assert!(row(&t.db(), &expected).is_some());
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ttl_out_of_range_becomes_five_seconds() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    for (port, sent_ttl, stored) in [(1, 0, 5), (2, 61, 5), (3, 60, 60), (4, 1, 1)] {
        let mut sent = instance("default", "echo", "10.0.0.1", port);
        sent.health_check.as_mut().unwrap().heartbeat = Some(proto::HeartbeatHealthCheck {
            ttl: Some(sent_ttl),
        });
        let answer = client.register_instance(sent).await.unwrap().into_inner();
        let id = answer.instance.unwrap().id.unwrap();
        assert_eq!(ttl(&t.db(), &id), Some(stored), "ttl {sent_ttl}");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn services_are_not_created_when_switched_off() {
    let t = TestServer::start(|c| c.naming.auto_create_services = false).await;
    let mut client = t.client().await;
    let answer = client
        .register_instance(instance("default", "missing", "10.0.0.1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), 400_301, "{answer:?}");
    assert_eq!(t.live_instances(), 0);
    assert_eq!(t.count("service"), 0);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn deregister_removes_all_rows_and_unknown_is_success() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let kept = instance("default", "echo", "10.0.0.1", 1);
    let gone = instance("default", "echo", "10.0.0.1", 2);
    for sent in [kept.clone(), gone.clone()] {
        assert_eq!(
            code(&client.register_instance(sent).await.unwrap().into_inner()),
            SUCCESS
        );
    }
    // By namespace/service/host/port.
    let answer = client
        .deregister_instance(gone.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    let gone_id = expected_id("default", "echo", "10.0.0.1", 2);
    assert_eq!(
        answer.instance.unwrap().id.as_deref(),
        Some(gone_id.as_str())
    );
    let db = t.db();
    assert!(row(&db, &gone_id).is_none());
    assert!(
        deregistered(&db, &gone_id),
        "the row stays, marked, for other replicas"
    );
    assert!(metadata(&db, &gone_id).is_empty());
    assert_eq!(ttl(&db, &gone_id), None);
    assert_eq!(t.live_instances(), 1);
    assert_eq!(t.count("instance_metadata"), 3);

    // By id alone.
    let kept_id = expected_id("default", "echo", "10.0.0.1", 1);
    let by_id = Instance {
        id: Some(kept_id.clone()),
        ..Default::default()
    };
    assert_eq!(
        code(
            &client
                .deregister_instance(by_id)
                .await
                .unwrap()
                .into_inner()
        ),
        SUCCESS
    );
    assert_eq!(t.live_instances(), 0);
    assert_eq!(t.count("health_check"), 0);

    // Unknown: nothing to do, still a success.
    let answer = client.deregister_instance(gone).await.unwrap().into_inner();
    assert_eq!(code(&answer), SUCCESS);
    // Nothing to identify the instance by.
    let answer = client
        .deregister_instance(Instance {
            namespace: Some("default".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), 400_120);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn async_regis_is_answered_on_enqueue_and_written() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let mut request = Request::new(instance("default", "echo", "10.0.0.9", 9));
    request
        .metadata_mut()
        .insert("async-regis", "true".parse().unwrap());
    let answer = client
        .register_instance(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS);
    let id = expected_id("default", "echo", "10.0.0.9", 9);
    assert_eq!(answer.instance.unwrap().id.as_deref(), Some(id.as_str()));
    // Shutdown writes everything queued.
    let db_path = t.db_path.clone();
    t.server.shutdown().await.unwrap();
    let db = rusqlite::Connection::open(db_path).unwrap();
    assert!(row(&db, &id).is_some());
}

#[tokio::test]
async fn report_client_answers_the_clients_host_and_location() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    // No host: the peer's address.
    let answer = client
        .report_client(proto::Client::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS);
    let reported = answer.client.unwrap();
    assert_eq!(reported.host.as_deref(), Some("127.0.0.1"));
    assert!(answer.instance.is_none());

    let location = proto::Location {
        region: Some("r1".to_owned()),
        zone: Some("z1".to_owned()),
        campus: Some("c1".to_owned()),
    };
    let sent = proto::Client {
        host: Some("10.1.1.1".to_owned()),
        version: Some("1.2.3".to_owned()),
        location: Some(location.clone()),
        ..Default::default()
    };
    let answer = client.report_client(sent).await.unwrap().into_inner();
    let reported = answer.client.unwrap();
    assert_eq!(reported.host.as_deref(), Some("10.1.1.1"));
    assert_eq!(reported.location, Some(location.clone()));
    // Without an id only the host and location come back.
    assert_eq!(reported.version, None);

    let with_id = proto::Client {
        id: Some("client-7".to_owned()),
        version: Some("1.2.3".to_owned()),
        r#type: proto::client::ClientType::Sdk as i32,
        location: Some(location),
        ..Default::default()
    };
    let answer = client
        .report_client(with_id.clone())
        .await
        .unwrap()
        .into_inner();
    let reported = answer.client.unwrap();
    assert_eq!(
        reported,
        proto::Client {
            host: Some("127.0.0.1".to_owned()),
            ..with_id
        }
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_requests_in_flight_loses_no_success() {
    let t = TestServer::start(|_| {}).await;
    let client = t.client().await;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3_000u32 {
        let mut client = client.clone();
        let answered = answered.clone();
        tasks.spawn(async move {
            let sent = instance("default", "drain", "10.2.0.1", i);
            let result = client.register_instance(sent).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (i, result)
        });
    }
    // Let part of the storm be answered, then stop the server under the rest.
    for _ in 0..2_000 {
        if answered.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let db_path = t.db_path.clone();
    let TestServer { server, _dir, .. } = t;
    let stopping = tokio::spawn(server.shutdown());
    let mut succeeded = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        if let Ok(answer) = result {
            let answer = answer.into_inner();
            if code(&answer) == SUCCESS {
                succeeded.push(i);
            }
        }
    }
    stopping.await.unwrap().unwrap();
    assert!(
        !succeeded.is_empty(),
        "some requests were answered before the stop"
    );
    let db = rusqlite::Connection::open(db_path).unwrap();
    for i in succeeded {
        let id = expected_id("default", "drain", "10.2.0.1", i);
        assert!(
            row(&db, &id).is_some(),
            "request {i} was answered success but is not stored"
        );
    }
}
