//! `GET /v1/presence/{channel}`: who is on a channel, over every node
//! (the `presence` claim decides who may read it).

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::sse::{Channel, ChannelError};
use crate::state::AppState;

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[tracing::instrument(skip_all)]
pub async fn presence(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let token = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let access = app.auth().reader(&headers, token.as_deref()).await?;
    let channel = Channel::parse(&channel)?;
    access.check_presence(&channel)?;
    let reports = app.broker().get_presence(&channel).await?;
    let mut count = 0;
    let mut clients: Vec<Value> = Vec::new();
    for report in reports {
        for c in report.clients {
            count += c.connections;
            clients.push(json!({
                "client": c.client,
                "node": report.node,
                "since": rfc3339(c.since_ms),
                "connections": c.connections,
            }));
        }
    }
    Ok(Json(json!({ "channel": channel.as_str(), "count": count, "clients": clients })).into_response())
}
