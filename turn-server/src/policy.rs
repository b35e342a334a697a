//! Who may be relayed to, how much, and how often: pure functions of configuration and state.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use iceway_service::TokenBucket;

use ipnet::IpNet;
use parking_lot::Mutex;

/// DESIGN §5 default deny list, plus the special-purpose ranges a relay has no business
/// reaching (RFC 6890: IETF protocol assignments, benchmarking; RFC 8215: NAT64 local use, of
/// which the embedded IPv4 position depends on the operator's prefix length, so all of it).
/// IPv6 forms that carry an IPv4 address are unwrapped before matching, so `::ffff:127.0.0.1`,
/// `::127.0.0.1` and `2002:7f00:1::` are refused as loopback.
pub const DEFAULT_DENY_PEERS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// The server's own listen, relay and external addresses: a relay to them reaches the
    /// server's own ports (admin, metrics) from outside. Denied unless allow-listed.
    own: Vec<IpAddr>,
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

fn v4_at(o: &[u8; 16], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3])
}

/// The IPv4 address a relay sending to this IPv6 address would reach: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some
/// stacks), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/96`), 6to4 (`2002:AABB:CCDD::/48`) and Teredo
/// (`2001:0::/32`, client address inverted in the last 32 bits).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let o = ip.octets();
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some(v4_at(&o, 12));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 1, 0, 0, 0] {
        return Some(v4_at(&o, 12));
    }
    if s[0] == 0x2002 {
        return Some(v4_at(&o, 2));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let c = v4_at(&o, 12).octets();
        return Some(Ipv4Addr::new(!c[0], !c[1], !c[2], !c[3]));
    }
    None
}

impl PeerPolicy {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self {
            allow,
            deny,
            own: Vec::new(),
        }
    }

    /// Also deny these addresses (the server's own), unless allow-listed.
    pub fn with_own_addresses(mut self, own: impl IntoIterator<Item = IpAddr>) -> Self {
        self.own
            .extend(own.into_iter().filter(|ip| !ip.is_unspecified()));
        self.own.sort();
        self.own.dedup();
        self
    }

    fn listed(list: &[IpNet], ip: IpAddr) -> bool {
        list.iter().any(|n| n.contains(&ip))
    }

    fn form_permitted(&self, ip: IpAddr) -> bool {
        Self::listed(&self.allow, ip) || !(Self::listed(&self.deny, ip) || self.own.contains(&ip))
    }

    /// Every form of the address must pass on its own: an allow-list entry that matches the
    /// IPv6 form does not open the IPv4 host hidden inside it.
    pub fn permits(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.form_permitted(ip),
            IpAddr::V6(v6) => {
                self.form_permitted(ip)
                    && embedded_v4(v6).is_none_or(|v4| self.form_permitted(IpAddr::V4(v4)))
            }
        }
    }
}

/// The key a source is limited under: its address, or its /64 for IPv6, because one host (or
/// one home) owns a whole /64 and could otherwise rotate through 2^64 buckets.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Token bucket per source for 401 responses, so a flood of unauthenticated requests cannot
/// turn the server into a reflector. Bounded: when the table is full, sources not in it share
/// one overflow bucket (much larger than one source's), so a flood from many addresses slows
/// the challenges of newcomers without shutting them out and never grows the table.
#[derive(Debug)]
pub struct SourceRateLimit {
    per_sec: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, TokenBucket>,
    overflow: TokenBucket,
}

/// How many sources' worth of tokens the shared overflow bucket holds.
const OVERFLOW_FACTOR: f64 = 64.0;

