//! Capped exponential backoff with jitter, for every reconnect and retry
//! of the Redis broker.

use std::time::Duration;

/// 100 ms doubling up to 5 s, each delay drawn from its upper half so that
/// nodes do not retry in step.
#[derive(Default)]
pub(super) struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub(super) fn next_delay(&mut self) -> Duration {
        let exp = Self::BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt += 1;
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let late: Vec<_> = (0..30).map(|_| b.next_delay()).collect();
        assert!(late.iter().all(|d| *d <= Backoff::CAP && *d >= Backoff::CAP / 2));
        assert!(late.windows(2).any(|w| w[0] != w[1]), "jittered");
    }
}
