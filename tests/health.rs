//! Heartbeats and health over real gRPC, on the embedded store: the codes in Polaris's
//! order, expiry and recovery as Discover and the store show them, and a restart that
//! marks no live instance unhealthy.

mod common;

use std::time::{Duration, Instant};

use batchreg::proto::polaris_grpc_client::PolarisGrpcClient;
use batchreg::proto::{self, Instance};
use common::discover::{DiscoverRequestType, by_id, discover, request};
use common::{TestServer, code, expected_id, instance, row};
use tonic::transport::Channel;

const SUCCESS: u32 = 200_000;
const NOT_FOUND: u32 = 400_202;
const NOT_OPEN: u32 = 400_140;

/// A register request with a heartbeat ttl of `ttl` seconds, or no health check.
fn beating(service: &str, port: u32, ttl: Option<u32>) -> Instance {
    let mut sent = instance("health", service, "10.7.0.1", port);
    match ttl {
        Some(ttl) => {
            sent.health_check.as_mut().unwrap().heartbeat =
                Some(proto::HeartbeatHealthCheck { ttl: Some(ttl) })
        }
        None => {
            sent.health_check = None;
            sent.enable_health_check = None;
        }
    }
    sent
}

fn by_id_only(id: &str) -> Instance {
    Instance {
        id: Some(id.to_owned()),
        ..Default::default()
    }
}

async fn register(client: &mut PolarisGrpcClient<Channel>, sent: Instance) -> String {
    let answer = client.register_instance(sent).await.unwrap().into_inner();
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    answer.instance.unwrap().id.unwrap()
}

async fn beat(client: &mut PolarisGrpcClient<Channel>, sent: Instance) -> proto::Response {
    client.heartbeat(sent).await.unwrap().into_inner()
}

/// The health Discover shows for each instance of `health/service`.
async fn listed_health(
    client: &mut PolarisGrpcClient<Channel>,
    service: &str,
) -> std::collections::HashMap<String, bool> {
    let answer = discover(
        client,
        request(DiscoverRequestType::Instance, "health", service, ""),
    )
    .await;
    by_id(&answer)
        .into_iter()
        .map(|(id, i)| (id, i.healthy.unwrap()))
        .collect()
}

