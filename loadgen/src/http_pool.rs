//! HTTP/1.1 keep-alive connections to the targets, opened before the run starts (as the
//! gRPC pool's are), so an unreachable server is reported at once. HTTP/1.1 carries one
//! request at a time on a connection: a request takes an idle connection of its target,
//! waiting its turn when all are busy, and puts it back once its answer is read whole,
//! so a run uses exactly the connections opened, each in turn. A connection whose
//! request failed or was abandoned (its deadline passed) is closed, and the next
//! request that takes it opens a new one; [`HttpPool::connections_opened`] counts them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::pool::{CONNECT_TIMEOUT_CAP, channels_for_target, route_target};

/// A request as the pool sends it: a JSON body, whole.
pub type JsonRequest = Request<Full<Bytes>>;

/// A target that could not be reached, or was not an HTTP address.
#[derive(Debug, thiserror::Error)]
pub enum HttpConnectError {
    #[error("{target} is not an HTTP address (host:port or http://host:port)")]
    InvalidTarget { target: String },
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: HttpError,
    },
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("TCP connection failed")]
    Io(#[from] std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimedOut(Duration),
    #[error("HTTP/1.1 exchange failed")]
    Http(#[from] hyper::Error),
}

/// An answer read whole.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Connections grouped by target.
#[derive(Debug, Clone)]
pub struct HttpPool {
    by_target: Vec<Arc<HttpTarget>>,
}

impl HttpPool {
    /// Opens `connections` connections spread over `targets` (at least one per target).
    pub async fn connect(
        targets: &[String],
        connections: usize,
        request_timeout: Duration,
    ) -> Result<Self, HttpConnectError> {
        debug_assert!(!targets.is_empty());
        let connect_timeout = request_timeout.min(CONNECT_TIMEOUT_CAP);
        let mut by_target = Vec::with_capacity(targets.len());
        for (target_index, target) in targets.iter().enumerate() {
            let address = authority(target).ok_or_else(|| HttpConnectError::InvalidTarget {
                target: target.clone(),
            })?;
            let host =
                HeaderValue::from_str(address).map_err(|_| HttpConnectError::InvalidTarget {
                    target: target.clone(),
                })?;
            let count = channels_for_target(target_index, targets.len(), connections);
            let http_target = HttpTarget {
                address: address.to_owned(),
                host,
                connect_timeout,
                connections: count,
                idle: Mutex::new(VecDeque::with_capacity(count)),
                turns: Semaphore::new(count),
                opened: AtomicU64::new(0),
            };
            for _ in 0..count {
                let connection =
                    http_target
                        .open()
                        .await
                        .map_err(|source| HttpConnectError::Connect {
                            target: target.clone(),
                            source,
                        })?;
                http_target.put_back(Slot::Open(connection));
            }
            by_target.push(Arc::new(http_target));
        }
        Ok(HttpPool { by_target })
    }

    /// The target of request `index`: the targets take turns, as in
    /// [`crate::pool::ClientPool`].
    pub fn target(&self, index: u64) -> Arc<HttpTarget> {
        Arc::clone(&self.by_target[route_target(index, self.by_target.len())])
    }

    /// Connections kept, over all targets.
    pub fn connection_count(&self) -> usize {
        self.by_target.iter().map(|target| target.connections).sum()
    }

    /// Connections opened so far, over all targets: those kept, and each reopening.
    pub fn connections_opened(&self) -> u64 {
        self.by_target
            .iter()
            .map(|target| target.opened.load(Ordering::Relaxed))
            .sum()
    }
}

/// One target's connections: idle ones in a queue, one turn (semaphore permit) per
/// connection, so a request that holds a turn always finds one idle.
#[derive(Debug)]
pub struct HttpTarget {
    /// `host:port`, as connected to and sent as `Host`.
    address: String,
    host: HeaderValue,
    connect_timeout: Duration,
    /// Connections kept, busy or idle.
    connections: usize,
    idle: Mutex<VecDeque<Slot>>,
    turns: Semaphore,
    opened: AtomicU64,
}

/// A connection of the pool: open, or to be opened by the next request that takes it.
#[derive(Debug)]
enum Slot {
    Open(Connection),
    Closed,
}

/// An HTTP/1.1 connection and the task that drives it; dropping it closes both.
#[derive(Debug)]
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpTarget {
    /// A `POST` of the JSON `body` to `path` on this target.
    pub fn post(&self, path: &'static str, body: Vec<u8>) -> JsonRequest {
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_static(path);
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        request
    }

    /// Sends `request` on an idle connection, waiting for one, and reads the answer
    /// whole. Dropped before the answer (its deadline), it closes the connection.
    pub async fn send(&self, request: JsonRequest) -> Result<HttpAnswer, HttpError> {
        let _turn = self.turns.acquire().await.expect("never closed");
        // Declared after the turn, so dropped before it: the connection is back in
        // the queue before the next request can take the turn.
        let mut lease = Lease {
            target: self,
            connection: None,
            answered: false,
        };
        let slot = self
            .idle
            .lock()
            .expect("no request panicked holding it")
            .pop_front()
            .expect("a turn holds an idle connection");
        let connection = match slot {
            Slot::Open(connection) if !connection.sender.is_closed() => connection,
            _ => self.open().await?,
        };
        let connection = lease.connection.insert(connection);
        if connection.sender.ready().await.is_err() {
            // The server closed it while idle (keep-alive timeout): nothing was sent.
            *connection = self.open().await?;
            connection.sender.ready().await?;
        }
        let response = connection.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        lease.answered = true;
        Ok(HttpAnswer { status, body })
    }

    /// Opens a connection and starts the task that drives it.
    async fn open(&self) -> Result<Connection, HttpError> {
        let handshake = async {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
            Ok::<_, HttpError>((sender, connection))
        };
        let (sender, connection) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| HttpError::ConnectTimedOut(self.connect_timeout))??;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let driver = tokio::spawn(async move {
            // Its errors reach the request in flight, or close the connection.
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    fn put_back(&self, slot: Slot) {
        self.idle
            .lock()
            .expect("no request panicked holding it")
            .push_back(slot);
    }
}

/// A connection taken from the queue by one request; it goes back on drop: open if
/// its answer was read whole, else closed (a late answer would be taken for the next
/// request's).
struct Lease<'a> {
    target: &'a HttpTarget,
    connection: Option<Connection>,
    answered: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let slot = match self.connection.take() {
            Some(connection) if self.answered => Slot::Open(connection),
            _ => Slot::Closed,
        };
        self.target.put_back(slot);
    }
}

/// The `host:port` of a target given as `host:port` or `http://host:port[/]`; `None`
/// for another scheme or a path.
fn authority(target: &str) -> Option<&str> {
    let address = match target.split_once("://") {
        Some(("http", rest)) => rest.strip_suffix('/').unwrap_or(rest),
        Some(_) => return None,
        None => target,
    };
    let valid = !address.is_empty() && !address.contains('/') && address.contains(':');
    valid.then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{EXECUTE_SUCCESS, EXISTED_RESOURCE};
    use crate::scenario::fake_http::FakeHttp;
    use crate::scenario::silent_server;
    use std::collections::BTreeMap;

    fn register_body(port: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "namespace": "ns", "service": "svc", "host": "10.0.0.1", "port": port
        }))
        .unwrap()
    }

    /// The code of a `Response` answer.
    fn code(answer: &HttpAnswer) -> u64 {
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        body["code"].as_u64().unwrap()
    }

    #[test]
    fn targets_are_host_port_or_plain_http_uris() {
        assert_eq!(authority("127.0.0.1:8090"), Some("127.0.0.1:8090"));
        assert_eq!(authority("http://h:1"), Some("h:1"));
        assert_eq!(authority("http://h:1/"), Some("h:1"));
        assert_eq!(authority("https://h:1"), None);
        assert_eq!(authority("http://h:1/v1"), None);
        assert_eq!(authority("h"), None);
        assert_eq!(authority(""), None);
    }

    #[tokio::test]
    async fn a_post_carries_host_type_path_and_body() {
        let server = FakeHttp::default().start().await;
        let pool = HttpPool::connect(
            std::slice::from_ref(&server.address),
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let target = pool.target(0);
        let answer = target
            .send(target.post("/v1/RegisterInstance", register_body(80)))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(code(&answer), u64::from(EXECUTE_SUCCESS));
        let again = target
            .send(target.post("/v1/RegisterInstance", register_body(80)))
            .await
            .unwrap();
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert_eq!(code(&again), u64::from(EXISTED_RESOURCE));
        let received = server.received();
        assert_eq!(received[0].path, "/v1/RegisterInstance");
        assert_eq!(received[0].headers["host"], server.address.as_str());
        assert_eq!(received[0].headers["content-type"], "application/json");
        assert_eq!(received[0].body["port"], 80);
    }

    #[tokio::test]
    async fn exactly_the_connections_opened_carry_every_request_in_turn() {
        // 60 requests at once on 3 connections: they wait their turn, and no fourth
        // connection is ever opened.
        let server = FakeHttp::default()
            .delayed(Duration::from_millis(5))
            .start()
            .await;
        let pool = HttpPool::connect(
            std::slice::from_ref(&server.address),
            3,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(pool.connection_count(), 3);
        let sends: Vec<_> = (0..60)
            .map(|port| {
                let target = pool.target(port);
                let request = target.post("/v1/RegisterInstance", register_body(port as u32));
                tokio::spawn(async move { target.send(request).await })
            })
            .collect();
        for send in sends {
            let answer = send.await.unwrap().unwrap();
            assert_eq!(code(&answer), u64::from(EXECUTE_SUCCESS));
        }
        assert_eq!(server.connections_accepted(), 3);
        assert_eq!(pool.connections_opened(), 3);
        let mut per_connection: BTreeMap<usize, usize> = BTreeMap::new();
        for received in server.received() {
            *per_connection.entry(received.connection).or_default() += 1;
        }
        assert_eq!(per_connection.len(), 3, "{per_connection:?}");
        assert!(
            per_connection.values().all(|&count| count >= 15),
            "{per_connection:?}"
        );
    }

    #[tokio::test]
    async fn connections_are_dealt_over_targets_and_requests_alternate() {
        let (first, second) = (
            FakeHttp::default().start().await,
            FakeHttp::default().start().await,
        );
        let targets = [first.address.clone(), second.address.clone()];
        let pool = HttpPool::connect(&targets, 3, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(pool.connection_count(), 3);
        for port in 0..6 {
            let target = pool.target(port);
            let request = target.post("/v1/RegisterInstance", register_body(port as u32));
            target.send(request).await.unwrap();
        }
        assert_eq!(
            (first.connections_accepted(), second.connections_accepted()),
            (2, 1)
        );
        let ports = |server: &crate::scenario::fake_http::FakeHttpServer| {
            let received = server.received();
            received
                .iter()
                .map(|r| r.body["port"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(&first), [0, 2, 4]);
        assert_eq!(ports(&second), [1, 3, 5]);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_reopened_for_the_next_request() {
        let server = FakeHttp::default().closing_each_connection().start().await;
        let pool = HttpPool::connect(
            std::slice::from_ref(&server.address),
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let target = pool.target(0);
        for port in 0..6 {
            let answer = target
                .send(target.post("/v1/RegisterInstance", register_body(port)))
                .await
                .unwrap();
            assert_eq!(code(&answer), u64::from(EXECUTE_SUCCESS));
        }
        // Each connection carried one request: the two first, then four reopened.
        assert_eq!(server.connections_accepted(), 6);
        assert_eq!(pool.connections_opened(), 6);
    }

    #[tokio::test]
    async fn an_abandoned_request_closes_its_connection_and_the_next_reopens_it() {
        let (address, silent) = silent_server().await;
        let pool = HttpPool::connect(&[address], 1, Duration::from_secs(5))
            .await
            .unwrap();
        let target = pool.target(0);
        for port in 0..2 {
            let send = target.send(target.post("/v1/RegisterInstance", register_body(port)));
            let late = tokio::time::timeout(Duration::from_millis(100), send).await;
            assert!(late.is_err(), "the silent server never answers");
        }
        assert_eq!(pool.connections_opened(), 2);
        silent.abort();
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = HttpPool::connect(&[address], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                HttpConnectError::Connect {
                    source: HttpError::Io(_),
                    ..
                }
            ),
            "{error:?}"
        );
        let invalid = HttpPool::connect(&["https://h:1".to_owned()], 1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(invalid, HttpConnectError::InvalidTarget { .. }));
    }
}
