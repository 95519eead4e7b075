//! HTTP: thin handlers over the stream session, the broker and the health
//! state. Routes are the contract's; every error is JSON (see `error`).

mod error;
mod health;
mod publish;
mod subscribe;

pub use error::ApiError;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    let max_payload = state.config().max_payload;
    Router::new()
        .route("/v1/stream", get(subscribe::many))
        .route(
            "/v1/stream/{channel}",
            get(subscribe::one)
                .post(publish::publish)
                .layer(DefaultBodyLimit::max(max_payload)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
