//! The HTTP port: the Polaris client API (`POST /v1/...`, [`client`]), the operators'
//! read API (`GET /naming/v1/...`, [`read`]) and the console page over it (`GET /`,
//! [`console`]), `GET /metrics` (Prometheus text) and `GET /healthz`.

pub mod answers;
pub mod client;
pub mod console;
pub mod json;
pub mod read;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use super::ClientApi;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// `None` when metrics are switched off.
    pub metrics: Option<PrometheusHandle>,
    /// Reads the process figures (CPU, RSS, open fds) at each scrape.
    pub process: metrics_process::Collector,
    /// What `/healthz` answers.
    pub readiness: Arc<ReadinessFlag>,
    /// Set once the store is open and the cache loaded; until then the client API
    /// answers 503.
    pub api: Arc<OnceLock<Arc<ClientApi>>>,
    /// The largest request body read, in bytes (`server.http_max_body`).
    pub max_body: usize,
    pub client: Arc<client::ClientMetrics>,
    /// Full Discover answers as JSON, one per service's current revision.
    pub answers: Arc<answers::JsonAnswers>,
    /// When the server started, for the console's uptime.
    pub started: Instant,
}

impl HttpState {
    /// The client API, or the answer while the server is still loading.
    pub fn api(&self) -> Result<Arc<ClientApi>, (StatusCode, &'static str)> {
        self.api.get().cloned().ok_or((
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the registry cache\n",
        ))
    }
}

/// Where the server is in its life, as `/healthz` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Opening the store and loading the registry cache: not serving yet.
    Loading = 0,
    Serving = 1,
    /// Shutdown has begun.
    Stopping = 2,
}

/// A [`Readiness`] shared between the server and the HTTP handlers.
#[derive(Debug)]
pub struct ReadinessFlag(AtomicU8);

impl ReadinessFlag {
    pub fn new(readiness: Readiness) -> Self {
        ReadinessFlag(AtomicU8::new(readiness as u8))
    }

    pub fn set(&self, readiness: Readiness) {
        self.0.store(readiness as u8, Ordering::Release);
    }

    pub fn get(&self) -> Readiness {
        match self.0.load(Ordering::Acquire) {
            0 => Readiness::Loading,
            1 => Readiness::Serving,
            _ => Readiness::Stopping,
        }
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(client::routes())
        .merge(read::routes())
        .merge(console::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn metrics(State(state): State<HttpState>) -> (StatusCode, String) {
    match &state.metrics {
        Some(handle) => {
            state.process.collect();
            (StatusCode::OK, handle.render())
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are switched off\n".to_owned(),
        ),
    }
}

async fn healthz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.readiness.get() {
        Readiness::Serving => (StatusCode::OK, "ok\n"),
        Readiness::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the registry cache\n",
        ),
        Readiness::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}
