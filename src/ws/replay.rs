//! A WebSocket subscribe with `after`: the history of one channel from the
//! client's position up to this node's, a page at a time within the node's
//! replay budget (as an SSE resume), then live. A position beyond anything
//! the channel ever had is reset, as is one older than the retained
//! history.

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::frame;
use super::protocol;
use super::session::Slot;
use crate::broker::{BrokerError, History, Page, Snapshot, encode_incoming};
use crate::sse::{Channel, EventId};
use crate::state::AppState;
use crate::stream::Fetch;

pub enum Step {
    /// Frames for the client; call again for more.
    More,
    /// The channel is live from its position.
    Done,
    /// History could not be read: the client resumes elsewhere.
    Failed,
}

type SnapshotFetch = BoxFuture<'static, Result<Option<Snapshot>, BrokerError>>;

/// Where the snapshot of a `"state": true` subscribe stands.
enum StateStep {
    /// Asked for at the start (no `after`).
    First(Option<SnapshotFetch>),
    /// Asked for when the history after `after` turns out to be gone.
    OnReset(Option<SnapshotFetch>),
}

pub struct Resume {
    app: AppState,
    ch: usize,
    channel: Channel,
    after: EventId,
    /// This node's position when the channel went live for this socket.
    target: EventId,
    /// The subscribe's `ref`, until `subscribed` is sent.
    reference: Option<Option<Value>>,
    /// Checking a position ahead of this node against the channel's tip.
    tip: Option<BoxFuture<'static, Result<History, BrokerError>>>,
    /// `"state": true`: the snapshot first (and after a reset); `None`
    /// once it was asked for.
    state: Option<StateStep>,
    fetch: Option<Fetch>,
    /// The page sent last holds its share of the budget until the socket
    /// comes back for more.
    handed_out: Option<OwnedSemaphorePermit>,
}

impl Resume {
    /// From `after` (or, with `state` and no `after`, from the snapshot)
    /// up to `target`.
    pub fn new(
        app: &AppState,
        ch: usize,
        channel: Channel,
        after: Option<EventId>,
        target: EventId,
        reference: Option<Value>,
        state: bool,
    ) -> Resume {
        let state = match (state, after) {
            (false, _) => None,
            (true, None) => Some(StateStep::First(None)),
            (true, Some(_)) => Some(StateStep::OnReset(None)),
        };
        Resume {
            app: app.clone(),
            ch,
            channel,
            after: after.unwrap_or(target),
            target,
            reference: Some(reference),
            tip: None,
            state,
            fetch: None,
            handed_out: None,
        }
    }

    pub fn channel_index(&self) -> usize {
        self.ch
    }

    fn subscribed(&mut self, position: EventId, out: &mut Vec<Bytes>) {
        let reference = self.reference.take().flatten();
        let position = position.to_string();
        out.push(frame::json(&protocol::subscribed(
            self.channel.as_str(),
            &position,
            reference,
        )));
    }

    fn reset(&self, reason: &str, slot: &mut Slot, out: &mut Vec<Bytes>) {
        slot.position = self.target;
        let position = self.target.to_string();
        out.push(frame::json(&protocol::reset(
            self.channel.as_str(),
            reason,
            &position,
        )));
        let counter = match reason {
            "history_trimmed" => &self.app.metrics().resets_trimmed,
            _ => &self.app.metrics().resets_ahead,
        };
        counter.increment(1);
    }

    fn state_frame(&self, snapshot: &Snapshot, out: &mut Vec<Bytes>) {
        self.app.metrics().states_sent.increment(1);
        let frame = protocol::state(
            self.channel.as_str(),
            &snapshot.position.to_string(),
            &snapshot.body,
        );
        out.push(frame::json(&frame));
    }

