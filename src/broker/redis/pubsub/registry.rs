//! The subscription state of one pub/sub connection, without any I/O:
//! which channels the hub wants (and which instance of each), which
//! SUBSCRIBE/UNSUBSCRIBE commands are queued or waiting for Redis's
//! confirmations, and which confirmed channels are ready to settle.
//!
//! Batching: queued commands are sent as one SUBSCRIBE/UNSUBSCRIBE per run
//! of up to `BATCH` channels, in the order they were asked for (sharded:
//! one SSUBSCRIBE per slot, since a sharded command may not cross slots).
//! Redis answers commands in order, one confirmation per channel.

use std::collections::{HashMap, VecDeque};

use super::Kind;
use crate::broker::redis::names::{Names, slot};
use crate::hub::SubCommand;
use crate::sse::Channel;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Sub,
    Unsub,
}

/// One channel on the current connection.
#[derive(Default)]
struct ChanState {
    /// The hub instance that wants it, if any.
    want: Option<u64>,
    last_sent: Option<Op>,
    /// Commands sent and not yet confirmed.
    in_flight: u32,
}

/// A command sent and not yet fully answered.
struct Sent {
    op: Op,
    channels: Vec<Channel>,
    /// Confirmations still expected (one per channel).
    remaining: usize,
}

pub(super) struct Registry {
    kind: Kind,
    connected: bool,
    chans: HashMap<Channel, ChanState>,
    /// Commands to send, in order.
    ops: Vec<(Op, Channel)>,
    sent: VecDeque<Sent>,
    /// Confirmed channels to settle through `Hub::plan`.
    settle: Vec<Channel>,
    /// Channels this connection no longer serves (cluster).
    moved: Vec<(Channel, u64)>,
}

impl Registry {
    pub(super) fn new(kind: Kind) -> Registry {
        Registry {
            kind,
            connected: false,
            chans: HashMap::new(),
            ops: Vec::new(),
            sent: VecDeque::new(),
            settle: Vec::new(),
            moved: Vec::new(),
        }
    }

    /// A fresh connection: every wanted channel is subscribed again.
    pub(super) fn connected(&mut self) {
        self.connected = true;
        for (ch, st) in self.chans.iter_mut() {
            st.last_sent = Some(Op::Sub);
            st.in_flight = 1;
            self.ops.push((Op::Sub, ch.clone()));
        }
    }

    /// The connection is gone; returns the wanted channels (whose gaps
    /// must be repaired once subscribed again).
    pub(super) fn lost(&mut self) -> Vec<Channel> {
        self.connected = false;
        self.ops.clear();
        self.sent.clear();
        self.settle.clear();
        self.chans.retain(|_, st| {
            st.last_sent = None;
            st.in_flight = 0;
            st.want.is_some()
        });
        self.chans.keys().cloned().collect()
    }

    /// Hands every wanted channel back (a cluster shard that is gone).
    pub(super) fn drain_wanted(&mut self) -> Vec<(Channel, u64)> {
        self.chans
            .drain()
            .filter_map(|(c, st)| st.want.map(|i| (c, i)))
            .collect()
    }

