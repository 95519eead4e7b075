//! A pub/sub connection to Redis, and the subscription manager that keeps it
//! in line with what the hub wants.
//!
//! - Batching: subscription commands are drained in bulk and sent as one
//!   SUBSCRIBE/UNSUBSCRIBE per run of up to `BATCH` channels, in the order
//!   they were asked for (sharded: one SSUBSCRIBE per slot, since a
//!   sharded command may not cross slots).
//! - Every confirmation of a wanted channel is settled through
//!   `Hub::plan`: a new channel gets its tip read and goes live; a channel
//!   that was live before a connection loss has its gap repaired from
//!   history (hard part 2), with bounded concurrency.
//! - Standalone and Sentinel: one connection per node, which reconnects by
//!   itself with capped, jittered backoff (resolving the master through the
//!   Sentinels each time). Cluster: one connection per shard, which on loss
//!   or slot moves hands its channels back to the cluster manager.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::resp::{self, Frame};
use crate::broker::encode_incoming;
use crate::hub::{Hub, Plan, RepairStep, SubCommand, Ticket};
use crate::sse::{Channel, StreamId};

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 500;
/// Channels repaired at the same time after a reconnect.
const REPAIR_CONCURRENCY: usize = 16;
/// Events per history read during repair.
const REPAIR_PAGE: usize = 500;
const PING_EVERY: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
}

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

/// Where a connection goes, and what happens when it is lost.
pub(super) enum Target {
    /// Resolved at every (re)connect; the connection reconnects by itself.
    /// `switched` forces a reconnect (a Sentinel announced a new master).
    Resolve {
        resolve: Box<dyn Fn() -> BoxFuture<'static, Result<ConnectionInfo, String>> + Send + Sync>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Sub,
    Unsub,
}

/// The manager's view of one channel on the current connection.
#[derive(Default)]
struct ChanState {
    /// The hub instance that wants it, if any.
    want: Option<u64>,
    last_sent: Option<Op>,
    /// Commands sent and not yet confirmed.
    in_flight: u32,
}

/// A command sent and not yet fully answered.
struct Sent {
    op: Op,
    channels: Vec<Channel>,
    /// Confirmations still expected (one per channel).
    remaining: usize,
}

pub(super) struct PubSub {
    kind: Kind,
    target: Target,
    inner: Arc<Inner>,
    hub: Hub,
    control: mpsc::UnboundedReceiver<SubCommand>,
    cancel: CancellationToken,
    connected: bool,
    chans: HashMap<Channel, ChanState>,
    /// Commands to send, in order.
    ops: Vec<(Op, Channel)>,
    /// Commands sent, in order: Redis answers in order.
    sent: VecDeque<Sent>,
    /// Confirmed channels to settle through `Hub::plan`.
    settle: Vec<Channel>,
    /// Channels this connection no longer serves (cluster).
    moved: Vec<(Channel, u64)>,
}

enum Ended {
    Cancelled,
    Lost(String),
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
            connected: false,
            chans: HashMap::new(),
            ops: Vec::new(),
            sent: VecDeque::new(),
            settle: Vec::new(),
            moved: Vec::new(),
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        match &self.target {
            Target::Resolve { resolve, .. } => open(&resolve().await?).await,
            Target::Shard { info, .. } => open(info).await,
        }
    }

    /// Connects once, so that a broken configuration fails the start.
    pub(super) async fn connect_first(&mut self) -> Result<Conn, String> {
        self.open().await
    }

