//! One Mercure subscriber's `text/event-stream`: registered in the index
//! (and attached to the hub for heartbeats, stall checks and shutdown),
//! then, when resuming, the updates of the log after the client's
//! `Last-Event-ID` up to the node's position, filtered as live ones are,
//! then the live updates from its bounded queue: the shared frames, as
//! they were encoded once for the node.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::Inner;
use super::index::Filter;
use crate::broker::{BrokerError, History, Page};
use crate::hub::{Attachment, Close, Item, Subscriber, is_lone_heartbeat, recycle};
use crate::metrics::WriteTimes;
use crate::sse::mercure::Update;
use crate::sse::{Channel, EventId, encode_comment};
use crate::stream::{Chunks, Handoff};

static HEARTBEAT: LazyLock<Bytes> = LazyLock::new(|| encode_comment(""));

/// Updates per history page of a resume.
const PAGE: usize = 500;

/// Removes the subscriber from the index when the stream ends.
pub(super) struct Registered {
    pub(super) inner: Arc<Inner>,
    pub(super) key: usize,
    pub(super) raw: Vec<String>,
    /// Its entries in the subscriptions registry, if any.
    pub(super) announced: Option<super::registry::Announced>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.inner.index.lock().remove(self.key, &self.raw);
        self.inner.metrics.mercure_subscribers().decrement(1.0);
        if let Some(a) = self.announced.take() {
            super::registry::leave(self.inner.clone(), a);
        }
    }
}

struct Replay {
    inner: Arc<Inner>,
    filter: Arc<Filter>,
    from: EventId,
    until: EventId,
    fetch: Option<BoxFuture<'static, Result<History, BrokerError>>>,
}

/// What a stream holds only to undo when it ends.
struct Held {
    registered: Registered,
    _attachment: Attachment,
}

pub struct MercureStream {
    sub: Arc<Subscriber>,
    held: Box<Held>,
    opening: Option<Bytes>,
    replay: Option<Box<Replay>>,
    /// The last log position written: anything at or before it is a duplicate.
    at: EventId,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    spare: VecDeque<Item>,
}

impl MercureStream {
    pub(super) fn new(
        sub: Arc<Subscriber>,
        registered: Registered,
        attachment: Attachment,
        filter: Arc<Filter>,
        resume_from: Option<EventId>,
        position: EventId,
        expires: Option<SystemTime>,
    ) -> MercureStream {
        let inner = registered.inner.clone();
        let replay = resume_from.filter(|from| *from < position).map(|from| {
            Box::new(Replay {
                inner,
                filter,
                from,
                until: position,
                fetch: None,
            })
        });
        let expiry = expires.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        });
        MercureStream {
            sub,
            held: Box::new(Held {
                registered,
                _attachment: attachment,
            }),
            // A comment, so that the response starts at once through proxies.
            opening: Some(HEARTBEAT.clone()),
            replay,
            at: position,
            expiry,
            spare: VecDeque::new(),
        }
    }

    /// The next page of a resume into `out`; `Ready(false)` once it is over.
    fn poll_replay(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<bool> {
        loop {
            let Some(r) = self.replay.as_mut() else {
                return Poll::Ready(false);
            };
            let fetch = r.fetch.get_or_insert_with(|| {
                let page = Page {
                    after: r.from,
                    until: Some(r.until),
                    limit: PAGE,
                    max_bytes: r.inner.page_bytes,
                    lenient: false,
                };
                let broker = r.inner.broker.clone();
                Box::pin(async move { broker.history(&Channel::mercure(), page).await })
            });
            let page = match fetch.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(p) => p,
            };
            r.fetch = None;
            let page = match page {
                Ok(p) if !p.trimmed && !p.entries.is_empty() => p,
                Ok(_) => {
                    self.replay = None;
                    return Poll::Ready(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading Mercure history for a resume failed; resuming live");
                    self.replay = None;
                    return Poll::Ready(false);
                }
            };
            let more = page.more;
            let mut sent = 0u64;
            for e in page.entries {
                r.from = e.id;
                let Some(u) = Update::from_payload(&e.payload) else {
                    continue;
                };
                let topics: Vec<Box<str>> = u.topics.iter().map(|t| t.as_str().into()).collect();
                if r.filter.receives(&topics, u.private) {
                    out.push(u.encode(Some(e.id), 0).frame().clone());
                    sent += 1;
                }
            }
            if sent > 0 {
                r.inner.metrics.mercure("replayed").increment(sent);
            }
            if !more || r.from >= r.until {
                self.replay = None;
            }
            if !out.is_empty() {
                self.sub.progressed();
                return Poll::Ready(true);
            }
        }
    }

    /// Waits for something to write and appends its bytes to `out`; `None`
    /// once the stream is closed.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        if let Some(b) = self.opening.take() {
            out.push(b);
            return Poll::Ready(Some(()));
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.expiry = None;
            self.sub.close(Close::Expired);
            return Poll::Ready(None);
        }
        if self.replay.is_some() {
            if self.sub.poll_closed(cx) {
                return Poll::Ready(None);
            }
            match self.poll_replay(cx, out) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(true) => return Poll::Ready(Some(())),
                Poll::Ready(false) => {}
            }
        }
        let metrics = &self.held.registered.inner.metrics;
        loop {
            let mut items = std::mem::take(&mut self.spare);
            match self.sub.poll_drain(cx, &mut items) {
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
                    Item::Event(ev, _) => {
                        if let Some(id) = ev.id {
                            if id <= self.at {
                                continue;
                            }
                            self.at = id;
                        }
                        out.push(ev.frame().clone());
                        taken.add(ev.published_us, ev.received_us);
                    }
                    Item::Heartbeat => out.push(HEARTBEAT.clone()),
                    Item::Reset(..) | Item::Ready(..) => {}
                }
            }
            recycle(&mut items, idle);
            self.spare = items;
            metrics.record_write(&taken);
            if !out.is_empty() {
                metrics
                    .bytes_out
                    .increment(out.iter().map(|b| b.len() as u64).sum());
                return Poll::Ready(Some(()));
            }
        }
    }

    /// Whether the stream was closed (registering for a wake-up if not).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.sub.poll_closed(cx)
    }
}

/// The open stream behind a Mercure `text/event-stream` response
/// (`stream::Handoff`).
pub type MercureHandoff = Handoff<MercureStream>;

impl Chunks for MercureStream {
    fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>> {
        MercureStream::poll_chunk(self, cx, out)
    }
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        MercureStream::poll_closed(self, cx)
    }
    fn subscriber(&self) -> &Subscriber {
        &self.sub
    }
}
