//! The stream's socket, shared with the hub while the stream's writer is
//! idle (`HeartbeatSink`): the hub's heartbeat tick writes an idle stream's
//! heartbeat to it directly, and the writer claims it back before it
//! writes anything the queue did not give it. (`live` writes events to the
//! same socket.)

use std::io;
use std::sync::Arc;

use super::clock::{coarse_ms, coarse_now};
use super::{Close, EventWrite, Item, Subscriber};

/// Where an idle stream's heartbeat can be written at once, by the hub's
/// heartbeat tick, instead of waking the stream's writer to write it: the
/// socket of a stream whose writer the server runs itself. Most of an idle
/// node's user-space time went into those wake-ups.
pub trait HeartbeatSink: Send + Sync {
    /// Writes the heartbeat without blocking; returns how many bytes of it
    /// went out (it may be fewer than all, or an error).
    fn try_heartbeat(&self) -> io::Result<usize>;
    /// The heartbeat's length on the wire.
    fn heartbeat_len(&self) -> usize;
    /// How much of it `ssegate_bytes_out_total` counts: an SSE comment's
    /// bytes without the chunk framing; nothing for a WebSocket ping, as
    /// for every WebSocket frame.
    fn counted_bytes(&self) -> u64;
    /// Whether `try_event` writes event frames (an SSE socket does; a
    /// WebSocket frames each event per channel, through its queue).
    fn takes_events(&self) -> bool {
        false
    }
    /// Writes one event's frame without blocking, framed for the socket.
    fn try_event(&self, frame: &[u8]) -> EventWrite {
        let _ = frame;
        EventWrite::Refused
    }
}

/// What `Subscriber::heartbeat` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing: the stream is busy or wrote lately, not started or closed.
    Skipped,
    /// Queued for the stream's writer.
    Queued,
    /// Written whole to the socket directly; `counted_bytes` of it count
    /// as bytes out.
    Written { counted_bytes: u64 },
    /// Only part of it went out: the stream was closed as a slow client
    /// (the rest could not follow anything else).
    Torn,
}

impl Subscriber {
    /// A heartbeat, unless something is already waiting to be written or
    /// the writer took something within the last `quiet_ms`: straight to
    /// the socket when the stream has a sink and its writer is idle, else
    /// through the queue (a full socket, an error: the writer then finds
    /// out, as it would have). A WebSocket (`ping_every_heartbeat`) is
    /// pinged whatever it wrote: its pongs tell that the peer is there.
    pub fn heartbeat(&self, quiet_ms: u32) -> Beat {
        let waker = {
            let mut s = self.state.lock();
            if s.closed.is_some() || !s.queue.is_empty() || s.start.is_some() {
                return Beat::Skipped;
            }
            if !s.every_heartbeat && (coarse_ms() as u32).wrapping_sub(s.taken_ms) < quiet_ms {
                return Beat::Skipped;
            }
            if s.writer_idle
                && let Some(sink) = &s.sink
            {
                match sink.try_heartbeat() {
                    Ok(n) if n == sink.heartbeat_len() => {
                        return Beat::Written {
                            counted_bytes: sink.counted_bytes(),
                        };
                    }
                    // Part of it: the socket is all but full, so the client
                    // is not reading, and the rest cannot follow anything
                    // else. Close the stream; the client resumes.
                    Ok(n) if n > 0 => {
                        s.closed = Some(Close::SlowClient);
                        s.torn = true;
                        let w = s.waker.take();
                        drop(s);
                        if let Some(w) = w {
                            w.wake();
                        }
                        return Beat::Torn;
                    }
                    _ => {}
                }
            }
            s.queue.push_back(Item::Heartbeat);
            if s.waiting_since.is_none() {
                s.waiting_since = Some(coarse_now());
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Beat::Queued
    }

    /// Lets the hub write heartbeats to `sink` while the writer is idle.
    pub fn attach_sink(&self, sink: Arc<dyn HeartbeatSink>) {
        self.state.lock().sink = Some(sink);
    }

    /// Whether a direct heartbeat went out in part (the stream is closed;
    /// its socket must get nothing more).
    pub fn heartbeat_torn(&self) -> bool {
        self.state.lock().torn
    }

    /// The writer is about to write something the queue did not give it (a
    /// WebSocket's answers to its client): the hub writes no heartbeat to
    /// the sink from now until a drain finds the writer idle again, so
    /// none lands inside what the writer writes. False if a direct
    /// heartbeat went out in part: nothing more may be written.
    pub fn claim_socket(&self) -> bool {
        let mut s = self.state.lock();
        s.writer_idle = false;
        !s.torn
    }

    /// Takes the sink back: once this returns, the hub no longer writes to
    /// it (the writer calls this before it closes the socket).
    pub fn detach_sink(&self) {
        let sink = self.state.lock().sink.take();
        drop(sink);
    }

    /// Every heartbeat is queued, even just after the stream wrote: for a
    /// WebSocket, whose pings are answered by pongs that show the peer is
    /// still there.
    pub fn ping_every_heartbeat(&self) {
        self.state.lock().every_heartbeat = true;
    }
}
