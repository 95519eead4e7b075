//! `POST /v1/stream/{channel}`: durable publish through the broker. The
//! publisher and the channel are checked from the head before any of the
//! body is read; the body (the payload, whatever its content type) must
//! then arrive within `--body-timeout` and `--max-payload`; envelopes are
//! checked here so that a bad one gets a 400 and changes nothing.
//!
//! With an `Idempotency-Key` header the publish happens at most once per
//! key within the channel's history window: a retry after a `504`
//! (`publish_outcome_unknown`) is safe and answers the first id.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::broker::{BrokerError, IdempotencyKey};
use crate::peer::ClientIp;
use crate::sse::{Channel, ChannelError, parse_payload};
use crate::state::AppState;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[tracing::instrument(skip_all, fields(client = client.as_ref().map(|c| tracing::field::display(c.0))))]
pub async fn publish(
    State(app): State<AppState>,
    client: Option<Extension<ClientIp>>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let access = app.auth().publisher(&parts.headers).await?;
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let channel = Channel::parse(&channel)?;
    access.check_publish(&channel)?;
    let key = idempotency_key(&parts.headers)?;
    let body = read_body(&app, body).await?;
    parse_payload(body.clone())?;
    let published = app
        .broker()
        .publish(&channel, body, key.as_ref())
        .await
        .map_err(|e| match e {
            BrokerError::OutcomeUnknown(why) => {
                tracing::warn!(error = %why, %channel, "publish outcome unknown");
                ApiError::PublishOutcomeUnknown
            }
            e => e.into(),
        })?;
    tracing::debug!(%channel, id = %published.id, "published");
    if published.replayed {
        app.metrics().published_replayed.increment(1);
    } else {
        app.metrics().published_durable.increment(1);
    }
    let mut resp = (
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": published.id.to_string() })),
    )
        .into_response();
    if published.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => IdempotencyKey::parse(v.as_bytes())
            .map(Some)
            .ok_or(ApiError::InvalidIdempotencyKey),
    }
}

/// The whole body, within `--max-payload` bytes and `--body-timeout`.
pub(super) async fn read_body(app: &AppState, body: axum::body::Body) -> Result<Bytes, ApiError> {
    read_body_within(app, body, app.config().max_payload).await
}

/// The whole body, within `max` bytes and `--body-timeout`.
pub(super) async fn read_body_within(
    app: &AppState,
    body: axum::body::Body,
    max: usize,
) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, max);
    match tokio::time::timeout(app.config().body_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { max })
        }
        Ok(Err(_)) => Err(ApiError::BadBody),
    }
}
