//! Delivery latency: the publish-to-write histogram and its split by stage.
//!
//! These are recorded on the hot path, up to millions of times a second, so
//! they are fixed-bucket histograms of relaxed atomics rendered next to the
//! registry's output (the exporter's histograms keep every sample until the
//! next scrape).
//!
//! An event's time on a node is split into stages, each its own series of
//! `ssegate_delivery_stage_seconds{stage}`:
//! - `receive`: from the publish to the node reading it from Redis.
//!   Durable events only: their id carries Redis's publish time, floored to
//!   the millisecond (taken as its midpoint) and moved onto the node's clock
//!   with the offset measured by `TIME` at connect, so a sample is good to
//!   about ±0.5 ms. Ephemeral events carry no publish time.
//! - `dispatch`: decoding the event and handing it to the queue of every
//!   local stream of its channel (one sample per event read from the
//!   broker, taken by `Hub::dispatch` from the event's receipt stamp).
//! - `queue`: from the node reading the event to its stream taking it for a
//!   write (one sample per write, counting its events, like
//!   `ssegate_publish_to_write_seconds`): dispatch, then the wait for the
//!   stream's task to run, behind other tasks and earlier writes. Events
//!   replayed from history count from the moment they were read.
//!
//! So publish-to-write is receive plus queue for durable events read from
//! Redis, and queue alone for ephemeral ones; dispatch is inside queue.
//! WebSocket deliveries count as SSE ones do.
//!
//! The socket write itself is not a stage: a stream writes what it takes at
//! once, with one non-blocking call; a socket too full to take it is a slow
//! client, counted by its queue bound.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use super::names;

/// Upper bounds of the buckets, in microseconds.
const BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn record_us(&self, us: u64, n: u64) {
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(n, Relaxed);
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
    }

    /// The series' lines; `labels` is empty or `key="value",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            match BOUNDS_US.get(i) {
                Some(le) => {
                    let le = *le as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let braces = |l: &str| match l.strip_suffix(',') {
            Some(l) => format!("{{{l}}}"),
            None => String::new(),
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// A stage of an event's way through a node (see the module's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Receive,
    Dispatch,
    Queue,
}

impl Stage {
    const ALL: [Stage; 3] = [Stage::Receive, Stage::Dispatch, Stage::Queue];

    fn label(self) -> &'static str {
        match self {
            Stage::Receive => "receive",
            Stage::Dispatch => "dispatch",
            Stage::Queue => "queue",
        }
    }
}

#[derive(Default)]
pub(super) struct Latencies {
    publish_to_write: Histogram,
    stages: [Histogram; Stage::ALL.len()],
}

impl Latencies {
    pub(super) fn record_publish_to_write(&self, us: u64, n: u64) {
        self.publish_to_write.record_us(us, n);
    }

    pub(super) fn record_stage(&self, stage: Stage, us: u64, n: u64) {
        self.stages[stage as usize].record_us(us, n);
    }

    pub(super) fn render(&self, out: &mut String) {
        let name = names::LATENCY;
        let _ = writeln!(
            out,
            "# HELP {name} Time from publish to the write of the event to a client socket."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.publish_to_write.render(out, name, "");
        let name = names::DELIVERY_STAGE;
        let _ = writeln!(
            out,
            "# HELP {name} An event's time on this node by stage: receive (publish to read from the broker, durable events), dispatch (decode and queue to local streams), queue (read to taken by its stream for a write)."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (stage, h) in Stage::ALL.iter().zip(&self.stages) {
            h.render(out, name, &format!("stage=\"{}\",", stage.label()));
        }
    }
}

/// The events one write takes: how many, and the oldest publish and
/// receipt times among them.
#[derive(Debug, Clone, Copy)]
pub struct WriteTimes {
    pub(super) events: u64,
    pub(super) published_us: u64,
    pub(super) received_us: u64,
}

impl Default for WriteTimes {
    fn default() -> Self {
        WriteTimes {
            events: 0,
            published_us: u64::MAX,
            received_us: u64::MAX,
        }
    }
}

impl WriteTimes {
    pub fn add(&mut self, published_us: u64, received_us: u64) {
        self.events += 1;
        self.published_us = self.published_us.min(published_us);
        self.received_us = self.received_us.min(received_us);
    }

    pub fn events(&self) -> u64 {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_at_or_above_them() {
        let h = Histogram::default();
        h.record_us(50, 1);
        h.record_us(51, 2);
        h.record_us(20_000_000, 1);
        let mut out = String::new();
        h.render(&mut out, "x", "stage=\"queue\",");
        assert!(
            out.contains("x_bucket{stage=\"queue\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{stage=\"queue\",le=\"0.0001\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{stage=\"queue\",le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{stage=\"queue\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{stage=\"queue\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{stage=\"queue\"} 20.000152\n"), "{out}");
    }
}
