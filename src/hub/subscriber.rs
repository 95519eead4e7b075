//! The per-stream end of the hub: a bounded queue of shared, pre-encoded
//! events, filled by the hub without ever waiting (fan-out must not block on
//! one client) and drained by the stream's writer.
//!
//! The mutex is held only to push or swap a queue, or for the
//! non-blocking writes of a direct heartbeat or of direct events
//! (`write_direct`); never across an await.
//! An idle stream costs this struct and one `Arc` per channel: its queue has
//! no capacity until something arrives.
//!
//! Submodules: `sink` (the socket the hub shares with an idle stream's
//! writer, and the heartbeats it writes there), `live` (events written to
//! that socket), `clock` (the coarse clock of the stall and quiet checks).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::sse::{Encoded, EventId};

mod clock;
mod live;
mod sink;

pub use live::{DIRECT_MAX, EventWrite};
pub use sink::{Beat, HeartbeatSink};

pub(super) use clock::tick_coarse_clock;
use clock::{coarse_ms, coarse_now, long_ago_ms};

/// What the hub hands a stream.
#[derive(Debug, Clone)]
pub enum Item {
    /// A live event for the stream's channel number `ch`.
    Event(Arc<Encoded>, u16),
    /// The channel could not be repaired after a broker outage: its history
    /// no longer reaches back far enough. The stream continues from `tip`.
    Reset(u16, EventId),
    /// A subscriber that adds channels as it goes (a WebSocket): channel
    /// `ch` is live on this node at this position; its events follow.
    Ready(u16, EventId),
    Heartbeat,
}

impl Item {
    /// Bytes this item pins while queued: the frame (shared, but a client
    /// that never reads keeps it alive) plus the queue slot.
    fn cost(&self) -> usize {
        std::mem::size_of::<Item>()
            + match self {
                Item::Event(ev, _) => ev.frame().len(),
                Item::Reset(..) => 128,
                Item::Ready(..) | Item::Heartbeat => 0,
            }
    }
}

/// Readies a drained queue's buffer for the next drain: kept (no
/// allocation per event on a busy stream), trimmed after a burst, and
/// released when all it carried was a heartbeat: the stream is idle, and
/// an idle stream should hold no queue buffer. `lone_heartbeat` is what
/// the drain found (see `is_lone_heartbeat`).
pub fn recycle(items: &mut VecDeque<Item>, lone_heartbeat: bool) {
    debug_assert!(items.is_empty());
    if lone_heartbeat {
        *items = VecDeque::new();
    } else if items.capacity() > 1024 {
        items.shrink_to(64);
    }
}

/// Whether a drained queue holds one heartbeat and nothing else.
pub fn is_lone_heartbeat(items: &VecDeque<Item>) -> bool {
    items.len() == 1 && matches!(items.front(), Some(Item::Heartbeat))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The node is shutting down; the client reconnects elsewhere.
    Shutdown,
    /// The queue overflowed; the client reconnects and resumes from history.
    SlowClient,
    /// The stream's token expired; the client reconnects with a fresh one.
    Expired,
}

/// The presence name of a client without a token.
const ANONYMOUS: &str = "anonymous";
static ANONYMOUS_NAME: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(ANONYMOUS));

pub struct Subscriber {
    state: Mutex<State>,
    /// Who the client is, for presence (the token's `sub`); anonymous
    /// until set.
    client: std::sync::OnceLock<Arc<str>>,
    /// When it connected (ms since the epoch), for presence.
    since_ms: u64,
}

