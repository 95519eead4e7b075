//! The embedded broker's history: one log per channel, with Redis's
//! retention rules (at most `--history-size` events per channel, expiry
//! after `--history-ttl` without a publish), idempotency keys for the
//! channel's history window, and one bound over every channel: past
//! `--history-memory` bytes the oldest events of the whole node go first,
//! so that no number of channels can grow the node without bound.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::broker::{HistoryEntry, IdempotencyKey, Published, Retention, Snapshot, now_us};
use crate::sse::{Channel, EventId};

/// Bytes counted per event and per key beyond their payload (entry,
/// queue slots, map slot).
const ENTRY_OVERHEAD: usize = 96;
/// Bytes counted per channel log (map slot and the log itself).
const LOG_OVERHEAD: usize = 256;

/// One channel's history.
#[derive(Default)]
pub(super) struct Log {
    pub(super) entries: VecDeque<HistoryEntry>,
    pub(super) last: EventId,
    pub(super) max_deleted: EventId,
    pub(super) expires: Option<Instant>,
    /// The channel's snapshot (`PUT /v1/state`), kept and expired with it.
    pub(super) state: Option<Snapshot>,
    keys: HashMap<String, EventId>,
    /// Keys in publish order, for forgetting those older than the history.
    key_order: VecDeque<(EventId, String)>,
    /// Bytes this log counts against the node's bound.
    bytes: usize,
}

impl Log {
    /// Removes the oldest event; returns the bytes freed.
    fn pop_oldest(&mut self) -> usize {
        let Some(gone) = self.entries.pop_front() else {
            return 0;
        };
        self.max_deleted = gone.id;
        let mut freed = gone.payload.len() + ENTRY_OVERHEAD;
        // Keys of events no longer retained are forgotten with them.
        let first = self.entries.front().map(|e| e.id);
        while let Some((id, _)) = self.key_order.front()
            && first.is_none_or(|f| *id < f)
        {
            let (_, key) = self.key_order.pop_front().expect("non-empty");
            self.keys.remove(&key);
            freed += key.len() + ENTRY_OVERHEAD;
        }
        self.bytes -= freed;
        freed
    }
}

pub(super) struct Store {
    logs: HashMap<Channel, Log>,
    retention: Retention,
    max_bytes: usize,
    bytes: usize,
    /// Every retained event in publish order, for the node-wide bound;
    /// entries already removed from their log are skipped when reached.
    order: VecDeque<(Channel, EventId)>,
}

fn next_id(last: EventId) -> EventId {
    let now_ms = now_us() / 1000;
    if now_ms > last.ms {
        EventId::new(now_ms, 0)
    } else {
        EventId::new(last.ms, last.seq + 1)
    }
}

impl Store {
    pub(super) fn new(retention: Retention, max_bytes: usize) -> Store {
        Store {
            logs: HashMap::new(),
            retention,
            max_bytes,
            bytes: 0,
            order: VecDeque::new(),
        }
    }

    /// The channel's log, unless it expired (which removes it, as Redis does).
    pub(super) fn live(&mut self, channel: &Channel) -> Option<&mut Log> {
        let expired = self
            .logs
            .get(channel)
            .is_some_and(|s| s.expires.is_some_and(|e| e <= Instant::now()));
        if expired && let Some(log) = self.logs.remove(channel) {
            self.bytes -= log.bytes;
        }
        self.logs.get_mut(channel)
    }