impl SourceRateLimit {
    pub fn new(per_sec: u32, burst: u32, max_sources: usize, now: Instant) -> Self {
        let (per_sec, burst) = (f64::from(per_sec), f64::from(burst.max(1)));
        Self {
            per_sec,
            burst,
            max_sources,
            buckets: HashMap::new(),
            overflow: TokenBucket::new(per_sec * OVERFLOW_FACTOR, burst * OVERFLOW_FACTOR, now),
        }
    }

    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        if let Some(b) = self.buckets.get_mut(&key) {
            return b.take(1.0, now);
        }
        if self.buckets.len() >= self.max_sources {
            return self.overflow.take(1.0, now);
        }
        let mut b = TokenBucket::new(self.per_sec, self.burst, now);
        let ok = b.take(1.0, now);
        self.buckets.insert(key, b);
        ok
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets sources whose bucket has refilled; called from the shard's sweep.
    pub fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

/// Per-allocation relay bandwidth cap (token bucket in bytes, one second of burst).
#[derive(Debug, Clone)]
pub struct Bandwidth(TokenBucket);

impl Bandwidth {
    pub fn new(kbps: u32, now: Instant) -> Self {
        let bytes_per_sec = f64::from(kbps) * 1000.0 / 8.0;
        Self(TokenBucket::new(bytes_per_sec, bytes_per_sec, now))
    }

    pub fn take(&mut self, len: usize, now: Instant) -> bool {
        self.0.take(len as f64, now)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("user allocation quota reached")]
    User,
    #[error("allocation quota of this client address reached")]
    Source,
    #[error("server allocation quota reached")]
    Total,
}

impl QuotaError {
    pub fn kind(self) -> &'static str {
        match self {
            QuotaError::User => "user",
            QuotaError::Source => "source",
            QuotaError::Total => "total",
        }
    }
}

/// The caps one Allocate is checked against; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaLimits {
    pub user: Option<u32>,
    pub per_source: Option<u32>,
    pub total: Option<u32>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, u32>,
    sources: HashMap<IpAddr, u32>,
    total: u32,
}

fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

/// Allocation counts shared by all shards (a client's 5-tuples land on any shard); touched only
/// on Allocate and on release, never per packet. Sources are counted by `source_key`.
#[derive(Debug, Default)]
pub struct QuotaLedger {
    inner: Mutex<Counts>,
}

impl QuotaLedger {
    pub fn acquire(
        &self,
        user: &str,
        source: IpAddr,
        limits: QuotaLimits,
    ) -> Result<(), QuotaError> {
        let source = source_key(source);
        let mut c = self.inner.lock();
        if limits.total.is_some_and(|l| c.total >= l) {
            return Err(QuotaError::Total);
        }
        let per_source = c.sources.get(&source).copied().unwrap_or(0);
        if limits.per_source.is_some_and(|l| per_source >= l) {
            return Err(QuotaError::Source);
        }
        let per_user = c.users.get(user).copied().unwrap_or(0);
        if limits.user.is_some_and(|l| per_user >= l) {
            return Err(QuotaError::User);
        }
        c.users.insert(user.to_owned(), per_user + 1);
        c.sources.insert(source, per_source + 1);
        c.total += 1;
        Ok(())
    }

    pub fn release(&self, user: &str, source: IpAddr) {
        let source = source_key(source);
        let mut c = self.inner.lock();
        if c.users.contains_key(user) && c.sources.contains_key(&source) {
            dec(&mut c.users, &user.to_owned());
            dec(&mut c.sources, &source);
            c.total = c.total.saturating_sub(1);
        }
    }

    pub fn total(&self) -> u32 {
        self.inner.lock().total
    }

