//! Heartbeats in cluster mode: replicas on one MariaDB database, beats in Redis (a key
//! prefix per test). Skipped, saying so, without `BATCHREG_TEST_MYSQL_URL` and
//! `BATCHREG_TEST_REDIS_URL`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchreg::proto::polaris_grpc_client::PolarisGrpcClient;
use batchreg::proto::{self, Instance};
use common::TestServer;
use common::discover::{DiscoverRequestType, by_id, discover, request};
use common::mysql::{fresh_database, scalar};
use common::redis::{clean, redis_for};
use common::{code, instance};
use tonic::transport::Channel;

const SUCCESS: u32 = 200_000;

/// MySQL and Redis for one test, or `None` when either is missing.
fn backends(test: &str) -> Option<(String, String, String)> {
    let mysql = fresh_database(test)?;
    let (redis, prefix) = redis_for(test)?;
    Some((mysql, redis, prefix))
}

fn cluster_config(c: &mut batchreg::config::Config, mysql: &str, redis: &str, prefix: &str) {
    c.store.url = mysql.to_owned();
    c.health.redis_url = redis.to_owned();
    c.health.key_prefix = prefix.to_owned();
    c.health.lease = Duration::from_secs(1);
    c.discovery.refresh_interval = Duration::from_millis(100);
    c.discovery.feed_overlap = Duration::from_secs(1);
}

async fn replica(mysql: &str, redis: &str, prefix: &str) -> TestServer {
    let (mysql, redis, prefix) = (mysql.to_owned(), redis.to_owned(), prefix.to_owned());
    TestServer::start(move |c| cluster_config(c, &mysql, &redis, &prefix)).await
}

fn beating(service: &str, port: u32) -> Instance {
    let mut sent = instance("cluster-health", service, "10.8.0.1", port);
    sent.health_check.as_mut().unwrap().heartbeat =
        Some(proto::HeartbeatHealthCheck { ttl: Some(1) });
    sent
}

async fn register(client: &mut PolarisGrpcClient<Channel>, sent: Instance) -> String {
    let answer = client.register_instance(sent).await.unwrap().into_inner();
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
    answer.instance.unwrap().id.unwrap()
}

