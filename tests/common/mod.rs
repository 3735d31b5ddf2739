//! Shared by the integration tests: a server on port 0 over a fresh SQLite file, a gRPC
//! client, request builders, and reads of the database.

#![allow(dead_code)]

pub mod discover;
pub mod http;
pub mod metrics;
pub mod mysql;
pub mod polaris_json;
pub mod redis;

use std::collections::HashMap;
use std::path::PathBuf;

use batchreg::Server;
use batchreg::config::Config;
use batchreg::proto::polaris_grpc_client::PolarisGrpcClient;
use batchreg::proto::{self, HealthCheck, HeartbeatHealthCheck, Instance};
use tonic::transport::Channel;

pub struct TestServer {
    pub server: Server,
    pub db_path: PathBuf,
    pub _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with the default config on a fresh SQLite file, changed by
    /// `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = TestServer::start_at(dir.path().join("batchreg.db"), tweak).await;
        server._dir = Some(dir);
        server
    }

    /// Starts a server on the SQLite file at `db_path` (kept by the caller), changed by
    /// `tweak`.
    pub async fn start_at(db_path: PathBuf, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.server.grpc_listen = "127.0.0.1:0".to_owned();
        config.server.http_listen = "127.0.0.1:0".to_owned();
        config.store.url = format!("sqlite://{}", db_path.display());
        // Tests run many servers on one machine: durability is not what they check.
        config.store.sqlite_synchronous = batchreg::store::sqlite::Synchronous::Normal;
        // Tests count the rows they write; tests/system.rs turns self-registration on.
        config.server.register_self = false;
        // Bursts on a shared, loaded machine must not be refused for time: the tests of
        // admission by waiting time turn it on.
        config.batch.register.max_queue_wait = std::time::Duration::ZERO;
        config.batch.deregister.max_queue_wait = std::time::Duration::ZERO;
        tweak(&mut config);
        let settings = config.validate().expect("valid test config");
        let server = Server::start(settings).await.expect("server starts");
        TestServer {
            server,
            db_path,
            _dir: None,
        }
    }

    pub async fn client(&self) -> PolarisGrpcClient<Channel> {
        PolarisGrpcClient::connect(format!("http://{}", self.server.grpc_addr()))
            .await
            .expect("connect")
    }

    /// A read-only connection to the server's database.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            &self.db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open db")
    }

    pub fn count(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Instances registered and not deregistered (a deregistered row stays, marked, until
    /// it is purged).
    pub fn live_instances(&self) -> i64 {
        self.db()
            .query_row("SELECT count(*) FROM instance WHERE flag = 0", [], |r| {
                r.get(0)
            })
            .unwrap()
    }
}

/// A register request with 3 metadata entries and a heartbeat ttl of 5 s.
pub fn instance(namespace: &str, service: &str, host: &str, port: u32) -> Instance {
    Instance {
        namespace: Some(namespace.to_owned()),
        service: Some(service.to_owned()),
        host: Some(host.to_owned()),
        port: Some(port),
        protocol: Some("grpc".to_owned()),
        version: Some("1.0.0".to_owned()),
        weight: Some(100),
        enable_health_check: Some(true),
        health_check: Some(HealthCheck {
            r#type: proto::health_check::HealthCheckType::Heartbeat as i32,
            heartbeat: Some(HeartbeatHealthCheck { ttl: Some(5) }),
        }),
        metadata: HashMap::from([
            ("env".to_owned(), "test".to_owned()),
            ("zone".to_owned(), format!("z{}", port % 3)),
            ("idx".to_owned(), port.to_string()),
        ]),
        ..Default::default()
    }
}

/// The Polaris id computed independently of the server's code.
pub fn expected_id(namespace: &str, service: &str, host: &str, port: u32) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(
        format!("{namespace}##{service}##{host}##{port}").as_bytes(),
    ))
}

/// Whether the instance's row is there, marked deregistered.
pub fn deregistered(db: &rusqlite::Connection, id: &str) -> bool {
    db.query_row("SELECT flag FROM instance WHERE id = ?1", [id], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|flag| flag == 1)
}

/// One stored instance row, as the tests check it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub host: String,
    pub port: u32,
    pub weight: u32,
    pub protocol: String,
    pub version: String,
    pub isolate: bool,
    pub healthy: bool,
    pub ctime: String,
    pub mtime: String,
    pub revision: String,
    pub service: String,
    pub namespace: String,
}

/// A live (registered, not deregistered) instance's row.
pub fn row(db: &rusqlite::Connection, id: &str) -> Option<Row> {
    db.query_row(
        "SELECT i.host, i.port, i.weight, i.protocol, i.version, i.isolate, i.health_status,
                i.ctime, i.mtime, i.revision, s.name, s.namespace
         FROM instance i JOIN service s ON s.id = i.service_id
         WHERE i.id = ?1 AND i.flag = 0",
        [id],
        |r| {
            Ok(Row {
                host: r.get(0)?,
                port: r.get(1)?,
                weight: r.get(2)?,
                protocol: r.get(3)?,
                version: r.get(4)?,
                isolate: r.get(5)?,
                healthy: r.get(6)?,
                ctime: r.get(7)?,
                mtime: r.get(8)?,
                revision: r.get(9)?,
                service: r.get(10)?,
                namespace: r.get(11)?,
            })
        },
    )
    .ok()
}

pub fn metadata(db: &rusqlite::Connection, id: &str) -> Vec<(String, String)> {
    let mut stmt = db
        .prepare("SELECT mkey, mvalue FROM instance_metadata WHERE id = ?1 ORDER BY mkey")
        .unwrap();
    stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn ttl(db: &rusqlite::Connection, id: &str) -> Option<u32> {
    db.query_row(
        "SELECT ttl FROM health_check WHERE id = ?1 AND type = 1",
        [id],
        |r| r.get(0),
    )
    .ok()
}

pub fn code(response: &proto::Response) -> u32 {
    response.code.expect("every response carries a code")
}