    /// Users and sources with at least one allocation (a leak shows here).
    pub fn tracked(&self) -> (usize, usize) {
        let c = self.inner.lock();
        (c.users.len(), c.sources.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        let mut rl = SourceRateLimit::new(1, 2, 10, t0);
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
        let (x, y) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let l = |user, total| QuotaLimits {
            user,
            per_source: None,
            total,
        };
        assert_eq!(q.acquire("a", x, l(Some(1), Some(2))), Ok(()));
        assert_eq!(
            q.acquire("a", x, l(Some(1), Some(2))),
            Err(QuotaError::User)
        );
        assert_eq!(q.acquire("b", y, l(None, Some(2))), Ok(()));
        assert_eq!(q.acquire("c", y, l(None, Some(2))), Err(QuotaError::Total));
        q.release("a", x);
        assert_eq!(q.acquire("a", x, l(Some(1), Some(2))), Ok(()));
        q.release("a", x);
        q.release("b", y);
        assert_eq!((q.total(), q.tracked()), (0, (0, 0)));
    }

    #[test]
    fn per_source_quota_counts_ipv6_by_64() {
        let q = QuotaLedger::default();
        let l = QuotaLimits {
            user: None,
            per_source: Some(2),
            total: None,
        };
        assert_eq!(q.acquire("a", ip("2001:db8:1:2::1"), l), Ok(()));
        assert_eq!(q.acquire("b", ip("2001:db8:1:2:ffff::9"), l), Ok(()));
        assert_eq!(
            q.acquire("c", ip("2001:db8:1:2::3"), l),
            Err(QuotaError::Source)
        );
        assert_eq!(q.acquire("c", ip("2001:db8:1:3::3"), l), Ok(()));
    }

    #[test]
    fn limiter_keys_ipv6_by_64_and_degrades_to_a_shared_bucket_when_full() {
        let t0 = Instant::now();
        let mut rl = SourceRateLimit::new(1, 1, 2, t0);
        // One /64 is one source, however many addresses it rotates through.
        assert!(rl.allow(ip("2001:db8::1"), t0));
        assert!(!rl.allow(ip("2001:db8::2:3"), t0));
        assert!(rl.allow(ip("192.0.2.1"), t0));
        assert_eq!(rl.sources(), 2);
        // The table is full: newcomers are still answered, from the shared bucket (64 tokens
        // here), and the table does not grow.
        let answered = (0..1000u32)
            .filter(|i| rl.allow(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0))
            .count();
        assert_eq!(answered, 64);
        assert_eq!(rl.sources(), 2);
        // Once the flood stops the shared bucket refills and the sweep empties the table.
        let later = t0 + Duration::from_secs(2);
        assert!(rl.allow(ip("198.51.100.9"), later));
        rl.sweep(later);
        assert_eq!(rl.sources(), 0);
    }

    #[test]
    fn embedded_ipv4_forms_are_unwrapped_and_checked_on_their_own() {
        let p = PeerPolicy::default();
        for denied in [
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ff00::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo, client 127.0.0.1
            "192.0.0.170",
            "198.18.0.1",
            "198.19.255.255",
            "100::1",
        ] {
            assert!(!p.permits(ip(denied)), "{denied} must be denied");
        }
        for allowed in [
            "2002:808:808::1",
            "::8.8.8.8",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert!(p.permits(ip(allowed)), "{allowed} must be allowed");
        }
        // Allowing an IPv6 range does not open the IPv4 hosts embedded in it.
        let p = PeerPolicy::new(vec!["2002::/16".parse().expect("net")], default_deny());
        assert!(p.permits(ip("2002:808:808::1")));
        assert!(!p.permits(ip("2002:7f00:1::1")));
        let p = PeerPolicy::new(vec!["::/0".parse().expect("net")], default_deny());
        assert!(!p.permits(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn own_addresses_are_denied_unless_allowed() {
        let own = [ip("203.0.113.5"), ip("2001:db8::5"), ip("0.0.0.0")];
        let p = PeerPolicy::default().with_own_addresses(own);
        assert!(!p.permits(ip("203.0.113.5")));
        assert!(!p.permits(ip("::ffff:203.0.113.5")));
        assert!(!p.permits(ip("2001:db8::5")));
        assert!(p.permits(ip("203.0.113.6")));
        let p = PeerPolicy::new(vec!["203.0.113.5/32".parse().expect("net")], default_deny())
            .with_own_addresses(own);
        assert!(p.permits(ip("203.0.113.5")));
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
