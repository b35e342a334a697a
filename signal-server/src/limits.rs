//! Per-connection and per-process limits, as pure state driven by the caller's clock so each
//! rule is a plain unit test.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceway_service::TokenBucket;
use parking_lot::Mutex;

/// What the rate limiter says about one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Refuse this message with a `rate-limited` error.
    Refuse,
    /// Sustained abuse: close the connection with 4008.
    Close,
}

/// A token bucket per connection. Refused messages count as strikes; a message that gets
/// through clears them, so a client that backs off after `rate-limited` is never closed, while
/// one that keeps flooding reaches `max_strikes` and is closed.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    bucket: TokenBucket,
    strikes: u32,
    max_strikes: u32,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32, max_strikes: u32, now: Instant) -> Self {
        Self {
            bucket: TokenBucket::new(f64::from(per_second.max(1)), f64::from(burst), now),
            strikes: 0,
            max_strikes: max_strikes.max(1),
        }
    }

    pub fn check(&mut self, now: Instant) -> RateDecision {
        if self.bucket.take(1.0, now) {
            self.strikes = 0;
            return RateDecision::Allow;
        }
        self.strikes += 1;
        if self.strikes >= self.max_strikes {
            RateDecision::Close
        } else {
            RateDecision::Refuse
        }
    }
}

/// Live connections per user on this process. A guard releases its slot when dropped, so a
/// connection task that ends any way at all gives the slot back.
#[derive(Debug)]
pub struct Connections<K: Eq + Hash + Clone> {
    max: usize,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

/// One connection counted against its key; dropped, it is given back.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    key: K,
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

/// Connections per user (`sub`).
pub type UserConnections = Connections<Arc<str>>;
pub type UserSlot = Slot<Arc<str>>;
/// Connections per client address (IPv6 per /64, see [`ip_key`]).
pub type IpConnections = Connections<IpAddr>;
pub type IpSlot = Slot<IpAddr>;

impl<K: Eq + Hash + Clone> Connections<K> {
    /// `max` 0: no cap.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// A slot for `key`, or `None` if it already has `max` connections here.
    pub fn acquire(&self, key: &K) -> Option<Slot<K>> {
        let mut counts = self.counts.lock();
        let n = counts.entry(key.clone()).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            key: key.clone(),
            counts: self.counts.clone(),
        })
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.counts.lock().len()
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The key a client address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64, which one subscriber usually holds whole.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// When a silent connection is pinged and when it is given up on.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
}

/// What the connection's timer should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LivenessAction {
    /// Nothing heard for a heartbeat: send a WebSocket ping.
    Ping,
    /// Nothing heard for the idle timeout: close.
    Close,
    /// Nothing due yet.
    Wait,
}

impl Liveness {
    /// The next instant the connection timer must wake, given when the client was last heard
    /// from and when the server last pinged.
    pub fn next_wake(&self, last_heard: Instant, last_ping: Option<Instant>) -> Instant {
        let idle = last_heard + self.idle_timeout;
        let ping = last_ping.map_or(last_heard, |p| p.max(last_heard)) + self.heartbeat;
        idle.min(ping)
    }

    pub fn due(
        &self,
        now: Instant,
        last_heard: Instant,
        last_ping: Option<Instant>,
    ) -> LivenessAction {
        if now >= last_heard + self.idle_timeout {
            LivenessAction::Close
        } else if now >= last_ping.map_or(last_heard, |p| p.max(last_heard)) + self.heartbeat {
            LivenessAction::Ping
        } else {
            LivenessAction::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_passes_then_refuses_then_closes_on_sustained_flood() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5, 3, t0);
        for _ in 0..5 {
            assert_eq!(r.check(t0), RateDecision::Allow);
        }
        assert_eq!(r.check(t0), RateDecision::Refuse);
        assert_eq!(r.check(t0), RateDecision::Refuse);
        assert_eq!(r.check(t0), RateDecision::Close);
    }

    #[test]
    fn a_client_that_backs_off_is_never_closed() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 2, 3, t0);
        let mut now = t0;
        for _ in 0..100 {
            assert_eq!(r.check(now), RateDecision::Allow);
            assert_eq!(r.check(now), RateDecision::Allow);
            assert_eq!(r.check(now), RateDecision::Refuse);
            assert_eq!(r.check(now), RateDecision::Refuse);
            now += Duration::from_millis(200);
        }
    }

    #[test]
    fn steady_rate_at_the_limit_is_allowed() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 1, 1, t0);
        for i in 0..1000 {
            assert_eq!(
                r.check(t0 + Duration::from_millis(100 * i)),
                RateDecision::Allow
            );
        }
    }

    #[test]
    fn user_slots_are_counted_and_released() {
        let limits = UserConnections::new(2);
        let alice: Arc<str> = Arc::from("alice");
        let a = limits.acquire(&alice).expect("first");
        let b = limits.acquire(&alice).expect("second");
        assert!(limits.acquire(&alice).is_none());
        assert!(limits.acquire(&Arc::from("bob")).is_some());
        drop(a);
        let c = limits.acquire(&alice).expect("released slot");
        drop((b, c));
        assert_eq!(
            limits.users(),
            0,
            "no entry is kept for users without connections"
        );
    }

    #[test]
    fn silent_client_is_pinged_then_closed() {
        let l = Liveness {
            heartbeat: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(25),
        };
        let t0 = Instant::now();
        assert_eq!(l.due(t0, t0, None), LivenessAction::Wait);
        assert_eq!(l.next_wake(t0, None), t0 + Duration::from_secs(10));
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(l.due(t10, t0, None), LivenessAction::Ping);
        assert_eq!(l.next_wake(t0, Some(t10)), t0 + Duration::from_secs(20));
        assert_eq!(
            l.due(t0 + Duration::from_secs(15), t0, Some(t10)),
            LivenessAction::Wait
        );
        let t20 = t0 + Duration::from_secs(20);
        assert_eq!(l.due(t20, t0, Some(t10)), LivenessAction::Ping);
        assert_eq!(l.next_wake(t0, Some(t20)), t0 + Duration::from_secs(25));
        assert_eq!(
            l.due(t0 + Duration::from_secs(25), t0, Some(t20)),
            LivenessAction::Close
        );
    }
}
