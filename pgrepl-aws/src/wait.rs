//! Bounded waiting: exponential backoff with a deadline and a cap on attempts.

use std::time::Duration;

use tokio::time::Instant;

/// Most attempts any wait makes, whatever its deadline.
pub const MAX_ATTEMPTS: u32 = 1000;

/// Delays between polls, growing from `initial` to `max` (×1.5 each time), until a
/// deadline or [`MAX_ATTEMPTS`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    started: Instant,
    deadline: Instant,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, timeout: Duration) -> Self {
        let started = Instant::now();
        Backoff { next: initial.max(Duration::from_millis(10)), max: max.max(initial), started, deadline: started + timeout, attempts: 0 }
    }

    /// Time since the wait began.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Time left before the deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps before the next attempt. `false` when the deadline or the attempt budget is
    /// spent (nothing is slept then).
    pub(crate) async fn pause(&mut self) -> bool {
        self.attempts += 1;
        let now = Instant::now();
        if self.attempts >= MAX_ATTEMPTS || now >= self.deadline {
            return false;
        }
        let nap = self.next.min(self.deadline - now);
        tokio::time::sleep(nap).await;
        self.next = (self.next.mul_f64(1.5)).min(self.max);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_ends_at_the_deadline() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40), Duration::from_millis(200));
        let mut n = 0;
        while b.pause().await {
            n += 1;
            assert!(n < 100, "bounded");
        }
        assert!(b.elapsed() >= Duration::from_millis(200));
        assert!(n >= 4, "{n} pauses");
        assert_eq!(b.remaining(), Duration::ZERO);
    }

    #[tokio::test]
    async fn backoff_ends_after_max_attempts() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(10), Duration::from_secs(3600));
        b.attempts = MAX_ATTEMPTS - 2;
        assert!(b.pause().await);
        assert!(!b.pause().await);
    }
}
