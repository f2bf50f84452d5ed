//! Retrying: one jittered exponential backoff and one cancellable sleep,
//! used by every retry loop in the workspace (reconnects, JetStream
//! publishes, KV writes, sink deliveries).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Jittered exponential backoff: each delay is between half and all of a
/// step that doubles from `first` up to `cap`, so that retries from many
/// clients spread out instead of arriving together.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 250 ms doubling to 30 s: reconnects to a broker.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The delay before the next attempt; the step after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.cap);
        jitter(step)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A delay between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}

/// Sleeps for `d` unless `shutdown` is cancelled first. Returns `true` if
/// the whole delay passed, `false` if the caller should stop.
pub async fn sleep_unless_cancelled(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(250));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[11] >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(250));
        let mut short = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert!((0..20).all(|_| short.next_delay() <= Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn a_cancelled_sleep_returns_at_once() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = std::time::Instant::now();
        assert!(!sleep_unless_cancelled(Duration::from_secs(60), &shutdown).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        let live = CancellationToken::new();
        assert!(sleep_unless_cancelled(Duration::from_millis(1), &live).await);
    }
}
