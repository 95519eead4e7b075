//! The slow deliveries of a run, one line each, for finding out when a
//! tail happened rather than only how long it is. Off unless
//! `SSEGATE_BENCH_TAIL_LOG` names a path: each worker process then appends
//! `<publish µs> <receive µs> <latency µs> <channel>` to `<path>.<pid>` for
//! every measured delivery at or over `SSEGATE_BENCH_TAIL_MIN_US` (500 by
//! default). `bench/tail_episodes.py` groups those lines into episodes.
//!
//! Only the slow deliveries are written (about one in a hundred at a
//! millisecond), each with one `write`, so nothing is lost when a worker
//! exits and the run is barely touched.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

struct TailLog {
    file: Mutex<File>,
    min_us: u64,
}

fn open() -> Option<TailLog> {
    let path = std::env::var("SSEGATE_BENCH_TAIL_LOG").ok()?;
    let min_us = match std::env::var("SSEGATE_BENCH_TAIL_MIN_US") {
        Ok(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("SSEGATE_BENCH_TAIL_MIN_US={v:?} is not a number of microseconds; using 500");
            500
        }),
        Err(_) => 500,
    };
    let path = format!("{path}.{}", std::process::id());
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => Some(TailLog {
            file: Mutex::new(f),
            min_us,
        }),
        Err(e) => {
            eprintln!("SSEGATE_BENCH_TAIL_LOG: cannot open {path}: {e}; no tail log");
            None
        }
    }
}

/// Notes a measured delivery if it is slow enough and the log is on.
pub fn note(published_us: u64, received_us: u64, channel: u32) {
    static LOG: OnceLock<Option<TailLog>> = OnceLock::new();
    let Some(log) = LOG.get_or_init(open) else {
        return;
    };
    let latency = received_us.saturating_sub(published_us);
    if latency < log.min_us {
        return;
    }
    let line = format!("{published_us} {received_us} {latency} {channel}\n");
    if let Ok(mut f) = log.file.lock() {
        let _ = f.write_all(line.as_bytes());
    }
}
