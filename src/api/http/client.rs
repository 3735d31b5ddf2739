//! The Polaris v1 client API over HTTP: `POST /v1/<Method>` with the message as its JSON
//! body ([`super::json`]), through the same client API as gRPC. HTTP status = code /
//! 1000; `X-Polaris-Code` and `X-Polaris-Message` when the code is not 200000;
//! `Request-Id` echoed; the token from `X-Polaris-Token` or `Polaris-Token`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::HttpState;
use super::json::{self, JsonError};
use crate::api::ClientApi;
use crate::api::drain::{InFlight, REFUSED};
use crate::api::wire::{code_of, instance_from_wire, write_response};
use crate::code::Code;
use crate::naming::RequestContext;
use crate::proto;
use crate::telemetry::{DiscoverMetrics, RequestMetrics};

/// Each route's request figures, labelled `protocol="http"`.
pub struct ClientMetrics {
    register: RequestMetrics,
    deregister: RequestMetrics,
    heartbeat: RequestMetrics,
    report_client: RequestMetrics,
    discover: DiscoverMetrics,
}

impl ClientMetrics {
    pub fn new() -> Self {
        ClientMetrics {
            register: RequestMetrics::new("register", "http"),
            deregister: RequestMetrics::new("deregister", "http"),
            heartbeat: RequestMetrics::new("heartbeat", "http"),
            report_client: RequestMetrics::new("report_client", "http"),
            discover: DiscoverMetrics::new("http"),
        }
    }
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics::new()
    }
}

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/RegisterInstance", post(register))
        .route("/v1/DeregisterInstance", post(deregister))
        .route("/v1/Heartbeat", post(heartbeat))
        .route("/v1/Discover", post(discover))
        .route("/v1/ReportClient", post(report_client))
}

pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const POLARIS_CODE: HeaderName = HeaderName::from_static("x-polaris-code");
const POLARIS_MESSAGE: HeaderName = HeaderName::from_static("x-polaris-message");

/// One accepted request: its body read whole (within the limit), the client API, the
/// request's context.
struct Call {
    api: Arc<ClientApi>,
    /// Counted in flight until answered: the drain at shutdown waits for it.
    _in_flight: InFlight,
    ctx: RequestContext,
    body: Bytes,
    request_id: Option<HeaderValue>,
    started: Instant,
}

impl Call {
    /// Reads the body, or answers: 503 while the server is loading or once it drains
    /// (the request not processed), 413 for a body over `server.http_max_body` (nothing
    /// read past it).
    async fn accept(state: &HttpState, headers: &HeaderMap, body: Body) -> Result<Call, Response> {
        let started = Instant::now();
        let request_id = headers.get(REQUEST_ID).cloned();
        let api = state.api().map_err(IntoResponse::into_response)?;
        let in_flight = api
            .drain()
            .accept()
            .ok_or_else(|| refused(request_id.as_ref()))?;
        let limit = state.max_body;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            let info =
                format!("request body is over the {limit}-byte limit (server.http_max_body)");
            polaris(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::BadRequest,
                &info,
                bare(Code::BadRequest, &info),
                request_id.as_ref(),
            )
        };
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large());
        }
        let body = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| too_large())?;
        let ctx = request_context(headers);
        Ok(Call {
            api,
            _in_flight: in_flight,
            ctx,
            body,
            request_id,
            started,
        })
    }

    /// Records the request and writes its answer.
    fn answer(self, metrics: &RequestMetrics, code: Code, response: &proto::Response) -> Response {
        metrics.record(code, self.started.elapsed());
        let info = response.info.as_deref().unwrap_or("");
        polaris(
            status_of(code),
            code,
            info,
            json::encode(json::RESPONSE, response),
            self.request_id.as_ref(),
        )
    }
}

/// A request not processed because the server is stopping: 503, so that the client
/// sends it to another server.
fn refused(request_id: Option<&HeaderValue>) -> Response {
    let code = Code::ExecuteException;
    polaris(
        StatusCode::SERVICE_UNAVAILABLE,
        code,
        REFUSED,
        bare(code, REFUSED),
        request_id,
    )
}