/// Asks every 50 ms until `id` is listed with `healthy`, for at most `limit`; returns
/// how long it took.
async fn until_listed(
    client: &mut PolarisGrpcClient<Channel>,
    service: &str,
    id: &str,
    healthy: bool,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let listed = listed_health(client, service).await;
        if listed.get(id) == Some(&healthy) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{id} not listed healthy={healthy} within {limit:?} (now {:?}): {listed:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn heartbeats_answer_with_polaris_codes_in_its_order() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let id = register(&mut client, beating("codes", 1, Some(5))).await;

    // By id: the instance's id comes back.
    let answer = beat(&mut client, by_id_only(&id)).await;
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    assert_eq!(answer.instance.unwrap().id.as_deref(), Some(id.as_str()));

    // By namespace, service, host and port: the id is computed and filled in.
    let tetrad = Instance {
        namespace: Some("health".to_owned()),
        service: Some("codes".to_owned()),
        host: Some("10.7.0.1".to_owned()),
        port: Some(1),
        ..Default::default()
    };
    let answer = beat(&mut client, tetrad.clone()).await;
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    assert_eq!(answer.instance.unwrap().id.as_deref(), Some(id.as_str()));

    // Each check, in Polaris's order.
    let cases = [
        (by_id_only(""), 400_130),
        (
            Instance {
                service: None,
                ..tetrad.clone()
            },
            400_120,
        ),
        (
            Instance {
                namespace: None,
                ..tetrad.clone()
            },
            400_110,
        ),
        (
            Instance {
                host: None,
                ..tetrad.clone()
            },
            400_131,
        ),
        (
            Instance {
                port: None,
                ..tetrad.clone()
            },
            400_132,
        ),
        (
            Instance {
                service: None,
                namespace: None,
                ..tetrad.clone()
            },
            400_120,
        ),
    ];
    for (sent, expected) in cases {
        let answer = beat(&mut client, sent.clone()).await;
        assert_eq!(code(&answer), expected, "{sent:?} → {answer:?}");
    }
    // An id wins over a bad tetrad: it is used as given.
    let answer = beat(
        &mut client,
        Instance {
            id: Some(id.clone()),
            host: None,
            ..tetrad
        },
    )
    .await;
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");

    // An unknown instance: its first 4 beats are taken (its registration may be on its
    // way), the 5th is refused.
    let codes: Vec<u32> = {
        let mut codes = Vec::new();
        for _ in 0..6 {
            codes.push(code(
                &beat(&mut client, by_id_only("no-such-instance")).await,
            ));
        }
        codes
    };
    assert_eq!(
        codes,
        [SUCCESS, SUCCESS, SUCCESS, SUCCESS, NOT_FOUND, NOT_FOUND]
    );

    // A deregistered instance is unknown again.
    let gone = client
        .deregister_instance(beating("codes", 1, Some(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&gone), SUCCESS);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(code(&beat(&mut client, by_id_only(&id)).await));
    }
    assert_eq!(codes, [SUCCESS, SUCCESS, SUCCESS, SUCCESS, NOT_FOUND]);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_checker_reports_its_beat_table() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    register(&mut client, beating("table", 1, Some(5))).await;
    // Every server of this test binary keeps its table in memory, always reachable; the
    // entries gauge is shared by them, so only its presence is checked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rendered = common::metrics::rendered();
        let reachable = common::metrics::sample(&rendered, "batchreg_health_beat_table_reachable");
        if reachable == Some(1.0) {
            assert!(
                common::metrics::sample(&rendered, "batchreg_health_beat_table_entries").is_some()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "beat table never reported: {reachable:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_checking_switched_off_answers_400140_alone() {
    let t = TestServer::start(|c| c.health.enabled = false).await;
    let mut client = t.client().await;
    let id = register(&mut client, beating("off", 1, Some(5))).await;
    let answer = beat(&mut client, by_id_only(&id)).await;
    assert_eq!(code(&answer), NOT_OPEN, "{answer:?}");
    assert!(answer.instance.is_none(), "{answer:?}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_instance_turns_unhealthy_within_three_ttls_and_back_at_its_next_beat() {
    let t = TestServer::start(|_| {}).await;
    let mut client = t.client().await;
    let silent = register(&mut client, beating("expiry", 1, Some(1))).await;
    let alive = register(&mut client, beating("expiry", 2, Some(1))).await;
    let unchecked = register(&mut client, beating("expiry", 3, None)).await;

    // `alive` beats every 500 ms throughout.
    let keep_beating = {
        let mut client = client.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            loop {
                let answer = beat(&mut client, by_id_only(&alive)).await;
                assert_eq!(code(&answer), SUCCESS);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // `silent` beats a few times, then stops.
    for _ in 0..3 {
        assert_eq!(code(&beat(&mut client, by_id_only(&silent)).await), SUCCESS);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(code(&beat(&mut client, by_id_only(&silent)).await), SUCCESS);
    let last_beat = Instant::now();

    // Unhealthy in Discover within 3 × ttl + 1 s of its last beat, not before 3 × ttl.
    let took = until_listed(
        &mut client,
        "expiry",
        &silent,
        false,
        last_beat,
        Duration::from_secs(4),
    )
    .await;
    assert!(
        took >= Duration::from_millis(2_900),
        "expired after {took:?}"
    );
    // And in the store.
    assert!(!row(&t.db(), &silent).unwrap().healthy);
    let listed = listed_health(&mut client, "expiry").await;
    assert_eq!(listed.get(&alive), Some(&true), "{listed:?}");
    assert_eq!(listed.get(&unchecked), Some(&true), "{listed:?}");
    assert!(row(&t.db(), &alive).unwrap().healthy);

    // Still silent: it stays unhealthy, written once.
    let revision = row(&t.db(), &silent).unwrap().revision;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(row(&t.db(), &silent).unwrap().revision, revision);

    // It beats again: healthy within 1 s, in Discover and in the store.
    let resumed = Instant::now();
    assert_eq!(code(&beat(&mut client, by_id_only(&silent)).await), SUCCESS);
    until_listed(
        &mut client,
        "expiry",
        &silent,
        true,
        resumed,
        Duration::from_millis(1_100),
    )
    .await;
    assert!(row(&t.db(), &silent).unwrap().healthy);

    // The unchecked instance, never beating, never expired.
    assert!(row(&t.db(), &unchecked).unwrap().healthy);
    keep_beating.abort();
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_gives_the_fleet_a_full_window_before_anything_expires() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("batchreg.db");
    let t = TestServer::start_at(db_path.clone(), |_| {}).await;
    let mut client = t.client().await;
    let id = register(&mut client, beating("restart", 1, Some(1))).await;
    t.server.shutdown().await.unwrap();

    // Down for longer than its window: its last beat is long past.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let started = Instant::now();
    let t = TestServer::start_at(db_path, |_| {}).await;
    let mut client = t.client().await;
    // Within a window of the start it stays healthy, though it has not beaten.
    while started.elapsed() < Duration::from_millis(2_500) {
        let listed = listed_health(&mut client, "restart").await;
        assert_eq!(listed.get(&id), Some(&true), "{listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still silent a window after the start: unhealthy.
    until_listed(
        &mut client,
        "restart",
        &id,
        false,
        started,
        Duration::from_secs(5),
    )
    .await;
    assert!(!row(&t.db(), &id).unwrap().healthy);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_auth_on_a_heartbeat_needs_a_token_unless_switched_off() {
    let grant = |c: &mut batchreg::config::Config| {
        c.auth.enabled = true;
        c.auth.tokens = vec![batchreg::config::TokenConfig {
            token: "right-token".to_owned(),
            allow: vec!["health/*".to_owned()],
        }];
    };
    let t = TestServer::start(grant).await;
    let mut client = t.client().await;
    let mut sent = beating("auth", 1, Some(5));
    sent.service_token = Some("right-token".to_owned());
    let id = register(&mut client, sent).await;
    assert_eq!(id, expected_id("health", "auth", "10.7.0.1", 1));

    let answer = beat(&mut client, by_id_only(&id)).await;
    assert_eq!(code(&answer), 401_002, "{answer:?}");
    // A token granted for another service does not do.
    let wrong = Instance {
        service_token: Some("wrong-token".to_owned()),
        ..by_id_only(&id)
    };
    assert_eq!(code(&beat(&mut client, wrong).await), 401_001);
    // The id alone names the service: the grant for `health/*` covers it.
    let right = Instance {
        service_token: Some("right-token".to_owned()),
        ..by_id_only(&id)
    };
    assert_eq!(code(&beat(&mut client, right).await), SUCCESS);
    t.server.shutdown().await.unwrap();

    let t = TestServer::start(|c| {
        grant(c);
        c.auth.heartbeats = false;
    })
    .await;
    let mut client = t.client().await;
    let answer = beat(&mut client, by_id_only(&id)).await;
    // Let through (unknown to this fresh server, so taken as an early beat).
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    t.server.shutdown().await.unwrap();
}
