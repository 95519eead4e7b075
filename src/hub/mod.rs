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
mod direct;
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
pub use subscriber::{
    Beat, Close, DIRECT_MAX, EventWrite, HeartbeatSink, Item, Pushed, Subscriber, is_lone_heartbeat, recycle,
};

use channel::{ChannelState, Mode};

use crate::metrics::{Metrics, Stage, now_us};
use crate::sse::{Channel, Encoded, EventId};

const CHANNEL_SHARDS: usize = 64;
/// Open streams are kept in this many shards. The heartbeat tick, once a
/// second, visits a second's share of them (17 shards at 15 s) and yields
/// between shards, so that the events queued behind a shard's heartbeats
/// wait for a few dozen writes at most.
const STREAM_SHARDS: usize = 256;

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

    /// An event from the broker for `channel`. The time from its receipt
    /// (`Encoded::received_us`, before it was decoded) to here, queued on
    /// every local stream or held, is the `dispatch` stage.
    pub fn dispatch(&self, channel: &str, ev: Arc<Encoded>) {
        let received_us = ev.received_us;
        {
            let mut shard = self.shard(channel).lock();
            if let Some(state) = shard.get_mut(channel) {
                match state.mode {
                    Mode::Live => state.deliver(&ev, &self.0.metrics),
                    Mode::Pending | Mode::Repairing { .. } => state.hold(ev),
                }
            }
        }
        let took = now_us().saturating_sub(received_us);
        self.0.metrics.record_stage_us(Stage::Dispatch, took, 1);
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
        let mut out: Vec<(Arc<str>, u64, u64)> = Vec::new();
        if let Some(state) = self.shard(channel).lock().get(channel) {
            out.reserve_exact(state.subs.len());
            for (_, s) in state.subs.iter() {
                out.push((s.sub.client_name(), 1, s.sub.since_ms()));
            }
        }
        // One entry per client: its streams counted, its earliest start.
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 += later.1;
                first.2 = first.2.min(later.2);
            }
            same
        });
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

    /// Sends a comment heartbeat to every stream once per `every`, a
    /// second's share of the shards at a time (see `heartbeat_ticks`), and
    /// closes the streams that took nothing from their queue for `stall`
    /// (zero: never). An SSE stream that wrote something within the last
    /// half `every` is passed over: it needs no keep-alive, and so no SSE
    /// stream goes silent for longer than 1.5 × `every` (a stream's writes
    /// are what keep proxies from closing it, as in Mercure, whose timer
    /// restarts on every update).
    pub async fn run_heartbeats(self, every: Duration, stall: Duration, cancel: CancellationToken) {
        let (step, per_heartbeat) = heartbeat_ticks(every);
        let stall_secs = stall.as_secs().clamp(1, u32::MAX as u64) as u32;
        let quiet_ms = (every.as_millis() / 2).min(u32::MAX as u128 / 2) as u32;
        // The coarse clock that tells a stream that wrote lately from a
        // quiet one (for half `every`) must not lag by that much: one
        // timer advances it at least every eighth of `every`, and a round
        // runs at the first of its ticks at or past the round's instant
        // (every tick at the default, where the two periods are equal).
        let clock_step = (every / 8).clamp(Duration::from_millis(1), step);
        let start = tokio::time::Instant::now();
        let mut clock = tokio::time::interval_at(start + clock_step, clock_step);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_round = start + step;
        let metrics = self.0.metrics.clone();
        // Every shard is visited once per `every`: `per_heartbeat` ticks
        // spread over the shards.
        let mut n = 0usize;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                now = clock.tick() => {
                    subscriber::tick_coarse_clock();
                    if now < next_round {
                        continue;
                    }
                    // A late round does not bring the next one forward
                    // by more than half a step.
                    next_round = (next_round + step).max(now + step / 2);
                }
            }
            let round = n % per_heartbeat;
            n = n.wrapping_add(1);
            let (from, to) = (
                round * STREAM_SHARDS / per_heartbeat,
                (round + 1) * STREAM_SHARDS / per_heartbeat,
            );
            let written = std::cell::Cell::new(0u64);
            for shard in from..to {
                if shard > from {
                    tokio::task::yield_now().await;
                }
                self.for_each_stream_in(shard, |s| {
                    if !stall.is_zero() && s.close_if_stalled(stall_secs) {
                        metrics.stalled_streams.increment(1);
                        metrics.slow_client_disconnects.increment(1);
                    }
                    match s.heartbeat(quiet_ms) {
                        // Counted as a queued one is: an SSE heartbeat's
                        // bytes without the chunk framing around them;
                        // nothing for a WebSocket ping.
                        Beat::Written { counted_bytes } => written.set(written.get() + counted_bytes),
                        Beat::Torn => metrics.slow_client_disconnects.increment(1),
                        Beat::Skipped | Beat::Queued => {}
                    }
                });
            }
            if written.get() > 0 {
                metrics.bytes_out.increment(written.get());
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

/// The heartbeat tick and how many ticks make one round of every shard:
/// at most a second apart, the round lasting `every`. Heartbeats written
/// together, as Nchan's one-second ping timers write them, cost the node
/// far less each than the same heartbeats spread thinly: on loopback a
/// write that finds its reader asleep pays to wake it, and a burst keeps
/// the reader awake (benchmarks.md, "Heartbeats in one-second rounds").
fn heartbeat_ticks(every: Duration) -> (Duration, usize) {
    let every = every.max(Duration::from_millis(1));
    let ticks = every.as_nanos().div_ceil(Duration::from_secs(1).as_nanos());
    let ticks = ticks.clamp(1, u32::MAX as u128) as u32;
    (every / ticks, ticks as usize)
}

#[cfg(test)]
mod tests;
