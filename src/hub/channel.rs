//! One channel on this node: its local streams, its position (the last
//! durable id delivered here) and its mode, with the events it holds while
//! its subscription is pending or its gap is being repaired.

use std::sync::Arc;

use slab::Slab;

use super::direct::{DIRECT_STREAMS, DirectWrites};
use super::subscriber::Pushed;
use super::{Item, Subscriber};
use crate::metrics::Metrics;
use crate::sse::{Encoded, EventId};

/// How many live events a channel holds while it waits for its
/// subscription to be confirmed or its gap to be repaired.
const HOLD_LIMIT: usize = 10_000;

pub(super) struct SubRef {
    pub(super) sub: Arc<Subscriber>,
    pub(super) ch: u16,
    /// The subscriber wants `ssegate.join` / `ssegate.leave` events.
    pub(super) presence: bool,
}

pub(super) enum Mode {
    /// Waiting for the broker's subscription and tip.
    Pending,
    Live,
    /// The broker connection was lost; holding live events until the gap
    /// from `last_id` is repaired from history.
    Repairing {
        reread: bool,
    },
}

pub(super) struct ChannelState {
    pub(super) subs: Slab<SubRef>,
    pub(super) last_id: EventId,
    pub(super) instance: u64,
    /// Incremented whenever the channel's broker connection is lost.
    pub(super) epoch: u64,
    pub(super) mode: Mode,
    pub(super) held: Vec<Arc<Encoded>>,
}

impl ChannelState {
    /// Delivers one event to every local stream, once: durable events at or
    /// before the channel's position are duplicates and are dropped.
    pub(super) fn deliver(&mut self, ev: &Arc<Encoded>, metrics: &Metrics) {
        if let Some(id) = ev.id {
            if id <= self.last_id {
                return;
            }
            self.last_id = id;
        }
        // Streams whose writers are idle get it from a batch (`direct`),
        // unless the channel is a broadcast to many.
        let mut direct = DirectWrites::new(metrics);
        let few = self.subs.len() <= DIRECT_STREAMS;
        for (_, s) in self.subs.iter() {
            let item = Item::Event(ev.clone(), s.ch);
            let pushed = if few {
                s.sub.push_live(item)
            } else {
                s.sub.push(item)
            };
            match pushed {
                Pushed::Direct => direct.add(&s.sub),
                pushed => {
                    if pushed.wake() {
                        metrics.slow_client_disconnects.increment(1);
                    }
                }
            }
        }
    }

    pub(super) fn hold(&mut self, ev: Arc<Encoded>) {
        if self.held.len() >= HOLD_LIMIT {
            // Durable events are in history, so they can leave the hold: a
            // repairing channel reads history again before going live; a
            // pending one starts its streams after them (a resuming stream
            // replays them from history).
            let mut newest = EventId::ZERO;
            self.held.retain(|e| match e.id {
                Some(id) => {
                    newest = newest.max(id);
                    false
                }
                None => true,
            });
            match &mut self.mode {
                Mode::Repairing { reread } => *reread = true,
                _ => self.last_id = self.last_id.max(newest),
            }
        }
        if self.held.len() < HOLD_LIMIT {
            self.held.push(ev);
        } else {
            // Only ephemeral events are left: they are lost, as pub/sub loses
            // them during any outage.
            tracing::warn!("dropping an ephemeral event held during a broker outage");
        }
    }

    pub(super) fn lost(&mut self) {
        self.epoch += 1;
        if matches!(self.mode, Mode::Live) {
            self.mode = Mode::Repairing { reread: false };
        }
    }

    pub(super) fn go_live(&mut self, metrics: &Metrics) {
        self.mode = Mode::Live;
        for ev in std::mem::take(&mut self.held) {
            self.deliver(&ev, metrics);
        }
    }
}
