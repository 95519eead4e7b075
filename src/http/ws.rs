//! `GET /v1/ws`: the WebSocket upgrade (HTTP/1.1, RFC 6455) and `CONNECT`
//! with `:protocol websocket` (HTTP/2, RFC 8441). Auth, channels and
//! limits are checked before the upgrade, so that a refusal is a plain
//! HTTP answer with a JSON body; the channels of `?channel=` are live when
//! the upgrade is answered.

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::rt::TokioIo;

use super::error::ApiError;
use super::subscribe::{parse_query, validate_channels};
use crate::state::AppState;
use crate::ws::{self, Session, WsConn, WsHandoff};

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

/// A token from the cookie: a browser sends the cookie with a WebSocket
/// that any page of the site opens, and WebSocket has no CORS, so the node
/// takes it only from the origins that could read with it through CORS:
/// its own, and those listed in `--cors-origin` (`*` allows no
/// credentials). A request without `Origin` is not a browser's.
fn cookie_origin(app: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let same = match (host, origin.split_once("://")) {
        (Some(host), Some((_, authority))) => authority.eq_ignore_ascii_case(host),
        _ => false,
    };
    let listed = app.config().cors_origin.iter().any(|o| o != "*" && o == origin);
    if same || listed {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed(origin.to_owned()))
    }
}

#[tracing::instrument(skip_all)]
pub async fn upgrade(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    mut req: Request,
) -> Result<Response, ApiError> {
    if app.is_draining() {
        return Err(ApiError::Draining);
    }
    let h2 = req.method() == Method::CONNECT;
    let accept = if h2 {
        let protocol = req.extensions().get::<hyper::ext::Protocol>();
        if protocol.map(|p| p.as_str()) != Some("websocket") {
            return Err(ApiError::BadUpgrade(ws::UpgradeError::NotUpgrade));
        }
        None
    } else if req.method() == Method::GET {
        Some(ws::accept_key(req.headers()).map_err(ApiError::BadUpgrade)?)
    } else {
        return Err(ApiError::MethodNotAllowed);
    };
    let q = parse_query(raw.as_deref());
    let access = app.auth().reader(req.headers(), q.token.as_deref()).await?;
    if app.auth().is_enforced() && q.token.is_none() && !has_bearer(req.headers()) {
        cookie_origin(&app, req.headers(), req.uri())?;
    }
    let max = app.config().ws_max_channels;
    let channels = if q.channels.is_empty() {
        Vec::new()
    } else {
        validate_channels(q.channels, max)?.into_vec()
    };
    access.check_read(&channels)?;
    let (session, first) = Session::open(app.clone(), access, channels).await?;
    let mut resp = Response::new(axum::body::Body::empty());
    let h = resp.headers_mut();
    if ws::offers_subprotocol(req.headers()) {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(ws::SUBPROTOCOL),
        );
    }
    if let Some(accept) = accept {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
    }
    let max_message = app.config().max_payload + ws::MESSAGE_OVERHEAD;
    match req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
        // Under hyper (TLS, HTTP/2, a kept-alive connection): hyper hands
        // over the connection once this answer is sent.
        Some(on_upgrade) => {
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(io) => WsConn::new(TokioIo::new(io), session, first, max_message).await,
                    Err(e) => tracing::debug!(error = %e, "a WebSocket upgrade did not complete"),
                }
            });
        }
        // The fast path writes the answer and takes the socket itself.
        None => {
            resp.extensions_mut().insert(WsHandoff::new(session, first));
        }
    }
    Ok(resp)
}
