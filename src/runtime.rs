//! The request threads: threads of their own, with their own Tokio
//! runtime (`--request-threads`, one by default), for the HTTP connections
//! that publish (a plain-TCP connection whose first request is a `POST`,
//! until a request that is not: `http::server::publishing`) and for the
//! drivers of the Redis command connections
//! (`broker::redis::commands`).
//!
//! On the node's worker threads a publish waits behind whatever fan-out
//! is queued there; on a thread of its own it is one the kernel wakes as
//! soon as its request arrives, and the `FCALL`, its answer and the `201`
//! are read and written on that thread, without hopping between workers
//! (docs/benchmarks.md, "Publishes on a thread of their own"). Event
//! streams, WebSockets and TLS connections stay on the workers.
//!
//! `--request-threads 0` starts none; everything then runs on the
//! workers, and callers of `spawn_on_request_thread` see no difference.

use std::future::Future;
use std::sync::{Mutex, OnceLock};

use tokio::runtime::{Builder, Handle};

/// The threads' name, as `ps -L` and `/proc/<pid>/task/*/comm` show it
/// (15 bytes: Linux keeps no more).
pub const THREAD_NAME: &str = "ssegate-request";

static REQUESTS: OnceLock<Handle> = OnceLock::new();
/// Held while the threads start, so that callers at the same moment
/// start them once.
static STARTING: Mutex<()> = Mutex::new(());

/// Starts `threads` request threads (once per process; later calls, and
/// calls at the same moment, do nothing): one is a single-threaded
/// runtime, more a multi-threaded one. They run until the process exits.
pub fn start_request_threads(threads: usize) -> std::io::Result<()> {
    if threads == 0 {
        return Ok(());
    }
    let _starting = STARTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if REQUESTS.get().is_some() {
        return Ok(());
    }
    let rt = if threads == 1 {
        Builder::new_current_thread().enable_all().build()?
    } else {
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?
    };
    let handle = rt.handle().clone();
    // A single-threaded runtime runs on the thread that blocks on it; a
    // multi-threaded one on its workers, this thread only keeping it.
    // Returns once the thread runs (std names a thread before it runs
    // the closure), so that a caller that looks for it finds it.
    let (running, started) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            let _ = running.send(());
            rt.block_on(std::future::pending::<()>())
        })?;
    let _ = started.recv();
    let _ = REQUESTS.set(handle);
    Ok(())
}

/// The request threads' runtime, if they were started.
pub fn request_runtime() -> Option<&'static Handle> {
    REQUESTS.get()
}

/// Runs `f` on the request threads if there are any (so that the tasks it
/// spawns live there), else where the caller is.
pub async fn spawn_on_request_thread<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match REQUESTS.get() {
        None => f.await,
        Some(handle) => match handle.spawn(f).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only a runtime shutting down cancels its tasks,
            // and the request threads' runtime runs until the process exits.
            Err(e) => unreachable!("a task on the request threads was cancelled: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's threads named `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn callers_at_the_same_moment_start_one_request_thread() {
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    start_request_threads(1).unwrap();
                });
            }
        });
        assert!(request_runtime().is_some());
        assert_eq!(threads_named(THREAD_NAME), 1, "one request thread, started once");
    }
}
