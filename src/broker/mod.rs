//! Brokers carry events between nodes and keep history. One trait, two
//! implementations: `memory` (embedded, single node, the default) and
//! `redis` (standalone; pub/sub plus a capped stream per channel and a Redis
//! Function that appends and publishes atomically).
//!
//! A broker also consumes the hub's subscription commands: it subscribes a
//! channel, reads the channel's newest durable id (its tip) and reports
//! `Hub::channel_ready`; it feeds every received event to `Hub::dispatch`;
//! after losing its connection it repairs each channel's gap from history.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::metrics::Metrics;
use crate::sse::{Channel, Encoded, EventId, parse_payload_lenient};

#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub id: EventId,
    pub payload: Bytes,
}

/// A page of a channel's history after some id.
#[derive(Debug, Default)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
    /// Events after the requested id are gone (trimmed, or the stream
    /// expired): the reader must be reset.
    pub trimmed: bool,
    /// The newest id the channel ever had (`0-0` if it has no history).
    pub tip: EventId,
    /// The page stopped at its count or byte limit: there may be more.
    pub more: bool,
}

impl History {
    /// Sets `more` from what the page asked for.
    pub fn limited_by(mut self, page: &Page) -> History {
        let bytes: usize = self.entries.iter().map(|e| e.payload.len()).sum();
        self.more = self.entries.len() >= page.limit || bytes >= page.max_bytes;
        self
    }
}

/// Why a broker request failed, in the terms a caller acts on: whether
/// the request may have been carried out matters to a publisher that
/// retries.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request never reached the broker (no connection, none free in
    /// time, connection refused): nothing was done.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request was sent and no answer came (a response timeout, a
    /// connection lost meanwhile): it may or may not have been carried out.
    #[error("no answer from the broker: {0}")]
    OutcomeUnknown(String),
    /// The broker answered with an error: nothing was done.
    #[error("the broker refused the request: {0}")]
    Refused(String),
    /// Redis has no `ssegate` function library (a fresh or flushed server,
    /// a replica promoted before it had the library).
    #[error("the ssegate function library is not loaded in Redis")]
    FunctionMissing,
    #[error("unexpected reply from the broker: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
}

/// A publisher's idempotency key (`Idempotency-Key`, a CloudEvent's
/// `source` and `id`): 1 to 255 visible ASCII characters. A durable publish
/// with a key already used on the channel within its history window is
/// not appended again; it answers with the first publish's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

pub const MAX_IDEMPOTENCY_KEY: usize = 255;

impl IdempotencyKey {
    pub fn parse(key: &[u8]) -> Option<IdempotencyKey> {
        let ok = (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) && key.iter().all(|b| b.is_ascii_graphic());
        ok.then(|| IdempotencyKey(String::from_utf8_lossy(key).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The outcome of a durable publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: EventId,
    /// The idempotency key was already used: nothing was appended, `id` is
    /// the first publish's.
    pub replayed: bool,
}

/// Which part of a channel's history to read.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Events strictly after this id...
    pub after: EventId,
    /// ...up to this one, inclusive (no bound when `None`)...
    pub until: Option<EventId>,
    /// ...at most this many...
    pub limit: usize,
    /// ...and no more once their payloads reach this many bytes (at least
    /// one event is returned): a page's memory stays bounded whatever the
    /// events' sizes.
    pub max_bytes: usize,
}

/// The answer of `Broker::lease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The caller holds the lease now.
    pub held: bool,
    /// The position last stored under the lease (`None`: none yet).
    pub position: Option<String>,
}

pub trait Broker: Send + Sync + 'static {
    /// `"memory"` or `"redis"`.
    fn name(&self) -> &'static str;

    /// Durable publish: append to the channel's history, then publish with
    /// the new id, atomically; at most once per idempotency key.
    fn publish(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
    ) -> BoxFuture<'_, Result<Published, BrokerError>>;