/// The request's token, from its headers.
pub(super) fn request_context(headers: &HeaderMap) -> RequestContext {
    let text = |key: &str| {
        headers
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    RequestContext {
        token: text("x-polaris-token").or_else(|| text("polaris-token")),
        detached: false,
    }
}

/// A `Response` with a code and its text alone.
fn bare(code: Code, info: &str) -> Vec<u8> {
    json::encode(
        json::RESPONSE,
        &proto::Response {
            code: Some(code.as_u32()),
            info: Some(info.to_owned()),
            client: None,
            instance: None,
        },
    )
}

fn parse_failure(error: &JsonError) -> (Code, proto::Response) {
    let code = error.code();
    let response = proto::Response {
        code: Some(code.as_u32()),
        info: Some(error.to_string()),
        client: None,
        instance: None,
    };
    (code, response)
}

/// HTTP status = code / 1000, as Polaris answers.
pub(super) fn status_of(code: Code) -> StatusCode {
    StatusCode::from_u16((code.as_u32() / 1000) as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON answer with Polaris's headers.
pub(super) fn polaris(
    status: StatusCode,
    code: Code,
    info: &str,
    body: impl IntoResponse,
    request_id: Option<&HeaderValue>,
) -> Response {
    let mut response = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    if code != Code::ExecuteSuccess {
        headers.insert(POLARIS_CODE, HeaderValue::from(code.as_u32()));
        headers.insert(POLARIS_MESSAGE, header_text(info));
    }
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID, id.clone());
    }
    response
}

/// `info` as a header value: characters a header cannot carry become `?`.
fn header_text(info: &str) -> HeaderValue {
    let visible: String = info
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&visible).unwrap_or(HeaderValue::from_static(""))
}

/// The routes that take an `Instance`.
#[derive(Clone, Copy)]
enum InstanceRoute {
    Register,
    Deregister,
    Heartbeat,
}

/// Reads the instance, calls the client API, answers with the instance echoed: its
/// identity for a registration and a heartbeat, as sent for a deregistration.
async fn instance_route(
    route: InstanceRoute,
    state: HttpState,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = match Call::accept(&state, &headers, body).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let (code, response) = match json::decode::<proto::Instance>(json::INSTANCE, &call.body) {
        Err(error) => parse_failure(&error),
        Ok(wire) => {
            let input = instance_from_wire(wire);
            let (result, echo) = match route {
                InstanceRoute::Register => {
                    let echo = input.identity();
                    (call.api.register(&call.ctx, input).await, echo)
                }
                InstanceRoute::Deregister => (call.api.deregister(&call.ctx, &input).await, input),
                InstanceRoute::Heartbeat => (
                    call.api.heartbeat(&call.ctx, &input).await,
                    input.identity(),
                ),
            };
            if let Err(error) = &result
                && error.not_processed()
            {
                return refused(call.request_id.as_ref());
            }
            (code_of(&result), write_response(result, echo))
        }
    };
    let metrics = match route {
        InstanceRoute::Register => &state.client.register,
        InstanceRoute::Deregister => &state.client.deregister,
        InstanceRoute::Heartbeat => &state.client.heartbeat,
    };
    call.answer(metrics, code, &response)
}

async fn register(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    instance_route(InstanceRoute::Register, state, headers, body).await
}

async fn deregister(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    instance_route(InstanceRoute::Deregister, state, headers, body).await
}

async fn heartbeat(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    instance_route(InstanceRoute::Heartbeat, state, headers, body).await
}

async fn report_client(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call = match Call::accept(&state, &headers, body).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let (code, response) = match json::decode::<proto::Client>(json::CLIENT, &call.body) {
        Err(error) => parse_failure(&error),
        Ok(client) => (
            Code::ExecuteSuccess,
            call.api.report_client(client, Some(peer.ip())),
        ),
    };
    call.answer(&state.client.report_client, code, &response)
}

/// Discover over HTTP honours `Filter.OnlyHealthyInstance`, as Polaris's does.
async fn discover(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let call = match Call::accept(&state, &headers, body).await {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    let request = match json::decode::<proto::DiscoverRequest>(json::DISCOVER_REQUEST, &call.body) {
        Ok(request) => request,
        Err(error) => {
            let code = error.code();
            let info = error.to_string();
            state
                .client
                .discover
                .record("UNKNOWN", code, false, false, call.started.elapsed());
            let answer = proto::DiscoverResponse {
                code: Some(code.as_u32()),
                info: Some(info.clone()),
                ..Default::default()
            };
            return polaris(
                status_of(code),
                code,
                &info,
                json::encode(json::DISCOVER_RESPONSE, &answer),
                call.request_id.as_ref(),
            );
        }
    };
    let healthy_only = request.filter.is_some_and(|f| f.only_healthy_instance);
    let answered = call.api.discover(&request, healthy_only);
    let full = answered.code == Code::ExecuteSuccess && answered.kind == "INSTANCE";
    state.client.discover.record(
        answered.kind,
        answered.code,
        full,
        answered.reused,
        call.started.elapsed(),
    );
    let body = if full && !healthy_only {
        // The answer of the service's current revision, shared by its watchers.
        let service = request.service.unwrap_or_default();
        let namespace = service.namespace.as_deref().filter(|n| !n.is_empty());
        state.answers.json(
            namespace.unwrap_or(crate::discovery::DEFAULT_NAMESPACE),
            service.name.as_deref().unwrap_or(""),
            &answered.bytes,
        )
    } else {
        let encoded = answered.bytes.to_bytes();
        Bytes::from(json::encode_bytes(json::DISCOVER_RESPONSE, &encoded))
    };
    polaris(
        status_of(answered.code),
        answered.code,
        crate::discovery::answer::info(answered.code),
        body,
        call.request_id.as_ref(),
    )
}