    pub(super) fn on_command(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Want { channel, instance } => {
                let st = self.chans.entry(channel.clone()).or_default();
                st.want = Some(instance);
                if !self.connected {
                    return; // subscribed on reconnect
                }
                match (st.last_sent, st.in_flight) {
                    // Already subscribed: settle the new instance now.
                    (Some(Op::Sub), 0) => self.settle.push(channel),
                    // A SUBSCRIBE is on its way; its confirmation settles.
                    (Some(Op::Sub), _) => {}
                    _ => {
                        st.last_sent = Some(Op::Sub);
                        st.in_flight += 1;
                        self.ops.push((Op::Sub, channel));
                    }
                }
            }
            SubCommand::Unwant { channel, instance } => {
                let Some(st) = self.chans.get_mut(&channel) else {
                    return;
                };
                if st.want != Some(instance) {
                    return; // a newer instance wants it
                }
                st.want = None;
                if st.last_sent == Some(Op::Sub) && self.connected {
                    st.last_sent = Some(Op::Unsub);
                    st.in_flight += 1;
                    self.ops.push((Op::Unsub, channel));
                } else if st.in_flight == 0 {
                    self.chans.remove(&channel);
                }
            }
        }
    }

    /// The queued commands, packed for the wire: one per run of the same
    /// kind (and, sharded, the same slot), at most `BATCH` channels each.
    /// Returns the bytes and the number of commands.
    pub(super) fn take_commands(&mut self, names: &Names) -> (Vec<u8>, usize) {
        let (sub, unsub) = self.kind.commands();
        let mut out = Vec::new();
        let mut count = 0;
        let ops = std::mem::take(&mut self.ops);
        for run in ops.chunk_by(|a, b| a.0 == b.0) {
            let op = run[0].0;
            let mut channels: Vec<Channel> = run.iter().map(|(_, c)| c.clone()).collect();
            let groups: Vec<Vec<Channel>> = match self.kind {
                Kind::Classic => channels.chunks(BATCH).map(<[Channel]>::to_vec).collect(),
                Kind::Sharded => {
                    channels.sort_by_key(|c| slot(c.as_str()));
                    channels
                        .chunk_by(|a, b| slot(a.as_str()) == slot(b.as_str()))
                        .flat_map(|same_slot| same_slot.chunks(BATCH).map(<[Channel]>::to_vec))
                        .collect()
                }
            };
            for group in groups {
                let mut cmd = redis::cmd(if op == Op::Sub { sub } else { unsub });
                for ch in &group {
                    cmd.arg(names.channel(ch.as_str()));
                }
                out.extend_from_slice(&cmd.get_packed_command());
                count += 1;
                let remaining = group.len();
                self.sent.push_back(Sent {
                    op,
                    channels: group,
                    remaining,
                });
            }
        }
        (out, count)
    }

    /// An error answers the oldest command as a whole (MOVED, CROSSSLOT):
    /// its channels are handed back.
    pub(super) fn on_error(&mut self, text: &str) {
        let Some(cmd) = self.sent.pop_front() else {
            tracing::warn!(error = %text, "error from Redis on a pub/sub connection");
            return;
        };
        tracing::warn!(error = %text, channels = cmd.channels.len(), "Redis refused a subscription command");
        for ch in cmd.channels {
            let Some(st) = self.chans.get_mut(&ch) else {
                continue;
            };
            st.in_flight = st.in_flight.saturating_sub(1);
            if cmd.op == Op::Sub && st.last_sent == Some(Op::Sub) && st.in_flight == 0 {
                // The slot lives elsewhere: hand the channel back.
                if let Some(instance) = st.want {
                    self.moved.push((ch.clone(), instance));
                }
                self.chans.remove(&ch);
            }
        }
    }

    /// A confirmation of `op` for channel `name`. Returns the channel if
    /// Redis unsubscribed it by itself (its slot moved to another shard, or
    /// the server stopped being a master): it is handed back and its gap
    /// must be repaired where it lands.
    pub(super) fn on_confirm(&mut self, name: &str, op: Op) -> Option<Channel> {
        let ours = match self.sent.front_mut() {
            Some(head) if head.op == op && head.channels.iter().any(|c| c.as_str() == name) => {
                head.remaining -= 1;
                if head.remaining == 0 {
                    self.sent.pop_front();
                }
                true
            }
            _ => false,
        };
        if !ours {
            if op == Op::Unsub
                && let Some(st) = self.chans.remove(name)
                && let (Some(instance), Ok(ch)) = (st.want, Channel::parse_internal(name))
            {
                self.moved.push((ch.clone(), instance));
                return Some(ch);
            }
            return None;
        }
        let st = self.chans.get_mut(name)?;
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight > 0 || st.last_sent != Some(op) {
            return None;
        }
        match op {
            Op::Sub if st.want.is_some() => {
                if let Ok(ch) = Channel::parse_internal(name) {
                    self.settle.push(ch);
                }
            }
            Op::Sub => {}
            Op::Unsub => {
                self.chans.remove(name);
            }
        }
        None
    }

    pub(super) fn take_settle(&mut self) -> Vec<Channel> {
        std::mem::take(&mut self.settle)
    }

    pub(super) fn take_moved(&mut self) -> Vec<(Channel, u64)> {
        std::mem::take(&mut self.moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(r: &mut Registry, c: &str, instance: u64) {
        r.on_command(SubCommand::Want {
            channel: Channel::parse(c).unwrap(),
            instance,
        });
    }

    #[test]
    fn subscriptions_are_batched_and_settled_on_confirmation() {
        let names = Names::new("sse:");
        let mut r = Registry::new(Kind::Classic);
        r.connected();
        want(&mut r, "a", 1);
        want(&mut r, "b", 2);
        let (bytes, count) = r.take_commands(&names);
        assert_eq!(count, 1, "one SUBSCRIBE for both");
        assert!(String::from_utf8_lossy(&bytes).contains("sse:{b}"));
        assert!(
            r.take_settle().is_empty(),
            "nothing settles before Redis confirms"
        );
        assert_eq!(r.on_confirm("a", Op::Sub), None);
        assert_eq!(r.on_confirm("b", Op::Sub), None);
        let settled: Vec<String> = r.take_settle().iter().map(|c| c.to_string()).collect();
        assert_eq!(settled, ["a", "b"]);
    }

    #[test]
    fn a_server_side_unsubscribe_hands_the_channel_back() {
        let names = Names::new("sse:");
        let mut r = Registry::new(Kind::Sharded);
        r.connected();
        want(&mut r, "a", 7);
        let _ = r.take_commands(&names);
        assert_eq!(r.on_confirm("a", Op::Sub), None);
        let lost = r.on_confirm("a", Op::Unsub).expect("handed back");
        assert_eq!(lost.as_str(), "a");
        assert_eq!(r.take_moved(), vec![(lost, 7)]);
    }

    #[test]
    fn wanted_channels_survive_a_lost_connection() {
        let names = Names::new("sse:");
        let mut r = Registry::new(Kind::Classic);
        r.connected();
        want(&mut r, "a", 1);
        let _ = r.take_commands(&names);
        assert_eq!(r.lost().len(), 1);
        r.connected();
        let (_, count) = r.take_commands(&names);
        assert_eq!(count, 1, "resubscribed on the new connection");
    }
}
