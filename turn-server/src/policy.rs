//! Who may be relayed to, how much, and how often: pure functions of configuration and state.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use parking_lot::Mutex;

/// DESIGN §5 default deny list. IPv4-mapped and NAT64 forms are unwrapped before matching, so
/// `::ffff:127.0.0.1` is refused as loopback.
pub const DEFAULT_DENY_PEERS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self::new(Vec::new(), default_deny())
    }
}

pub fn default_deny() -> Vec<IpNet> {
    DEFAULT_DENY_PEERS
        .iter()
        .map(|s| s.parse().expect("built-in deny list is valid CIDR"))
        .collect()
}

/// The IPv4 address hidden in an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`)
/// IPv6 address: a relay sending there reaches the IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = ip.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

impl PeerPolicy {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    fn listed(list: &[IpNet], ip: IpAddr) -> bool {
        list.iter().any(|n| n.contains(&ip))
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let forms: [Option<IpAddr>; 2] = match ip {
            IpAddr::V4(_) => [Some(ip), None],
            IpAddr::V6(v6) => [Some(ip), embedded_v4(v6).map(IpAddr::V4)],
        };
        let forms = forms.into_iter().flatten();
        // allow_peers overrides the deny list; every form of the address must pass.
        let mut seen = false;
        for f in forms {
            seen = true;
            if Self::listed(&self.allow, f) {
                return true;
            }
            if Self::listed(&self.deny, f) {
                return false;
            }
        }
        seen
    }
}

/// Token bucket per source IP for 401 responses, so a flood of unauthenticated requests cannot
/// turn the server into a reflector. Bounded: when full, unknown sources are refused.
#[derive(Debug)]
pub struct SourceRateLimit {
    per_sec: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl SourceRateLimit {
    pub fn new(per_sec: u32, burst: u32, max_sources: usize) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            max_sources,
            buckets: HashMap::new(),
        }
    }

    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            return false;
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket has refilled; called from the shard's sweep.
    pub fn sweep(&mut self, now: Instant) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_sec.max(0.001));
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full_after);
    }
}

/// Per-allocation relay bandwidth cap (token bucket in bytes, one second of burst).
#[derive(Debug, Clone)]
pub struct Bandwidth {
    bytes_per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl Bandwidth {
    pub fn new(kbps: u32, now: Instant) -> Self {
        let bytes_per_sec = f64::from(kbps) * 1000.0 / 8.0;
        Self {
            bytes_per_sec,
            tokens: bytes_per_sec,
            last: now,
        }
    }

    pub fn take(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.bytes_per_sec).min(self.bytes_per_sec);
        let need = len as f64;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user allocation quota reached")]
    User,
    #[error("server allocation quota reached")]
    Total,
}

impl QuotaError {
    pub fn kind(self) -> &'static str {
        match self {
            QuotaError::User => "user",
            QuotaError::Total => "total",
        }
    }
}

/// Allocation counts shared by all shards; touched only on Allocate and on release, never per
/// packet.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    inner: Mutex<(HashMap<String, u32>, u32)>,
}

impl QuotaLedger {
    pub fn acquire(
        &self,
        user: &str,
        user_limit: Option<u32>,
        total_limit: Option<u32>,
    ) -> Result<(), QuotaError> {
        let mut g = self.inner.lock();
        let (users, total) = &mut *g;
        if total_limit.is_some_and(|l| *total >= l) {
            return Err(QuotaError::Total);
        }
        let current = users.get(user).copied().unwrap_or(0);
        if user_limit.is_some_and(|l| current >= l) {
            return Err(QuotaError::User);
        }
        users.insert(user.to_owned(), current + 1);
        *total += 1;
        Ok(())
    }

    pub fn release(&self, user: &str) {
        let mut g = self.inner.lock();
        let (users, total) = &mut *g;
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
            *total = total.saturating_sub(1);
        }
    }

    pub fn total(&self) -> u32 {
        self.inner.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn default_policy_denies_internal_ranges_in_every_form() {
        let p = PeerPolicy::default();
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.251",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fe80::1",
            "fd00::1",
        ] {
            assert!(!p.permits(ip(denied)), "{denied} must be denied");
        }
        for allowed in ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(p.permits(ip(allowed)), "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_list_overrides_deny() {
        let p = PeerPolicy::new(vec!["127.0.0.0/8".parse().expect("net")], default_deny());
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(!p.permits(ip("10.0.0.1")));
    }

    #[test]
    fn rate_limit_refills() {
        let t0 = Instant::now();
        let mut rl = SourceRateLimit::new(1, 2, 10);
        let a = ip("192.0.2.1");
        assert!(rl.allow(a, t0));
        assert!(rl.allow(a, t0));
        assert!(!rl.allow(a, t0));
        assert!(rl.allow(a, t0 + Duration::from_secs(1)));
        rl.sweep(t0 + Duration::from_secs(100));
        assert!(rl.buckets.is_empty());
    }

    #[test]
    fn quotas() {
        let q = QuotaLedger::default();
        assert_eq!(q.acquire("a", Some(1), Some(2)), Ok(()));
        assert_eq!(q.acquire("a", Some(1), Some(2)), Err(QuotaError::User));
        assert_eq!(q.acquire("b", None, Some(2)), Ok(()));
        assert_eq!(q.acquire("c", None, Some(2)), Err(QuotaError::Total));
        q.release("a");
        assert_eq!(q.acquire("a", Some(1), Some(2)), Ok(()));
    }

    #[test]
    fn bandwidth_cap() {
        let t0 = Instant::now();
        let mut b = Bandwidth::new(8, t0); // 1000 bytes/s
        assert!(b.take(600, t0));
        assert!(!b.take(600, t0));
        assert!(b.take(600, t0 + Duration::from_secs(1)));
    }
}
