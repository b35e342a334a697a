//! The one token bucket of every service: the TURN relay's 401 limiter and bandwidth cap, the
//! signal server's per-connection message rate. Plain state driven by the caller's clock, so a
//! rule is a unit test and the per-packet path takes no lock and reads no clock of its own.
//!
//! Not `governor`: its keyed limiter is an unbounded concurrent map with its own clock, which
//! suits auth's HTTP handlers (auth uses it) but not a bounded table inside a TURN shard fed
//! the time of each datagram.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `burst` (both at least tiny, so
    /// a zero in configuration cannot divide by zero or refuse for ever).
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.001),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `cost` tokens if there are that many.
    pub fn take(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now`: a table of buckets can forget it, since a new
    /// full bucket is the same thing.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// How long an empty bucket takes to fill.
    pub fn fill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_refills_and_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 2.0, t0);
        assert!(b.take(1.0, t0));
        assert!(b.take(1.0, t0));
        assert!(!b.take(1.0, t0));
        assert!(!b.is_full(t0));
        assert!(b.take(1.0, t0 + Duration::from_secs(1)));
        assert!(b.is_full(t0 + Duration::from_secs(100)));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(1000);
        assert!(b.take(2.0, later));
        assert!(!b.take(1.0, later));
        assert_eq!(b.fill_time(), Duration::from_secs(2));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(100.0, 1.0, t0);
        assert!(b.take(1.0, t0));
        assert!(!b.take(1.0, t0 - Duration::from_secs(5)));
    }

    #[test]
    fn zero_configuration_is_clamped() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, 0.0, t0);
        assert!(b.take(1.0, t0));
        assert!(!b.take(1.0, t0));
    }
}
