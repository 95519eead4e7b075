//! `POST /v1/stream/{channel}`: durable publish through the broker. The body
//! is the payload, whatever its content type; envelopes are checked here so
//! that a bad one gets a 400 and changes nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::sse::{Channel, ChannelError, parse_payload};
use crate::state::AppState;

#[tracing::instrument(skip_all)]
pub async fn publish(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let access = app.auth().publisher(&headers).await?;
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let channel = Channel::parse(&channel)?;
    access.check_publish(&channel)?;
    let body = body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge {
                max: app.config().max_payload,
            }
        }
        _ => ApiError::BadBody,
    })?;
    parse_payload(body.clone())?;
    let id = app.broker().publish(&channel, body).await?;
    app.metrics().published_durable.increment(1);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id.to_string() })),
    )
        .into_response())
}
