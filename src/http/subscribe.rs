//! `GET /v1/stream/{channel}` and `GET /v1/stream?channel=a&channel=b`:
//! validate, open a `StreamSession`, and serve it as a `text/event-stream`
//! body of pre-encoded frames.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;

use super::error::ApiError;
use crate::app::AppState;
use crate::hub::Close;
use crate::sse::{Channel, encode_control};
use crate::stream::{OpenParams, StreamSession, TOKEN_EXPIRED_EVENT, coalesce};

/// What a subscribe request asks for, parsed from its path and query.
struct SubscribeQuery {
    channels: Vec<String>,
    last_event_id: Option<String>,
    token: Option<String>,
}

fn parse_query(raw: Option<&str>) -> SubscribeQuery {
    let mut q = SubscribeQuery {
        channels: Vec::new(),
        last_event_id: None,
        token: None,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "channel" => q.channels.push(v.into_owned()),
            "lastEventId" => q.last_event_id = Some(v.into_owned()),
            "token" => q.token = Some(v.into_owned()),
            _ => {}
        }
    }
    q
}

pub async fn one(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(crate::sse::ChannelError::BadChar))?;
    let mut q = parse_query(raw.as_deref());
    q.channels = vec![channel];
    serve(app, q, &headers).await
}

pub async fn many(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = parse_query(raw.as_deref());
    serve(app, q, &headers).await
}

fn validate_channels(names: Vec<String>, max: usize) -> Result<Box<[Channel]>, ApiError> {
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

#[tracing::instrument(skip_all, fields(channels = q.channels.len()))]
async fn serve(app: AppState, q: SubscribeQuery, headers: &HeaderMap) -> Result<Response, ApiError> {
    if app.is_draining() {
        return Err(ApiError::Draining);
    }
    let cfg = app.config();
    let access = app.auth().reader(headers, q.token.as_deref())?;
    let channels = validate_channels(q.channels, cfg.max_channels)?;
    access.check_read(&channels)?;
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
    };
    let (session, opening) = StreamSession::open(app.hub(), app.broker(), app.metrics(), params).await?;
    let body = SseBody {
        session,
        pending: opening,
        expiry: access.expires_at().map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        }),
    };
    let mut resp = Response::new(Body::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The response body: the opening bytes, then whatever the session yields,
/// coalesced into one chunk per wake-up. A stream opened with a token ends
/// when the token expires, with a last `ssegate.token_expired` event.
struct SseBody {
    session: StreamSession,
    pending: Vec<Bytes>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
}

static TOKEN_EXPIRED: LazyLock<Bytes> =
    LazyLock::new(|| encode_control(TOKEN_EXPIRED_EVENT, r#"{"reason":"token_expired"}"#, None));

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(expiry) = &mut this.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            this.expiry = None;
            this.session.subscriber().close(Close::Expired);
            this.pending.push(TOKEN_EXPIRED.clone());
        }
        if this.pending.is_empty() {
            match this.session.poll_chunk(cx, &mut this.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(())) => {}
            }
        }
        Poll::Ready(Some(Ok(Frame::data(coalesce(&mut this.pending)))))
    }
}
