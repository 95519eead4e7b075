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
use std::time::Duration;

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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// When events after `after` are gone, still return those retained
    /// (with `trimmed` set) rather than none.
    pub lenient: bool,
}

impl Page {
    /// Events after `after` up to `until`, at most `limit` of them and
    /// about `max_bytes`.
    pub fn new(after: EventId, until: Option<EventId>, limit: usize, max_bytes: usize) -> Page {
        Page {
            after,
            until,
            limit,
            max_bytes,
            lenient: false,
        }
    }
}

/// A channel's state snapshot: the body stored by `PUT /v1/state/{C}`, and
/// the channel's position when it was stored (it reflects every event up
/// to that id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub position: EventId,
    pub body: Bytes,
}

/// One client on a channel, as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Present {
    pub client: String,
    /// Its streams and sockets on the channel on that node.
    pub connections: u64,
    /// When its first one connected (ms since the epoch).
    pub since_ms: u64,
}

/// Presence reports written at the same time by `put_presences` where
/// the broker sends them one by one.
const PRESENCE_CONCURRENCY: usize = 16;

/// What one node reported of a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePresence {
    pub node: String,
    pub clients: Vec<Present>,
}

/// A node's report of one channel: who is there (empty: nobody), valid
/// for `ttl`, and who came and went since its last report.
#[derive(Debug, Clone)]
pub struct PresenceReport {
    pub node: String,
    pub clients: Vec<Present>,
    pub ttl: Duration,
    pub joined: Vec<String>,
    pub left: Vec<String>,
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

    /// Stores `body` as the channel's snapshot at its current position, in
    /// one step; returns that position.
    fn put_state(&self, channel: &Channel, body: Bytes) -> BoxFuture<'_, Result<EventId, BrokerError>>;

    /// The channel's snapshot, if it has one.
    fn get_state(&self, channel: &Channel) -> BoxFuture<'_, Result<Option<Snapshot>, BrokerError>>;

    /// Stores this node's presence on `channel` (replacing its last
    /// report), drops the reports of nodes that stopped reporting, and
    /// announces who joined and left (with the clients of those nodes) to
    /// every node's subscribers of the channel.
    fn put_presence(
        &self,
        channel: &Channel,
        report: PresenceReport,
    ) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// `put_presence` for many channels, with an answer each in their
    /// order (a refresh of every channel with local subscribers). Brokers
    /// that can send them together override this.
    fn put_presences(
        &self,
        reports: Vec<(Channel, PresenceReport)>,
    ) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        use futures_util::StreamExt;
        Box::pin(async move {
            futures_util::stream::iter(reports)
                .map(|(channel, report)| async move { self.put_presence(&channel, report).await })
                .buffered(PRESENCE_CONCURRENCY)
                .collect()
                .await
        })
    }

    /// Every node's current report of `channel`.
    fn get_presence(&self, channel: &Channel) -> BoxFuture<'_, Result<Vec<NodePresence>, BrokerError>>;

    /// Whether the broker can deliver events right now.
    fn is_connected(&self) -> bool;

    /// Mercure: appends an update (the stored form of
    /// `sse::mercure::Update`) to the shared Mercure log and publishes it,
    /// remembering its Mercure id for resumes; `max_len` bounds the log.
    fn mercure_publish(
        &self,
        payload: Bytes,
        mercure_id: &str,
        max_len: usize,
    ) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let _ = (mercure_id, max_len);
        Box::pin(async move { Ok(self.publish(&Channel::mercure(), payload, None).await?.id) })
    }

    /// Mercure: where a resume after `after` starts in the Mercure log: the
    /// position of the update with that Mercure id, or (`None`, `earliest`)
    /// the position just before the oldest retained update. `Ok(None)`:
    /// the log no longer holds that id.
    fn mercure_find(&self, after: Option<&str>) -> BoxFuture<'_, Result<Option<EventId>, BrokerError>>;

    /// Mercure: the cluster's registry of active subscriptions.
    fn mercure_registry(&self, op: RegistryOp) -> BoxFuture<'_, Result<Vec<Bytes>, BrokerError>> {
        let _ = op;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

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

