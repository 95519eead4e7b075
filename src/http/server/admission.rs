//! Admission: connection limits, applied as connections are accepted (before any
//! HTTP parsing): `--max-connections` open at once and a per-IP rate of new
//! connections (`limits::IpRate`). Past a limit the client gets a short
//! answer (503 or 429, with `Retry-After` and a JSON body) and the socket
//! is closed.
//!
//! A connection from a trusted proxy takes its place at once, but its rate
//! is the client's: counted once its PROXY header has named the client
//! (`check_rate`), or per request for clients named in forwarded headers
//! (the router does that); the proxy's own address is never limited.
//!
//! Refusing costs a file descriptor and a task for up to two seconds, so
//! refusals in progress are bounded (`REFUSALS`); past that a refused
//! connection is closed at once, without an answer, and the descriptors
//! kept back for Redis stay free. A full node still answers `GET /healthz`
//! and `GET /readyz` on a refused connection: it is healthy, just full.
//!
//! At start the process raises its soft file limit to the hard limit; the
//! default `--max-connections` is derived from it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::head::probe_request;
use super::response::{write_and_close, write_error};
use crate::http::ApiError;
use crate::limits::IpRate;
use crate::metrics::Metrics;
use crate::state::Occupancy;

/// Refused connections answered at the same time.
const REFUSALS: usize = 64;
/// Descriptors kept back from `--max-connections`: Redis connections, the
/// listener, files, and the refusals in progress.
pub const RESERVED_FDS: u64 = 64 + REFUSALS as u64;
/// Time a refused client has to send a health-check head.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    occupancy: Arc<Occupancy>,
    rate: Arc<IpRate>,
    refusals: Arc<Semaphore>,
    metrics: Metrics,
}

/// Holds one connection's place; released on drop.
pub struct Admitted(Arc<Occupancy>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.release();
    }
}

pub enum Verdict {
    Admit(Admitted),
    TooMany,
    RateLimited(Duration),
}

impl Gate {
    pub fn new(occupancy: Arc<Occupancy>, rate: Arc<IpRate>, metrics: Metrics) -> Arc<Gate> {
        Arc::new(Gate {
            occupancy,
            rate,
            refusals: Arc::new(Semaphore::new(REFUSALS)),
            metrics,
        })
    }

    /// A new connection: the per-IP rate of `rate_key` (none for a trusted
    /// proxy), then a place among `--max-connections`.
    pub fn admit(&self, rate_key: Option<IpAddr>) -> Verdict {
        if let Some(ip) = rate_key
            && let Err(refused) = self.check_rate(ip)
        {
            return refused;
        }
        if !self.occupancy.try_take() {
            self.metrics.rejected("too_many_connections").increment(1);
            return Verdict::TooMany;
        }
        Verdict::Admit(Admitted(self.occupancy.clone()))
    }

    /// Counts a new connection from `ip` against the per-IP rate.
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), Verdict> {
        self.rate.check(ip).map_err(|wait| {
            self.metrics.rejected("rate_limited").increment(1);
            tracing::debug!(client = %ip, "connection rate limited");
            Verdict::RateLimited(wait)
        })
    }

    /// Answers a refused connection in the background, or closes it at
    /// once when too many refusals are in progress. `read` holds the bytes
    /// of the connection already read (after a PROXY header).
    pub fn refuse(&self, sock: TcpStream, read: BytesMut, verdict: Verdict, router: &axum::Router) {
        let Ok(permit) = self.refusals.clone().try_acquire_owned() else {
            self.metrics.rejected("closed_unanswered").increment(1);
            return;
        };
        let router = router.clone();
        tokio::spawn(async move {
            refuse(sock, read, verdict, router).await;
            drop(permit);
        });
    }
}

/// Answers a refused connection and closes it. The request head is read
/// first (briefly): a health check is answered as usual; anything else
/// gets the refusal, and reading first means the close does not reset
/// the answer away.
async fn refuse(mut sock: TcpStream, mut buf: BytesMut, verdict: Verdict, router: axum::Router) {
    let err = match verdict {
        Verdict::Admit(_) => return,
        Verdict::TooMany => ApiError::TooManyConnections,
        Verdict::RateLimited(wait) => ApiError::RateLimited {
            retry_after: IpRate::retry_after(wait),
        },
    };
    let too_many = matches!(err, ApiError::TooManyConnections);
    let _ = tokio::time::timeout(PROBE_TIMEOUT, async {
        buf.reserve(1024);
        let probe = tokio::time::timeout(PROBE_TIMEOUT / 2, async {
            while buf.len() < 4096 {
                if let Some(req) = probe_request(&buf) {
                    return Ok(req);
                }
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                if sock.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            Err(std::io::Error::from(std::io::ErrorKind::InvalidData))
        })
        .await;
        match probe {
            Ok(Ok(req)) if too_many => {
                let resp = router.oneshot(*req).await.unwrap_or_else(|e| match e {});
                write_and_close(&mut sock, resp).await;
            }
            _ => write_error(&mut sock, err).await,
        }
        let mut scratch = [0u8; 1024];
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
        let gate = Gate::new(
            Arc::new(Occupancy::new(2)),
            Arc::new(IpRate::new(0, 0)),
            Metrics::new(),
        );
        let ip = Some(IpAddr::from([127, 0, 0, 1]));
        let a = gate.admit(ip);
        let b = gate.admit(None);
        assert!(matches!(gate.admit(ip), Verdict::TooMany));
        drop(a);
        assert!(matches!(gate.admit(ip), Verdict::Admit(_)));
        drop(b);
    }

    #[test]
    fn the_per_ip_rate_allows_a_burst_then_refuses_and_a_trusted_proxy_takes_a_place() {
        let gate = Gate::new(
            Arc::new(Occupancy::new(1000)),
            Arc::new(IpRate::new(1, 3)),
            Metrics::new(),
        );
        let ip = IpAddr::from([10, 0, 0, 1]);
        let admitted: Vec<_> = (0..3).map(|_| gate.admit(Some(ip))).collect();
        assert!(admitted.iter().all(|v| matches!(v, Verdict::Admit(_))));
        assert!(matches!(gate.admit(Some(ip)), Verdict::RateLimited(_)));
        assert!(matches!(gate.check_rate(ip), Err(Verdict::RateLimited(_))));
        assert!(
            matches!(gate.admit(Some(IpAddr::from([10, 0, 0, 2]))), Verdict::Admit(_)),
            "per address"
        );
        assert!(
            matches!(gate.admit(None), Verdict::Admit(_)),
            "no rate for a proxy"
        );
    }
}
