//! A live event's way to an idle stream's socket: `push_live` leaves it
//! queued without waking the stream's writer, and `write_direct`, run by
//! the hub's batches (`hub::direct`), writes it straight to the socket.

use super::clock::coarse_ms;
use super::{Item, Pushed, State, Subscriber};
use crate::metrics::WriteTimes;
use crate::sse::Encoded;

/// The largest event frame the hub writes to an idle stream's socket
/// itself (`Subscriber::write_direct`); larger ones go through the queue.
pub const DIRECT_MAX: usize = 1000;

/// What `HeartbeatSink::try_event` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventWrite {
    /// All of it went out.
    Written,
    /// Nothing went out: the socket is full, or the sink does not write
    /// events.
    Refused,
    /// Part of it went out: the sink keeps the rest, which the stream's
    /// writer writes before anything else.
    Partial,
}

impl State {
    /// Whether the hub may write `ev` to the socket itself: an ephemeral
    /// event, or a durable one for a stream whose cursor is here (its frame's
    /// `id:` line is then the stream's cursor), small enough for one write.
    fn writable(&self, ev: &Encoded) -> bool {
        (ev.id.is_none() || self.has_position) && ev.frame().len() <= DIRECT_MAX
    }
}

impl Subscriber {
    /// `push` for a live event of the hub's fan-out: an event the hub
    /// may write itself (`State::writable`) for a stream whose writer is
    /// idle, with nothing queued, is
    /// `Pushed::Direct`: the hub writes it to the socket in a batch with
    /// other streams' (`write_direct`) rather than waking this stream's
    /// task to write it. Whatever is pushed before that batch runs waits
    /// for it, in order.
    pub fn push_live(&self, item: Item) -> Pushed {
        let mut s = self.state.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        let direct = !s.direct_pending
            && s.writer_idle
            && s.queue.is_empty()
            && s.start.is_none()
            && !s.dynamic
            && matches!(&item, Item::Event(ev, _) if s.writable(ev))
            && s.sink.as_ref().is_some_and(|sink| sink.takes_events());
        if !s.enqueue(item) {
            return Pushed::Overflowed(s.waker.take());
        }
        if direct {
            s.direct_pending = true;
            Pushed::Direct
        } else if s.direct_pending {
            Pushed::Queued(None)
        } else {
            Pushed::Queued(s.waker.take())
        }
    }

    /// Writes what is queued to the socket, for a stream `push_live` found
    /// idle: the events the hub may write (`State::writable`), while the
    /// writer stays idle and the socket takes them; durable ones a resume
    /// already replayed are dropped. Anything else (the writer busy, a full socket,
    /// another kind of item) wakes the writer to do it as usual; so does a
    /// frame that went out in part, whose rest the sink keeps for the
    /// writer. Adds what it wrote to `taken`; returns its bytes.
    pub fn write_direct(&self, taken: &mut WriteTimes) -> u64 {
        let mut bytes = 0;
        let waker = {
            let mut guard = self.state.lock();
            let s = &mut *guard;
            s.direct_pending = false;
            if s.closed.is_none()
                && s.writer_idle
                && let Some(sink) = &s.sink
            {
                while let Some(Item::Event(ev, _)) = s.queue.front() {
                    if !s.writable(ev) {
                        break;
                    }
                    if ev.id.is_some_and(|id| id <= s.position) {
                        // Replayed by the stream's resume already.
                        let item = s.queue.pop_front().expect("looked at");
                        s.queued_bytes -= item.cost();
                        continue;
                    }
                    let wrote = sink.try_event(ev.frame());
                    if wrote == EventWrite::Refused {
                        break;
                    }
                    bytes += ev.frame().len() as u64;
                    taken.add(ev.published_us, ev.received_us);
                    if let Some(id) = ev.id {
                        s.position = id;
                    }
                    let item = s.queue.pop_front().expect("looked at");
                    s.queued_bytes -= item.cost();
                    if wrote == EventWrite::Partial {
                        // The writer has the rest to write first: it is no
                        // longer idle, and nothing else goes direct.
                        s.writer_idle = false;
                        break;
                    }
                }
                if bytes > 0 {
                    s.taken_ms = coarse_ms() as u32;
                }
            }
            if s.queue.is_empty() && s.closed.is_none() && s.writer_idle {
                s.waiting_since = None;
                None
            } else {
                s.waker.take()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        bytes
    }
}
