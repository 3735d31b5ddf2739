//! The HTTP port: `GET /metrics` (Prometheus text) and `GET /healthz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// `None` when metrics are switched off.
    pub metrics: Option<PrometheusHandle>,
    /// Reads the process figures (CPU, RSS, open fds) at each scrape.
    pub process: metrics_process::Collector,
    /// True from start-up until shutdown begins.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
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
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}
