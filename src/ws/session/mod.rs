//! One WebSocket's protocol state, apart from its socket: the channels it
//! is subscribed to (each with the client's position), what it asked and
//! is waiting for (publishes, a token refresh, a resume's history pages),
//! and the frames to send. The socket side is `conn`.
//!
//! Exactly once per channel, as for SSE: a channel reports that it is live
//! on this node (`Item::Ready`) in the socket's queue ahead of its events;
//! a subscribe with `after` replays history up to that position (one page
//! at a time, within the node's replay budget) before any later item of
//! the queue is handled, and events at or before a channel's position are
//! dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use serde_json::Value;

mod requests;

use super::frame;
use super::protocol;
use super::replay::{Resume, Step};
use super::socket::{MAX_UNANSWERED, UnansweredPings};
use crate::auth::Access;
use crate::hub::{Attachment, Close, Item, Subscriber, Subscription, is_lone_heartbeat, recycle};
use crate::metrics::WriteTimes;
use crate::sse::{Channel, EventId};
use crate::state::AppState;

/// Why a session ends: the close code and reason to send.
pub type Closing = (u16, &'static str);

/// The close frame for a stream the node closed.
pub fn closing_for(reason: Close) -> Closing {
    match reason {
        Close::SlowClient => (4008, "queue full: reconnect and resume with after"),
        Close::Shutdown => (1001, "node draining"),
        Close::Expired => (4401, "token expired"),
    }
}

pub struct Slot {
    pub channel: Channel,
    _subscription: Subscription,
    pub position: EventId,
    /// Until the channel is live: what the subscribe asked.
    start: Option<Start>,
}

/// A subscribe waiting for its channel to be live: its `after`, whether
/// it wants the snapshot, its `ref`.
struct Start {
    after: Option<EventId>,
    state: bool,
    reference: Option<Value>,
}

pub struct Session {
    app: AppState,
    sub: Arc<Subscriber>,
    _attachment: Attachment,
    slots: Vec<Option<Slot>>,
    /// Channel numbers freed since the queue was last drained: items of
    /// the channel that had one may still be queued under it, so it is not
    /// given to another channel until they are taken.
    retired: Vec<usize>,
    access: Access,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    pending: Option<Box<FuturesUnordered<requests::Pending>>>,
    resume: Option<Box<Resume>>,
    /// Items taken from the queue while a resume replays.
    stash: VecDeque<Item>,
    spare: VecDeque<Item>,
    /// Shared with the socket when the hub pings it directly.
    pings_unanswered: UnansweredPings,
    /// The events taken since the last `poll_output`, for the metrics.
    taken: WriteTimes,
}

impl Session {
    /// A session for an accepted upgrade: attached to the hub, with
    /// `channels` subscribed and live (their `subscribed` frames queued).
    pub async fn open(
        app: AppState,
        access: Access,
        channels: Vec<Channel>,
    ) -> Result<(Session, Vec<Bytes>), crate::stream::OpenError> {
        let sub = Subscriber::new_dynamic(app.config().client_queue);
        sub.ping_every_heartbeat();
        sub.set_client(access.client_id());
        let attachment = app.hub().attach(&sub);
        app.metrics().websockets_open.increment(1.0);
        app.metrics().websockets_opened.increment(1);
        let mut session = Session {
            _attachment: attachment,
            sub,
            slots: Vec::new(),
            retired: Vec::new(),
            expiry: None,
            pending: None,
            resume: None,
            stash: VecDeque::new(),
            spare: VecDeque::new(),
            pings_unanswered: UnansweredPings::default(),
            taken: WriteTimes::default(),
            access,
            app,
        };
        session.set_expiry();
        for c in channels {
            session.add(c, None, false, false, None);
        }
        let mut out = Vec::new();
        let open_timeout = session.app.config().subscribe_timeout;
        let all_live = std::future::poll_fn(|cx| {
            while session.slots.iter().flatten().any(|s| s.start.is_some()) {
                let mut items = VecDeque::new();
                match session.sub.poll_drain(cx, &mut items) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(c)) => return Poll::Ready(Err(c)),
                    Poll::Ready(Ok(())) => {}
                }
                for item in items {
                    match item {
                        Item::Ready(ch, pos) => session.ready(ch, pos, &mut out),
                        other => session.stash.push_back(other),
                    }
                }
            }
            Poll::Ready(Ok(()))
        });
        match tokio::time::timeout(open_timeout, all_live).await {
            Err(_) => return Err(crate::stream::OpenError::NotReady),
            Ok(Err(c)) => return Err(crate::stream::OpenError::Closed(c)),
            Ok(Ok(())) => {}
        }
        Ok((session, out))
    }

    fn set_expiry(&mut self) {
        self.expiry = self.access.expires_at().map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            Box::pin(tokio::time::sleep(left))
        });
    }

    fn slot_of(&self, channel: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.channel.as_str() == channel))
    }

    /// A channel number to give a new subscription, if one is left.
    fn free_slot(&self) -> Option<usize> {
        let reusable = (0..self.slots.len()).find(|i| self.slots[*i].is_none() && !self.retired.contains(i));
        reusable.or((self.slots.len() <= u16::MAX as usize).then_some(self.slots.len()))
    }

    fn add(
        &mut self,
        channel: Channel,
        after: Option<EventId>,
        state: bool,
        presence: bool,
        reference: Option<Value>,
    ) {
        let ch = self.free_slot().expect("checked by the caller");
        if ch == self.slots.len() {
            self.slots.push(None);
        }
        let subscription = self
            .app
            .hub()
            .subscribe(&self.sub, channel.clone(), ch as u16, presence);
        self.slots[ch] = Some(Slot {
            channel,
            _subscription: subscription,
            position: EventId::ZERO,
            start: Some(Start {
                after,
                state,
                reference,
            }),
        });
    }

    /// Why the node closed this socket's queue, if it did (registering for
    /// a wake-up if not).
    pub fn poll_close(&self, cx: &mut Context<'_>) -> Option<Close> {
        self.sub.poll_close(cx)
    }

    pub fn on_pong(&mut self) {
        self.pings_unanswered.store(0, Ordering::Relaxed);
    }

    /// The count of unanswered pings, for a socket the hub pings itself.
    pub fn unanswered_pings(&self) -> UnansweredPings {
        self.pings_unanswered.clone()
    }

    pub fn subscriber(&self) -> &Subscriber {
        &self.sub
    }

    /// A channel is live on this node at `pos`.
    fn ready(&mut self, ch: u16, pos: EventId, out: &mut Vec<Bytes>) {
        let Some(slot) = self.slots.get_mut(ch as usize).and_then(Option::as_mut) else {
            return;
        };
        let Some(Start {
            after,
            state,
            reference,
        }) = slot.start.take()
        else {
            return;
        };
        match after {
            _ if state || after.is_some_and(|a| a != pos) => {
                // A resume or a snapshot: `subscribed` once the replay knows
                // where it starts.
                let channel = slot.channel.clone();
                let resume = Resume::new(&self.app, ch as usize, channel, after, pos, reference, state);
                self.resume = Some(Box::new(resume));
            }
            _ => {
                slot.position = after.unwrap_or(pos);
                let position = slot.position.to_string();
                out.push(frame::json(&protocol::subscribed(
                    slot.channel.as_str(),
                    &position,
                    reference,
                )));
            }
        }
    }

    fn deliver(&mut self, item: Item, out: &mut Vec<Bytes>) -> Result<(), Closing> {
        match item {
            Item::Ready(ch, pos) => self.ready(ch, pos, out),
            Item::Event(ev, ch) => {
                let Some(slot) = self.slots.get_mut(ch as usize).and_then(Option::as_mut) else {
                    return Ok(());
                };
                if slot.start.is_some() {
                    return Ok(());
                }
                if let Some(id) = ev.id {
                    if id <= slot.position {
                        return Ok(());
                    }
                    slot.position = id;
                }
                out.push(frame::event(slot.channel.as_str(), &ev));
                self.taken.add(ev.published_us, ev.received_us);
            }
            Item::Reset(ch, tip) => {
                if let Some(slot) = self.slots.get_mut(ch as usize).and_then(Option::as_mut) {
                    slot.position = slot.position.max(tip);
                    let position = slot.position.to_string();
                    out.push(frame::json(&protocol::reset(
                        slot.channel.as_str(),
                        "history_trimmed",
                        &position,
                    )));
                }
            }
            Item::Heartbeat => {
                if self.pings_unanswered.load(Ordering::Relaxed) >= MAX_UNANSWERED {
                    return Err((1001, "no pong for two heartbeats"));
                }
                self.pings_unanswered.fetch_add(1, Ordering::Relaxed);
                out.push(frame::ping());
            }
        }
        Ok(())
    }

    /// Frames to send, into `out`: answers to what the socket waited for,
    /// a resume's pages, queued items. `Err` to close with that code.
    pub fn poll_output(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Result<(), Closing>> {
        let polled = self.poll_frames(cx, out);
        self.app.metrics().record_write(&std::mem::take(&mut self.taken));
        polled
    }

    fn poll_frames(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Result<(), Closing>> {
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            self.expiry = None;
            return Poll::Ready(Err((4401, "token expired")));
        }
        self.poll_pending(cx, out);
        if let Some(resume) = &mut self.resume {
            let slot = self.slots[resume.channel_index()]
                .as_mut()
                .expect("resuming a subscribed channel");
            match resume.poll_step(cx, slot, out) {
                Poll::Pending => {
                    return if out.is_empty() {
                        Poll::Pending
                    } else {
                        Poll::Ready(Ok(()))
                    };
                }
                Poll::Ready(Step::More) => return Poll::Ready(Ok(())),
                Poll::Ready(Step::Failed) => return Poll::Ready(Err((1011, "reading history failed"))),
                Poll::Ready(Step::Done) => self.resume = None,
            }
        }
        while let Some(item) = self.stash.pop_front() {
            self.deliver(item, out)?;
            if self.resume.is_some() {
                return Poll::Ready(Ok(()));
            }
        }
        if !out.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut items = std::mem::take(&mut self.spare);
        match self.sub.poll_drain(cx, &mut items) {
            Poll::Pending => {
                // Nothing queued, nothing stashed: no item names a freed number.
                self.retired.clear();
                self.spare = items;
                return Poll::Pending;
            }
            // Counted where the queue overflowed (the hub, or the stall check).
            Poll::Ready(Err(reason)) => return Poll::Ready(Err(closing_for(reason))),
            Poll::Ready(Ok(())) => {}
        }
        let idle = is_lone_heartbeat(&items);
        while let Some(item) = items.pop_front() {
            self.deliver(item, out)?;
            if self.resume.is_some() {
                // The rest waits for the replay, in order.
                self.stash.extend(items.drain(..));
                break;
            }
        }
        if self.stash.is_empty() {
            // Everything queued before the last unsubscribe has been taken.
            self.retired.clear();
        }
        if items.is_empty() {
            recycle(&mut items, idle);
        }
        self.spare = items;
        Poll::Ready(Ok(()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.app.metrics().websockets_open.decrement(1.0);
    }
}
