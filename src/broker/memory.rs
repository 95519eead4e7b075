//! The embedded broker: one node, history in memory, no Redis. The default
//! when no `--redis-url` is given, and fully functional on one node
//! (publish, history, resume), with the same retention rules as Redis.
//!
//! One mutex guards every channel's history and is held while an event is
//! handed to the hub, so that events reach the hub in id order. It is never
//! held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, History, HistoryEntry, HistoryFacts, Retention, encode_incoming, gap_after, now_us,
};
use crate::hub::{Hub, Plan, SubCommand};
use crate::metrics::Metrics;
use crate::sse::{Channel, EventId};

/// One channel's history.
struct Log {
    entries: VecDeque<HistoryEntry>,
    last: EventId,
    max_deleted: EventId,
    expires: Option<Instant>,
}

struct Inner {
    logs: Mutex<HashMap<Channel, Log>>,
    hub: Hub,
    metrics: Metrics,
    retention: Retention,
}

pub struct MemoryBroker(Arc<Inner>);

impl MemoryBroker {
    pub fn start(
        hub: Hub,
        mut control: mpsc::UnboundedReceiver<SubCommand>,
        metrics: Metrics,
        retention: Retention,
        cancel: CancellationToken,
    ) -> MemoryBroker {
        let inner = Arc::new(Inner {
            logs: Mutex::default(),
            hub,
            metrics,
            retention,
        });
        inner.metrics.broker_up.set(1.0);
        let me = inner.clone();
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                let cmd = tokio::select! {
                    _ = stop.cancelled() => return,
                    cmd = control.recv() => match cmd { Some(c) => c, None => return },
                };
                if let SubCommand::Want { channel, .. } = cmd {
                    // Read the tip and report under the lock, so no publish
                    // slips between the two.
                    let mut logs = me.logs.lock();
                    if let Plan::Tip(t) = me.hub.plan(channel.as_str()) {
                        let tip = live(&mut logs, &channel).map(|s| s.last).unwrap_or_default();
                        me.hub.channel_ready(channel.as_str(), t, tip);
                    }
                }
            }
        });
        if !retention.ttl.is_zero() {
            let me = Arc::downgrade(&inner);
            let every = (retention.ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let Some(me) = me.upgrade() else { return };
                    let now = Instant::now();
                    me.logs.lock().retain(|_, s| s.expires.is_none_or(|e| e > now));
                }
            });
        }
        MemoryBroker(inner)
    }
}

/// The channel's log, unless it expired (which removes it, as Redis does).
fn live<'a>(logs: &'a mut HashMap<Channel, Log>, channel: &Channel) -> Option<&'a mut Log> {
    let expired = logs
        .get(channel)
        .is_some_and(|s| s.expires.is_some_and(|e| e <= Instant::now()));
    if expired {
        logs.remove(channel);
    }
    logs.get_mut(channel)
}

fn next_id(last: EventId) -> EventId {
    let now_ms = now_us() / 1000;
    if now_ms > last.ms {
        EventId::new(now_ms, 0)
    } else {
        EventId::new(last.ms, last.seq + 1)
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, channel: &Channel, payload: Bytes) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let inner = &self.0;
        let mut logs = inner.logs.lock();
        let last = live(&mut logs, channel).map(|s| s.last).unwrap_or_default();
        let log = logs.entry(channel.clone()).or_insert_with(|| Log {
            entries: VecDeque::new(),
            last,
            max_deleted: EventId::ZERO,
            expires: None,
        });
        let id = next_id(log.last);
        log.last = id;
        log.entries.push_back(HistoryEntry {
            id,
            payload: payload.clone(),
        });
        while log.entries.len() > inner.retention.size {
            let gone = log.entries.pop_front().expect("non-empty");
            log.max_deleted = gone.id;
        }
        if !inner.retention.ttl.is_zero() {
            log.expires = Some(Instant::now() + inner.retention.ttl);
        }
        inner.metrics.events_in_durable.increment(1);
        inner.hub.dispatch(
            channel.as_str(),
            encode_incoming(payload, Some(id), &inner.metrics),
        );
        drop(logs);
        Box::pin(std::future::ready(Ok(id)))
    }

    fn history(
        &self,
        channel: &Channel,
        after: EventId,
        until: Option<EventId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let mut logs = self.0.logs.lock();
        let history = match live(&mut logs, channel) {
            None => History {
                trimmed: gap_after(
                    after,
                    &HistoryFacts {
                        exists: false,
                        max_deleted: EventId::ZERO,
                        first: None,
                    },
                    self.0.retention.ttl,
                ),
                ..History::default()
            },
            Some(s) => {
                let facts = HistoryFacts {
                    exists: true,
                    max_deleted: s.max_deleted,
                    first: s.entries.front().map(|e| e.id),
                };
                let trimmed = gap_after(after, &facts, self.0.retention.ttl);
                let entries = if trimmed {
                    Vec::new()
                } else {
                    let start = s.entries.partition_point(|e| e.id <= after);
                    s.entries
                        .range(start..)
                        .take_while(|e| until.is_none_or(|u| e.id <= u))
                        .take(limit)
                        .cloned()
                        .collect()
                };
                History {
                    entries,
                    trimmed,
                    tip: s.last,
                }
            }
        };
        Box::pin(std::future::ready(Ok(history)))
    }

    fn is_connected(&self) -> bool {
        true
    }
}
