//! HTTP: the server (`server`: accept, admission, TLS, protocol choice,
//! drain), the router with every route of the contract, and thin handlers
//! over the stream session, the broker and the node's state. Every error
//! is JSON, written by `error`; every request knows its client address
//! (`client`).

mod client;
mod cloudevents;
mod error;
mod health;
mod history;
mod presence;
mod publish;
pub mod server;
mod snapshot;
mod subscribe;
mod ws;

pub use error::ApiError;
pub use publish::IDEMPOTENCY_KEY;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::Config;
use crate::state::AppState;

static DEMO_PAGE: &str = include_str!("demo/index.html");

/// The JavaScript client, served so that a page can load it from the
/// gateway it talks to (`import { connect } from "/ssegate.js"`).
static CLIENT_JS: &str = include_str!("../../clients/js/ssegate.js");

/// The demo page: subscribe, publish, watch events arrive (`--demo`).
async fn demo(axum::extract::State(app): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::{Html, IntoResponse};
    if !app.config().demo_enabled() {
        return ApiError::NotFound.into_response();
    }
    Html(DEMO_PAGE).into_response()
}

/// `GET /ssegate.js`: the JavaScript client. Cached briefly, so that a new
/// release of the gateway reaches browsers soon after it is deployed.
async fn client_js() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// CORS for the configured origins: `*` allows any origin without
/// credentials; a list allows credentials (cookies carrying tokens).
fn cors(cfg: &Config) -> Option<CorsLayer> {
    if cfg.cors_origin.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("idempotency-key"),
        ])
        .max_age(Duration::from_secs(600));
    if cfg.cors_origin.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let origins: Vec<HeaderValue> = cfg.cors_origin.iter().filter_map(|o| o.parse().ok()).collect();
    Some(layer.allow_origin(origins).allow_credentials(true))
}

/// The size of a request head as it was on the wire (request line and
/// header lines), give or take the request line's version.
fn head_size(req: &axum::extract::Request) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + 12;
    req.headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// `--max-header-bytes` for every request, whichever connection it came
/// on: hyper's own buffer limit is not a head limit (a kept-alive
/// connection's later heads could exceed it).
async fn limit_head(
    axum::extract::State(max): axum::extract::State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if head_size(&req) > max {
        return ApiError::HeadTooLarge { max }.into_response();
    }
    next.run(req).await
}

pub fn router(state: AppState) -> Router {
    let max_payload = state.config().max_payload;
    let max_head = state.config().max_header_bytes;
    let cors = cors(state.config());
    let forwarded = axum::middleware::from_fn_with_state(state.clone(), client::forwarded_client);
    let mercure = state.mercure().cloned().map(crate::mercure::http::routes);
    let router = Router::new()
        .route("/v1/stream", get(subscribe::many))
        .route(
            "/v1/stream/{channel}",
            get(subscribe::one)
                .post(publish::publish)
                .layer(DefaultBodyLimit::max(max_payload)),
        )
        .route(
            "/v1/events",
            axum::routing::post(cloudevents::post)
                .options(cloudevents::options)
                .layer(DefaultBodyLimit::max(cloudevents::max_body(max_payload))),
        )
        .route("/v1/ws", axum::routing::any(ws::upgrade))
        .route("/v1/history/{channel}", get(history::history))
        .route("/v1/presence/{channel}", get(presence::presence))
        .route(
            "/v1/state/{channel}",
            get(snapshot::get)
                .put(snapshot::put)
                .layer(DefaultBodyLimit::max(max_payload)),
        )
        .route("/", get(demo))
        .route("/ssegate.js", get(client_js))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .merge(mercure.unwrap_or_default())
        .layer(axum::middleware::from_fn_with_state(max_head, limit_head))
        .layer(forwarded);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}