    /// Removes every expired log.
    pub(super) fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        self.logs.retain(|_, log| {
            let keep = log.expires.is_none_or(|e| e > now);
            if !keep {
                freed += log.bytes;
            }
            keep
        });
        self.bytes -= freed;
        self.compact_order();
    }

    /// Appends an event (once per key); returns what was published.
    pub(super) fn append(
        &mut self,
        channel: &Channel,
        payload: &Bytes,
        key: Option<&IdempotencyKey>,
    ) -> Published {
        let last = self.live(channel).map(|s| s.last).unwrap_or_default();
        let log = self.logs.entry(channel.clone()).or_insert_with(|| {
            self.bytes += LOG_OVERHEAD;
            Log {
                last,
                bytes: LOG_OVERHEAD,
                ..Log::default()
            }
        });
        if let Some(k) = key
            && let Some(&id) = log.keys.get(k.as_str())
        {
            return Published { id, replayed: true };
        }
        let id = next_id(log.last);
        log.last = id;
        log.entries.push_back(HistoryEntry {
            id,
            payload: payload.clone(),
        });
        let mut added = payload.len() + ENTRY_OVERHEAD;
        if let Some(k) = key {
            log.keys.insert(k.as_str().to_owned(), id);
            log.key_order.push_back((id, k.as_str().to_owned()));
            added += k.as_str().len() + ENTRY_OVERHEAD;
        }
        log.bytes += added;
        self.bytes += added;
        while log.entries.len() > self.retention.size {
            self.bytes -= log.pop_oldest();
        }
        if !self.retention.ttl.is_zero() {
            log.expires = Some(Instant::now() + self.retention.ttl);
        }
        self.order.push_back((channel.clone(), id));
        self.enforce_bound();
        Published { id, replayed: false }
    }

    /// Stores `body` as the channel's snapshot at its current position.
    pub(super) fn put_state(&mut self, channel: &Channel, body: Bytes) -> EventId {
        let ttl = self.retention.ttl;
        if self.live(channel).is_none() {
            self.bytes += LOG_OVERHEAD;
            let log = Log {
                bytes: LOG_OVERHEAD,
                ..Log::default()
            };
            self.logs.insert(channel.clone(), log);
        }
        let log = self.logs.get_mut(channel).expect("inserted above");
        let old = log.state.as_ref().map_or(0, |s| s.body.len());
        let new = body.len();
        log.state = Some(Snapshot {
            position: log.last,
            body,
        });
        log.bytes = log.bytes + new - old;
        self.bytes = self.bytes + new - old;
        if !ttl.is_zero() {
            log.expires = Some(Instant::now() + ttl);
        }
        let position = log.last;
        // A snapshot takes its turn in the node's bound like an event (the
        // zero id marks it): a channel with nothing else goes with it.
        self.order.push_back((channel.clone(), EventId::ZERO));
        self.enforce_bound();
        position
    }

    /// Drops the node's oldest events until its history fits the bound.
    fn enforce_bound(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((channel, id)) = self.order.pop_front() else {
                break;
            };
            if id == EventId::ZERO {
                if let Some(log) = self.logs.get(&channel)
                    && log.entries.is_empty()
                {
                    self.bytes -= log.bytes;
                    self.logs.remove(&channel);
                }
                continue;
            }
            if let Some(log) = self.logs.get_mut(&channel)
                && log.entries.front().is_some_and(|e| e.id == id)
            {
                self.bytes -= log.pop_oldest();
                if log.entries.is_empty() {
                    // Gone as an expired Redis key is: a reader that had
                    // seen something of it is reset.
                    self.bytes -= log.bytes;
                    self.logs.remove(&channel);
                }
            }
        }
        if self.order.len() > 2 * self.retained() + 1024 {
            self.compact_order();
        }
    }

    fn retained(&self) -> usize {
        self.logs.values().map(|l| l.entries.len()).sum()
    }

    /// Forgets order entries whose event is gone.
    fn compact_order(&mut self) {
        let logs = &self.logs;
        self.order.retain(|(channel, id)| match logs.get(channel) {
            None => false,
            Some(l) if *id == EventId::ZERO => l.state.is_some() && l.entries.is_empty(),
            Some(l) => l.entries.front().is_some_and(|first| first.id <= *id),
        });
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store(size: usize, max_bytes: usize) -> Store {
        Store::new(
            Retention {
                size,
                ttl: Duration::ZERO,
            },
            max_bytes,
        )
    }

    fn chan(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    #[test]
    fn a_key_publishes_once_within_the_history() {
        let mut s = store(2, 1 << 20);
        let c = chan("c");
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let first = s.append(&c, &Bytes::from("a"), Some(&key));
        let again = s.append(&c, &Bytes::from("a"), Some(&key));
        assert_eq!(
            again,
            Published {
                id: first.id,
                replayed: true
            }
        );
        assert_eq!(s.live(&c).unwrap().entries.len(), 1);
        // Once its event leaves the history, the key is forgotten.
        s.append(&c, &Bytes::from("b"), None);
        s.append(&c, &Bytes::from("c"), None);
        assert!(!s.append(&c, &Bytes::from("a"), Some(&key)).replayed);
    }

    #[test]
    fn snapshots_take_the_channels_position_and_count_in_the_bound() {
        let mut s = store(10, 64 * 1024);
        let c = chan("c");
        assert_eq!(s.put_state(&c, Bytes::from("empty")), EventId::ZERO);
        let id = s.append(&c, &Bytes::from("e"), None).id;
        assert_eq!(s.put_state(&c, Bytes::from("after e")), id);
        for i in 0..1000 {
            s.put_state(&chan(&format!("s{i}")), Bytes::from(vec![b'x'; 1000]));
            assert!(s.bytes() <= 64 * 1024);
        }
        assert!(s.live(&chan("s0")).is_none(), "the oldest snapshot went first");
    }

    #[test]
    fn many_channels_stay_within_the_node_bound() {
        let bound = 100 * (1000 + ENTRY_OVERHEAD + LOG_OVERHEAD);
        let mut s = store(1000, bound);
        let payload = Bytes::from(vec![b'x'; 1000]);
        for i in 0..10_000 {
            s.append(&chan(&format!("c{i}")), &payload, None);
            assert!(s.bytes() <= bound);
        }
        assert_eq!(s.retained(), 100, "the newest events are kept");
        assert!(s.order.len() <= 2 * 100 + 1024);
        assert!(
            s.live(&chan("c0")).is_none(),
            "the oldest channel's events went first"
        );
        assert!(s.live(&chan("c9999")).is_some_and(|l| l.entries.len() == 1));
    }
}