    pub(super) async fn run(mut self, first: Option<Conn>) {
        let mut conn = match first {
            Some(c) => Some(c),
            None => self.open_or_report().await,
        };
        if conn.is_none() && matches!(self.target, Target::Shard { .. }) {
            return;
        }
        let mut backoff = Backoff::default();
        loop {
            if let Some(c) = conn.take() {
                backoff = Backoff::default();
                match self.serve(c).await {
                    Ended::Cancelled => return,
                    Ended::Lost(why) => {
                        tracing::warn!(reason = %why, "lost a Redis pub/sub connection");
                        self.lost();
                        if matches!(self.target, Target::Shard { .. }) {
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
                        Some(cmd) => self.on_command(cmd),
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
                if matches!(self.target, Target::Shard { .. }) {
                    // Take the commands already routed here along.
                    while let Ok(cmd) = self.control.try_recv() {
                        self.on_command(cmd);
                    }
                    self.report_lost();
                }
                None
            }
        }
    }

    fn report_lost(&mut self) {
        if let Target::Shard { info, report } = &self.target {
            let channels = self
                .chans
                .drain()
                .filter_map(|(c, st)| st.want.map(|i| (c, i)))
                .collect();
            let _ = report.send(ShardReport::Lost {
                addr: addr_of(info),
                channels,
            });
        }
    }

    fn lost(&mut self) {
        self.connected = false;
        if matches!(self.target, Target::Resolve { .. }) {
            self.inner.set_connected(false);
        }
        self.hub.channels_lost(
            self.chans
                .iter()
                .filter(|(_, st)| st.want.is_some())
                .map(|(c, _)| c),
        );
        self.ops.clear();
        self.sent.clear();
        self.settle.clear();
        self.chans.retain(|_, st| {
            st.last_sent = None;
            st.in_flight = 0;
            st.want.is_some()
        });
    }

    async fn serve(&mut self, mut conn: Conn) -> Ended {
        self.connected = true;
        if matches!(self.target, Target::Resolve { .. }) {
            self.inner.set_connected(true);
        }
        // Resubscribe everything wanted (nothing on a first connection).
        for (ch, st) in self.chans.iter_mut() {
            st.last_sent = Some(Op::Sub);
            st.in_flight = 1;
            self.ops.push((Op::Sub, ch.clone()));
        }
        let switched = match &self.target {
            Target::Resolve {
                switched: Some(n), ..
            } => Some(n.clone()),
            _ => None,
        };
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut awaiting_pong = false;
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Ended::Lost(e.to_string());
            }
            self.spawn_settle();
            self.report_moved();
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                _ = async { match &switched { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                    return Ended::Lost("the Sentinels announced a new master".into());
                }
                r = conn.io.read_buf(&mut conn.buf) => match r {
                    Ok(0) => return Ended::Lost("connection closed by Redis".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                    Ok(_) => {
                        loop {
                            match resp::parse(&mut conn.buf) {
                                Ok(Some(frame)) => {
                                    if self.on_frame(frame) {
                                        awaiting_pong = false;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => return Ended::Lost(e.to_string()),
                            }
                        }
                        // Every read can wake thousands of streams: let them
                        // write before reading more, rather than when the
                        // runtime's budget runs out (tail latency).
                        tokio::task::yield_now().await;
                    }
                },
                cmd = self.control.recv() => match cmd {
                    None => return Ended::Cancelled,
                    Some(cmd) => {
                        self.on_command(cmd);
                        while let Ok(cmd) = self.control.try_recv() {
                            self.on_command(cmd);
                        }
                    }
                },
                _ = ping.tick() => {
                    if awaiting_pong {
                        return Ended::Lost(format!("no PONG within {PING_EVERY:?}"));
                    }
                    awaiting_pong = true;
                    if let Err(e) = conn.io.write_all(b"*1\r\n$4\r\nPING\r\n").await {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Want { channel, instance } => {
                let st = self.chans.entry(channel.clone()).or_default();
                st.want = Some(instance);
                if !self.connected {
                    return; // subscribed on reconnect
                }
                match (st.last_sent, st.in_flight) {
                    // Already subscribed: settle the new instance now.
                    (Some(Op::Sub), 0) => self.settle.push(channel),
                    // A SUBSCRIBE is on its way; its confirmation settles.
                    (Some(Op::Sub), _) => {}
                    _ => {
                        st.last_sent = Some(Op::Sub);
                        st.in_flight += 1;
                        self.ops.push((Op::Sub, channel));
                    }
                }
            }
            SubCommand::Unwant { channel, instance } => {
                let Some(st) = self.chans.get_mut(&channel) else {
                    return;
                };
                if st.want != Some(instance) {
                    return; // a newer instance wants it
                }
                st.want = None;
                if st.last_sent == Some(Op::Sub) && self.connected {
                    st.last_sent = Some(Op::Unsub);
                    st.in_flight += 1;
                    self.ops.push((Op::Unsub, channel));
                } else if st.in_flight == 0 {
                    self.chans.remove(&channel);
                }
            }
        }
    }

    /// Sends queued commands: one per run of the same kind (and, sharded,
    /// the same slot), at most `BATCH` channels each.
    async fn flush(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let (sub, unsub) = self.kind.commands();
        let mut out = Vec::new();
        let ops = std::mem::take(&mut self.ops);
        for run in ops.chunk_by(|a, b| a.0 == b.0) {
            let mut channels: Vec<Channel> = run.iter().map(|(_, c)| c.clone()).collect();
            let groups: Vec<Vec<Channel>> = match self.kind {
                Kind::Classic => channels.chunks(BATCH).map(<[Channel]>::to_vec).collect(),
                Kind::Sharded => {
                    channels.sort_by_key(|c| slot(c.as_str()));
                    channels
                        .chunk_by(|a, b| slot(a.as_str()) == slot(b.as_str()))
                        .flat_map(|same_slot| same_slot.chunks(BATCH).map(<[Channel]>::to_vec))
                        .collect()
                }
            };
            for group in groups {
                let op = run[0].0;
                let mut cmd = redis::cmd(if op == Op::Sub { sub } else { unsub });
                for ch in &group {
                    cmd.arg(self.inner.names.channel(ch.as_str()));
                }
                out.extend_from_slice(&cmd.get_packed_command());
                self.inner.metrics.redis_subscribe_commands.increment(1);
                let remaining = group.len();
                self.sent.push_back(Sent {
                    op,
                    channels: group,
                    remaining,
                });
            }
        }
        conn.io.write_all(&out).await?;
        conn.io.flush().await
    }

    /// Handles one frame; true if it was a PONG.
    fn on_frame(&mut self, frame: Frame) -> bool {
        let parts = match frame {
            Frame::Array(parts) => parts,
            Frame::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => return true,
            Frame::Error(e) => {
                self.on_error(&e);
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

    /// An error answers the oldest command as a whole (MOVED, CROSSSLOT).
    fn on_error(&mut self, e: &[u8]) {
        let text = String::from_utf8_lossy(e);
        let Some(cmd) = self.sent.pop_front() else {
            tracing::warn!(error = %text, "error from Redis on a pub/sub connection");
            return;
        };
        tracing::warn!(error = %text, channels = cmd.channels.len(), "Redis refused a subscription command");
        for ch in cmd.channels {
            let Some(st) = self.chans.get_mut(&ch) else {
                continue;
            };
            st.in_flight = st.in_flight.saturating_sub(1);
            if cmd.op == Op::Sub && st.last_sent == Some(Op::Sub) && st.in_flight == 0 {
                // The slot lives elsewhere: hand the channel back.
                if let Some(instance) = st.want {
                    self.moved.push((ch.clone(), instance));
                }
                self.chans.remove(&ch);
            }
        }
    }

    fn on_message(&self, redis_channel: &[u8], payload: Bytes) {
        let Some(name) = self.inner.names.parse_channel(redis_channel) else {
            return;
        };
        let (id, payload) = split_durable(payload);
        let m = &self.inner.metrics;
        if id.is_some() {
            m.events_in_durable.increment(1);
        } else {
            m.events_in_ephemeral.increment(1);
        }
        self.hub.dispatch(name, encode_incoming(payload, id, m));
    }

    fn on_confirm(&mut self, redis_channel: &[u8], op: Op) {
        let Some(name) = self.inner.names.parse_channel(redis_channel) else {
            return;
        };
        let ours = match self.sent.front_mut() {
            Some(head) if head.op == op && head.channels.iter().any(|c| c.as_str() == name) => {
                head.remaining -= 1;
                if head.remaining == 0 {
                    self.sent.pop_front();
                }
                true
            }
            _ => false,
        };
        if !ours {
            // Redis unsubscribed the channel by itself: its slot moved to
            // another shard (or this node stopped being a master).
            if op == Op::Unsub
                && let Some(st) = self.chans.remove(name)
                && let (Some(instance), Ok(ch)) = (st.want, Channel::parse(name))
            {
                tracing::info!(channel = %name, "Redis moved a channel's slot; resubscribing at its new owner");
                self.hub.channels_lost([&ch]);
                self.moved.push((ch, instance));
            }
            return;
        }
        let Some(st) = self.chans.get_mut(name) else {
            return;
        };
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight > 0 || st.last_sent != Some(op) {
            return;
        }
        match op {
            Op::Sub if st.want.is_some() => {
                let ch = Channel::parse(name).expect("validated by parse_channel");
                self.settle.push(ch);
            }
            Op::Sub => {}
            Op::Unsub => {
                self.chans.remove(name);
            }
        }
    }

    fn report_moved(&mut self) {
        if self.moved.is_empty() {
            return;
        }
        let channels = std::mem::take(&mut self.moved);
        match &self.target {
            Target::Shard { report, .. } => {
                let _ = report.send(ShardReport::Moved { channels });
            }
            Target::Resolve { .. } => {
                // Not expected outside a cluster: subscribe again here.
                for (ch, instance) in channels {
                    self.on_command(SubCommand::Want {
                        channel: ch,
                        instance,
                    });
                }
            }
        }
    }

    /// Settles confirmed channels in the background: tips in one batch,
    /// repairs with bounded concurrency.
    fn spawn_settle(&mut self) {
        if self.settle.is_empty() {
            return;
        }
        let channels = std::mem::take(&mut self.settle);
        let inner = self.inner.clone();
        let hub = self.hub.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = settle(inner, hub, channels) => {}
            }
        });
    }
}

/// The cluster slot of channel `c` (its Redis names hash on `c`, the tag).
pub(super) fn slot(c: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(c.as_bytes()) % 16384
}

fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => format!("{h}:{p}"),
        other => format!("{other:?}"),
    }
}

async fn settle(inner: Arc<Inner>, hub: Hub, channels: Vec<Channel>) {
    let mut tips = Vec::new();
    let mut repairs = Vec::new();
    for ch in channels {
        match hub.plan(ch.as_str()) {
            Plan::Tip(t) => tips.push((ch, t)),
            Plan::Repair(t, from) => repairs.push((ch, t, from)),
            Plan::Nothing => {}
        }
    }
    if !tips.is_empty() {
        let names: Vec<String> = tips.iter().map(|(c, _)| c.as_str().to_owned()).collect();
        let mut backoff = Backoff::default();
        loop {
            match inner.tips(&names).await {
                Ok(ids) => {
                    for ((ch, t), tip) in tips.iter().zip(ids) {
                        hub.channel_ready(ch.as_str(), *t, tip);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading channel tips failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    futures_util::stream::iter(repairs)
        .for_each_concurrent(REPAIR_CONCURRENCY, |(ch, t, from)| {
            let inner = inner.clone();
            let hub = hub.clone();
            async move { repair(&inner, &hub, &ch, t, from).await }
        })
        .await;
}

/// Delivers what `channel` missed after `from`, in order, then lets its
/// held live events through (hard part 2).
async fn repair(inner: &Inner, hub: &Hub, channel: &Channel, t: Ticket, mut from: StreamId) {
    let mut backoff = Backoff::default();
    let mut delivered = 0;
    loop {
        let page = match inner.history(channel.as_str(), from, None, REPAIR_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "gap repair read failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if page.trimmed {
            tracing::warn!(%channel, "history no longer covers the gap; resetting the channel's streams");
            hub.reset_channel(channel.as_str(), t, page.tip);
            return;
        }
        let full = page.entries.len() == REPAIR_PAGE;
        if let Some(last) = page.entries.last() {
            from = last.id;
        }
        let events: Vec<_> = page
            .entries
            .into_iter()
            .map(|e| encode_incoming(e.payload, Some(e.id), &inner.metrics))
            .collect();
        delivered += hub.deliver_history(channel.as_str(), t, &events);
        if full {
            continue;
        }
        match hub.finish_repair(channel.as_str(), t) {
            RepairStep::More(id) => from = id,
            RepairStep::Done => {
                inner.metrics.gap_repairs.increment(1);
                inner.metrics.gap_repaired_events.increment(delivered as u64);
                if delivered > 0 {
                    tracing::info!(%channel, events = delivered, "gap repaired from history");
                }
                return;
            }
            RepairStep::Gone => return,
        }
    }
}

/// `\0<id>\0<payload>` is a durable event; anything else is ephemeral.
fn split_durable(payload: Bytes) -> (Option<StreamId>, Bytes) {
    if payload.first() == Some(&0) {
        let end = payload.len().min(48);
        if let Some(j) = payload[1..end].iter().position(|&b| b == 0)
            && let Some(id) = StreamId::parse(&payload[1..1 + j])
        {
            return (Some(id), payload.slice(j + 2..));
        }
    }
    (None, payload)
}

async fn open(info: &ConnectionInfo) -> Result<Conn, String> {
    let (host, port, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host, *port, None),
        ConnectionAddr::TcpTls {
            host, port, insecure, ..
        } => (host, *port, Some(*insecure)),
        other => return Err(format!("unsupported address for pub/sub: {other:?}")),
    };
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("connect to {host}:{port} timed out"))?
    .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(insecure) => {
            let config = crate::tls::redis_client_config(insecure)?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| format!("TLS handshake with {host}:{port} timed out"))?
                    .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?,
            )
        }
    };
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(16 * 1024),
    };
    let settings = info.redis_settings();
    if let Some(pass) = settings.password() {
        let mut cmd = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            cmd.arg(user);
        }
        cmd.arg(pass);
        if let Frame::Error(e) = request(&mut conn, &cmd.get_packed_command()).await? {
            return Err(format!("AUTH failed: {}", String::from_utf8_lossy(&e)));
        }
    }
    // Named so that operators (and tests) can find it in CLIENT LIST.
    request(
        &mut conn,
        &redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("ssegate-pubsub")
            .get_packed_command(),
    )
    .await?;
    Ok(conn)
}

async fn request(conn: &mut Conn, cmd: &[u8]) -> Result<Frame, String> {
    conn.io.write_all(cmd).await.map_err(|e| e.to_string())?;
    loop {
        if let Some(f) = resp::parse(&mut conn.buf).map_err(|e| e.to_string())? {
            return Ok(f);
        }
        let n = tokio::time::timeout(CONNECT_TIMEOUT, conn.io.read_buf(&mut conn.buf))
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by Redis".into());
        }
    }
}

/// Capped exponential backoff with jitter: 100 ms doubling up to 5 s, each
/// delay drawn from its upper half so that nodes do not retry in step.
#[derive(Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt += 1;
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_messages_carry_their_id() {
        let (id, p) = split_durable(Bytes::from_static(b"\x0017-3\x00hello"));
        assert_eq!(id, Some(StreamId::new(17, 3)));
        assert_eq!(&p[..], b"hello");
        let (id, p) = split_durable(Bytes::from_static(b"\x00nope\x00hello"));
        assert_eq!(id, None);
        assert_eq!(&p[..], b"\x00nope\x00hello");
        let (id, _) = split_durable(Bytes::from_static(b"plain"));
        assert_eq!(id, None);
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Reference values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late: Vec<_> = (0..30).map(|_| b.next_delay()).collect();
        assert!(late.iter().all(|d| *d <= Backoff::CAP && *d >= Backoff::CAP / 2));
        assert!(late.windows(2).any(|w| w[0] != w[1]), "jittered");
    }
}
