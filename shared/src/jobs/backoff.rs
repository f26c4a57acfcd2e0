//! Retry delays: exponential, capped, with jitter so that jobs that failed together (an outage)
//! do not all come back at the same moment.

use std::time::Duration;

/// The wait before retrying after failed attempt number `attempt` (1 for the first): about
/// `base_ms * 2^(attempt-1)`, at most `max_ms`, uniformly drawn from its upper half.
pub(crate) fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(40);
    let full = base_ms.saturating_mul(1u64 << exponent).min(max_ms);
    let half = full / 2;
    Duration::from_millis(half + fastrand::u64(0..=full - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_within_jitter_and_stops_at_the_cap() {
        for _ in 0..200 {
            let first = backoff(1, 1_000, 60_000).as_millis();
            assert!((500..=1_000).contains(&first), "{first}");
            let fourth = backoff(4, 1_000, 60_000).as_millis();
            assert!((4_000..=8_000).contains(&fourth), "{fourth}");
            let late = backoff(30, 1_000, 60_000).as_millis();
            assert!((30_000..=60_000).contains(&late), "{late}");
            assert!(backoff(u32::MAX, u64::MAX, u64::MAX) <= Duration::from_millis(u64::MAX));
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let delays: std::collections::HashSet<_> = (0..50).map(|_| backoff(3, 1_000, 60_000)).collect();
        assert!(delays.len() > 10, "50 draws gave only {} distinct delays", delays.len());
    }
}