/// Changes to and reads of the cluster's Mercure subscriptions (the
/// subscriptions API): one entry per subscriber and topic selector, owned
/// by a node; a node that stops renewing its lease loses its entries.
#[derive(Debug, Clone)]
pub enum RegistryOp {
    /// Adds `entries` (`(field, JSON)`) under `node`.
    Add {
        node: String,
        entries: Vec<(String, Bytes)>,
    },
    Remove {
        fields: Vec<String>,
    },
    /// Renews `node`'s lease for `ttl`.
    Renew {
        node: String,
        ttl: Duration,
    },
    /// Every live node's entries (JSON values).
    List,
}

/// The position just before `id` in a log.
pub fn before(id: EventId) -> EventId {
    match (id.ms, id.seq) {
        (0, 0) => EventId::ZERO,
        (ms, 0) => EventId::new(ms - 1, u64::MAX),
        (ms, seq) => EventId::new(ms, seq - 1),
    }
}

/// When a message from the broker was published and read, in µs since
/// the epoch on this node's clock, for the latency metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    pub published_us: u64,
    pub received_us: u64,
}

impl Stamps {
    /// Read now; published at the durable id's time (the same clock), or
    /// now for an ephemeral event, which carries no time.
    pub fn now(id: Option<EventId>) -> Stamps {
        let received_us = now_us();
        Stamps {
            published_us: id.map_or(received_us, |i| i.ms.saturating_mul(1000)),
            received_us,
        }
    }
}

/// Decodes one payload of `channel` from the broker and encodes it once:
/// Mercure updates with their topics, anything else as `encode_incoming`.
pub fn decode_on(channel: &str, payload: Bytes, id: Option<EventId>, metrics: &Metrics) -> Arc<Encoded> {
    decode_stamped(channel, payload, id, Stamps::now(id), metrics)
}

/// `decode_on` for a message read at known times.
pub fn decode_stamped(
    channel: &str,
    payload: Bytes,
    id: Option<EventId>,
    at: Stamps,
    metrics: &Metrics,
) -> Arc<Encoded> {
    let mut enc = if channel == crate::sse::mercure::MERCURE_CHANNEL {
        crate::sse::mercure::encode_update(&payload, id, at.published_us)
    } else {
        let (event, dropped) = parse_payload_lenient(payload);
        if dropped > 0 {
            metrics.envelope_fields_dropped.increment(dropped as u64);
        }
        Encoded::new(&event, id, at.published_us)
    };
    enc.received_us = at.received_us;
    Arc::new(enc)
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
    decode_stamped("", payload, id, Stamps::now(id), metrics)
}

/// A presence notice (`{"j": [clients], "l": [clients]}`) becomes
/// `ssegate.join` / `ssegate.leave` events for the local subscribers of
/// `channel` that asked for them.
pub fn dispatch_presence_notice(hub: &crate::hub::Hub, channel: &str, notice: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(notice) else {
        tracing::debug!(%channel, "a malformed presence notice");
        return;
    };
    for (key, event) in [("j", "ssegate.join"), ("l", "ssegate.leave")] {
        let Some(clients) = v[key].as_array() else {
            continue;
        };
        for client in clients.iter().filter_map(|c| c.as_str()) {
            hub.dispatch_presence(channel, presence_event(event, client, channel));
        }
    }
}

/// `event: ssegate.join` (or leave) with `{"client": .., "channel": ..}`.
pub fn presence_event(event: &str, client: &str, channel: &str) -> Arc<Encoded> {
    let data = serde_json::json!({ "client": client, "channel": channel }).to_string();
    let ev = crate::sse::Event {
        event: Some(event.to_owned()),
        data: Bytes::from(data),
        ..Default::default()
    };
    Arc::new(Encoded::new(&ev, None, now_us()))
}

pub use crate::metrics::now_us;

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
