//! The per-client-IP rate (`--ip-rate`, `--ip-burst`): one keyed limiter
//! per node (`governor`), shared by the server's admission (new
//! connections, counted when they arrive) and the router (requests
//! forwarded by a trusted proxy, counted one by one, since a balancer
//! carries many clients' requests on one connection).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

/// How often idle per-IP state is forgotten.
const CLEANUP: Duration = Duration::from_secs(30);

/// `rate` per second per client address, with bursts of `burst`.
pub struct IpRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl IpRate {
    /// A rate of 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> IpRate {
        let limiter = NonZeroU32::new(rate).map(|r| {
            let burst = NonZeroU32::new(burst.max(rate)).expect("nonzero");
            RateLimiter::keyed(Quota::per_second(r).allow_burst(burst))
        });
        IpRate { limiter }
    }

    /// Counts one arrival from `ip`; past the limit, the time until the
    /// next one would be allowed. IPv4-mapped IPv6 addresses count as
    /// their IPv4 address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&ip.to_canonical())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The `Retry-After` seconds for a wait (at least one).
    pub fn retry_after(wait: Duration) -> u64 {
        wait.as_secs_f64().ceil().max(1.0) as u64
    }

    /// Forgets idle per-IP state now and then, so that many distinct
    /// clients do not grow the limiter without bound.
    pub async fn run_cleanup(self: Arc<Self>, cancel: CancellationToken) {
        let Some(limiter) = &self.limiter else { return };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(CLEANUP) => {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_allows_a_burst_then_refuses_per_address() {
        let rate = IpRate::new(1, 3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!((0..3).all(|_| rate.check(ip).is_ok()));
        let wait = rate.check(ip).unwrap_err();
        assert!(IpRate::retry_after(wait) >= 1);
        assert!(rate.check(IpAddr::from([10, 0, 0, 2])).is_ok(), "per address");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert!(
            rate.check(mapped).is_err(),
            "a mapped address is its IPv4 address"
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let rate = IpRate::new(0, 0);
        assert!((0..10_000).all(|_| rate.check(IpAddr::from([10, 0, 0, 1])).is_ok()));
    }
}
