//! The hub's routes: `GET` (subscribe) and `POST` (publish)
//! `/.well-known/mercure`, and with `--mercure-subscriptions` the
//! subscriptions API. Errors are `text/plain`, with the status and body
//! the reference hub gives.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde_json::{Value, json};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::auth::{self, AuthError, Claims};
use super::index::Filter;
use super::registry::{self, CONTEXT, PREFIX};
use super::stream::{MercureHandoff, MercureStream, Registered};
use super::{Inner, Mercure};
use crate::hub::Subscriber;
use crate::sse::mercure::Update;
use crate::stream::HandoffBody;

pub const PATH: &str = "/.well-known/mercure";

/// A plain-text answer, as Go's `http.Error` writes it.
fn plain(status: StatusCode, msg: &str) -> Response {
    let mut r = (status, format!("{msg}\n")).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

fn status_text(status: StatusCode) -> Response {
    plain(status, status.canonical_reason().unwrap_or(""))
}

fn unauthorized(inner: &Inner, why: Option<AuthError>) -> Response {
    inner.metrics.mercure("unauthorized").increment(1);
    if let Some(e) = why {
        tracing::debug!(error = %e, "Mercure request not authorized");
    }
    status_text(StatusCode::UNAUTHORIZED)
}

/// The form fields of a query string or body, in order.
fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn all(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether every topic is covered by one of the selectors.
fn covers(inner: &Inner, selectors: &[String], topics: &[String]) -> bool {
    if selectors.iter().any(|s| s == "*") {
        return true;
    }
    let compiled: Vec<_> = selectors.iter().map(|s| inner.selector(s)).collect();
    topics.iter().all(|t| compiled.iter().any(|s| s.matches(t)))
}

async fn publish(
    State(m): State<Mercure>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inner = &m.0;
    let query = pairs(raw.as_deref().unwrap_or("").as_bytes());
    let origins = &inner.cfg.mercure_publish_origins;
    let claims = match auth::authorize(
        &headers,
        &all(&query, "authorization"),
        &inner.keys.publisher,
        Some(origins),
    ) {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorized(inner, None),
        Err(e) => return unauthorized(inner, Some(e)),
    };
    let Some(allowed) = claims.mercure.publish.as_deref() else {
        return unauthorized(inner, None);
    };
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let form = if form_type { pairs(&body) } else { Vec::new() };
    let topics = all(&form, "topic");
    if topics.is_empty() {
        return plain(StatusCode::BAD_REQUEST, "Missing \"topic\" parameter");
    }
    if !covers(inner, allowed, &topics) {
        inner.metrics.mercure("forbidden").increment(1);
        return status_text(StatusCode::FORBIDDEN);
    }
    let retry = match first(&form, "retry") {
        None | Some("") => None,
        Some(r) => match r.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "Invalid \"retry\" parameter"),
        },
    };
    let id = match first(&form, "id") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    };
    let kind = first(&form, "type").filter(|t| !t.is_empty()).map(str::to_owned);
    if id.contains(['\r', '\n', '\0']) {
        return plain(StatusCode::BAD_REQUEST, "Invalid \"id\" parameter");
    }
    if kind.as_deref().is_some_and(|t| t.contains(['\r', '\n', '\0'])) {
        return plain(StatusCode::BAD_REQUEST, "Invalid \"type\" parameter");
    }
    let update = Update {
        id,
        topics,
        data: first(&form, "data").unwrap_or_default().to_owned(),
        private: first(&form, "private").is_some(),
        kind,
        retry,
    };
    if update.data.len() > inner.max_payload {
        return status_text(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match inner.publish_update(&update).await {
        Ok(_) => plain_ok(update.id),
        Err(e) => {
            tracing::warn!(error = %e, "a Mercure publish failed");
            plain(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

fn plain_ok(id: String) -> Response {
    let mut r = (StatusCode::OK, id).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The subscriber's claims, or the answer that refuses it.
fn subscriber_claims(
    inner: &Inner,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<Option<Claims>, Box<Response>> {
    match auth::authorize(
        headers,
        &all(query, "authorization"),
        &inner.keys.subscriber,
        None,
    ) {
        Ok(None) if !inner.cfg.mercure_anonymous => Err(Box::new(unauthorized(inner, None))),
        Ok(c) => Ok(c),
        Err(e) => Err(Box::new(unauthorized(inner, Some(e)))),
    }
}

async fn subscribe(State(m): State<Mercure>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let inner = &m.0;
    let query = pairs(raw.as_deref().unwrap_or("").as_bytes());
    let claims = match subscriber_claims(inner, &headers, &query) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let mut topics = all(&query, "topic");
    if topics.is_empty() {
        return plain(StatusCode::BAD_REQUEST, "Missing \"topic\" parameter.");
    }
    let mut seen = std::collections::HashSet::new();
    topics.retain(|t| seen.insert(t.clone()));
    if !inner.wait_live().await {
        return status_text(StatusCode::SERVICE_UNAVAILABLE);
    }
    let filter = Arc::new(Filter {
        selectors: topics.iter().map(|t| inner.selector(t)).collect(),
        claims: claims
            .as_ref()
            .and_then(|c| c.mercure.subscribe.as_ref())
            .map(|s| s.iter().map(|t| inner.selector(t)).collect()),
    });
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| first(&query, "lastEventID").map(str::to_owned))
        .or_else(|| first(&query, "Last-Event-ID").map(str::to_owned));
    let sub = Subscriber::new_dynamic(inner.queue_limit);
    let attachment = inner.hub.attach(&sub);
    let (key, position) = {
        let mut idx = inner.index.lock();
        let key = idx.insert(sub.clone(), &topics, filter.clone());
        (key, idx.position.clone())
    };
    inner.metrics.mercure_subscribers().increment(1.0);
    let mut registered = Registered {
        inner: m.0.clone(),
        key,
        raw: topics.clone(),
        announced: None,
    };
    let resume_from = match last_event_id.as_deref() {
        None => None,
        Some(id) => {
            let want = (id != "earliest").then_some(id);
            match inner.broker.mercure_find(want).await {
                Ok(Some(at)) => Some(at),
                Ok(None) => {
                    inner.metrics.mercure("last_event_id_unknown").increment(1);
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "looking up a Mercure Last-Event-ID failed; resuming live");
                    None
                }
            }
        }
    };
    if inner.cfg.mercure_subscriptions {
        let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let payload = claims.as_ref().and_then(|c| c.mercure.payload.clone());
        registered.announced = Some(registry::join(inner, subscriber, topics, payload).await);
    }
    let expires = claims.as_ref().and_then(|c| c.expires);
    let stream = MercureStream::new(
        sub,
        registered,
        attachment,
        filter,
        resume_from,
        position.at,
        expires,
    );
    let handoff = MercureHandoff::new(stream);
    let mut resp = Response::new(Body::new(HandoffBody::Waiting(handoff.clone())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let last = position.last_id.as_deref().unwrap_or("earliest");
    if let Ok(v) = HeaderValue::from_str(last) {
        h.insert("last-event-id", v);
    }
    resp.extensions_mut().insert(handoff);
    resp
}

/// The subscriptions API: a subscriber JWT whose `mercure.subscribe`
/// covers the request's own URL.
async fn subscriptions_for(
    m: Mercure,
    uri: Uri,
    headers: HeaderMap,
    topic: Option<String>,
    subscriber: Option<String>,
) -> Response {
    let inner = &m.0;
    let query = pairs(uri.query().unwrap_or("").as_bytes());
    let here = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let claims = match auth::authorize(
        &headers,
        &all(&query, "authorization"),
        &inner.keys.subscriber,
        None,
    ) {
        Ok(Some(c)) => c,
        Ok(None) => return unauthorized(inner, None),
        Err(e) => return unauthorized(inner, Some(e)),
    };
    let allowed = claims.mercure.subscribe.as_deref().unwrap_or_default();
    if !allowed.iter().any(|s| inner.selector(s).matches(&here)) {
        return unauthorized(inner, None);
    }
    let last = inner.index.lock().position.last_id.clone();
    let last = last.as_deref().unwrap_or("earliest").to_owned();
    let list = match inner.registry.list().await {
        Ok(l) => l,
        Err(e) => return plain(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut body = match (&topic, &subscriber) {
        (Some(t), Some(s)) => {
            let Some(mut one) = list.into_iter().find(|v| {
                field(v, "topic").as_ref() == Some(t) && field(v, "subscriber").as_ref() == Some(s)
            }) else {
                return status_text(StatusCode::NOT_FOUND);
            };
            one["@context"] = json!(CONTEXT);
            one["lastEventID"] = json!(last);
            one
        }
        _ => {
            let mut subs: Vec<Value> = list
                .into_iter()
                .filter(|v| topic.is_none() || field(v, "topic") == topic)
                .collect();
            subs.sort_by_key(|v| field(v, "id"));
            let id = match &topic {
                Some(t) => format!("{PREFIX}/{}", registry::escape(t)),
                None => PREFIX.to_owned(),
            };
            json!({"@context": CONTEXT, "id": id, "type": "Subscriptions", "lastEventID": last, "subscriptions": subs})
        }
    };
    if let Some(o) = body.as_object_mut() {
        // `@context` first, as the draft shows it.
        let ctx = o.remove("@context");
        let mut sorted = serde_json::Map::new();
        if let Some(c) = ctx {
            sorted.insert("@context".into(), c);
        }
        sorted.extend(std::mem::take(o));
        *o = sorted;
    }
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/ld+json"),
    );
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

async fn subscriptions(State(m): State<Mercure>, uri: Uri, headers: HeaderMap) -> Response {
    subscriptions_for(m, uri, headers, None, None).await
}

async fn subscriptions_topic(
    State(m): State<Mercure>,
    uri: Uri,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Response {
    subscriptions_for(m, uri, headers, Some(topic), None).await
}

async fn subscription(
    State(m): State<Mercure>,
    uri: Uri,
    headers: HeaderMap,
    Path((topic, subscriber)): Path<(String, String)>,
) -> Response {
    subscriptions_for(m, uri, headers, Some(topic), Some(subscriber)).await
}

/// CORS for browsers on other origins: credentials (the cookie) allowed.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The hub's routes, with their own state.
pub fn routes(m: Mercure) -> Router {
    let body_limit = m.0.max_payload.saturating_mul(3).max(64 << 10);
    let mut r = Router::new().route(
        PATH,
        get(subscribe)
            .post(publish)
            .layer(DefaultBodyLimit::max(body_limit)),
    );
    if m.0.cfg.mercure_subscriptions {
        r = r
            .route(PREFIX, get(subscriptions))
            .route(&format!("{PREFIX}/{{topic}}"), get(subscriptions_topic))
            .route(&format!("{PREFIX}/{{topic}}/{{subscriber}}"), get(subscription));
    }
    let cors = cors(&m.0.cfg.mercure_cors_origins);
    let r = r.with_state(m);
    match cors {
        Some(c) => r.layer(c),
        None => r,
    }
}
