//! `POST /v1/events`: CloudEvents 1.0 over HTTP, in binary mode (`ce-*`
//! headers, the body is the data), structured mode
//! (`application/cloudevents+json`) and batches
//! (`application/cloudevents-batch+json`). The channel is the event's
//! `subject`, the SSE event name its `type`, the data its `data` (a string
//! as-is, other JSON serialized) or its `data_base64` (decoded; SSE carries
//! text, so it must be UTF-8). Every event of a request is checked before
//! any is published: one bad event rejects the whole batch with a 400 that
//! names it, and nothing is published.
//!
//! A CloudEvent is published at most once per channel within the history
//! window: its idempotency key is a hash of `source` and `id`, and a repeat
//! answers with the first publish's id. `OPTIONS` answers the webhook
//! validation handshake (`WebHook-Request-Origin` ->
//! `WebHook-Allowed-Origin`), which Azure Event Grid and CloudEvents
//! webhook senders use before they deliver.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::publish::read_body_within;
use crate::broker::{BrokerError, IdempotencyKey};
use crate::sources::ingest::hashed_key;
use crate::sse::{Channel, parse_payload};
use crate::state::AppState;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// A batch may hold up to this many events' worth of `--max-payload`.
pub fn max_body(max_payload: usize) -> usize {
    max_payload.saturating_mul(16)
}

/// One checked CloudEvent, ready to publish.
struct Prepared {
    channel: Channel,
    payload: Bytes,
    key: IdempotencyKey,
}

fn bad(what: &str, rule: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidCloudEvent(format!("{what}: {rule}"))
}

pub async fn options(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    if let Some(origin) = headers.get("webhook-request-origin") {
        h.insert("webhook-allowed-origin", origin.clone());
        h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    }
    resp
}

#[tracing::instrument(skip_all)]
pub async fn post(State(app): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let access = app.auth().publisher(&parts.headers).await?;
    let media = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let max = app.config().max_payload;
    let (events, batch) = match media.as_str() {
        BATCH => {
            let body = read_body_within(&app, body, max_body(max)).await?;
            let list: Vec<Value> = serde_json::from_slice(&body)
                .map_err(|e| bad("the batch", format!("not a JSON array of CloudEvents: {e}")))?;
            if list.is_empty() {
                return Err(bad("the batch", "is empty"));
            }
            let events = list
                .into_iter()
                .enumerate()
                .map(|(i, v)| structured(v, max).map_err(|e| bad(&format!("event {i} of the batch"), e)))
                .collect::<Result<Vec<_>, _>>()?;
            (events, true)
        }
        STRUCTURED => {
            let body = read_body_within(&app, body, max.saturating_mul(2)).await?;
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| bad("the event", format!("not JSON: {e}")))?;
            (vec![structured(v, max).map_err(|e| bad("the event", e))?], false)
        }
        _ => {
            let body = read_body_within(&app, body, max).await?;
            (
                vec![binary(&parts.headers, body, max).map_err(|e| bad("the event", e))?],
                false,
            )
        }
    };
    for e in &events {
        access.check_publish(&e.channel)?;
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut replayed = Vec::with_capacity(events.len());
    for e in events {
        let published = app
            .broker()
            .publish(&e.channel, e.payload, Some(&e.key))
            .await
            .map_err(|err| match err {
                BrokerError::OutcomeUnknown(why) => {
                    tracing::warn!(error = %why, channel = %e.channel, "publish outcome unknown");
                    ApiError::PublishOutcomeUnknown
                }
                err => err.into(),
            })?;
        if published.replayed {
            app.metrics().published_replayed.increment(1);
        } else {
            app.metrics().published_durable.increment(1);
        }
        ids.push(published.id.to_string());
        replayed.push(published.replayed);
    }
    if batch {
        return Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "ids": ids, "replayed": replayed })),
        )
            .into_response());
    }
    let mut resp = (StatusCode::CREATED, Json(serde_json::json!({ "id": ids[0] }))).into_response();
    if replayed[0] {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// The attributes this gateway reads, from wherever the mode keeps them.
struct Attributes {
    specversion: Option<String>,
    id: Option<String>,
    source: Option<String>,
    kind: Option<String>,
    subject: Option<String>,
}

fn prepare(a: Attributes, data: String, max: usize) -> Result<Prepared, String> {
    let required = |v: Option<String>, name: &str| -> Result<String, String> {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| format!("the required attribute `{name}` is missing"))
    };
    let version = required(a.specversion, "specversion")?;
    if version != "1.0" {
        return Err(format!(
            "`specversion` is {version:?}; this endpoint takes CloudEvents 1.0"
        ));
    }
    let id = required(a.id, "id")?;
    let source = required(a.source, "source")?;
    let kind = required(a.kind, "type")?;
    let subject = a
        .subject
        .filter(|s| !s.is_empty())
        .ok_or("the attribute `subject` is missing: it names the channel")?;
    let channel = Channel::parse(&subject).map_err(|e| format!("`subject` is not a channel name: {e}"))?;
    let payload = Bytes::from(serde_json::json!({ "event": kind, "data": data }).to_string());
    if payload.len() > max {
        return Err(format!("larger than {max} bytes once enveloped"));
    }
    parse_payload(payload.clone()).map_err(|e| format!("`type` cannot be an SSE event name: {e}"))?;
    Ok(Prepared {
        channel,
        payload,
        key: hashed_key("ce", &[source.as_bytes(), id.as_bytes()]),
    })
}

