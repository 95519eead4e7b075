//! The hub's coarse clock: milliseconds since the process started, read
//! with one atomic load on the per-event path (stall detection, and
//! whether a stream wrote lately enough to skip a heartbeat).

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the process started, advanced by the hub's
/// heartbeat task on its one timer (`tick_coarse_clock`), which ticks at
/// every eighth of `--heartbeat`, at most a second apart, and runs the
/// rounds of heartbeats on those ticks. Read on every push and drain, so
/// it must cost no more than a load. Stall detection reads it in seconds;
/// heartbeats, to tell a stream that wrote lately from a quiet one.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);

pub(super) fn coarse_ms() -> u64 {
    COARSE_MS.load(Ordering::Relaxed)
}

pub(super) fn coarse_now() -> u32 {
    (coarse_ms() / 1000) as u32
}

/// A `taken_ms` for a stream that never took anything: half the clock's
/// wrap (24 days) ago, further back than any heartbeat's quiet period.
pub(super) fn long_ago_ms() -> u32 {
    (coarse_ms() as u32).wrapping_sub(u32::MAX / 2)
}

/// Advances the coarse clock (called at least once a second).
pub(in crate::hub) fn tick_coarse_clock() {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ms = START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64;
    COARSE_MS.fetch_max(ms, Ordering::Relaxed);
}
