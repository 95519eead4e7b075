//! One SSE stream's lifecycle, independent of the HTTP stack that carries
//! it: register in the hub, wait until every channel is live on this node,
//! replay history after the client's cursor (or send `ssegate.reset`), then
//! turn queued items into bytes, dropping what the client already has.
//! The replay (`replay`) is read a page at a time as the client takes it.
//!
//! The resume race (hard part 1) is closed by the hub: registration hands
//! the stream the channel's position on this node, every later event
//! reaches the stream's queue, and the replay reads history exactly up to
//! that position. Events in the queue at or before the client's position
//! are dropped, so a client ahead of this node gets no duplicate either.

mod handoff;
mod replay;

pub use handoff::{Chunks, Handoff, HandoffBody};
pub use replay::{Fetch, ReplayBudget};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::broker::{BrokerError, Page, SharedBroker, encode_incoming};
use crate::hub::{Close, Hub, Item, Registration, Subscriber, is_lone_heartbeat, recycle};
use crate::metrics::{Metrics, WriteTimes};
use crate::sse::{
    Channel, Cursor, Encoded, EventId, encode_comment, encode_control, encode_control_text, encode_retry_hint,
};
use replay::{Replay, Step};

pub const RESET_EVENT: &str = "ssegate.reset";
pub const TOKEN_EXPIRED_EVENT: &str = "ssegate.token_expired";
pub const STATE_EVENT: &str = "ssegate.state";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the broker did not confirm the subscription in time")]
    NotReady,
    #[error("the stream was closed while opening")]
    Closed(Close),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct OpenParams {
    pub channels: Box<[Channel]>,
    /// `Last-Event-ID` or `lastEventId`, raw.
    pub cursor: Option<Bytes>,
    pub queue_limit: usize,
    pub retry: Duration,
    pub open_timeout: Duration,
    pub replay: ReplayBudget,
    /// `?state=1` (one channel): the channel's snapshot first.
    pub state: bool,
    /// `?presence=1`: `ssegate.join` and `ssegate.leave` events too.
    pub presence: bool,
    /// Who the client is in presence (the token's `sub`).
    pub client: Option<String>,
}

pub struct StreamSession {
    reg: Registration,
    /// Bytes to write before anything else: the opening, resets.
    opening: Vec<Bytes>,
    /// History still to send before live events, while resuming.
    replay: Option<Box<Replay>>,
    /// When the stream's token expires, if it has one.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The client's position per channel: what its next cursor will say.
    positions: Box<[EventId]>,
    /// Reused between drains so that the queue swap does not allocate.
    spare: VecDeque<Item>,
    metrics: Metrics,
}

