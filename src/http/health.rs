//! `/healthz` (the process is up), `/readyz` (broker connected, every event
//! source connected, and not draining) and `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(app): State<AppState>) -> Response {
    let reason = if app.is_draining() {
        Some("draining")
    } else if !app.broker().is_connected() {
        Some("broker_disconnected")
    } else if app.config().not_ready_when_full && app.occupancy().is_full() {
        Some("full")
    } else {
        None
    };
    if reason.is_none()
        && let Some((source, why)) = app.source_problem()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "not_ready", "reason": "source_disconnected", "source": source, "detail": why,
            })),
        )
            .into_response();
    }
    match reason {
        None => Json(serde_json::json!({ "status": "ready", "broker": app.broker().name() })).into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not_ready", "reason": r })),
        )
            .into_response(),
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics().render(),
    )
        .into_response()
}
