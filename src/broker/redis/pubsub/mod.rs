//! The pub/sub task of the Redis broker: it keeps one connection
//! (`conn`) in line with what the hub wants (`registry`), feeds every
//! message to the hub, and settles confirmed channels in the background
//! (`settle`: tips for new channels, gap repair after a loss).
//!
//! Standalone and Sentinel: one connection per node, which reconnects by
//! itself with capped, jittered backoff (resolving the master through the
//! Sentinels each time). Cluster: one connection per shard, which on loss
//! or slot moves hands its channels back to the cluster manager.

mod conn;
mod registry;
mod settle;

pub(crate) use conn::ConnError;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::ConnectionInfo;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::backoff::Backoff;
use super::names::split_durable;
use super::resp::Frame;
use crate::broker::{Stamps, decode_stamped};
use crate::hub::{Hub, SubCommand};
use crate::metrics::{Stage, now_us};
use crate::sse::Channel;
use conn::{Conn, addr_of};
use registry::{Op, Registry};

/// How often the connection is pinged: a Redis that stops answering is
/// noticed within `--redis-timeout` plus this.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A durable id may be this far ahead of Redis's clock (as seen from here)
/// before it counts as forged: ids are Redis's time at the append.
const FUTURE_SLACK_MS: i64 = 60_000;

/// Classic pub/sub (standalone, Sentinel) or sharded pub/sub (Cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Classic,
    Sharded,
}

impl Kind {
    fn commands(self) -> (&'static str, &'static str) {
        match self {
            Kind::Classic => ("SUBSCRIBE", "UNSUBSCRIBE"),
            Kind::Sharded => ("SSUBSCRIBE", "SUNSUBSCRIBE"),
        }
    }

    fn pushes(self) -> (&'static [u8], &'static [u8], &'static [u8]) {
        match self {
            Kind::Classic => (b"message", b"subscribe", b"unsubscribe"),
            Kind::Sharded => (b"smessage", b"ssubscribe", b"sunsubscribe"),
        }
    }
}

type Resolve = Box<dyn Fn() -> BoxFuture<'static, Result<ConnectionInfo, ConnError>> + Send + Sync>;

/// Where a connection goes, and what happens when it is lost.
pub(super) enum Target {
    /// Resolved at every (re)connect; the connection reconnects by itself.
    /// `switched` forces a reconnect (a Sentinel announced a new master).
    Resolve {
        resolve: Resolve,
        switched: Option<Arc<Notify>>,
    },
    /// One cluster shard: on loss the task ends and reports.
    Shard {
        info: Box<ConnectionInfo>,
        report: mpsc::UnboundedSender<ShardReport>,
    },
}

/// What a shard connection hands back to the cluster manager: wanted
/// channels (with their hub instance) that it no longer serves.
#[derive(Debug)]
pub(super) enum ShardReport {
    /// The connection is gone; the task has ended.
    Lost {
        addr: String,
        channels: Vec<(Channel, u64)>,
    },
    /// These slots moved (MOVED, or the server unsubscribed them).
    Moved { channels: Vec<(Channel, u64)> },
}

enum Ended {
    Cancelled,
    Lost(ConnError),
    /// The Sentinels announced a new master.
    Switched,
    NoPong(Duration),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Cancelled => f.write_str("stopping"),
            Ended::Lost(e) => e.fmt(f),
            Ended::Switched => f.write_str("the Sentinels announced a new master"),
            Ended::NoPong(t) => write!(f, "no PONG within {t:?}"),
        }
    }
}

pub(super) struct PubSub {
    kind: Kind,
    target: Target,
    inner: Arc<Inner>,
    hub: Hub,
    control: mpsc::UnboundedReceiver<SubCommand>,
    cancel: CancellationToken,
    registry: Registry,
}

impl PubSub {
    pub(super) fn new(
        kind: Kind,
        target: Target,
        inner: Arc<Inner>,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        cancel: CancellationToken,
    ) -> PubSub {
        PubSub {
            kind,
            target,
            inner,
            hub,
            control,
            cancel,
            registry: Registry::new(kind),
        }
    }

    async fn open(&self) -> Result<Conn, ConnError> {
        match &self.target {
            Target::Resolve { resolve, .. } => Conn::open(&resolve().await?).await,
            Target::Shard { info, .. } => Conn::open(info).await,
        }
    }

    /// Connects once, so that a broken configuration fails the start, then
    /// runs in the background.
    pub(super) async fn start(self) -> Result<(), ConnError> {
        let first = self.open().await?;
        tokio::spawn(self.run(Some(first)));
        Ok(())
    }

    /// Runs in the background, connecting there (a cluster shard).
    pub(super) fn spawn(self) {
        tokio::spawn(self.run(None));
    }

    fn is_shard(&self) -> bool {
        matches!(self.target, Target::Shard { .. })
    }

