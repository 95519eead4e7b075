//! `GET /v1/stream/{channel}` and `GET /v1/stream?channel=a&channel=b`:
//! validate, open a `StreamSession`, and serve it as a `text/event-stream`
//! body of pre-encoded frames.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;

use super::error::ApiError;
use crate::peer::ClientIp;
use crate::sse::Channel;
use crate::state::AppState;
use crate::stream::{Handoff, HandoffBody, OpenParams, StreamSession};

/// What a subscribe request asks for, parsed from its path and query.
pub(super) struct SubscribeQuery {
    pub(super) channels: Vec<String>,
    last_event_id: Option<String>,
    pub(super) token: Option<String>,
    state: bool,
    presence: bool,
}

pub(super) fn parse_query(raw: Option<&str>) -> SubscribeQuery {
    let mut q = SubscribeQuery {
        channels: Vec::new(),
        last_event_id: None,
        token: None,
        state: false,
        presence: false,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "channel" => q.channels.push(v.into_owned()),
            "lastEventId" => q.last_event_id = Some(v.into_owned()),
            "token" => q.token = Some(v.into_owned()),
            "state" => q.state = matches!(&*v, "1" | "true"),
            "presence" => q.presence = matches!(&*v, "1" | "true"),
            _ => {}
        }
    }
    q
}

pub async fn one(
    State(app): State<AppState>,
    client: Option<Extension<ClientIp>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(crate::sse::ChannelError::BadChar))?;
    let mut q = parse_query(raw.as_deref());
    q.channels = vec![channel];
    serve(app, client.map(|Extension(c)| c), q, &headers).await
}

pub async fn many(
    State(app): State<AppState>,
    client: Option<Extension<ClientIp>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = parse_query(raw.as_deref());
    serve(app, client.map(|Extension(c)| c), q, &headers).await
}

pub(super) fn validate_channels(names: Vec<String>, max: usize) -> Result<Box<[Channel]>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::NoChannel);
    }
    if names.len() > max {
        return Err(ApiError::TooManyChannels { max });
    }
    let mut out: Vec<Channel> = Vec::with_capacity(names.len());
    for n in names {
        let c = Channel::parse(&n)?;
        if out.contains(&c) {
            return Err(ApiError::DuplicateChannel(n));
        }
        out.push(c);
    }
    Ok(out.into_boxed_slice())
}

#[tracing::instrument(
    name = "subscribe",
    skip_all,
    fields(client = client.map(tracing::field::display), channels = q.channels.len())
)]
async fn serve(
    app: AppState,
    client: Option<ClientIp>,
    q: SubscribeQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if app.is_draining() {
        return Err(ApiError::Draining);
    }
    let cfg = app.config();
    let access = app.auth().reader(headers, q.token.as_deref()).await?;
    let channels = validate_channels(q.channels, cfg.max_channels)?;
    access.check_read(&channels)?;
    if q.presence {
        // Joins and leaves name the clients: the same grant as GET /v1/presence.
        channels.iter().try_for_each(|c| access.check_presence(c))?;
    }
    if q.state && channels.len() != 1 {
        return Err(ApiError::InvalidQuery(
            "state=1 needs exactly one channel: its snapshot is the stream's first event".into(),
        ));
    }
    // The header (sent by EventSource on reconnect) wins over the query.
    let cursor = headers
        .get("last-event-id")
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        .or(q.last_event_id.map(Bytes::from));
    let params = OpenParams {
        channels,
        cursor,
        queue_limit: cfg.client_queue,
        retry: cfg.retry,
        open_timeout: cfg.subscribe_timeout,
        replay: app.replay_budget().clone(),
        state: q.state,
        presence: q.presence,
        client: Some(access.client_id().to_owned()),
    };
    let mut session = StreamSession::open(app.hub(), app.broker(), app.metrics(), params).await?;
    if let Some(at) = access.expires_at() {
        session.expire_at(at);
    }
    let handoff = SseHandoff::new(session);
    let body = HandoffBody::Waiting(handoff.clone());
    let mut resp = Response::new(Body::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp.extensions_mut().insert(handoff);
    tracing::debug!("stream opened");
    Ok(resp)
}

/// The open stream behind a native `text/event-stream` response
/// (`stream::Handoff`).
pub type SseHandoff = Handoff<StreamSession>;