    /// A page of the channel's history, oldest first.
    fn history(&self, channel: &Channel, page: Page) -> BoxFuture<'_, Result<History, BrokerError>>;

    /// Whether the broker can deliver events right now.
    fn is_connected(&self) -> bool;

    /// Takes the lease `name` for `holder` if it is free, or renews it if
    /// `holder` has it, for `ttl` (zero releases it); while held, stores
    /// `position` (when given) for whoever holds it next. One node at a
    /// time follows a source that cannot be shared (an upstream SSE
    /// endpoint). The embedded broker serves one node: always held.
    fn lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: Duration,
        _position: Option<&str>,
    ) -> BoxFuture<'_, Result<Lease, BrokerError>> {
        Box::pin(std::future::ready(Ok(Lease {
            held: true,
            position: None,
        })))
    }
}

pub type SharedBroker = Arc<dyn Broker>;

/// History retention, the same for both brokers (the Redis Function
/// mirrors `gap_after`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub size: usize,
    /// Idle time after which a channel's history expires; zero keeps it.
    pub ttl: Duration,
}

/// What is known of a channel's stored history when a reader asks for
/// everything after `after`.
pub struct HistoryFacts {
    pub exists: bool,
    pub max_deleted: EventId,
    pub first: Option<EventId>,
}

/// Whether events after `after` may have been lost: trimmed entries newer
/// than it, or (for a reader that had seen something) a stream that is gone
/// or was re-created after expiring from idleness. A stream idle for the TTL
/// expires, so an idle gap of at least the TTL right after `after` means the
/// stream was re-created in between.
pub fn gap_after(after: EventId, facts: &HistoryFacts, ttl: Duration) -> bool {
    if after == EventId::ZERO {
        return facts.exists && facts.max_deleted > after;
    }
    if !facts.exists || facts.max_deleted > after {
        return true;
    }
    let ttl_ms = ttl.as_millis() as u64;
    match facts.first {
        Some(first) if first > after && ttl_ms > 0 => first.ms.saturating_sub(after.ms) >= ttl_ms,
        _ => false,
    }
}

/// Decodes one payload from the broker (leniently: a bad envelope field is
/// dropped and counted) and encodes it once for every local stream.
pub fn encode_incoming(payload: Bytes, id: Option<EventId>, metrics: &Metrics) -> Arc<Encoded> {
    let (event, dropped) = parse_payload_lenient(payload);
    if dropped > 0 {
        metrics.envelope_fields_dropped.increment(dropped as u64);
    }
    let published_us = match id {
        Some(id) => id.ms.saturating_mul(1000),
        None => now_us(),
    };
    Arc::new(Encoded::new(&event, id, published_us))
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exists: bool, max_deleted: u64, first: Option<u64>) -> HistoryFacts {
        HistoryFacts {
            exists,
            max_deleted: EventId::new(max_deleted, 0),
            first: first.map(|f| EventId::new(f, 0)),
        }
    }

    #[test]
    fn gaps_are_detected_from_trimming_and_expiry() {
        let ttl = Duration::from_secs(60);
        let at = |ms| EventId::new(ms, 0);
        // A reader that has seen nothing never misses anything of a new stream.
        assert!(!gap_after(EventId::ZERO, &facts(false, 0, None), ttl));
        assert!(!gap_after(EventId::ZERO, &facts(true, 0, Some(5)), ttl));
        assert!(gap_after(EventId::ZERO, &facts(true, 3, Some(5)), ttl));
        // Trimmed past the reader.
        assert!(gap_after(at(10), &facts(true, 11, Some(12)), ttl));
        assert!(!gap_after(at(10), &facts(true, 10, Some(11)), ttl));
        // Expired, or re-created after an idle gap of a whole TTL.
        assert!(gap_after(at(10), &facts(false, 0, None), ttl));
        assert!(gap_after(at(10), &facts(true, 0, Some(60_010)), ttl));
        assert!(!gap_after(at(10), &facts(true, 0, Some(59_000)), ttl));
    }
}
