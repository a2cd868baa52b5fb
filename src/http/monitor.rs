//! The operator's endpoints: liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Web;
use crate::broker::Broker;
use crate::metrics;

/// `200 ok` while the process serves HTTP at all.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `200` when new subscriptions can be served: the backend is reachable and
/// the server is not shutting down; else `503` with the reason.
pub async fn readyz<B: Broker>(State(web): State<Web<B>>) -> Response {
    if web.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    if !web.broker.ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "backend unavailable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// The Prometheus text exposition; gauges the broker knows are read now.
pub async fn metrics<B: Broker>(State(web): State<Web<B>>) -> Response {
    metrics::get().history_bytes.set(web.broker.history_bytes() as i64);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], metrics::get().render()).into_response()
}
