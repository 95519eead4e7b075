//! Local fan-out: which streams on this node read which channel, and the
//! delivery of each event to them. The hub owns the per-channel position
//! (the last durable id delivered here), which makes resume and gap repair
//! consistent: a stream that registers while the channel is live starts at
//! exactly that position, and every later event reaches it.
//!
//! The hub asks the broker to subscribe a channel when its first local
//! stream arrives and to unsubscribe after the last one leaves, through an
//! unbounded command queue (one entry per channel creation or removal). It
//! never waits on a stream: a full stream queue closes that stream.
//!
//! Locks: one shard mutex per group of channels, held for a dispatch or a
//! registration, never across an await; a stream's own mutex may be taken
//! inside a shard lock, never the reverse.

mod channel;
mod registration;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use registration::{Attachment, Registration, Subscription};
pub use subscriber::{Close, Item, Subscriber};

use channel::{ChannelState, Mode};

use crate::metrics::Metrics;
use crate::sse::{Channel, Encoded, EventId};

const CHANNEL_SHARDS: usize = 64;
const STREAM_SHARDS: usize = 16;

/// Requests from the hub to the broker's subscription manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubCommand {
    /// Subscribe `channel`; once confirmed, carry out `Hub::plan`.
    Want { channel: Channel, instance: u64 },
    /// The last local stream of this instance of the channel left.
    Unwant { channel: Channel, instance: u64 },
}

/// Permission to settle one instance of a channel, valid until the
/// channel's broker connection is lost again: a tip read or repair begun
/// before a loss cannot be applied after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    instance: u64,
    epoch: u64,
}

/// What a channel needs once its subscription is confirmed.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// New on this node: read the tip, then `channel_ready`.
    Tip(Ticket),
    /// Live before a connection loss: repair the gap after this id.
    Repair(Ticket, EventId),
    Nothing,
}

/// The outcome of one step of a gap repair.
#[derive(Debug, PartialEq, Eq)]
pub enum RepairStep {
    /// Caught up; the channel is live again.
    Done,
    /// Events were dropped from the hold while repairing: read again after this id.
    More(EventId),
    /// The channel is no longer waiting for this repair.
    Gone,
}

struct Inner {
    channels: Box<[Mutex<HashMap<Channel, ChannelState>>]>,
    /// Every open stream, for heartbeats and shutdown.
    streams: Box<[Mutex<Slab<Arc<Subscriber>>>]>,
    next_stream_shard: AtomicUsize,
    next_instance: AtomicU64,
    hasher: RandomState,
    control: mpsc::UnboundedSender<SubCommand>,
    metrics: Metrics,
    /// Channels whose local subscribers changed since presence last looked.
    presence_dirty: Mutex<HashSet<Channel>>,
}

/// Cheap handle to the node's hub.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