    async fn run(mut self, first: Option<Conn>) {
        let mut conn = match first {
            Some(c) => Some(c),
            None => self.open_or_report().await,
        };
        if conn.is_none() && self.is_shard() {
            return;
        }
        let mut backoff = Backoff::default();
        loop {
            if let Some(c) = conn.take() {
                backoff = Backoff::default();
                match self.serve(c).await {
                    Ended::Cancelled => return,
                    why => {
                        tracing::warn!(reason = %why, "lost a Redis pub/sub connection");
                        self.lost();
                        if self.is_shard() {
                            self.report_lost();
                            return;
                        }
                    }
                }
            }
            let delay = backoff.next_delay();
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = &mut sleep => break,
                    cmd = self.control.recv() => match cmd {
                        Some(cmd) => self.registry.on_command(cmd),
                        None => return,
                    },
                }
            }
            match self.open().await {
                Ok(c) => {
                    tracing::info!("reconnected to Redis pub/sub");
                    self.inner.metrics.redis_reconnects.increment(1);
                    conn = Some(c);
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "Redis pub/sub reconnect failed"),
            }
        }
    }

    /// A shard connection that cannot connect hands everything back.
    async fn open_or_report(&mut self) -> Option<Conn> {
        match self.open().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "Redis pub/sub connection failed");
                if self.is_shard() {
                    // Take the commands already routed here along.
                    while let Ok(cmd) = self.control.try_recv() {
                        self.registry.on_command(cmd);
                    }
                    self.report_lost();
                }
                None
            }
        }
    }

    fn report_lost(&mut self) {
        if let Target::Shard { info, report } = &self.target {
            let _ = report.send(ShardReport::Lost {
                addr: addr_of(info),
                channels: self.registry.drain_wanted(),
            });
        }
    }

    fn lost(&mut self) {
        if !self.is_shard() {
            self.inner.set_connected(false);
        }
        let wanted = self.registry.lost();
        self.hub.channels_lost(wanted.iter());
    }

    async fn serve(&mut self, mut conn: Conn) -> Ended {
        if !self.is_shard() {
            self.inner.set_connected(true);
        }
        // Resubscribe everything wanted (nothing on a first connection).
        self.registry.connected();
        self.inner
            .clock_offset_us
            .store(conn.clock_offset_us, std::sync::atomic::Ordering::Relaxed);
        let timeout = self.inner.timeout;
        let every = PING_EVERY.min(timeout / 2);
        let switched = match &self.target {
            Target::Resolve {
                switched: Some(n), ..
            } => Some(n.clone()),
            _ => None,
        };
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // When the oldest unanswered PING was sent.
        let mut ping_sent: Option<tokio::time::Instant> = None;
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Ended::Lost(e);
            }
            self.spawn_settle();
            self.report_moved();
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                _ = async { match &switched { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                    return Ended::Switched;
                }
                r = conn.read_more() => {
                    if let Err(e) = r {
                        return Ended::Lost(e);
                    }
                    loop {
                        match conn.next_frame() {
                            Ok(Some(frame)) => {
                                if self.on_frame(frame) {
                                    ping_sent = None;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return Ended::Lost(e),
                        }
                    }
                    // Every read can wake thousands of streams: let them
                    // write before reading more, rather than when the
                    // runtime's budget runs out (tail latency).
                    tokio::task::yield_now().await;
                },
                cmd = self.control.recv() => match cmd {
                    None => return Ended::Cancelled,
                    Some(cmd) => {
                        self.registry.on_command(cmd);
                        while let Ok(cmd) = self.control.try_recv() {
                            self.registry.on_command(cmd);
                        }
                    }
                },
                _ = ping.tick() => match ping_sent {
                    Some(at) if at.elapsed() >= timeout => return Ended::NoPong(timeout),
                    Some(_) => {}
                    None => {
                        ping_sent = Some(tokio::time::Instant::now());
                        if let Err(e) = conn.write_all(b"*1\r\n$4\r\nPING\r\n").await {
                            return Ended::Lost(e);
                        }
                    }
                }
            }
        }
    }

    async fn flush(&mut self, conn: &mut Conn) -> Result<(), ConnError> {
        let (bytes, count) = self.registry.take_commands(&self.inner.names);
        if count == 0 {
            return Ok(());
        }
        self.inner
            .metrics
            .redis_subscribe_commands
            .increment(count as u64);
        conn.write_all(&bytes).await
    }

    /// Handles one frame; true if it was a PONG.
    fn on_frame(&mut self, frame: Frame) -> bool {
        let parts = match frame {
            Frame::Array(parts) => parts,
            Frame::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => return true,
            Frame::Error(e) => {
                self.registry.on_error(&String::from_utf8_lossy(&e));
                return false;
            }
            other => {
                tracing::debug!(?other, "unexpected frame on a pub/sub connection");
                return false;
            }
        };
        let (message, subscribed, unsubscribed) = self.kind.pushes();
        let kind = parts.first().and_then(Frame::as_bytes).map(|b| b.as_ref());
        match (kind, parts.get(1).and_then(Frame::as_bytes), parts.get(2)) {
            (Some(k), Some(chan), Some(Frame::Bulk(payload))) if k == message => {
                self.on_message(chan, payload.clone())
            }
            (Some(k), Some(chan), _) if k == subscribed => self.on_confirm(chan, Op::Sub),
            (Some(k), Some(chan), _) if k == unsubscribed => self.on_confirm(chan, Op::Unsub),
            (Some(b"pong"), ..) => return true,
            _ => tracing::debug!(?parts, "unexpected push on a pub/sub connection"),
        }
        false
    }

    fn on_message(&self, redis_channel: &[u8], payload: Bytes) {
        let Some(name) = self.inner.names.parse_channel(redis_channel) else {
            return;
        };
        if let Some(notice) = payload.strip_prefix(b"\0p\0") {
            crate::broker::dispatch_presence_notice(&self.hub, name, notice);
            return;
        }
        let (id, payload) = split_durable(payload);
        let m = &self.inner.metrics;
        let mut at = Stamps::now(None);
        match id {
            Some(id) if self.forged(id) => {
                m.events_dropped_future_id.increment(1);
                tracing::warn!(channel = %name, %id, "dropped a durable message whose id is ahead of Redis's clock: not made by ssegate_publish");
                return;
            }
            Some(id) => {
                m.events_in_durable.increment(1);
                at.published_us = published_here_us(id, self.clock_offset_us());
                m.record_stage_us(Stage::Receive, at.received_us.saturating_sub(at.published_us), 1);
            }
            None => m.events_in_ephemeral.increment(1),
        }
        self.hub.dispatch(name, decode_stamped(name, payload, id, at, m));
    }

    /// Redis's clock minus this node's, in µs.
    fn clock_offset_us(&self) -> i64 {
        self.inner
            .clock_offset_us
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A durable id far ahead of Redis's clock: published by hand, not by
    /// the function (which takes Redis's time). Delivered, it would make the
    /// channel drop every real event as a duplicate.
    fn forged(&self, id: crate::sse::EventId) -> bool {
        let redis_now_ms = (now_us() as i64 + self.clock_offset_us()) / 1000;
        i64::try_from(id.ms).map_or(true, |ms| ms > redis_now_ms + FUTURE_SLACK_MS)
    }

    fn on_confirm(&mut self, redis_channel: &[u8], op: Op) {
        let Some(name) = self.inner.names.parse_channel(redis_channel) else {
            return;
        };
        if let Some(moved) = self.registry.on_confirm(name, op) {
            tracing::info!(channel = %name, "Redis moved a channel's slot; resubscribing at its new owner");
            self.hub.channels_lost([&moved]);
        }
    }

    fn report_moved(&mut self) {
        let channels = self.registry.take_moved();
        if channels.is_empty() {
            return;
        }
        match &self.target {
            Target::Shard { report, .. } => {
                let _ = report.send(ShardReport::Moved { channels });
            }
            Target::Resolve { .. } => {
                // Not expected outside a cluster: subscribe again here.
                for (channel, instance) in channels {
                    self.registry.on_command(SubCommand::Want { channel, instance });
                }
            }
        }
    }

    /// Settles confirmed channels in the background.
    fn spawn_settle(&mut self) {
        let channels = self.registry.take_settle();
        if channels.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        let hub = self.hub.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = settle::settle(inner, hub, channels) => {}
            }
        });
    }
}

/// A durable id's publish time on this node's clock, in µs: the id is
/// Redis's time floored to the millisecond, so its midpoint is the best
/// estimate, less Redis's lead on this clock.
fn published_here_us(id: crate::sse::EventId, clock_offset_us: i64) -> u64 {
    let redis_us = id.ms.saturating_mul(1000).saturating_add(500);
    i64::try_from(redis_us).map_or(u64::MAX, |us| us.saturating_sub(clock_offset_us).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::published_here_us;
    use crate::sse::EventId;

    #[test]
    fn a_durable_ids_time_is_moved_onto_this_nodes_clock() {
        let id = EventId::new(1_000, 7);
        assert_eq!(
            published_here_us(id, 0),
            1_000_500,
            "the middle of its millisecond"
        );
        // Redis 50 ms ahead: the event was published 50 ms earlier here.
        assert_eq!(published_here_us(id, 50_000), 950_500);
        // Redis behind: later here.
        assert_eq!(published_here_us(id, -2_000), 1_002_500);
        assert_eq!(published_here_us(id, i64::MAX), 0, "never before the epoch");
    }
}