static HEARTBEAT: LazyLock<Bytes> = LazyLock::new(|| encode_comment(""));
static TOKEN_EXPIRED: LazyLock<Bytes> =
    LazyLock::new(|| encode_control(TOKEN_EXPIRED_EVENT, r#"{"reason":"token_expired"}"#, None));

impl StreamSession {
    /// Opens a stream: registered, live on this node, and holding the bytes
    /// it starts with (the retry hint, the cursor, resets); a resume then
    /// replays history as the client reads.
    pub async fn open(
        hub: &Hub,
        broker: &SharedBroker,
        metrics: &Metrics,
        params: OpenParams,
    ) -> Result<StreamSession, OpenError> {
        let n = params.channels.len();
        let sub = Subscriber::new(n, params.queue_limit);
        if let Some(client) = &params.client {
            sub.set_client(client);
        }
        let reg = hub.register(sub.clone(), params.channels, params.presence);
        let live = tokio::time::timeout(params.open_timeout, sub.ready())
            .await
            .map_err(|_| OpenError::NotReady)?
            .map_err(OpenError::Closed)?;
        let retry_ms = params.retry.as_millis() as u64;
        let mut out = Vec::new();
        let mut session = StreamSession {
            reg,
            opening: Vec::new(),
            replay: None,
            expiry: None,
            positions: live.clone(),
            spare: VecDeque::new(),
            metrics: metrics.clone(),
        };
        match params.cursor.as_deref().map(|c| Cursor::parse(c, n)) {
            None if params.state => {
                // The snapshot first, then every event after its position.
                let snapshot = broker.get_state(&session.reg.channels()[0]).await?;
                if let Some(s) = &snapshot {
                    session.positions[0] = s.position;
                }
                out.push(encode_retry_hint(retry_ms, Some(&session.cursor())));
                if let Some(s) = snapshot {
                    out.push(session.state_frame(&s.body));
                }
                session.start_replay(broker, params.replay, live);
            }
            None => out.push(encode_retry_hint(retry_ms, Some(&session.cursor()))),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "malformed cursor");
                out.push(encode_retry_hint(retry_ms, None));
                let all: Vec<usize> = (0..n).collect();
                out.push(session.reset_frame(&all, "malformed_cursor"));
                metrics.resets_malformed.increment(1);
            }
            Some(Ok(Cursor(client))) => {
                session.positions = client.into_boxed_slice();
                let ahead = session.reset_ahead(broker, &live).await?;
                out.push(encode_retry_hint(retry_ms, Some(&session.cursor())));
                if !ahead.is_empty() {
                    out.push(session.reset_frame(&ahead, "unknown_position"));
                    metrics.resets_ahead.increment(1);
                }
                if params.state {
                    session.reset_to_snapshot(broker, &mut out).await?;
                }
                session.start_replay(broker, params.replay, live);
            }
        }
        session.opening = out;
        Ok(session)
    }

    fn start_replay(&mut self, broker: &SharedBroker, budget: ReplayBudget, live: Box<[EventId]>) {
        if self.positions.iter().zip(live.iter()).any(|(p, l)| p < l) {
            self.replay = Some(Box::new(Replay::new(broker.clone(), budget, live)));
        }
    }

    fn state_frame(&self, body: &[u8]) -> Bytes {
        self.metrics.states_sent.increment(1);
        encode_control_text(STATE_EVENT, body, &self.cursor())
    }

    /// A resume of a stream that asked for state, older than the retained
    /// history, of a channel with a snapshot: `ssegate.reset` and the
    /// snapshot right after it, then the events after its position, so that
    /// the page needs no second round trip.
    async fn reset_to_snapshot(
        &mut self,
        broker: &SharedBroker,
        out: &mut Vec<Bytes>,
    ) -> Result<(), BrokerError> {
        let channel = self.reg.channels()[0].clone();
        let probe = broker
            .history(&channel, Page::new(self.positions[0], None, 1, 1))
            .await?;
        if !probe.trimmed {
            return Ok(());
        }
        let Some(snapshot) = broker.get_state(&channel).await? else {
            return Ok(());
        };
        self.positions[0] = snapshot.position;
        out.push(self.reset_frame(&[0], "history_trimmed"));
        self.metrics.resets_trimmed.increment(1);
        out.push(self.state_frame(&snapshot.body));
        Ok(())
    }

    /// Channels whose client position lies beyond anything the channel
    /// ever had (a made-up or foreign `Last-Event-ID`): they start from
    /// this node's position, and the caller resets them. A position merely
    /// ahead of this node (another node delivered an event this one has not
    /// received yet) is kept.
    async fn reset_ahead(
        &mut self,
        broker: &SharedBroker,
        live: &[EventId],
    ) -> Result<Vec<usize>, BrokerError> {
        let mut ahead = Vec::new();
        for (i, &at) in live.iter().enumerate() {
            if self.positions[i] <= at {
                continue;
            }
            let page = Page::new(self.positions[i], None, 1, 1);
            let history = broker.history(&self.reg.channels()[i], page).await?;
            if self.positions[i] > history.tip {
                self.positions[i] = at;
                ahead.push(i);
            }
        }
        Ok(ahead)
    }

    /// Closes the stream, with a last `ssegate.token_expired` event, at `at`.
    pub fn expire_at(&mut self, at: SystemTime) {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.expiry = Some(Box::pin(tokio::time::sleep(left)));
    }

    fn cursor(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(self.positions.len() * 24);
        Cursor::write(&self.positions, &mut c);
        c
    }

    fn reset_frame(&self, chans: &[usize], reason: &str) -> Bytes {
        let names: Vec<&str> = chans.iter().map(|&i| self.reg.channels()[i].as_str()).collect();
        let data = serde_json::json!({ "channels": names, "reason": reason }).to_string();
        encode_control(RESET_EVENT, &data, Some(&self.cursor()))
    }

    /// Appends an event unless the client already has it; true if appended.
    fn push_event(&mut self, ev: &Encoded, ch: usize, out: &mut Vec<Bytes>) -> bool {
        let Some(id) = ev.id else {
            out.push(ev.frame().clone());
            return true;
        };
        if id <= self.positions[ch] {
            return false;
        }
        self.positions[ch] = id;
        if self.positions.len() == 1 {
            // The shared frame's id line is this connection's cursor.
            out.push(ev.frame().clone());
        } else {
            let mut line = Vec::with_capacity(8 + 24 * self.positions.len());
            line.extend_from_slice(b"id: ");
            Cursor::write(&self.positions, &mut line);
            line.push(b'\n');
            out.push(Bytes::from(line));
            out.push(ev.body());
        }
        true
    }

    /// The next page of a resume, into `out`; `None` once the replay is
    /// over (live events follow), or an error that ends the stream.
    fn poll_replay(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<Result<(), ()>>> {
        loop {
            let Some(replay) = self.replay.as_mut() else {
                return Poll::Ready(None);
            };
            let (ch, page, target) = match replay.poll_step(cx, self.reg.channels(), &self.positions) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "reading history for a resume failed; closing the stream");
                    return Poll::Ready(Some(Err(())));
                }
                Poll::Ready(Ok(Step::Done)) => {
                    if replay.events > 0 {
                        self.metrics.history_replays.increment(1);
                        self.metrics.history_replayed_events.increment(replay.events);
                    }
                    self.replay = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(Step::Page(ch, page))) => (ch, page, replay.target(ch)),
            };
            if page.trimmed {
                self.positions[ch] = target;
                out.push(self.reset_frame(&[ch], "history_trimmed"));
                self.metrics.resets_trimmed.increment(1);
                return Poll::Ready(Some(Ok(())));
            }
            let before = self.positions[ch];
            let more = page.more;
            let mut sent = 0;
            for e in page.entries {
                let ev = encode_incoming(e.payload, Some(e.id), &self.metrics);
                sent += self.push_event(&ev, ch, out) as u64;
            }
            if !more || self.positions[ch] == before {
                // History ends before the node's position only if it
                // expired meanwhile; carry on from the node's position.
                self.positions[ch] = self.positions[ch].max(target);
            }
            if let Some(replay) = self.replay.as_mut() {
                replay.events += sent;
            }
            if !out.is_empty() {
                self.reg.subscriber().progressed();
                return Poll::Ready(Some(Ok(())));
            }
        }
    }

    /// Waits for queued items and appends their bytes to `out`. `None` once
    /// the stream is closed (shutdown, slow client, failed resume).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        if !self.opening.is_empty() {
            // Handed over whole: the stream keeps no buffer for its opening.
            if out.is_empty() {
                std::mem::swap(out, &mut self.opening);
            } else {
                out.append(&mut self.opening);
            }
            self.opening = Vec::new();
            return Poll::Ready(Some(()));
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.expiry = None;
            self.replay = None;
            self.reg.subscriber().close(Close::Expired);
            out.push(TOKEN_EXPIRED.clone());
            return Poll::Ready(Some(()));
        }
        if self.replay.is_some() {
            if self.reg.subscriber().poll_closed(cx) {
                return Poll::Ready(None);
            }
            match self.poll_replay(cx, out) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(()))) => {
                    let bytes = out.iter().map(|b| b.len() as u64).sum();
                    self.metrics.bytes_out.increment(bytes);
                    return Poll::Ready(Some(()));
                }
                Poll::Ready(Some(Err(()))) => {
                    self.reg.subscriber().close(Close::Shutdown);
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {}
            }
        }
        loop {
            let mut items = std::mem::take(&mut self.spare);
            let sub = self.reg.subscriber();
            let drained = match &mut *self.positions {
                // One channel: the frame's `id:` line is the cursor, so the
                // hub can write durable events itself while the writer is
                // idle (`hub::direct`), and tells it where they reached.
                [position] => sub.poll_drain_at(cx, &mut items, position),
                _ => sub.poll_drain(cx, &mut items),
            };
            match drained {
                Poll::Pending => {
                    self.spare = items;
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            let mut taken = WriteTimes::default();
            let idle = is_lone_heartbeat(&items);
            for item in items.drain(..) {
                match item {
                    Item::Event(ev, ch) => {
                        if self.push_event(&ev, ch as usize, out) {
                            taken.add(ev.published_us, ev.received_us);
                        }
                    }
                    Item::Reset(ch, tip) => {
                        self.positions[ch as usize] = self.positions[ch as usize].max(tip);
                        out.push(self.reset_frame(&[ch as usize], "history_trimmed"));
                    }
                    Item::Heartbeat => out.push(HEARTBEAT.clone()),
                    // Only dynamic subscribers get these.
                    Item::Ready(..) => {}
                }
            }
            recycle(&mut items, idle);
            self.spare = items;
            self.metrics.record_write(&taken);
            if !out.is_empty() {
                self.metrics
                    .bytes_out
                    .increment(out.iter().map(|b| b.len() as u64).sum());
                return Poll::Ready(Some(()));
            }
        }
    }
}

impl StreamSession {
    /// Whether the stream was closed (registering for a wake-up if not).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.reg.subscriber().poll_closed(cx)
    }
}

/// Joins chunks into one buffer (one write) unless there is only one.
pub fn coalesce(chunks: &mut Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one"),
        _ => {
            let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks.drain(..) {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}

impl Chunks for StreamSession {
    fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        StreamSession::poll_chunk(self, cx, out)
    }
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        StreamSession::poll_closed(self, cx)
    }
    fn subscriber(&self) -> &Subscriber {
        self.reg.subscriber()
    }
}
