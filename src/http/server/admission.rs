//! Admission: connection limits, applied as connections are accepted (before any
//! HTTP parsing): `--max-connections` open at once and a per-IP rate of new
//! connections (`governor`). Past a limit the client gets a short canned
//! answer (503 or 429, with `Retry-After` and a JSON body) and the socket is
//! closed; nothing else is allocated for it.
//!
//! At start the process raises its soft file limit to the hard limit; the
//! default `--max-connections` is derived from it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::response::write_error;
use crate::http::ApiError;
use crate::metrics::Metrics;

/// Descriptors kept back from `--max-connections` for Redis, the listener
/// and files.
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit; returns the new
/// soft limit.
pub fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The default `--max-connections` for a file limit.
pub fn default_max_connections(file_limit: u64) -> usize {
    file_limit.saturating_sub(RESERVED_FDS).max(16) as usize
}

pub struct Gate {
    open: AtomicUsize,
    max: usize,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    metrics: Metrics,
}

/// Holds one connection's place; released on drop.
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub enum Verdict {
    Admit(Admitted),
    TooMany,
    RateLimited(Duration),
}

impl Gate {
    /// `rate` new connections per second per IP with bursts of `burst`;
    /// a rate of 0 turns the per-IP limit off.
    pub fn new(max: usize, rate: u32, burst: u32, metrics: Metrics) -> Arc<Gate> {
        let per_ip = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst.max(rate)).expect("nonzero");
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            max,
            per_ip,
            metrics,
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Verdict {
        if let Some(limiter) = &self.per_ip
            && let Err(not_until) = limiter.check_key(&ip.to_canonical())
        {
            self.metrics.rejected("rate_limited").increment(1);
            return Verdict::RateLimited(not_until.wait_time_from(DefaultClock::default().now()));
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.rejected("too_many_connections").increment(1);
            return Verdict::TooMany;
        }
        Verdict::Admit(Admitted(self.clone()))
    }

    /// Forgets idle per-IP state now and then, so that many distinct
    /// clients do not grow the limiter without bound.
    pub async fn run_cleanup(self: Arc<Self>, cancel: CancellationToken) {
        let Some(limiter) = &self.per_ip else { return };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        }
    }
}

/// Answers a refused connection and closes it, reading (and discarding) a
/// little of the request first so that the close does not reset the
/// answer away.
pub async fn refuse(mut sock: TcpStream, verdict: Verdict) {
    let err = match verdict {
        Verdict::Admit(_) => return,
        Verdict::TooMany => ApiError::TooManyConnections,
        Verdict::RateLimited(wait) => ApiError::RateLimited {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        },
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut scratch = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_millis(50), sock.read(&mut scratch)).await;
        write_error(&mut sock, err).await;
        while sock.read(&mut scratch).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_counts_open_connections() {
        let gate = Gate::new(2, 0, 0, Metrics::new());
        let ip = IpAddr::from([127, 0, 0, 1]);
        let a = gate.admit(ip);
        let b = gate.admit(ip);
        assert!(matches!(gate.admit(ip), Verdict::TooMany));
        drop(a);
        assert!(matches!(gate.admit(ip), Verdict::Admit(_)));
        drop(b);
    }

    #[test]
    fn the_per_ip_rate_allows_a_burst_then_refuses() {
        let gate = Gate::new(1000, 1, 3, Metrics::new());
        let ip = IpAddr::from([10, 0, 0, 1]);
        let admitted: Vec<_> = (0..3).map(|_| gate.admit(ip)).collect();
        assert!(admitted.iter().all(|v| matches!(v, Verdict::Admit(_))));
        assert!(matches!(gate.admit(ip), Verdict::RateLimited(_)));
        assert!(
            matches!(gate.admit(IpAddr::from([10, 0, 0, 2])), Verdict::Admit(_)),
            "per address"
        );
    }
}
