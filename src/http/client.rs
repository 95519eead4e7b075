//! The client address of each request. The server sets the connection's
//! (`ClientIp`); a request from a trusted proxy that names its client in
//! `X-Forwarded-For` or `Forwarded` becomes that client's here, and counts
//! against the client's per-IP rate one request at a time: a balancer
//! carries many clients' requests on one connection, so counting its
//! connections would say nothing. Past the rate: `429 rate_limited`, on the
//! fast path and under hyper alike, since both go through the router.
//! Requests from other peers keep the connection's address, whatever
//! their headers say.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::limits::IpRate;
use crate::peer::{ClientIp, forwarded};
use crate::state::AppState;

pub(super) async fn forwarded_client(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(&ClientIp(peer)) = req.extensions().get::<ClientIp>() else {
        return next.run(req).await;
    };
    let trusted = app.trusted_proxies();
    if !trusted.contains(peer) {
        return next.run(req).await;
    }
    // No forwarded client: the proxy's own request (a health check).
    let Some(client) = forwarded::client(req.headers(), trusted) else {
        return next.run(req).await;
    };
    req.extensions_mut().insert(ClientIp(client));
    if !trusted.contains(client)
        && let Err(wait) = app.ip_rate().check(client)
    {
        app.metrics().rejected("rate_limited").increment(1);
        tracing::debug!(%client, %peer, "request rate limited");
        let retry_after = IpRate::retry_after(wait);
        return ApiError::RateLimited { retry_after }.into_response();
    }
    next.run(req).await
}