fn structured(v: Value, max: usize) -> Result<Prepared, String> {
    let Value::Object(mut o) = v else {
        return Err("not a JSON object".into());
    };
    let text = |o: &mut Map<String, Value>, k: &str| -> Result<Option<String>, String> {
        match o.remove(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("the attribute `{k}` must be a string")),
        }
    };
    let a = Attributes {
        specversion: text(&mut o, "specversion")?,
        id: text(&mut o, "id")?,
        source: text(&mut o, "source")?,
        kind: text(&mut o, "type")?,
        subject: text(&mut o, "subject")?,
    };
    let data = match (
        o.remove("data").filter(|v| !v.is_null()),
        text(&mut o, "data_base64")?,
    ) {
        (Some(_), Some(_)) => return Err("both `data` and `data_base64` are given".into()),
        (None, None) => String::new(),
        (Some(Value::String(s)), None) => s,
        (Some(other), None) => other.to_string(),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("`data_base64` is not base64: {e}"))?;
            String::from_utf8(bytes)
                .map_err(|_| "`data_base64` is not UTF-8 text (SSE carries text)".to_owned())?
        }
    };
    prepare(a, data, max)
}

/// `%XX` escapes of a binary-mode header value (CloudEvents HTTP binding).
fn percent_decode(v: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn binary(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Prepared, String> {
    let ce = |name: &str| -> Result<Option<String>, String> {
        match headers.get(format!("ce-{name}")) {
            None => Ok(None),
            Some(v) => percent_decode(v.as_bytes())
                .map(Some)
                .ok_or_else(|| format!("the header ce-{name} is not percent-encoded UTF-8")),
        }
    };
    if headers.get("ce-specversion").is_none() {
        return Err(format!(
            "no ce-specversion header: send a binary-mode event (ce-* headers) or a body of type \
             {STRUCTURED} or {BATCH}"
        ));
    }
    let a = Attributes {
        specversion: ce("specversion")?,
        id: ce("id")?,
        source: ce("source")?,
        kind: ce("type")?,
        subject: ce("subject")?,
    };
    let data = String::from_utf8(body.to_vec())
        .map_err(|_| "the body (data) is not UTF-8 text (SSE carries text)")?;
    prepare(a, data, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Value {
        serde_json::json!({"specversion":"1.0","id":"1","source":"/s","type":"t.x","subject":"c","data":{"a":1}})
    }

    #[test]
    fn structured_events_become_envelopes_keyed_by_source_and_id() {
        let p = structured(event(), 1000).unwrap();
        assert_eq!(p.channel.as_str(), "c");
        let v: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(v, serde_json::json!({"event":"t.x","data":"{\"a\":1}"}));
        let mut other = event();
        other["source"] = "/t".into();
        assert_ne!(structured(other, 1000).unwrap().key, p.key);
        let mut b64 = event();
        b64.as_object_mut().unwrap().remove("data");
        b64["data_base64"] = "aGVsbG8=".into();
        assert!(String::from_utf8_lossy(&structured(b64, 1000).unwrap().payload).contains("hello"));
    }

    #[test]
    fn a_missing_or_bad_attribute_is_named() {
        for (k, why) in [
            ("id", "`id` is missing"),
            ("source", "`source` is missing"),
            ("type", "`type` is missing"),
            ("subject", "`subject` is missing"),
            ("specversion", "`specversion` is missing"),
        ] {
            let mut e = event();
            e.as_object_mut().unwrap().remove(k);
            let err = structured(e, 1000).err().unwrap();
            assert!(err.contains(why), "{k}: {err}");
        }
        let mut e = event();
        e["subject"] = "a b".into();
        assert!(structured(e, 1000).err().unwrap().contains("subject"));
        let mut e = event();
        e["type"] = "ssegate.reset".into();
        assert!(structured(e, 1000).err().unwrap().contains("`type`"));
        let mut e = event();
        e["specversion"] = "0.3".into();
        assert!(structured(e, 1000).err().unwrap().contains("1.0"));
    }

    #[test]
    fn binary_headers_are_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b%C3%A9").as_deref(), Some("a bé"));
        assert_eq!(percent_decode(b"100%"), Some("100%".into()));
        assert!(percent_decode(b"%zz").is_none());
    }
}
