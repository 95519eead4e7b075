//! Presence: who is on each channel, across the nodes. The hub already
//! knows every local subscriber of every channel; this task turns that into
//! one report per channel and node in the broker (Redis: one hash per
//! channel, a field per node), refreshed on a timer and sent at once when
//! someone comes or goes. Nothing is written per event: the cost follows
//! the number of channels with local subscribers and how often they change.
//!
//! A report is valid for `--presence-ttl`; a node that dies without a
//! goodbye drops out of the counts when its reports expire, and the next
//! report of another node on that channel announces its clients' leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::broker::{PresenceReport, Present, SharedBroker};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sse::Channel;

/// Changes are reported within this.
const FLUSH: Duration = Duration::from_millis(250);
/// Reports written at the same time.
const CONCURRENCY: usize = 16;

/// This node's name in presence: `--node-id`, else the host name and a
/// random suffix (several nodes may share a host).
pub fn node_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

type View = BTreeMap<String, Present>;

pub struct Presence {
    hub: Hub,
    broker: SharedBroker,
    node: String,
    ttl: Duration,
    metrics: Metrics,
    /// What was last reported of each channel.
    reported: HashMap<Channel, View>,
}

impl Presence {
    pub fn new(hub: Hub, broker: SharedBroker, node: String, ttl: Duration, metrics: Metrics) -> Presence {
        Presence {
            hub,
            broker,
            node,
            ttl,
            metrics,
            reported: HashMap::new(),
        }
    }

    fn local_view(&self, channel: &Channel) -> View {
        self.hub
            .local_presence(channel.as_str())
            .into_iter()
            .map(|(client, connections, since_ms)| {
                let client = client.to_string();
                let present = Present {
                    client: client.clone(),
                    connections,
                    since_ms,
                };
                (client, present)
            })
            .collect()
    }

    /// Reports `channels`: those that changed, or all on a refresh.
    async fn report(&mut self, channels: Vec<Channel>, refresh: bool) {
        let mut reports = Vec::new();
        for channel in channels {
            let now = self.local_view(&channel);
            let before = self.reported.get(&channel);
            let empty = View::new();
            let before_view = before.unwrap_or(&empty);
            if !refresh && before_view == &now {
                continue;
            }
            if before.is_none() && now.is_empty() {
                continue;
            }
            let joined = now
                .keys()
                .filter(|c| !before_view.contains_key(*c))
                .cloned()
                .collect();
            let left = before_view
                .keys()
                .filter(|c| !now.contains_key(*c))
                .cloned()
                .collect();
            let report = PresenceReport {
                node: self.node.clone(),
                clients: now.values().cloned().collect(),
                ttl: self.ttl,
                joined,
                left,
            };
            reports.push((channel, now, report));
        }
        let broker = &self.broker;
        let results: Vec<_> = futures_util::stream::iter(reports)
            .map(|(channel, view, report)| async move {
                let r = broker.put_presence(&channel, report).await;
                (channel, view, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (channel, view, result) in results {
            match result {
                Ok(()) => {
                    self.metrics.presence_reports.increment(1);
                    if view.is_empty() {
                        self.reported.remove(&channel);
                    } else {
                        self.reported.insert(channel, view);
                    }
                }
                // Tried again at the next refresh, or the next change.
                Err(e) => tracing::warn!(error = %e, %channel, "a presence report failed"),
            }
        }
    }

    /// Reports until `cancel`, then says goodbye (empty reports) for every
    /// channel it reported.
    pub async fn run(mut self, cancel: CancellationToken) {
        let refresh_every = (self.ttl / 3).max(Duration::from_millis(500));
        let mut flush = tokio::time::interval(FLUSH);
        let mut refresh =
            tokio::time::interval_at(tokio::time::Instant::now() + refresh_every, refresh_every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = flush.tick() => {
                    let changed = self.hub.take_presence_changes();
                    if !changed.is_empty() {
                        self.report(changed, false).await;
                    }
                }
                _ = refresh.tick() => {
                    let mut all: HashSet<Channel> = self.reported.keys().cloned().collect();
                    all.extend(self.hub.channel_names());
                    self.report(all.into_iter().collect(), true).await;
                }
            }
        }
        let goodbye: Vec<Channel> = self.reported.keys().cloned().collect();
        for channel in goodbye {
            let left = self
                .reported
                .remove(&channel)
                .map(|v| v.into_keys().collect())
                .unwrap_or_default();
            let report = PresenceReport {
                node: self.node.clone(),
                clients: Vec::new(),
                ttl: self.ttl,
                joined: Vec::new(),
                left,
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), self.broker.put_presence(&channel, report))
                .await;
        }
    }
}
