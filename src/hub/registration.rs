//! How streams and sockets take their place in the hub: an `Attachment`
//! puts a subscriber among the node's connections (heartbeats, stall
//! checks, shutdown); a `Subscription` adds it to one channel's fan-out.
//! An SSE stream's `Registration` is both, for its fixed channels; a
//! WebSocket attaches once and subscribes channels as it goes. Dropping
//! any of them undoes it; a channel's last subscriber leaving unsubscribes
//! the node from the broker.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use slab::Slab;

use super::channel::{ChannelState, Mode, SubRef};
use super::{Hub, STREAM_SHARDS, SubCommand, Subscriber};
use crate::sse::{Channel, EventId};

/// A subscriber's place among the node's connections.
pub struct Attachment {
    hub: Hub,
    slot: (usize, usize),
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let (shard, key) = self.slot;
        self.hub.0.streams[shard].lock().try_remove(key);
    }
}

/// A subscriber on one channel, as its channel number `ch`.
pub struct Subscription {
    hub: Hub,
    channel: Channel,
    key: usize,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove_channel(&self.channel, self.key);
    }
}

/// An SSE stream's place in the hub: attached, and on its channels.
pub struct Registration {
    sub: Arc<Subscriber>,
    channels: Box<[Channel]>,
    _subscriptions: Box<[Subscription]>,
    _attachment: Attachment,
    hub: Hub,
}

impl Registration {
    pub fn subscriber(&self) -> &Arc<Subscriber> {
        &self.sub
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.0.metrics.streams_open.decrement(1.0);
    }
}

impl Hub {
    /// Registers an SSE stream on `channels` (distinct). Each channel
    /// reports its position to the subscriber as soon as it is live on
    /// this node.
    pub fn register(&self, sub: Arc<Subscriber>, channels: Box<[Channel]>, presence: bool) -> Registration {
        let subscriptions = channels
            .iter()
            .enumerate()
            .map(|(i, c)| self.subscribe(&sub, c.clone(), i as u16, presence))
            .collect();
        let attachment = self.attach(&sub);
        self.0.metrics.streams_open.increment(1.0);
        self.0.metrics.streams_opened.increment(1);
        Registration {
            sub,
            channels,
            _subscriptions: subscriptions,
            _attachment: attachment,
            hub: self.clone(),
        }
    }

    /// Puts `sub` among the node's connections.
    pub fn attach(&self, sub: &Arc<Subscriber>) -> Attachment {
        let shard = self.0.next_stream_shard.fetch_add(1, Ordering::Relaxed) % STREAM_SHARDS;
        let key = self.0.streams[shard].lock().insert(sub.clone());
        Attachment {
            hub: self.clone(),
            slot: (shard, key),
        }
    }

    /// Adds `sub` to `channel`'s fan-out as its channel number `ch`; the
    /// channel's position reaches the subscriber once it is live here.
    /// With `presence`, it also gets the channel's `ssegate.join` and
    /// `ssegate.leave` events.
    pub fn subscribe(
        &self,
        sub: &Arc<Subscriber>,
        channel: Channel,
        ch: u16,
        presence: bool,
    ) -> Subscription {
        let mut want = None;
        let key = {
            let mut shard = self.shard(channel.as_str()).lock();
            let state = shard.entry(channel.clone()).or_insert_with(|| {
                let instance = self.0.next_instance.fetch_add(1, Ordering::Relaxed);
                want = Some(SubCommand::Want {
                    channel: channel.clone(),
                    instance,
                });
                ChannelState {
                    subs: Slab::new(),
                    last_id: EventId::ZERO,
                    instance,
                    epoch: 0,
                    mode: Mode::Pending,
                    held: Vec::new(),
                }
            });
            let key = state.subs.insert(SubRef {
                sub: sub.clone(),
                ch,
                presence,
            });
            if !matches!(state.mode, Mode::Pending) {
                sub.set_ready(ch, state.last_id);
            }
            key
        };
        if let Some(w) = want {
            self.0.metrics.subscriptions.increment(1.0);
            let _ = self.0.control.send(w);
        }
        self.presence_changed(&channel);
        Subscription {
            hub: self.clone(),
            channel,
            key,
        }
    }

    fn remove_channel(&self, channel: &Channel, key: usize) {
        self.presence_changed(channel);
        let unwant = {
            let mut shard = self.shard(channel.as_str()).lock();
            let Some(state) = shard.get_mut(channel.as_str()) else {
                return;
            };
            state.subs.try_remove(key);
            if !state.subs.is_empty() {
                return;
            }
            let instance = state.instance;
            shard.remove(channel.as_str());
            SubCommand::Unwant {
                channel: channel.clone(),
                instance,
            }
        };
        self.0.metrics.subscriptions.decrement(1.0);
        let _ = self.0.control.send(unwant);
    }
}
