//! The embedded broker: one node, history in memory, no Redis. The default
//! when no `--redis-url` is given, and fully functional on one node
//! (publish, history, resume), with the same retention rules as Redis.
//!
//! One mutex guards every channel's history and is held while an event is
//! handed to the hub, so that events reach the hub in id order. It is never
//! held across an await.

mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, History, HistoryFacts, IdempotencyKey, NodePresence, Page, PresenceReport, Present,
    Published, Retention, Snapshot, before, decode_on, gap_after, presence_event,
};
use crate::hub::{Hub, Plan, SubCommand};
use crate::metrics::Metrics;
use crate::sse::{Channel, EventId};
use store::Store;

/// The presence reports of one channel: by node, until when and who.
type Reports = HashMap<String, (Instant, Vec<Present>)>;

struct Inner {
    store: Mutex<Store>,
    /// Presence reports by channel and node: one node here, kept for the
    /// same reading as with Redis. Bounded by the channels with a local
    /// subscriber (an empty report removes its entry).
    presence: Mutex<HashMap<Channel, Reports>>,
    hub: Hub,
    metrics: Metrics,
    retention: Retention,
}

pub struct MemoryBroker(Arc<Inner>);

impl MemoryBroker {
    /// `max_bytes` bounds the history of every channel together.
    pub fn start(
        hub: Hub,
        mut control: mpsc::UnboundedReceiver<SubCommand>,
        metrics: Metrics,
        retention: Retention,
        max_bytes: usize,
        cancel: CancellationToken,
    ) -> MemoryBroker {
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(retention, max_bytes)),
            presence: Mutex::default(),
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
                    let mut store = me.store.lock();
                    if let Plan::Tip(t) = me.hub.plan(channel.as_str()) {
                        let tip = store.live(&channel).map(|s| s.last).unwrap_or_default();
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
                    let mut store = me.store.lock();
                    store.expire(Instant::now());
                    me.metrics.history_memory.set(store.bytes() as f64);
                }
            });
        }
        MemoryBroker(inner)
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish(
        &self,
        channel: &Channel,
        payload: Bytes,
        key: Option<&IdempotencyKey>,
    ) -> BoxFuture<'_, Result<Published, BrokerError>> {
        let inner = &self.0;
        let mut store = inner.store.lock();
        let published = store.append(channel, &payload, key);
        inner.metrics.history_memory.set(store.bytes() as f64);
        if !published.replayed {
            inner.metrics.events_in_durable.increment(1);
            inner.hub.dispatch(
                channel.as_str(),
                decode_on(channel.as_str(), payload, Some(published.id), &inner.metrics),
            );
        }
        drop(store);
        Box::pin(std::future::ready(Ok(published)))
    }

    fn history(&self, channel: &Channel, page: Page) -> BoxFuture<'_, Result<History, BrokerError>> {
        let mut store = self.0.store.lock();
        let ttl = self.0.retention.ttl;
        let history = match store.live(channel) {
            None => History {
                trimmed: gap_after(
                    page.after,
                    &HistoryFacts {
                        exists: false,
                        max_deleted: EventId::ZERO,
                        first: None,
                    },
                    ttl,
                ),
                ..History::default()
            },
            Some(s) => {
                let facts = HistoryFacts {
                    exists: true,
                    max_deleted: s.max_deleted,
                    first: s.entries.front().map(|e| e.id),
                };
                let trimmed = gap_after(page.after, &facts, ttl);
                let mut entries = Vec::new();
                if !trimmed || page.lenient {
                    let start = s.entries.partition_point(|e| e.id <= page.after);
                    let mut bytes = 0;
                    for e in s.entries.range(start..) {
                        if page.until.is_some_and(|u| e.id > u) || entries.len() >= page.limit {
                            break;
                        }
                        entries.push(e.clone());
                        bytes += e.payload.len();
                        if bytes >= page.max_bytes {
                            break;
                        }
                    }
                }
                History {
                    entries,
                    trimmed,
                    tip: s.last,
                    more: false,
                }
                .limited_by(&page)
            }
        };
        Box::pin(std::future::ready(Ok(history)))
    }

    fn put_state(&self, channel: &Channel, body: Bytes) -> BoxFuture<'_, Result<EventId, BrokerError>> {
        let mut store = self.0.store.lock();
        let position = store.put_state(channel, body);
        self.0.metrics.history_memory.set(store.bytes() as f64);
        Box::pin(std::future::ready(Ok(position)))
    }

    fn get_state(&self, channel: &Channel) -> BoxFuture<'_, Result<Option<Snapshot>, BrokerError>> {
        let snapshot = self
            .0
            .store
            .lock()
            .live(channel)
            .and_then(|log| log.state.clone());
        Box::pin(std::future::ready(Ok(snapshot)))
    }

    fn put_presence(
        &self,
        channel: &Channel,
        report: PresenceReport,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let inner = &self.0;
        {
            let mut all = inner.presence.lock();
            let nodes = all.entry(channel.clone()).or_default();
            if report.clients.is_empty() {
                nodes.remove(&report.node);
            } else {
                nodes.insert(report.node.clone(), (Instant::now() + report.ttl, report.clients));
            }
            if nodes.is_empty() {
                all.remove(channel);
            }
        }
        for (event, clients) in [("ssegate.join", &report.joined), ("ssegate.leave", &report.left)] {
            for client in clients {
                inner
                    .hub
                    .dispatch_presence(channel.as_str(), presence_event(event, client, channel.as_str()));
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn get_presence(&self, channel: &Channel) -> BoxFuture<'_, Result<Vec<NodePresence>, BrokerError>> {
        let now = Instant::now();
        let reports = self
            .0
            .presence
            .lock()
            .get(channel)
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|(_, (expires, _))| *expires > now)
                    .map(|(node, (_, clients))| NodePresence {
                        node: node.clone(),
                        clients: clients.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(reports)))
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn mercure_find(&self, after: Option<&str>) -> BoxFuture<'_, Result<Option<EventId>, BrokerError>> {
        let mut store = self.0.store.lock();
        let found = match store.live(&Channel::mercure()) {
            None => after.is_none().then_some(EventId::ZERO),
            Some(log) => match after {
                None => Some(log.entries.front().map_or(log.last, |e| before(e.id))),
                // The newest update with that id (a reused id names the last one).
                Some(want) => log.entries.iter().rev().find_map(|e| {
                    crate::sse::mercure::Update::from_payload(&e.payload)
                        .filter(|u| u.id == want)
                        .map(|_| e.id)
                }),
            },
        };
        Box::pin(std::future::ready(Ok(found)))
    }
}
