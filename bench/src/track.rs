//! Per-stream accounting shared by every transport: a benchmark payload
//! (`<seq> <unix micros>[ padding]`) becomes a delivered, duplicated,
//! reordered or stale event of its stream, and a latency sample when it was
//! stamped inside the measured window.

use hdrhistogram::Histogram;

use crate::client::{Counters, Shared, Slot};

/// What one event needs besides the stream's own state: the worker's shared
/// results, borrowed once per read (or per frame) rather than per event.
pub struct Sink<'a> {
    pub now_us: u64,
    pub window_start_us: u64,
    pub t0_us: u64,
    pub slot: &'a mut Slot,
    pub latency: &'a mut Histogram<u64>,
    pub first_event_time: &'a mut Histogram<u64>,
    pub counters: &'a mut Counters,
}

/// Borrows the worker's results for stream `local` at `now_us` and runs `f`.
pub fn with_sink<R>(sh: &Shared, local: usize, now_us: u64, f: impl FnOnce(&mut Sink<'_>) -> R) -> R {
    let mut slots = sh.slots.borrow_mut();
    let mut latency = sh.latency.borrow_mut();
    let mut first = sh.first_event_time.borrow_mut();
    let mut counters = sh.counters.borrow_mut();
    let mut sink = Sink {
        now_us,
        window_start_us: sh.window_start_us.get(),
        t0_us: sh.t0_us.get(),
        slot: &mut slots[local],
        latency: &mut latency,
        first_event_time: &mut first,
        counters: &mut counters,
    };
    f(&mut sink)
}

/// Duplicate and order detection for one stream.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Newest sequence number seen and a 128-bit record of the ones before it.
    max_seq: Option<u64>,
    seen: u128,
}

impl Tracker {
    pub fn on_event(&mut self, seq: u64, ts: u64, sink: &mut Sink<'_>) {
        sink.counters.events += 1;
        if sink.slot.first_event_us == 0 {
            sink.slot.first_event_us = sink.now_us;
            sink.counters.receiving += 1;
            sink.first_event_time
                .saturating_record(sink.now_us.saturating_sub(sink.t0_us).max(1));
        }
        let first_time = match self.max_seq {
            None => {
                self.max_seq = Some(seq);
                self.seen = 1;
                true
            }
            Some(max) if seq > max => {
                let shift = seq - max;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.max_seq = Some(seq);
                true
            }
            Some(max) => {
                let back = max - seq;
                if back >= 128 {
                    sink.slot.stale += 1;
                    true
                } else if self.seen & (1u128 << back) != 0 {
                    false
                } else {
                    self.seen |= 1u128 << back;
                    sink.slot.reordered += 1;
                    true
                }
            }
        };
        if ts < sink.window_start_us {
            return;
        }
        if first_time {
            crate::tail_log::note(ts, sink.now_us, sink.slot.channel);
            sink.slot.delivered += 1;
            sink.latency
                .saturating_record(sink.now_us.saturating_sub(ts).max(1));
        } else {
            sink.slot.duplicates += 1;
        }
    }
}

/// `<seq> <unix micros>[ anything]` → (seq, micros).
pub fn parse_payload(v: &[u8]) -> Option<(u64, u64)> {
    let (seq, rest) = parse_u64(v)?;
    let rest = rest.strip_prefix(b" ")?;
    let (ts, rest) = parse_u64(rest)?;
    if rest.is_empty() || rest[0] == b' ' {
        Some((seq, ts))
    } else {
        None
    }
}

fn parse_u64(v: &[u8]) -> Option<(u64, &[u8])> {
    let n = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut x = 0u64;
    for &b in &v[..n] {
        x = x * 10 + (b - b'0') as u64;
    }
    Some((x, &v[n..]))
}
