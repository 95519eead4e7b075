//! One source message into one durable event, through the same path as
//! `POST /v1/stream/{channel}`: the payload size limit, the strict envelope
//! rules (`sse::parse_payload`), then `Broker::publish` with the message's
//! idempotency key (its position in the backbone), so that a redelivery
//! is not appended twice. A message that cannot become an event is counted,
//! logged with its position and skipped; a broker that cannot take it is
//! retried (with the same key) until it does, so the caller acknowledges
//! only what is in history.

use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Gauge};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::template::{Fields, Template};
use crate::broker::IdempotencyKey;
use crate::metrics::names;
use crate::sse::parse_payload;
use crate::state::AppState;

/// Capped exponential backoff with jitter: 100 ms doubling up to 5 s, each
/// delay drawn from its upper half so that nodes do not retry in step.
#[derive(Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub const CAP: Duration = Duration::from_secs(5);

    pub fn next_delay(&mut self) -> Duration {
        let exp = Duration::from_millis(100)
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt += 1;
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Why a message was skipped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The template rendered no valid channel.
    Channel,
    /// The payload breaks the envelope rules.
    Envelope,
    /// Larger than `--max-payload`.
    TooLarge,
}

impl Rejected {
    fn label(self) -> &'static str {
        match self {
            Rejected::Channel => "channel",
            Rejected::Envelope => "envelope",
            Rejected::TooLarge => "too_large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published,
    /// Already in history (a redelivery): nothing appended.
    Duplicate,
    Rejected(Rejected),
}

/// The node stopped before the message was in the broker: do not
/// acknowledge it.
#[derive(Debug)]
pub struct Stopped;

/// What every consumer of one source shares.
#[derive(Clone)]
pub struct Ingest {
    pub app: AppState,
    pub name: String,
    pub template: Template,
    pub cancel: CancellationToken,
    messages: Counter,
    published: Counter,
    duplicates: Counter,
    pub lag: Gauge,
    up: Gauge,
    pub reconnects: Counter,
}

impl Ingest {
    pub fn new(app: AppState, name: String, template: Template, cancel: CancellationToken) -> Ingest {
        let m = app.metrics().clone();
        let c = |n| m.source_counter(n, &name, None);
        let ingest = Ingest {
            messages: c(names::SOURCE_MESSAGES),
            published: c(names::SOURCE_PUBLISHED),
            duplicates: c(names::SOURCE_DUPLICATES),
            reconnects: c(names::SOURCE_RECONNECTS),
            lag: m.source_gauge(names::SOURCE_LAG, &name),
            up: m.source_gauge(names::SOURCE_UP, &name),
            app,
            name,
            template,
            cancel,
        };
        for r in [Rejected::Channel, Rejected::Envelope, Rejected::TooLarge] {
            // Registered up front so that every reason shows (at 0).
            m.source_counter(names::SOURCE_REJECTED, &ingest.name, Some(r.label()))
                .increment(0);
        }
        ingest
    }

    /// The backbone is reachable (or this node is standing by).
    pub fn up(&self) {
        self.up.set(1.0);
        self.app.source_up(&self.name);
    }

    /// The backbone cannot be reached: `/readyz` says so until `up`.
    pub fn down(&self, why: impl std::fmt::Display) {
        self.up.set(0.0);
        self.app.source_down(&self.name, why.to_string());
    }

    /// Publishes one message; returns once it is in the broker (or was
    /// skipped), or `Stopped` if the node stops first.
    pub async fn ingest(
        &self,
        fields: &Fields,
        payload: Bytes,
        key: Option<IdempotencyKey>,
        position: &str,
    ) -> Result<Outcome, Stopped> {
        self.messages.increment(1);
        let checked = if payload.len() > self.app.config().max_payload {
            Err(Rejected::TooLarge)
        } else if parse_payload(payload.clone()).is_err() {
            Err(Rejected::Envelope)
        } else {
            self.template.render(fields).ok_or(Rejected::Channel)
        };
        let channel = match checked {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(source = %self.name, %position, reason = why.label(), key = ?fields.key,
                    "source message skipped: it cannot become an event");
                self.app
                    .metrics()
                    .source_counter(names::SOURCE_REJECTED, &self.name, Some(why.label()))
                    .increment(1);
                return Ok(Outcome::Rejected(why));
            }
        };
        let mut backoff = Backoff::default();
        loop {
            let attempt = self.app.broker().publish(&channel, payload.clone(), key.as_ref());
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Stopped),
                r = attempt => r,
            };
            match result {
                Ok(p) if p.replayed => {
                    self.duplicates.increment(1);
                    self.app.metrics().published_replayed.increment(1);
                    tracing::debug!(source = %self.name, %position, %channel, id = %p.id, "already in history");
                    return Ok(Outcome::Duplicate);
                }
                Ok(p) => {
                    self.published.increment(1);
                    self.app.metrics().published_durable.increment(1);
                    tracing::trace!(source = %self.name, %position, %channel, id = %p.id, "published");
                    return Ok(Outcome::Published);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %self.name, %position, error = %e, ?delay,
                        "the broker did not take a source message; retrying with the same key");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// An idempotency key `<kind>:<position>`, or `<kind>#<hash>` when the
/// position does not fit (too long, or not visible ASCII).
pub fn position_key(kind: &str, position: &str) -> IdempotencyKey {
    let plain = format!("{kind}:{position}");
    IdempotencyKey::parse(plain.as_bytes()).unwrap_or_else(|| hashed_key(kind, &[position.as_bytes()]))
}

/// `<kind>#<sha256 of the parts, NUL-separated, hex>`.
pub fn hashed_key(kind: &str, parts: &[&[u8]]) -> IdempotencyKey {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    IdempotencyKey::parse(format!("{kind}#{hex}").as_bytes()).expect("a hashed key is short, visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_readable_positions_or_hashes() {
        assert_eq!(position_key("kafka", "orders/3/17").as_str(), "kafka:orders/3/17");
        let long = "x".repeat(300);
        let k = position_key("sse", &long);
        assert!(k.as_str().starts_with("sse#") && k.as_str().len() == 4 + 64);
        assert_ne!(hashed_key("a", &[b"ab", b"c"]), hashed_key("a", &[b"a", b"bc"]));
        assert_eq!(position_key("nats", "with space").as_str().len(), 5 + 64);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let late: Vec<_> = (0..40).map(|_| b.next_delay()).skip(10).collect();
        assert!(late.iter().all(|d| *d <= Backoff::CAP && *d >= Backoff::CAP / 2));
        assert!(late.windows(2).any(|w| w[0] != w[1]), "jittered");
    }
}