    /// The snapshot asked for at the start: `subscribed` at its position,
    /// then it, then the events after it.
    fn poll_first_state(
        &mut self,
        cx: &mut Context<'_>,
        slot: &mut Slot,
        out: &mut Vec<Bytes>,
    ) -> Poll<Step> {
        let fetch = match &mut self.state {
            Some(StateStep::First(f)) => f.get_or_insert_with(|| {
                let broker = self.app.broker().clone();
                let channel = self.channel.clone();
                Box::pin(async move { broker.get_state(&channel).await })
            }),
            _ => unreachable!("called for the first snapshot"),
        };
        let snapshot = match ready!(fetch.poll_unpin(cx)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, channel = %self.channel, "reading a snapshot failed");
                return Poll::Ready(Step::Failed);
            }
        };
        self.state = None;
        let Some(snapshot) = snapshot else {
            // No snapshot: live from now, as without `state`.
            slot.position = self.target;
            self.subscribed(self.target, out);
            return Poll::Ready(Step::Done);
        };
        self.after = snapshot.position;
        slot.position = snapshot.position;
        self.subscribed(snapshot.position, out);
        self.state_frame(&snapshot, out);
        if snapshot.position >= self.target {
            return Poll::Ready(Step::Done);
        }
        Poll::Ready(Step::More)
    }

    /// History after `after` is gone: with `state`, the snapshot right
    /// after the reset, then the events after it; without, live on.
    fn poll_reset(&mut self, cx: &mut Context<'_>, slot: &mut Slot, out: &mut Vec<Bytes>) -> Poll<Step> {
        let fetch = match &mut self.state {
            Some(StateStep::OnReset(f)) => Some(f.get_or_insert_with(|| {
                let broker = self.app.broker().clone();
                let channel = self.channel.clone();
                Box::pin(async move { broker.get_state(&channel).await })
            })),
            _ => None,
        };
        let snapshot = match fetch {
            None => None,
            Some(f) => match ready!(f.poll_unpin(cx)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.channel, "reading a snapshot failed");
                    return Poll::Ready(Step::Failed);
                }
            },
        };
        self.state = None;
        self.reset("history_trimmed", slot, out);
        let Some(snapshot) = snapshot else {
            return Poll::Ready(Step::Done);
        };
        self.state_frame(&snapshot, out);
        slot.position = snapshot.position;
        if snapshot.position >= self.target {
            return Poll::Ready(Step::Done);
        }
        Poll::Ready(Step::More)
    }

    pub fn poll_step(&mut self, cx: &mut Context<'_>, slot: &mut Slot, out: &mut Vec<Bytes>) -> Poll<Step> {
        self.handed_out = None;
        match &self.state {
            Some(StateStep::First(_)) => return self.poll_first_state(cx, slot, out),
            // A reset waiting for its snapshot.
            Some(StateStep::OnReset(Some(_))) => return self.poll_reset(cx, slot, out),
            _ => {}
        }
        if self.after > self.target {
            return self.poll_ahead(cx, slot, out);
        }
        if self.reference.is_some() {
            slot.position = self.after;
            self.subscribed(self.after, out);
            return Poll::Ready(Step::More);
        }
        let app = &self.app;
        let fetch = self.fetch.get_or_insert_with(|| {
            app.replay_budget().fetch(
                app.broker().clone(),
                self.channel.clone(),
                slot.position,
                self.target,
            )
        });
        let (result, permit) = ready!(fetch.poll_unpin(cx));
        self.fetch = None;
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, channel = %self.channel, "reading history for a WebSocket resume failed");
                return Poll::Ready(Step::Failed);
            }
        };
        if page.trimmed {
            return self.poll_reset(cx, slot, out);
        }
        let before = slot.position;
        let more = page.more;
        let metrics = self.app.metrics();
        let mut sent = 0;
        for e in page.entries {
            if e.id <= slot.position {
                continue;
            }
            slot.position = e.id;
            let ev = encode_incoming(e.payload, Some(e.id), metrics);
            out.push(frame::event(self.channel.as_str(), &ev));
            sent += 1;
        }
        metrics.history_replayed_events.increment(sent);
        self.handed_out = Some(permit);
        if !more || slot.position == before {
            // History ends before the node's position only if it expired
            // meanwhile: carry on from the node's position.
            slot.position = slot.position.max(self.target);
            metrics.history_replays.increment(1);
            return Poll::Ready(Step::Done);
        }
        Poll::Ready(Step::More)
    }

    /// `after` is ahead of this node: kept if the channel has had it (another
    /// node delivered it first), else reset.
    fn poll_ahead(&mut self, cx: &mut Context<'_>, slot: &mut Slot, out: &mut Vec<Bytes>) -> Poll<Step> {
        let broker = self.app.broker().clone();
        let (channel, after) = (self.channel.clone(), self.after);
        let tip = self.tip.get_or_insert_with(|| {
            Box::pin(async move {
                let page = Page::new(after, None, 1, 1);
                broker.history(&channel, page).await
            })
        });
        let history = match ready!(tip.poll_unpin(cx)) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, channel = %self.channel, "reading a channel's tip failed");
                return Poll::Ready(Step::Failed);
            }
        };
        if self.after > history.tip {
            self.subscribed(self.target, out);
            self.reset("unknown_position", slot, out);
        } else {
            slot.position = self.after;
            self.subscribed(self.after, out);
        }
        Poll::Ready(Step::Done)
    }
}
