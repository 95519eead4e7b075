//! One SSE stream's lifecycle, independent of the HTTP stack that carries
//! it: register in the hub, wait until every channel is live on this node,
//! replay history after the client's cursor (or send `ssegate.reset`), then
//! turn queued items into bytes, dropping what the client already has.
//!
//! The resume race (hard part 1) is closed by the hub: registration hands
//! the stream the channel's position on this node, every later event
//! reaches the stream's queue, and the replay reads history exactly up to
//! that position. Events in the queue at or before the client's position
//! are dropped, so a client ahead of this node gets no duplicate either.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::broker::{BrokerError, SharedBroker, encode_incoming, now_us};
use crate::hub::{Close, Hub, Item, Registration, Subscriber};
use crate::metrics::Metrics;
use crate::sse::{Channel, Cursor, Encoded, EventId, encode_comment, encode_control, encode_retry_hint};

/// History is read in pages of this many events.
const PAGE: usize = 500;

pub const RESET_EVENT: &str = "ssegate.reset";
pub const TOKEN_EXPIRED_EVENT: &str = "ssegate.token_expired";

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
}

pub struct StreamSession {
    reg: Registration,
    /// Bytes to write before anything queued: the opening, resets, replay.
    opening: Vec<Bytes>,
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
    /// it starts with (the retry hint, the cursor, resets, replayed history).
    pub async fn open(
        hub: &Hub,
        broker: &SharedBroker,
        metrics: &Metrics,
        params: OpenParams,
    ) -> Result<StreamSession, OpenError> {
        let n = params.channels.len();
        let sub = Subscriber::new(n, params.queue_limit);
        let reg = hub.register(sub.clone(), params.channels);
        let live = tokio::time::timeout(params.open_timeout, sub.ready())
            .await
            .map_err(|_| OpenError::NotReady)?
            .map_err(OpenError::Closed)?;
        let retry_ms = params.retry.as_millis() as u64;
        let mut out = Vec::new();
        let mut session = StreamSession {
            reg,
            opening: Vec::new(),
            expiry: None,
            positions: live.clone(),
            spare: VecDeque::new(),
            metrics: metrics.clone(),
        };
        match params.cursor.as_deref().map(|c| Cursor::parse(c, n)) {
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
                out.push(encode_retry_hint(retry_ms, Some(&session.cursor())));
                session.replay(broker, &live, &mut out).await?;
            }
        }
        session.opening = out;
        Ok(session)
    }

    /// Closes the stream, with a last `ssegate.token_expired` event, at `at`.
    pub fn expire_at(&mut self, at: SystemTime) {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.expiry = Some(Box::pin(tokio::time::sleep(left)));
    }

    /// Brings every channel from the client's position up to this node's.
    async fn replay(
        &mut self,
        broker: &SharedBroker,
        live: &[EventId],
        out: &mut Vec<Bytes>,
    ) -> Result<(), BrokerError> {
        let mut replayed = 0u64;
        for (i, &target) in live.iter().enumerate() {
            while self.positions[i] < target {
                let channel = &self.reg.channels()[i];
                let page = broker
                    .history(channel, self.positions[i], Some(target), PAGE)
                    .await?;
                if page.trimmed {
                    self.positions[i] = target;
                    out.push(self.reset_frame(&[i], "history_trimmed"));
                    self.metrics.resets_trimmed.increment(1);
                    break;
                }
                let full = page.entries.len() == PAGE;
                let before = self.positions[i];
                for e in page.entries {
                    let ev = encode_incoming(e.payload, Some(e.id), &self.metrics);
                    replayed += self.push_event(&ev, i, out) as u64;
                }
                if !full || self.positions[i] == before {
                    // History ends before the node's position only if it
                    // expired meanwhile; carry on from the node's position.
                    self.positions[i] = self.positions[i].max(target);
                }
            }
        }
        if replayed > 0 {
            self.metrics.history_replays.increment(1);
            self.metrics.history_replayed_events.increment(replayed);
        }
        Ok(())
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

    /// Waits for queued items and appends their bytes to `out`. `None` once
    /// the stream is closed (shutdown or slow client).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        if !self.opening.is_empty() {
            out.append(&mut self.opening);
            return Poll::Ready(Some(()));
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.expiry = None;
            self.reg.subscriber().close(Close::Expired);
            out.push(TOKEN_EXPIRED.clone());
            return Poll::Ready(Some(()));
        }
        loop {
            let mut items = std::mem::take(&mut self.spare);
            match self.reg.subscriber().poll_drain(cx, &mut items) {
                Poll::Pending => {
                    self.spare = items;
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(())) => {}
            }
            let mut events = 0u64;
            let mut oldest_us = u64::MAX;
            for item in items.drain(..) {
                match item {
                    Item::Event(ev, ch) => {
                        if self.push_event(&ev, ch as usize, out) {
                            events += 1;
                            oldest_us = oldest_us.min(ev.published_us);
                        }
                    }
                    Item::Reset(ch, tip) => {
                        self.positions[ch as usize] = self.positions[ch as usize].max(tip);
                        out.push(self.reset_frame(&[ch as usize], "history_trimmed"));
                    }
                    Item::Heartbeat => out.push(HEARTBEAT.clone()),
                }
            }
            if items.capacity() > 1024 {
                items.shrink_to(64);
            }
            self.spare = items;
            if events > 0 {
                self.metrics.events_out.increment(events);
                self.metrics
                    .record_latency_us(now_us().saturating_sub(oldest_us), events);
            }
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
