//! Test helpers: real `redis-server` processes on free ports, real gateway
//! nodes (in-process on port 0, or the `ssegate` binary), an SSE client
//! that parses streams with the `eventsource-stream` crate, and the rule for
//! the programs tests need.

mod backbones;
mod metrics;
mod node;
mod redis_cluster;
mod redis_sentinel;
mod redis_server;
mod sse;
mod tools;

use std::net::TcpListener;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use backbones::*;
pub use metrics::*;
pub use node::*;
pub use redis_cluster::*;
pub use redis_sentinel::*;
pub use redis_server::*;
pub use sse::*;
pub use tools::*;

pub const WAIT: Duration = Duration::from_secs(15);

/// A channel name no other test uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Gives a child `grace` to exit by itself, then kills it; always reaps it.
pub fn wait_or_kill(child: &mut Child, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Polling: a child's exit offers no other notification here.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child to exit by itself (within the wait); its status.
pub async fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the process did not exit within {WAIT:?}"
        );
        // Polling: a child's exit offers no other notification here.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `f` holds, checking every few milliseconds: for state that
/// offers no notification (Redis's subscription tables, a process's RSS).
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, WAIT, f).await;
}

/// Like `eventually`, failing after `limit`.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        // The poll interval.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
