//! `PUT /v1/state/{channel}` (publish scope): the body becomes the
//! channel's snapshot at its current position, in one step in the broker,
//! so that no event slips between the two. `GET /v1/state/{channel}` (read
//! scope) answers it, or 404.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::publish::read_body;
use crate::sse::{Channel, ChannelError};
use crate::state::AppState;

#[tracing::instrument(skip_all)]
pub async fn put(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let access = app.auth().publisher(&parts.headers).await?;
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let channel = Channel::parse(&channel)?;
    access.check_publish(&channel)?;
    let body = read_body(&app, body).await?;
    let position = app.broker().put_state(&channel, body).await?;
    app.metrics().states_stored.increment(1);
    Ok(Json(json!({ "position": position.to_string() })).into_response())
}

#[tracing::instrument(skip_all)]
pub async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let token = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let access = app.auth().reader(&headers, token.as_deref()).await?;
    let channel = Channel::parse(&channel)?;
    access.check_read(std::slice::from_ref(&channel))?;
    let Some(snapshot) = app.broker().get_state(&channel).await? else {
        return Err(ApiError::NoState);
    };
    Ok(Json(json!({
        "position": snapshot.position.to_string(),
        "state": String::from_utf8_lossy(&snapshot.body),
    }))
    .into_response())
}
