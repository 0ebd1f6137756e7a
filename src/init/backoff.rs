//! Restart delays of a crashing service: exponential, capped, and reset
//! once the service has stayed healthy for a while.

use std::time::Duration;

/// Delay before the first restart.
pub const INITIAL: Duration = Duration::from_secs(1);
/// Maximum delay between restarts.
pub const MAX: Duration = Duration::from_secs(60);
/// A service healthy for this long before it exits restarts after
/// [`INITIAL`] again.
pub const RESET_AFTER: Duration = Duration::from_secs(60);

/// Restart delay state of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: INITIAL }
    }
}

impl Backoff {
    /// Returns the delay before restarting a service that exited after
    /// being healthy for `healthy_for` (zero if it never got healthy), and
    /// doubles the delay for the next exit.
    pub fn next_delay(&mut self, healthy_for: Duration) -> Duration {
        if healthy_for >= RESET_AFTER {
            self.next = INITIAL;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(delays: &[Duration]) -> Vec<u64> {
        delays.iter().map(Duration::as_secs).collect()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next_delay(Duration::ZERO)).collect();
        assert_eq!(seconds(&delays), [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn long_healthy_run_resets_the_delay() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay(Duration::ZERO);
        }
        assert_eq!(backoff.next_delay(Duration::from_secs(60)), INITIAL);
        assert_eq!(backoff.next_delay(Duration::ZERO), Duration::from_secs(2));
    }

    #[test]
    fn short_healthy_run_keeps_the_delay() {
        let mut backoff = Backoff::default();
        backoff.next_delay(Duration::ZERO);
        assert_eq!(backoff.next_delay(Duration::from_secs(59)), Duration::from_secs(2));
    }
}
