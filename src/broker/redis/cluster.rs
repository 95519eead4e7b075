//! Sharded pub/sub on Redis Cluster: one pub/sub connection per master,
//! each channel SSUBSCRIBEd at the master that owns its slot (grouped by
//! slot, never a cross-slot command), with classic PUBLISH never involved
//! (it broadcasts to every shard and caps out).
//!
//! The manager owns the slot map and routes the hub's subscription
//! commands to the shard connections. A shard connection that is lost (a
//! master failed) or that loses slots (a slot moved, MOVED) hands its
//! channels back; the manager reads the topology again, with backoff, until
//! their slots have a reachable owner, and subscribes them there; their
//! gaps are then repaired from history like after any reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::backoff::Backoff;
use super::names::slot;
use super::pubsub::{Kind, PubSub, ShardReport, Target};
use crate::broker::BrokerError;
use crate::hub::{Hub, SubCommand};
use crate::sse::Channel;

struct Shard {
    control: mpsc::UnboundedSender<SubCommand>,
    cancel: CancellationToken,
}

pub(super) struct ClusterPubSub {
    inner: Arc<Inner>,
    /// Credentials (and settings) for every node; the address is replaced.
    node: ConnectionInfo,
    hub: Hub,
    control: mpsc::UnboundedReceiver<SubCommand>,
    cancel: CancellationToken,
    /// Slot ranges and their masters, sorted by first slot.
    slots: Vec<(u16, u16, String, u16)>,
    shards: HashMap<(String, u16), Shard>,
    /// Wanted channels and the hub instance that wants each.
    wanted: HashMap<Channel, u64>,
    owner: HashMap<Channel, (String, u16)>,
    /// Wanted channels waiting for a reachable owner.
    homeless: Vec<Channel>,
    reports: (
        mpsc::UnboundedSender<ShardReport>,
        mpsc::UnboundedReceiver<ShardReport>,
    ),
}

impl ClusterPubSub {
    /// Reads the slot map once (a failure fails the start).
    pub(super) async fn start(
        inner: Arc<Inner>,
        node: ConnectionInfo,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        cancel: CancellationToken,
    ) -> Result<ClusterPubSub, BrokerError> {
        let mut me = ClusterPubSub {
            inner,
            node,
            hub,
            control,
            cancel,
            slots: Vec::new(),
            shards: HashMap::new(),
            wanted: HashMap::new(),
            owner: HashMap::new(),
            homeless: Vec::new(),
            reports: mpsc::unbounded_channel(),
        };
        me.refresh().await?;
        me.inner.set_connected(true);
        Ok(me)
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        let mut retry_at: Option<Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    for shard in self.shards.values() {
                        shard.cancel.cancel();
                    }
                    return;
                }
                cmd = self.control.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return,
                },
                Some(report) = self.reports.1.recv() => self.on_report(report),
                _ = retry => {
                    retry_at = None;
                    match self.refresh().await {
                        Ok(()) => {
                            for ch in std::mem::take(&mut self.homeless) {
                                self.route(ch);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "reading the cluster's slot map failed"),
                    }
                }
            }
            self.inner.set_connected(self.homeless.is_empty());
            if self.homeless.is_empty() {
                backoff = Backoff::default();
            } else if retry_at.is_none() {
                retry_at = Some(Instant::now() + backoff.next_delay());
            }
        }
    }

    fn on_command(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Want { channel, instance } => {
                self.wanted.insert(channel.clone(), instance);
                match self.owner.get(&channel).and_then(|o| self.shards.get(o)) {
                    // Already routed: the shard settles the new instance.
                    Some(shard) => {
                        let _ = shard.control.send(SubCommand::Want { channel, instance });
                    }
                    None => self.route(channel),
                }
            }
            SubCommand::Unwant { channel, instance } => {
                if self.wanted.get(&channel) != Some(&instance) {
                    return;
                }
                self.wanted.remove(&channel);
                self.homeless.retain(|c| c != &channel);
                if let Some(shard) = self.owner.remove(&channel).and_then(|o| self.shards.get(&o)) {
                    let _ = shard.control.send(SubCommand::Unwant { channel, instance });
                }
            }
        }
    }

    fn on_report(&mut self, report: ShardReport) {
        let channels = match report {
            ShardReport::Lost { addr, channels } => {
                tracing::warn!(shard = %addr, channels = channels.len(), "lost a cluster shard's pub/sub connection");
                self.shards.retain(|(h, p), _| format!("{h}:{p}") != addr);
                self.owner.retain(|_, (h, p)| format!("{h}:{p}") != addr);
                channels
            }
            ShardReport::Moved { channels } => channels,
        };
        for (ch, instance) in channels {
            self.owner.remove(&ch);
            if self.wanted.get(&ch) == Some(&instance) && !self.homeless.contains(&ch) {
                self.homeless.push(ch);
            }
        }
    }

    /// Sends `channel` to the shard that owns its slot, starting that
    /// shard's connection if needed.
    fn route(&mut self, channel: Channel) {
        let Some(&instance) = self.wanted.get(&channel) else {
            return;
        };
        let s = slot(channel.as_str());
        let i = self.slots.partition_point(|(start, ..)| *start <= s);
        let owner = i
            .checked_sub(1)
            .map(|i| &self.slots[i])
            .filter(|(_, end, ..)| s <= *end);
        let Some((_, _, host, port)) = owner else {
            self.homeless.push(channel);
            return;
        };
        let key = (host.clone(), *port);
        let shard = self.shards.entry(key.clone()).or_insert_with(|| {
            // The seeds' settings (credentials, TLS) at the shard's address.
            let addr = match self.node.addr() {
                ConnectionAddr::TcpTls {
                    insecure, tls_params, ..
                } => ConnectionAddr::TcpTls {
                    host: key.0.clone(),
                    port: key.1,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(key.0.clone(), key.1),
            };
            let info = Box::new(self.node.clone().set_addr(addr));
            let (tx, rx) = mpsc::unbounded_channel();
            let cancel = self.cancel.child_token();
            let target = Target::Shard {
                info,
                report: self.reports.0.clone(),
            };
            let ps = PubSub::new(
                Kind::Sharded,
                target,
                self.inner.clone(),
                self.hub.clone(),
                rx,
                cancel.clone(),
            );
            ps.spawn();
            Shard { control: tx, cancel }
        });
        let _ = shard.control.send(SubCommand::Want {
            channel: channel.clone(),
            instance,
        });
        self.owner.insert(channel, key);
    }

    /// Reads `CLUSTER SLOTS`: `[[start, end, [ip, port, id], replicas...]...]`.
    async fn refresh(&mut self) -> Result<(), BrokerError> {
        let v: Value = self
            .inner
            .commands
            .cluster_any(&redis::cmd("CLUSTER").arg("SLOTS").clone())
            .await?;
        let Value::Array(ranges) = v else {
            return Err(BrokerError::Protocol("CLUSTER SLOTS: not an array".into()));
        };
        let mut slots = Vec::with_capacity(ranges.len());
        for r in ranges {
            let Value::Array(r) = r else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
                _ => continue,
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            slots.push((*start as u16, *end as u16, host, *port as u16));
        }
        if slots.is_empty() {
            return Err(BrokerError::Unavailable("the cluster serves no slot".into()));
        }
        slots.sort();
        self.slots = slots;
        Ok(())
    }
}
