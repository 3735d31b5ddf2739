//! The HTTP client API on 127.0.0.1 for the tests: `POST /v1/RegisterInstance` answers
//! 200000 for a new instance and 400201 for one seen before, `POST /v1/Discover` answers
//! from a fixed listing by the Polaris rules, HTTP status = code / 1000; any other path
//! (every path, for a server [`FakeHttp::without_api`]) is a plain-text 404. It keeps
//! every request with the connection it came on.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::proto;
use crate::report::{DATA_NO_CHANGE, EXECUTE_SUCCESS, EXISTED_RESOURCE, NOT_FOUND_RESOURCE};

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connections are numbered from 0 in the order they were accepted.
    pub connection: usize,
    pub path: String,
    pub headers: HeaderMap,
    /// `Value::Null` when the body is no JSON.
    pub body: Value,
}

/// How the server answers.
#[derive(Debug, Clone, Default)]
pub struct FakeHttp {
    /// Listed instances by (namespace, service).
    listing: HashMap<(String, String), Vec<proto::Instance>>,
    /// Before each answer.
    delay: Duration,
    /// Answer with `Connection: close`, so that each connection carries one request.
    close_each: bool,
    /// Serve no route.
    no_api: bool,
}

/// A running [`FakeHttp`]; stops when dropped.
pub struct FakeHttpServer {
    pub address: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    accepted: AtomicUsize,
    received: Mutex<Vec<Received>>,
    registered: Mutex<HashSet<(String, String, String, u64)>>,
}

impl FakeHttp {
    /// Lists each instance under its namespace and service; a service's revision is
    /// `rev-{instances}`.
    pub fn listing(instances: impl IntoIterator<Item = proto::Instance>) -> Self {
        let mut listing: HashMap<_, Vec<_>> = HashMap::new();
        for instance in instances {
            let key = (
                instance.namespace.clone().unwrap_or_default(),
                instance.service.clone().unwrap_or_default(),
            );
            listing.entry(key).or_default().push(instance);
        }
        FakeHttp {
            listing,
            ..FakeHttp::default()
        }
    }

    pub fn delayed(self, delay: Duration) -> Self {
        FakeHttp { delay, ..self }
    }

    pub fn closing_each_connection(self) -> Self {
        FakeHttp {
            close_each: true,
            ..self
        }
    }

    pub fn without_api(self) -> Self {
        FakeHttp {
            no_api: true,
            ..self
        }
    }

    pub async fn start(self) -> FakeHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State::default());
        let answers = Arc::new(self);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let (state, answers) = (Arc::clone(&shared), Arc::clone(&answers));
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let (state, answers) = (Arc::clone(&state), Arc::clone(&answers));
                        async move {
                            Ok::<_, Infallible>(answers.answer(&state, connection, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        FakeHttpServer {
            address,
            state,
            task,
        }
    }

    async fn answer(
        &self,
        state: &State,
        connection: usize,
        request: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = parts.uri.path().to_owned();
        state.received.lock().unwrap().push(Received {
            connection,
            path: path.clone(),
            headers: parts.headers,
            body: body.clone(),
        });
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let answer = match path.as_str() {
            _ if self.no_api => None,
            "/v1/RegisterInstance" => Some(register(state, &body)),
            "/v1/Discover" => Some(self.discover(&body)),
            _ => None,
        };
        let mut response = match answer {
            Some(answer) => {
                let code = answer["code"].as_u64().unwrap();
                let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
                *response.status_mut() = StatusCode::from_u16((code / 1000) as u16).unwrap();
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            None => {
                let mut response = Response::new(Full::new(Bytes::from("404 page not found")));
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        };
        if self.close_each {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    fn discover(&self, body: &Value) -> Value {
        let service = &body["service"];
        let key = (
            service["namespace"].as_str().unwrap_or_default().to_owned(),
            service["name"].as_str().unwrap_or_default().to_owned(),
        );
        let Some(instances) = self.listing.get(&key) else {
            return json!({"code": NOT_FOUND_RESOURCE, "info": "not found", "type": "INSTANCE",
                          "service": null, "instances": []});
        };
        let revision = format!("rev-{}", instances.len());
        let listed_service = json!({"namespace": key.0, "name": key.1, "revision": revision});
        if service["revision"].as_str() == Some(revision.as_str()) {
            return json!({"code": DATA_NO_CHANGE, "info": "no change", "type": "INSTANCE",
                          "service": listed_service, "instances": []});
        }
        let listed: Vec<Value> = instances
            .iter()
            .map(|instance| {
                json!({"id": instance.id, "host": instance.host, "port": instance.port,
                       "metadata": instance.metadata, "healthCheck": null})
            })
            .collect();
        json!({"code": EXECUTE_SUCCESS, "info": "execute success", "type": "INSTANCE",
               "service": listed_service, "instances": listed})
    }
}

/// 200000 for an instance not seen before, 400201 after.
fn register(state: &State, instance: &Value) -> Value {
    let text = |key: &str| instance[key].as_str().unwrap_or_default().to_owned();
    let key = (
        text("namespace"),
        text("service"),
        text("host"),
        instance["port"].as_u64().unwrap_or_default(),
    );
    let port = u16::try_from(key.3).unwrap_or_default();
    let id = hex::encode(crate::fleet::id_digest(&key.0, &key.1, &key.2, port));
    let code = if state.registered.lock().unwrap().insert(key) {
        EXECUTE_SUCCESS
    } else {
        EXISTED_RESOURCE
    };
    json!({"code": code, "info": "", "client": null,
           "instance": {"id": id, "host": instance["host"]}})
}

impl FakeHttpServer {
    /// Every request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
