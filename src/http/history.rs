//! `GET /v1/history/{channel}?after=<id>&limit=<n>`: a page of a channel's
//! history, read from the same history a resume replays (read scope).
//! Without `after`, from the oldest retained event; `reset` says that
//! `after` is older than what is retained (the events then start at the
//! oldest retained one).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::broker::{Page, encode_incoming};
use crate::sse::{Channel, ChannelError, EventId};
use crate::state::AppState;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// About this many bytes of events per answer at most; a client continues
/// with `after` = the last id it got.
const MAX_BYTES: usize = 4 << 20;

struct Query {
    after: Option<EventId>,
    limit: usize,
    token: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query {
        after: None,
        limit: DEFAULT_LIMIT,
        token: None,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "after" => {
                q.after =
                    Some(EventId::parse(v.as_bytes()).ok_or_else(|| {
                        ApiError::InvalidQuery("`after` must be an event id (ms-seq)".into())
                    })?)
            }
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::InvalidQuery(format!("`limit` must be 1 to {MAX_LIMIT}")))?;
            }
            "token" => q.token = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(q)
}

/// The JSON of one event, as a WebSocket client gets it (minus `type`).
pub fn event_json(id: EventId, ev: &crate::sse::Encoded) -> Value {
    let (name, data) = ev.name_and_data();
    let mut v = json!({"id": id.to_string(), "data": String::from_utf8_lossy(&data)});
    if let Some(n) = name {
        v["event"] = String::from_utf8_lossy(n).into();
    }
    v
}

#[tracing::instrument(skip_all)]
pub async fn history(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(channel) = path.map_err(|_| ApiError::InvalidChannel(ChannelError::BadChar))?;
    let q = parse_query(raw.as_deref())?;
    let access = app.auth().reader(&headers, q.token.as_deref()).await?;
    let channel = Channel::parse(&channel)?;
    access.check_read(std::slice::from_ref(&channel))?;
    let mut page = Page::new(q.after.unwrap_or(EventId::ZERO), None, q.limit, MAX_BYTES);
    page.lenient = true;
    let history = app.broker().history(&channel, page).await?;
    let metrics = app.metrics();
    let events: Vec<Value> = history
        .entries
        .into_iter()
        .map(|e| event_json(e.id, &encode_incoming(e.payload, Some(e.id), metrics)))
        .collect();
    metrics.history_reads.increment(1);
    Ok(Json(json!({
        "channel": channel.as_str(),
        "events": events,
        "position": history.tip.to_string(),
        "reset": history.trimmed && q.after.is_some_and(|a| a != EventId::ZERO),
    }))
    .into_response())
}
