//! Live events written to idle streams' sockets in batches, instead of
//! waking each stream's task to write one event.
//!
//! A stream whose writer waits with nothing half-written, on a socket the
//! server writes itself (`HeartbeatSink::takes_events`: an SSE stream on
//! the fast path), gets an event as `Pushed::Direct`: queued, its writer
//! not woken (an ephemeral event, or a durable one on a single-channel
//! stream that left its cursor with the subscriber). The channel hands
//! such streams to a task per `BATCH` streams, which writes each one's
//! queued events with one non-blocking `send` apiece under the stream's
//! lock (`Subscriber::write_direct`); anything else goes to the writer,
//! woken as usual, and so does the rest of a frame the socket took in
//! part. At 2,000 publishes/s to 15,000 streams this cut the node's CPU
//! per delivered event by 15% (see "Events written in batches to idle
//! streams" in docs/benchmarks.md). The batches run on the runtime's
//! workers, so writes still spread over the cores: written from the task
//! that reads the broker instead, they queued behind one another.

use std::sync::Arc;

use super::Subscriber;
use crate::metrics::{Metrics, WriteTimes};

/// Streams per task.
const BATCH: usize = 32;

/// A channel with more local streams than this wakes each stream's writer
/// instead. A broadcast to 15,000 streams (bench.sh's broadcast-20) went
/// from 115 ms at p50 to 3 s written in batches. Likely causes: a direct
/// write holds the stream's lock over its `send`, so the task that reads
/// Redis, pushing the next broadcast to the same streams, waits on those
/// locks; and woken writers join several events into one write when
/// behind, where direct writes send each one.
pub(super) const DIRECT_STREAMS: usize = 64;

/// The streams of one event's fan-out that wait for a direct write.
pub(super) struct DirectWrites<'a> {
    subs: Vec<Arc<Subscriber>>,
    metrics: &'a Metrics,
}

impl<'a> DirectWrites<'a> {
    pub(super) fn new(metrics: &'a Metrics) -> DirectWrites<'a> {
        DirectWrites {
            subs: Vec::new(),
            metrics,
        }
    }

    pub(super) fn add(&mut self, sub: &Arc<Subscriber>) {
        self.subs.push(sub.clone());
        if self.subs.len() == BATCH {
            self.flush();
        }
    }

    /// Hands the streams gathered so far to a task that writes them.
    fn flush(&mut self) {
        if self.subs.is_empty() {
            return;
        }
        let subs = std::mem::take(&mut self.subs);
        let metrics = self.metrics.clone();
        let write = move || write_all(&subs, &metrics);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { write() });
            }
            // Outside a runtime (unit tests): here and now.
            Err(_) => write(),
        }
    }
}

impl Drop for DirectWrites<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn write_all(subs: &[Arc<Subscriber>], metrics: &Metrics) {
    let mut taken = WriteTimes::default();
    let mut bytes = 0;
    for sub in subs {
        bytes += sub.write_direct(&mut taken);
    }
    metrics.record_write(&taken);
    metrics.bytes_out.increment(bytes);
}