struct State {
    queue: VecDeque<Item>,
    queued_bytes: usize,
    /// When (`coarse_now`) the stream last had nothing waiting, or last
    /// took something: a stream whose queue has waited longer than
    /// `--write-timeout` is stalled.
    waiting_since: Option<u32>,
    limit: usize,
    waker: Option<Waker>,
    closed: Option<Close>,
    /// Until every channel is live on this node: its position per channel
    /// and how many are still pending. Dropped once the stream starts.
    start: Option<Box<Start>>,
    /// Channels come and go (`new_dynamic`).
    dynamic: bool,
    /// Every heartbeat goes out, however lately the stream wrote (a
    /// WebSocket's pings: `ping_every_heartbeat`).
    every_heartbeat: bool,
    /// The stream's socket, while its writer allows heartbeats to be
    /// written to it directly (`attach_sink`).
    sink: Option<Arc<dyn HeartbeatSink>>,
    /// The writer found the queue empty and has written everything it
    /// took: nothing of its can be half-written on the socket. Set by
    /// `poll_drain`, cleared by it and by `claim_socket`.
    writer_idle: bool,
    /// A direct heartbeat went out in part: the socket's framing is broken,
    /// so nothing more may be written to it (not even the last chunk). (An
    /// event that goes out in part leaves its rest with the sink instead.)
    torn: bool,
    /// A batch of the hub's (`write_direct`) will write what is queued, or
    /// wake the writer: a push meanwhile need not wake it.
    direct_pending: bool,
    /// The writer's cursor on its one channel, which it left here when it
    /// last went idle (`poll_drain_at`): durable events can then be
    /// written directly too, and `position` moves with them.
    has_position: bool,
    position: EventId,
    /// When (`coarse_ms`, wrapping) the writer last took something to
    /// write (`long_ago_ms` until it does): a stream that wrote lately
    /// needs no heartbeat to stay open.
    taken_ms: u32,
}

impl State {
    /// Queues `item`; false if it overflowed the queue, which closes the
    /// stream (one item always fits an empty queue, whatever its size).
    fn enqueue(&mut self, item: Item) -> bool {
        let cost = item.cost();
        if self.queued_bytes + cost > self.limit && !self.queue.is_empty() {
            self.closed = Some(Close::SlowClient);
            self.queue = VecDeque::new();
            self.queued_bytes = 0;
            return false;
        }
        if self.queue.is_empty() && self.waiting_since.is_none() {
            self.waiting_since = Some(coarse_now());
        }
        self.queue.push_back(item);
        self.queued_bytes += cost;
        true
    }
}

struct Start {
    pending: usize,
    positions: Box<[EventId]>,
}

/// What a push did, for the hub's bookkeeping.
#[must_use]
pub enum Pushed {
    Queued(Option<Waker>),
    /// Queued for a stream whose writer is idle: the caller hands the
    /// stream to `write_direct` instead of waking its writer.
    Direct,
    /// This push overflowed the queue and closed the stream.
    Overflowed(Option<Waker>),
    Closed,
}

impl Pushed {
    pub fn wake(self) -> bool {
        match self {
            Pushed::Queued(w) => {
                if let Some(w) = w {
                    w.wake();
                }
                false
            }
            Pushed::Overflowed(w) => {
                if let Some(w) = w {
                    w.wake();
                }
                true
            }
            Pushed::Direct | Pushed::Closed => false,
        }
    }
}

