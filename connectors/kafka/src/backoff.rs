//! The one retry delay every stage uses: 100 ms, doubling to 5 s.

use std::time::Duration;

/// Exponential backoff for retrying a store, the registry or Kafka. `wait` sleeps the
/// current delay and doubles it (up to the cap); log `current()` before waiting.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Starts at `first`, doubles up to 5 s.
    pub fn new(first: Duration) -> Backoff {
        Backoff {
            next: first,
            max: Duration::from_secs(5),
        }
    }

    /// The delay the next `wait` sleeps.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Sleeps the current delay, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.grow();
    }

    /// Doubles the delay without sleeping (for callers that sleep in a `select!`).
    pub fn grow(&mut self) {
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_seconds() {
        let mut b = Backoff::default();
        let mut seen = vec![];
        for _ in 0..8 {
            seen.push(b.current().as_millis());
            b.grow();
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
