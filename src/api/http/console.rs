//! The console: one page at `GET /`, plain HTML, CSS and JavaScript compiled in from
//! `console/` (no build step; the page loads nothing from elsewhere, as its
//! Content-Security-Policy says). It lists namespaces and services and a service's
//! instances through the read API ([`super::read`]), shows live request rates from
//! `GET /console/v1/summary`, and refreshes itself every few seconds.
//!
//! The summary is open like `/metrics`, which exports the same figures: the process's
//! totals of registrations, heartbeats and Discover requests ([`telemetry::totals`],
//! counted with metrics switched off too), the cache's sizes, the namespaces with their
//! numbers of services, the uptime, and whether the read API needs a token.

use axum::Router;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::HttpState;
use super::json;
use crate::telemetry;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The page runs its own script and style and reads this server, nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route("/console/v1/summary", get(summary))
}

/// One of the compiled-in files; revalidated on each load so that a new build shows.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /console/v1/summary`.
async fn summary(State(state): State<HttpState>) -> Response {
    let api = match state.api() {
        Ok(api) => api,
        Err(loading) => return loading.into_response(),
    };
    let cache = api.discovery().cache();
    let totals = telemetry::totals();
    let instances = cache.instance_count();
    let namespaces: Vec<Value> = cache
        .namespaces()
        .iter()
        .map(|(name, services)| json!({ "name": &**name, "services": services }))
        .collect();
    // The page divides the totals' growth by this one's, so it is precise.
    let uptime = state.started.elapsed().as_secs_f64();
    let body = json!({
        "registrations_total": totals.registrations,
        "heartbeats_total": totals.heartbeats,
        "discovers_total": totals.discovers,
        "services": cache.service_count(),
        "instances": instances,
        "healthy": instances.saturating_sub(cache.unhealthy_count()),
        "uptime_seconds": uptime,
        "auth": api.auth_is_on(),
        "namespaces": namespaces,
    });
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        json::write(&body),
    )
        .into_response()
}