impl Subscriber {
    pub fn new(channels: usize, limit: usize) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            client: std::sync::OnceLock::new(),
            since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                waiting_since: None,
                dynamic: false,
                every_heartbeat: false,
                limit,
                waker: None,
                closed: None,
                sink: None,
                writer_idle: false,
                torn: false,
                direct_pending: false,
                has_position: false,
                position: EventId::ZERO,
                taken_ms: long_ago_ms(),
                start: Some(Box::new(Start {
                    pending: channels,
                    positions: vec![EventId::ZERO; channels].into_boxed_slice(),
                })),
            }),
        })
    }

    /// Names the client for presence (once; later calls are ignored).
    pub fn set_client(&self, client: &str) {
        let _ = self.client.set(Arc::from(client));
    }

    pub fn client(&self) -> &str {
        self.client.get().map_or(ANONYMOUS, |c| c)
    }

    /// The client's name as a shared string (no copy for named clients).
    pub fn client_name(&self) -> Arc<str> {
        self.client
            .get()
            .cloned()
            .unwrap_or_else(|| ANONYMOUS_NAME.clone())
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    pub fn push(&self, item: Item) -> Pushed {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        if !s.enqueue(item) {
            return Pushed::Overflowed(s.waker.take());
        }
        Pushed::Queued(s.waker.take())
    }

    /// The stream took something (a replayed page): it is not stalled.
    pub fn progressed(&self) {
        let mut s = self.state.lock();
        if s.waiting_since.is_some() {
            s.waiting_since = Some(coarse_now());
        }
    }

    /// Closes the stream if something has waited in its queue for
    /// `limit_secs` without the stream taking anything (a client that stopped
    /// reading while its connection stays up); true if it did.
    pub fn close_if_stalled(&self, limit_secs: u32) -> bool {
        let waker = {
            let mut s = self.state.lock();
            let stalled = s
                .waiting_since
                .is_some_and(|t| coarse_now().saturating_sub(t) >= limit_secs);
            if !stalled || s.closed.is_some() {
                return false;
            }
            s.closed = Some(Close::SlowClient);
            s.queue = VecDeque::new();
            s.queued_bytes = 0;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    pub fn close(&self, reason: Close) {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return;
            }
            s.closed = Some(reason);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the stream is closed; if not, the caller is woken when it is
    /// (or when something is queued).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.poll_close(cx).is_some()
    }

    /// Why the stream was closed; if it is open, the caller is woken when
    /// it closes (or when something is queued).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Option<Close> {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.waker = Some(cx.waker().clone());
        }
        s.closed
    }

    /// A subscriber whose channels come and go (a WebSocket): each channel
    /// reports that it is live with an `Item::Ready` in the queue, ahead of
    /// its events.
    pub fn new_dynamic(limit: usize) -> Arc<Subscriber> {
        let sub = Subscriber::new(0, limit);
        {
            let mut s = sub.state.lock();
            s.start = None;
            s.dynamic = true;
        }
        sub
    }

    /// The hub tells the stream where channel `ch` stands on this node.
    pub(crate) fn set_ready(&self, ch: u16, position: EventId) {
        let waker = {
            let mut s = self.state.lock();
            if s.dynamic {
                drop(s);
                // A dynamic subscriber: the news goes through the queue, in
                // order with the channel's events.
                if self.push(Item::Ready(ch, position)).wake() {
                    tracing::debug!("a subscriber overflowed on a channel's start");
                }
                return;
            }
            let Some(start) = s.start.as_mut() else {
                return;
            };
            start.positions[ch as usize] = position;
            start.pending -= 1;
            if start.pending > 0 {
                return;
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Resolves once every channel is live on this node, with the position
    /// of each: the last durable id this node delivered on it.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<Box<[EventId]>, Close>> {
        let mut s = self.state.lock();
        if let Some(c) = s.closed {
            return Poll::Ready(Err(c));
        }
        match s.start.as_ref() {
            Some(st) if st.pending == 0 => {
                let st = s.start.take().expect("checked");
                Poll::Ready(Ok(st.positions))
            }
            Some(_) => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(Ok(Box::default())),
        }
    }

    pub async fn ready(&self) -> Result<Box<[EventId]>, Close> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Moves every queued item into `out` (which must be empty). Items
    /// queued before a close are still handed out; then the close.
    /// A writer with a sink calls this only once it has written all it
    /// took: `Pending` lets the hub write heartbeats to the sink until the
    /// next drain.
    pub fn poll_drain(&self, cx: &mut Context<'_>, out: &mut VecDeque<Item>) -> Poll<Result<(), Close>> {
        let s = self.state.lock();
        Self::drain(s, cx, out)
    }

    /// `poll_drain` for a stream on one channel, with its cursor there:
    /// `position` takes in what the hub wrote directly since the last
    /// drain, and is left here while the writer waits, so that the hub
    /// writes the stream's durable events too.
    pub fn poll_drain_at(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Item>,
        position: &mut EventId,
    ) -> Poll<Result<(), Close>> {
        let mut s = self.state.lock();
        *position = (*position).max(s.position);
        s.position = *position;
        s.has_position = true;
        Self::drain(s, cx, out)
    }

    fn drain(
        mut s: parking_lot::MutexGuard<'_, State>,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Item>,
    ) -> Poll<Result<(), Close>> {
        debug_assert!(out.is_empty());
        if !s.queue.is_empty() {
            std::mem::swap(&mut s.queue, out);
            s.queued_bytes = 0;
            s.waiting_since = None;
            s.writer_idle = false;
            s.taken_ms = coarse_ms() as u32;
            return Poll::Ready(Ok(()));
        }
        if let Some(c) = s.closed {
            return Poll::Ready(Err(c));
        }
        s.writer_idle = true;
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
