//! The one place where errors become HTTP answers: a status and a JSON body
//! `{"error": <code>, "message": <what to fix>}` that names the problem and
//! never leaks internals (the cause is logged instead). Handlers return
//! `ApiError`; the server writes its own refusals (limits, malformed or
//! late request heads) through the same type.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::broker::BrokerError;
use crate::sse::{ChannelError, EnvelopeError};
use crate::stream::OpenError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid channel name: {0}")]
    InvalidChannel(#[from] ChannelError),
    #[error("no channel given: use /v1/stream/{{channel}} or ?channel=a&channel=b")]
    NoChannel,
    #[error("too many channels: at most {max} per stream")]
    TooManyChannels { max: usize },
    #[error("channel {0:?} is given twice")]
    DuplicateChannel(String),
    #[error("invalid envelope: {0}")]
    BadEnvelope(#[from] EnvelopeError),
    #[error("payload larger than {max} bytes")]
    PayloadTooLarge { max: usize },
    #[error("could not read the request body")]
    BadBody,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error(
        "the broker did not answer in time: the event may or may not have been published; \
         retry with the same Idempotency-Key to publish it at most once"
    )]
    PublishOutcomeUnknown,
    #[error("the broker is unavailable, retry later")]
    Unavailable,
    #[error("this node is shutting down")]
    Draining,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("no such route")]
    NotFound,
    #[error("the query string is not valid: {0}")]
    InvalidQuery(String),
    #[error("this channel has no state snapshot (PUT /v1/state/{{channel}} stores one)")]
    NoState,
    #[error(transparent)]
    BadUpgrade(crate::ws::UpgradeError),
    #[error(
        "a WebSocket that sends its token in the cookie must come from this gateway's origin or one \
         listed in --cors-origin, not {0:?}; pass the token as the `token` parameter instead"
    )]
    OriginNotAllowed(String),
    #[error("malformed HTTP request: {0}")]
    MalformedRequest(String),
    #[error("the request head is larger than {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("the request head did not arrive in time")]
    RequestTimeout,
    #[error("this node is at its connection limit; retry later or elsewhere")]
    TooManyConnections,
    #[error("too many new connections or requests from this address; retry later")]
    RateLimited { retry_after: u64 },
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// A CloudEvent that cannot be published (`POST /v1/events`): the text
    /// names the event and the attribute.
    #[error("invalid CloudEvent: {0}")]
    InvalidCloudEvent(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidChannel(_) => (StatusCode::BAD_REQUEST, "invalid_channel"),
            NoChannel => (StatusCode::BAD_REQUEST, "no_channel"),
            TooManyChannels { .. } => (StatusCode::BAD_REQUEST, "too_many_channels"),
            DuplicateChannel(_) => (StatusCode::BAD_REQUEST, "duplicate_channel"),
            BadEnvelope(_) => (StatusCode::BAD_REQUEST, "invalid_envelope"),
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            BadBody => (StatusCode::BAD_REQUEST, "invalid_body"),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            InvalidIdempotencyKey => (StatusCode::BAD_REQUEST, "invalid_idempotency_key"),
            PublishOutcomeUnknown => (StatusCode::GATEWAY_TIMEOUT, "publish_outcome_unknown"),
            Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            Auth(e) if e.is_forbidden() => (StatusCode::FORBIDDEN, "forbidden"),
            Auth(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            NoState => (StatusCode::NOT_FOUND, "no_state"),
            BadUpgrade(crate::ws::UpgradeError::Version) => (StatusCode::UPGRADE_REQUIRED, "invalid_upgrade"),
            BadUpgrade(_) => (StatusCode::BAD_REQUEST, "invalid_upgrade"),
            OriginNotAllowed(_) => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            MalformedRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            HeadTooLarge { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "head_too_large"),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            TooManyConnections => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            InvalidCloudEvent(_) => (StatusCode::BAD_REQUEST, "invalid_cloudevent"),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        tracing::warn!(error = %e, "broker error");
        ApiError::Unavailable
    }
}

impl From<OpenError> for ApiError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Broker(b) => b.into(),
            OpenError::NotReady => {
                tracing::warn!("subscription not confirmed in time");
                ApiError::Unavailable
            }
            OpenError::Closed(_) => ApiError::Draining,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        let mut resp = (status, Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            resp.headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