async fn beat(client: &mut PolarisGrpcClient<Channel>, id: &str) {
    let answer = client
        .heartbeat(Instance {
            id: Some(id.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer), SUCCESS, "{answer:?}");
}

/// The health a replica lists for each instance of `service`.
async fn listed(
    client: &mut PolarisGrpcClient<Channel>,
    service: &str,
) -> std::collections::HashMap<String, bool> {
    let answer = discover(
        client,
        request(DiscoverRequestType::Instance, "cluster-health", service, ""),
    )
    .await;
    by_id(&answer)
        .into_iter()
        .map(|(id, i)| (id, i.healthy.unwrap()))
        .collect()
}

/// The stored health of `id`.
fn stored_healthy(mysql: &str, id: &str) -> bool {
    scalar(
        mysql,
        &format!("SELECT health_status FROM instance WHERE id = '{id}' AND flag = 0"),
    ) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beats_sent_alternately_to_two_replicas_never_expire_a_live_instance() {
    let Some((mysql, redis, prefix)) = backends("hb_alternate") else {
        return;
    };
    let a = replica(&mysql, &redis, &prefix).await;
    let b = replica(&mysql, &redis, &prefix).await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    let alive = register(&mut client_a, beating("alternate", 1)).await;
    let silent = register(&mut client_b, beating("alternate", 2)).await;

    // Each beat goes to the other replica than the last, for more than two windows; at
    // every step, both replicas and the store show `alive` healthy.
    let started = Instant::now();
    let mut turn = 0;
    while started.elapsed() < Duration::from_secs(7) {
        let client = if turn % 2 == 0 {
            &mut client_a
        } else {
            &mut client_b
        };
        beat(client, &alive).await;
        turn += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for client in [&mut client_a, &mut client_b] {
            let health = listed(client, "alternate").await;
            assert_eq!(health.get(&alive), Some(&true), "{health:?}");
        }
        assert!(stored_healthy(&mysql, &alive));
    }
    // Meanwhile the silent one expired, so the checker did run; both replicas list it so.
    assert!(!stored_healthy(&mysql, &silent));
    for client in [&mut client_a, &mut client_b] {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let health = listed(client, "alternate").await;
            if health.get(&silent) == Some(&false) {
                break;
            }
            assert!(Instant::now() < deadline, "{health:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    a.server.shutdown().await.unwrap();
    b.server.shutdown().await.unwrap();
    clean(&redis, &prefix).await;
}

/// A `batchreg serve` process of its own (so that it can be killed), with the cluster
/// config; returns it and its gRPC address once it serves.
fn spawn_replica(dir: &std::path::Path, mysql: &str, redis: &str, prefix: &str) -> (Child, String) {
    let config = dir.join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n\
             [store]\nurl = \"{mysql}\"\n\
             [health]\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\nlease = \"1s\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchreg"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start batchreg");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut logged = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            panic!("batchreg exited before serving: {logged:#?}");
        };
        let line = line.unwrap();
        if line.contains("batchreg serving") {
            let grpc = line
                .split("grpc=")
                .nth(1)
                .expect("the gRPC address is logged");
            break grpc.split_whitespace().next().unwrap().to_owned();
        }
        logged.push(line);
    };
    // Keep reading stderr so that the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

async fn lease_holder(redis: &str, prefix: &str) -> Option<String> {
    let client = redis::Client::open(redis).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(format!("{prefix}checker-lease"))
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_lease_holder_dies_the_other_replica_expires_silent_instances() {
    let Some((mysql, redis, prefix)) = backends("hb_takeover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The first replica, alone, takes the lease.
    let (mut first, _) = spawn_replica(dir.path(), &mysql, &redis, &prefix);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_token = loop {
        if let Some(token) = lease_holder(&redis, &prefix).await {
            break token;
        }
        assert!(Instant::now() < deadline, "the first replica took no lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let second = replica(&mysql, &redis, &prefix).await;
    let mut client = second.client().await;
    let alive = register(&mut client, beating("takeover", 1)).await;
    let silent = register(&mut client, beating("takeover", 2)).await;
    assert_eq!(
        lease_holder(&redis, &prefix).await,
        Some(first_token.clone())
    );

    // The holder dies without giving the lease up.
    let killed = Instant::now();
    first.kill().unwrap();
    first.wait().unwrap();

    // The second replica takes the lease within two lease periods...
    loop {
        beat(&mut client, &alive).await;
        let holder = lease_holder(&redis, &prefix).await;
        if holder.is_some() && holder != Some(first_token.clone()) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "no take-over within two lease periods"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and expires the silent instance, never the beating one.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        beat(&mut client, &alive).await;
        let health = listed(&mut client, "takeover").await;
        assert_eq!(health.get(&alive), Some(&true), "{health:?}");
        if health.get(&silent) == Some(&false) {
            break;
        }
        assert!(Instant::now() < deadline, "{health:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!stored_healthy(&mysql, &silent));
    assert!(stored_healthy(&mysql, &alive));
    second.server.shutdown().await.unwrap();
    clean(&redis, &prefix).await;
}

/// A redis-server of this test's own, on a free port, keeping nothing on disk.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (this test's own process, by its pid); everything it held is lost.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_and_for_a_window_after_nothing_expires() {
    // Needs only redis-server (a private one); the store is the embedded one.
    if redis_for("hb_outage").is_none() {
        return;
    }
    let port = free_port();
    let redis = PrivateRedis::start(port);
    let url = redis.url();
    let server = TestServer::start(move |c| {
        c.health.redis_url = url;
        c.health.redis_timeout = Duration::from_millis(200);
    })
    .await;
    let mut client = server.client().await;
    let alive = register(&mut client, beating("outage", 1)).await;
    let silent = register(&mut client, beating("outage", 2)).await;
    // `alive` beats every 300 ms throughout; each beat is answered 200000.
    let keep_beating = {
        let mut client = client.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            loop {
                beat(&mut client, &alive).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let check = |health: &std::collections::HashMap<String, bool>| {
        assert_eq!(health.get(&alive), Some(&true), "{health:?}");
    };

    // Redis goes away for longer than a window (3 s): nothing expires, not even the
    // silent instance, whose beats stopped before.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    let away = Instant::now();
    while away.elapsed() < Duration::from_secs(4) {
        let health = listed(&mut client, "outage").await;
        check(&health);
        assert_eq!(
            health.get(&silent),
            Some(&true),
            "expired while Redis was away"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // It comes back empty. For a window nothing expires; then the silent one does.
    let redis = PrivateRedis::start(port);
    let back = Instant::now();
    loop {
        let health = listed(&mut client, "outage").await;
        check(&health);
        if health.get(&silent) == Some(&false) {
            let after = back.elapsed();
            // A window after the checker saw Redis again: at least 3 s minus its
            // interval after the restart here.
            assert!(
                after >= Duration::from_millis(2_700),
                "expired {after:?} after Redis returned"
            );
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(8), "{health:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The beating one stays healthy, with beats in the new Redis.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check(&listed(&mut client, "outage").await);
    keep_beating.abort();
    server.server.shutdown().await.unwrap();
    drop(redis);
}
