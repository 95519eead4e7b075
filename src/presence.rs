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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{PresenceReport, Present, SharedBroker};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::sse::Channel;

/// Changes are reported within this; a refresh goes out a slice per tick.
const FLUSH: Duration = Duration::from_millis(250);
/// Channels whose reports are built and written together (one pipeline
/// to Redis). Redis runs a pipeline's calls back to back while other
/// clients' commands wait: 64 reports hold it for about a millisecond.
const BATCH: usize = 64;

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

/// A channel's clients on this node as last reported: (client, its
/// connections, since ms), sorted by client. Kept as one boxed slice that
/// shares the subscribers' names, since a node keeps one per channel with
/// local subscribers (a per-channel map cost over a kilobyte each).
type View = Box<[(Arc<str>, u64, u64)]>;

/// Whether `view` lists `client`.
fn lists(view: &[(Arc<str>, u64, u64)], client: &str) -> bool {
    view.binary_search_by(|(c, _, _)| (**c).cmp(client)).is_ok()
}

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
        self.hub.local_presence(channel.as_str()).into_boxed_slice()
    }

    /// Reports `channels`: those that changed, or all on a refresh.
    async fn report(&mut self, channels: Vec<Channel>, refresh: bool) {
        // A batch at a time: a refresh of many channels holds the reports
        // of one batch in memory, not of all of them.
        for batch in channels.chunks(BATCH) {
            self.report_batch(batch, refresh).await;
        }
    }

    async fn report_batch(&mut self, channels: &[Channel], refresh: bool) {
        let mut reports = Vec::new();
        let mut views = Vec::new();
        for channel in channels.iter().cloned() {
            let now = self.local_view(&channel);
            let before = self.reported.get(&channel);
            let before_view: &[(Arc<str>, u64, u64)] = before.map_or(&[], |v| v);
            if !refresh && before_view == &*now {
                continue;
            }
            if before.is_none() && now.is_empty() {
                continue;
            }
            let joined = now
                .iter()
                .filter(|(c, _, _)| !lists(before_view, c))
                .map(|(c, _, _)| c.to_string())
                .collect();
            let left = before_view
                .iter()
                .filter(|(c, _, _)| !lists(&now, c))
                .map(|(c, _, _)| c.to_string())
                .collect();
            let clients = now
                .iter()
                .map(|(client, connections, since_ms)| Present {
                    client: client.to_string(),
                    connections: *connections,
                    since_ms: *since_ms,
                })
                .collect();
            let report = PresenceReport {
                node: self.node.clone(),
                clients,
                ttl: self.ttl,
                joined,
                left,
            };
            reports.push((channel, report));
            views.push(now);
        }
        if reports.is_empty() {
            return;
        }
        let channels: Vec<Channel> = reports.iter().map(|(c, _)| c.clone()).collect();
        let results = self.broker.put_presences(reports).await;
        for ((channel, view), result) in channels.into_iter().zip(views).zip(results) {
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

    /// Every channel to refresh in a round, sorted by name in reverse (the
    /// round is taken from its end), so that a channel keeps its place in
    /// the round from one round to the next.
    fn refresh_round(&self) -> Vec<Channel> {
        let mut all: HashSet<Channel> = self.reported.keys().cloned().collect();
        all.extend(self.hub.channel_names());
        let mut round: Vec<Channel> = all.into_iter().collect();
        round.sort_unstable_by(|a, b| b.as_str().cmp(a.as_str()));
        round
    }

    /// Reports until `cancel`, then says goodbye (empty reports) for every
    /// channel it reported.
    ///
    /// Every channel is refreshed once per third of the TTL, the round
    /// spread over that third a slice per tick rather than sent at once:
    /// Redis runs the reports back to back, and a node's whole round (1,500
    /// channels, 20 ms of Redis time) held up every publish behind it. A
    /// channel keeps its place in the round (the round is sorted), so its
    /// reports stay about a round apart; channels that come or go move it
    /// by less than a round, and two rounds are two thirds of the TTL.
    pub async fn run(mut self, cancel: CancellationToken) {
        let refresh_every = (self.ttl / 3).max(Duration::from_millis(500));
        let ticks_per_round = (refresh_every.as_millis() / FLUSH.as_millis()).max(1) as usize;
        let mut flush = tokio::time::interval(FLUSH);
        // The channels of the round not refreshed yet, and how many go per tick.
        let mut due: Vec<Channel> = Vec::new();
        let mut per_tick = 0;
        for tick in 1usize.. {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = flush.tick() => {}
            }
            let changed = self.hub.take_presence_changes();
            if !changed.is_empty() {
                self.report(changed, false).await;
            }
            if tick % ticks_per_round == 0 {
                due = self.refresh_round();
                per_tick = due.len().div_ceil(ticks_per_round);
            }
            if !due.is_empty() {
                let slice = due.split_off(due.len().saturating_sub(per_tick));
                self.report(slice, true).await;
            }
        }
        let goodbye: Vec<Channel> = self.reported.keys().cloned().collect();
        for channel in goodbye {
            let left = self
                .reported
                .remove(&channel)
                .map(|v| v.iter().map(|(c, _, _)| c.to_string()).collect())
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
