//! The node's one pub/sub connection to Redis, and the subscription manager
//! that keeps it in line with what the hub wants.
//!
//! - Batching: subscription commands from the hub are drained in bulk and
//!   sent as one SUBSCRIBE/UNSUBSCRIBE per run of up to `BATCH` channels,
//!   in the order they were asked for.
//! - Every confirmation of a wanted channel is settled through
//!   `Hub::plan`: a new channel gets its tip read and goes live; a channel
//!   that was live before a connection loss has its gap repaired from
//!   history (hard part 2), with bounded concurrency.
//! - Losing the connection (EOF, error, missed PONG) tells the hub, then
//!   reconnects with capped, jittered backoff and resubscribes everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Inner;
use super::resp::{self, Frame};
use crate::broker::{BrokerError, encode_incoming};
use crate::hub::{Hub, Plan, RepairStep, SubCommand};
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

struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
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

pub(super) struct PubSub {
    info: ConnectionInfo,
    inner: Arc<Inner>,
    hub: Hub,
    control: mpsc::UnboundedReceiver<SubCommand>,
    cancel: CancellationToken,
    conn: Option<Conn>,
    chans: HashMap<Channel, ChanState>,
    /// Commands to send, in order.
    ops: Vec<(Op, Channel)>,
    /// Confirmed channels to settle through `Hub::plan`.
    settle: Vec<Channel>,
}

enum Ended {
    Cancelled,
    Lost(String),
}

impl PubSub {
    pub(super) async fn connect(
        info: ConnectionInfo,
        inner: Arc<Inner>,
        hub: Hub,
        control: mpsc::UnboundedReceiver<SubCommand>,
        cancel: CancellationToken,
    ) -> Result<PubSub, String> {
        let conn = open(&info).await?;
        Ok(PubSub {
            info,
            inner,
            hub,
            control,
            cancel,
            conn: Some(conn),
            chans: HashMap::new(),
            ops: Vec::new(),
            settle: Vec::new(),
        })
    }

    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            if let Some(conn) = self.conn.take() {
                match self.serve(conn).await {
                    Ended::Cancelled => return,
                    Ended::Lost(why) => {
                        tracing::warn!(reason = %why, "lost the Redis pub/sub connection; reconnecting");
                        self.lost();
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
            match open(&self.info).await {
                Ok(conn) => {
                    tracing::info!("reconnected to Redis pub/sub");
                    self.inner.metrics.redis_reconnects.increment(1);
                    backoff = Backoff::default();
                    self.conn = Some(conn);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "Redis pub/sub reconnect failed")
                }
            }
        }
    }

    fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    fn lost(&mut self) {
        self.inner.connected.store(false, Ordering::Relaxed);
        self.inner.metrics.broker_up.set(0.0);
        self.hub.connection_lost();
        self.ops.clear();
        self.settle.clear();
        self.chans.retain(|_, st| {
            st.last_sent = None;
            st.in_flight = 0;
            st.want.is_some()
        });
    }

    async fn serve(&mut self, mut conn: Conn) -> Ended {
        self.inner.connected.store(true, Ordering::Relaxed);
        self.inner.metrics.broker_up.set(1.0);
        // Resubscribe everything wanted (nothing on the first connection).
        for (ch, st) in self.chans.iter_mut() {
            st.last_sent = Some(Op::Sub);
            st.in_flight = 1;
            self.ops.push((Op::Sub, ch.clone()));
        }
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut awaiting_pong = false;
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Ended::Lost(e.to_string());
            }
            self.spawn_settle();
            tokio::select! {
                _ = self.cancel.cancelled() => return Ended::Cancelled,
                r = conn.io.read_buf(&mut conn.buf) => match r {
                    Ok(0) => return Ended::Lost("connection closed by Redis".into()),
                    Err(e) => return Ended::Lost(e.to_string()),
                    Ok(_) => loop {
                        match resp::parse(&mut conn.buf) {
                            Ok(Some(frame)) => {
                                if self.on_frame(frame) {
                                    awaiting_pong = false;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => return Ended::Lost(e.to_string()),
                        }
                    },
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
        let connected = self.connected();
        match cmd {
            SubCommand::Want { channel, instance } => {
                let st = self.chans.entry(channel.clone()).or_default();
                st.want = Some(instance);
                if !connected {
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
                if st.last_sent == Some(Op::Sub) && connected {
                    st.last_sent = Some(Op::Unsub);
                    st.in_flight += 1;
                    self.ops.push((Op::Unsub, channel));
                } else if st.in_flight == 0 {
                    self.chans.remove(&channel);
                }
            }
        }
    }

    /// Sends queued commands: one command per run of the same kind, at most
    /// `BATCH` channels each.
    async fn flush(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut commands = 0u64;
        let ops = std::mem::take(&mut self.ops);
        for run in ops.chunk_by(|a, b| a.0 == b.0) {
            for batch in run.chunks(BATCH) {
                let name = if batch[0].0 == Op::Sub {
                    "SUBSCRIBE"
                } else {
                    "UNSUBSCRIBE"
                };
                let mut cmd = redis::cmd(name);
                for (_, ch) in batch {
                    cmd.arg(self.inner.names.channel(ch.as_str()));
                }
                out.extend_from_slice(&cmd.get_packed_command());
                commands += 1;
            }
        }
        self.inner.metrics.redis_subscribe_commands.increment(commands);
        conn.io.write_all(&out).await?;
        conn.io.flush().await
    }

    /// Handles one frame; true if it was a PONG.
    fn on_frame(&mut self, frame: Frame) -> bool {
        let parts = match frame {
            Frame::Array(parts) => parts,
            Frame::Simple(s) if s.eq_ignore_ascii_case(b"PONG") => return true,
            Frame::Error(e) => {
                tracing::warn!(error = %String::from_utf8_lossy(&e), "error from Redis on the pub/sub connection");
                return false;
            }
            other => {
                tracing::debug!(?other, "unexpected frame on the pub/sub connection");
                return false;
            }
        };
        let kind = parts.first().and_then(Frame::as_bytes).map(|b| b.as_ref());
        match (kind, parts.get(1).and_then(Frame::as_bytes), parts.get(2)) {
            (Some(b"message"), Some(chan), Some(Frame::Bulk(payload))) => {
                self.on_message(chan, payload.clone())
            }
            (Some(b"subscribe"), Some(chan), _) => self.on_confirm(chan, Op::Sub),
            (Some(b"unsubscribe"), Some(chan), _) => self.on_confirm(chan, Op::Unsub),
            (Some(b"pong"), ..) => return true,
            _ => tracing::debug!(?parts, "unexpected push on the pub/sub connection"),
        }
        false
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

    /// Settles confirmed channels in the background: tips in one pipelined
    /// round trip, repairs with bounded concurrency.
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
async fn repair(inner: &Inner, hub: &Hub, channel: &Channel, t: crate::hub::Ticket, mut from: StreamId) {
    let mut backoff = Backoff::default();
    let mut delivered = 0;
    loop {
        let page = match inner.history(channel.as_str(), from, None, REPAIR_PAGE).await {
            Ok(p) => p,
            Err(BrokerError::Redis(e)) if e.is_connection_dropped() || e.is_io_error() => {
                tracing::warn!(error = %e, "gap repair read failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
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
    let io: Box<dyn Io> = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let s = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| format!("connect to {host}:{port} timed out"))?
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        other => return Err(format!("unsupported address for pub/sub: {other:?}")),
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
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
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