impl Hub {
    /// A hub and the receiving end of its subscription commands, which the
    /// broker consumes.
    pub fn new(metrics: Metrics) -> (Hub, mpsc::UnboundedReceiver<SubCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Hub(Arc::new(Inner {
            channels: (0..CHANNEL_SHARDS).map(|_| Mutex::default()).collect(),
            streams: (0..STREAM_SHARDS).map(|_| Mutex::default()).collect(),
            next_stream_shard: AtomicUsize::new(0),
            next_instance: AtomicU64::new(1),
            hasher: RandomState::new(),
            control: tx,
            metrics,
            presence_dirty: Mutex::default(),
        }));
        (hub, rx)
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<Channel, ChannelState>> {
        let h = self.0.hasher.hash_one(channel) as usize;
        &self.0.channels[h % CHANNEL_SHARDS]
    }

    /// An event from the broker for `channel`.
    pub fn dispatch(&self, channel: &str, ev: Arc<Encoded>) {
        let mut shard = self.shard(channel).lock();
        let Some(state) = shard.get_mut(channel) else {
            return;
        };
        match state.mode {
            Mode::Live => state.deliver(&ev, &self.0.metrics),
            Mode::Pending | Mode::Repairing { .. } => state.hold(ev),
        }
    }

    /// A presence notice (`ssegate.join` / `ssegate.leave`) for `channel`:
    /// to the local subscribers that asked for them, whatever the mode.
    pub fn dispatch_presence(&self, channel: &str, ev: Arc<Encoded>) {
        let shard = self.shard(channel).lock();
        let Some(state) = shard.get(channel) else {
            return;
        };
        for (_, s) in state.subs.iter().filter(|(_, s)| s.presence) {
            if s.sub.push(Item::Event(ev.clone(), s.ch)).wake() {
                self.0.metrics.slow_client_disconnects.increment(1);
            }
        }
    }

    fn presence_changed(&self, channel: &Channel) {
        self.0.presence_dirty.lock().insert(channel.clone());
    }

    /// Channels whose local subscribers changed since the last call.
    pub fn take_presence_changes(&self) -> Vec<Channel> {
        self.0.presence_dirty.lock().drain().collect()
    }

    /// Every channel with a local subscriber.
    pub fn channel_names(&self) -> Vec<Channel> {
        self.0
            .channels
            .iter()
            .flat_map(|s| s.lock().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Who is on `channel` on this node: each client with its number of
    /// streams and sockets and when its first one connected (ms).
    pub fn local_presence(&self, channel: &str) -> Vec<(Arc<str>, u64, u64)> {
        let mut clients: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        if let Some(state) = self.shard(channel).lock().get(channel) {
            for (_, s) in state.subs.iter() {
                let e = clients.entry(Arc::from(s.sub.client())).or_insert((0, u64::MAX));
                e.0 += 1;
                e.1 = e.1.min(s.sub.since_ms());
            }
        }
        let mut out: Vec<_> = clients.into_iter().map(|(c, (n, since))| (c, n, since)).collect();
        out.sort();
        out
    }

    /// Runs `f` on the channel if `t` is still valid for it.
    fn with_ticket<R>(&self, channel: &str, t: Ticket, f: impl FnOnce(&mut ChannelState) -> R) -> Option<R> {
        let mut shard = self.shard(channel).lock();
        let state = shard.get_mut(channel)?;
        (state.instance == t.instance && state.epoch == t.epoch).then(|| f(state))
    }

    /// What `channel` needs now that the broker confirmed its subscription.
    pub fn plan(&self, channel: &str) -> Plan {
        let shard = self.shard(channel).lock();
        let Some(state) = shard.get(channel) else {
            return Plan::Nothing;
        };
        let t = Ticket {
            instance: state.instance,
            epoch: state.epoch,
        };
        match state.mode {
            Mode::Pending => Plan::Tip(t),
            Mode::Repairing { .. } => Plan::Repair(t, state.last_id),
            Mode::Live => Plan::Nothing,
        }
    }

    /// `tip` is the newest durable id the broker has for `channel`, read
    /// after its subscription was confirmed: the channel goes live there.
    pub fn channel_ready(&self, channel: &str, t: Ticket, tip: EventId) {
        let metrics = &self.0.metrics;
        self.with_ticket(channel, t, |state| {
            if !matches!(state.mode, Mode::Pending) {
                return;
            }
            state.last_id = state.last_id.max(tip);
            for (_, s) in state.subs.iter() {
                s.sub.set_ready(s.ch, state.last_id);
            }
            state.go_live(metrics);
        });
    }

    /// The broker connection of these channels dropped: each live one holds
    /// its live events until its gap is repaired, and outstanding tickets
    /// expire.
    pub fn channels_lost<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) {
        for channel in channels {
            let mut shard = self.shard(channel.as_str()).lock();
            if let Some(state) = shard.get_mut(channel.as_str()) {
                state.lost();
            }
        }
    }

    /// Delivers history read during a repair, in order; returns how many
    /// events were new.
    pub fn deliver_history(&self, channel: &str, t: Ticket, events: &[Arc<Encoded>]) -> usize {
        let metrics = &self.0.metrics;
        self.with_ticket(channel, t, |state| {
            if !matches!(state.mode, Mode::Repairing { .. }) {
                return 0;
            }
            let before = state.last_id;
            for ev in events {
                state.deliver(ev, metrics);
            }
            events
                .iter()
                .filter(|e| e.id.is_some_and(|id| id > before))
                .count()
        })
        .unwrap_or(0)
    }

    pub fn finish_repair(&self, channel: &str, t: Ticket) -> RepairStep {
        let metrics = &self.0.metrics;
        self.with_ticket(channel, t, |state| match state.mode {
            Mode::Repairing { reread: true } => {
                state.mode = Mode::Repairing { reread: false };
                RepairStep::More(state.last_id)
            }
            Mode::Repairing { reread: false } => {
                state.go_live(metrics);
                RepairStep::Done
            }
            _ => RepairStep::Gone,
        })
        .unwrap_or(RepairStep::Gone)
    }

    /// The gap of `channel` cannot be repaired (history trimmed or expired):
    /// its streams get `ssegate.reset` and continue from `tip`.
    pub fn reset_channel(&self, channel: &str, t: Ticket, tip: EventId) {
        let metrics = &self.0.metrics;
        self.with_ticket(channel, t, |state| {
            if !matches!(state.mode, Mode::Repairing { .. }) {
                return;
            }
            state.last_id = state.last_id.max(tip);
            for (_, s) in state.subs.iter() {
                if s.sub.push(Item::Reset(s.ch, state.last_id)).wake() {
                    metrics.slow_client_disconnects.increment(1);
                }
            }
            metrics.resets_trimmed.increment(state.subs.len() as u64);
            state.go_live(metrics);
        });
    }

    /// Channels with at least one local stream.
    pub fn channel_count(&self) -> usize {
        self.0.channels.iter().map(|s| s.lock().len()).sum()
    }

    pub fn stream_count(&self) -> usize {
        self.0.streams.iter().map(|s| s.lock().len()).sum()
    }

    fn for_each_stream_in(&self, shard: usize, f: impl Fn(&Subscriber)) {
        // Copy the handles out so the shard lock is not held while waking.
        let subs: Vec<Arc<Subscriber>> = self.0.streams[shard]
            .lock()
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        for s in subs {
            f(&s);
        }
    }

    /// Sends a comment heartbeat to every stream once per `every`, one
    /// shard of streams at a time so that the writes are spread out, and
    /// closes the streams that took nothing from their queue for `stall`
    /// (zero: never).
    pub async fn run_heartbeats(self, every: Duration, stall: Duration, cancel: CancellationToken) {
        let step = (every / STREAM_SHARDS as u32).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let per_heartbeat = (every.as_millis() / step.as_millis().max(1)).max(1) as usize;
        let stall_secs = stall.as_secs().clamp(1, u32::MAX as u64) as u32;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let metrics = self.0.metrics.clone();
        // Every shard is visited once per `every`: `per_heartbeat` ticks
        // spread over the shards.
        for n in 0usize.. {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            subscriber::tick_coarse_clock();
            let (from, to) = (
                n % per_heartbeat * STREAM_SHARDS / per_heartbeat,
                (n % per_heartbeat + 1) * STREAM_SHARDS / per_heartbeat,
            );
            for shard in from..to {
                self.for_each_stream_in(shard, |s| {
                    if !stall.is_zero() && s.close_if_stalled(stall_secs) {
                        metrics.stalled_streams.increment(1);
                        metrics.slow_client_disconnects.increment(1);
                    }
                    s.heartbeat();
                });
            }
        }
    }

    /// Closes every stream, spread over `window` so that the clients do not
    /// all reconnect at the same instant.
    pub async fn close_all(&self, window: Duration) {
        let step = window / STREAM_SHARDS as u32;
        for shard in 0..STREAM_SHARDS {
            self.for_each_stream_in(shard, |s| s.close(Close::Shutdown));
            if !step.is_zero() {
                tokio::time::sleep(step).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::Event;
    use bytes::Bytes;
    use futures_util::task::noop_waker_ref;
    use std::collections::VecDeque;
    use std::task::{Context, Poll};

    fn chan(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn durable(ms: u64) -> Arc<Encoded> {
        let e = Event {
            data: Bytes::from(ms.to_string()),
            ..Default::default()
        };
        Arc::new(Encoded::new(&e, Some(EventId::new(ms, 0)), 0))
    }

    fn ready(hub: &Hub, c: &str, tip_ms: u64) {
        let Plan::Tip(t) = hub.plan(c) else {
            panic!("not pending")
        };
        hub.channel_ready(c, t, EventId::new(tip_ms, 0));
    }

    fn drained(sub: &Subscriber) -> Vec<u64> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut out = VecDeque::new();
        match sub.poll_drain(&mut cx, &mut out) {
            Poll::Ready(Ok(())) => out
                .into_iter()
                .filter_map(|i| match i {
                    Item::Event(e, _) => e.id.map(|id| id.ms),
                    Item::Reset(_, tip) => Some(1_000_000 + tip.ms),
                    Item::Ready(..) | Item::Heartbeat => None,
                })
                .collect(),
            _ => vec![],
        }
    }

    #[test]
    fn first_stream_wants_the_channel_and_last_one_unwants_it() {
        let (hub, mut rx) = Hub::new(Metrics::new());
        let a = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        let b = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        let SubCommand::Want { instance, .. } = rx.try_recv().unwrap() else {
            panic!()
        };
        assert!(rx.try_recv().is_err(), "one want per channel");
        drop(a);
        assert!(rx.try_recv().is_err());
        drop(b);
        assert_eq!(
            rx.try_recv().unwrap(),
            SubCommand::Unwant {
                channel: chan("c"),
                instance
            }
        );
        assert_eq!(hub.channel_count(), 0);
    }

    #[test]
    fn events_held_while_pending_are_delivered_after_the_tip_without_duplicates() {
        let (hub, _rx) = Hub::new(Metrics::new());
        let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        hub.dispatch("c", durable(5));
        hub.dispatch("c", durable(7));
        ready(&hub, "c", 6);
        assert_eq!(drained(reg.subscriber()), vec![7]);
        hub.dispatch("c", durable(7));
        hub.dispatch("c", durable(8));
        assert_eq!(drained(reg.subscriber()), vec![8]);
    }

    #[test]
    fn repair_delivers_history_before_held_live_events() {
        let (hub, _rx) = Hub::new(Metrics::new());
        let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        ready(&hub, "c", 1);
        hub.channels_lost([&chan("c")]);
        hub.dispatch("c", durable(4));
        let Plan::Repair(t, from) = hub.plan("c") else {
            panic!()
        };
        assert_eq!(from, EventId::new(1, 0));
        assert_eq!(
            hub.deliver_history("c", t, &[durable(2), durable(3), durable(4)]),
            3
        );
        assert_eq!(hub.finish_repair("c", t), RepairStep::Done);
        hub.dispatch("c", durable(5));
        assert_eq!(drained(reg.subscriber()), vec![2, 3, 4, 5]);
    }

    #[test]
    fn an_unrepairable_gap_resets_the_channel() {
        let (hub, _rx) = Hub::new(Metrics::new());
        let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        ready(&hub, "c", 1);
        hub.channels_lost([&chan("c")]);
        let Plan::Repair(t, _) = hub.plan("c") else {
            panic!()
        };
        hub.reset_channel("c", t, EventId::new(9, 0));
        hub.dispatch("c", durable(9));
        hub.dispatch("c", durable(10));
        assert_eq!(drained(reg.subscriber()), vec![1_000_009, 10]);
    }

    #[test]
    fn tickets_from_an_earlier_instance_or_connection_are_ignored() {
        let (hub, _rx) = Hub::new(Metrics::new());
        let first = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
        let Plan::Tip(old_instance) = hub.plan("c") else {
            panic!()
        };
        drop(first);
        let sub = Subscriber::new(1, 1 << 20);
        let _reg = hub.register(sub.clone(), Box::new([chan("c")]), false);
        let mut cx = Context::from_waker(noop_waker_ref());
        hub.channel_ready("c", old_instance, EventId::new(3, 0));
        assert!(sub.poll_ready(&mut cx).is_pending());
        let Plan::Tip(before_loss) = hub.plan("c") else {
            panic!()
        };
        hub.channels_lost([&chan("c")]);
        hub.channel_ready("c", before_loss, EventId::new(3, 0));
        assert!(
            sub.poll_ready(&mut cx).is_pending(),
            "a tip read before the loss is stale"
        );
        let Plan::Tip(t) = hub.plan("c") else { panic!() };
        hub.channel_ready("c", t, EventId::new(3, 0));
        assert!(sub.poll_ready(&mut cx).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_reach_every_idle_stream_once_per_interval() {
        let (hub, _rx) = Hub::new(Metrics::new());
        let subs: Vec<_> = (0..40)
            .map(|_| {
                let s = Subscriber::new(1, 1 << 20);
                let r = hub.register(s.clone(), Box::new([chan("h")]), false);
                (s, r)
            })
            .collect();
        ready(&hub, "h", 0);
        for (s, _) in &subs {
            s.ready().await.unwrap();
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(hub.clone().run_heartbeats(
            Duration::from_secs(16),
            Duration::ZERO,
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(16_500)).await;
        let mut cx = Context::from_waker(noop_waker_ref());
        for (s, _) in &subs {
            let mut out = VecDeque::new();
            assert_eq!(s.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
            assert!(
                matches!(out.as_slices().0, [Item::Heartbeat]),
                "exactly one heartbeat"
            );
        }
        cancel.cancel();
        task.await.unwrap();
    }
}
