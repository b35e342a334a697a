//! Limits on TURN's TCP and TLS connections, as state without sockets or clocks of its own: who
//! may hold a connection (a global and a per-source cap), when a connection must have spoken or
//! be closed (first-message, idle and write deadlines), and how long the accept loop waits after an
//! accept error. `io::stream` drives them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntGauge;

/// The `turn.stream_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// From accept to the first STUN message, TLS handshake included.
    pub first_message_timeout: Duration,
    /// Without an allocation, the longest silence between two frames.
    pub idle_timeout: Duration,
    /// The longest one write to the client may take: a client that stops reading cannot hold
    /// its connection, allocation and relay port by leaving our writes pending.
    pub write_timeout: Duration,
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    GlobalCap,
    PerIpCap,
}

impl Refusal {
    /// The `reason` label of `iceway_turn_stream_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::GlobalCap => "global_cap",
            Self::PerIpCap => "per_ip_cap",
        }
    }
}

/// Every `reason` label of `iceway_turn_stream_rejected_total`, for initialising the series.
pub const REJECT_REASONS: [&str; 6] = [
    "global_cap",
    "per_ip_cap",
    "first_message_timeout",
    "idle_timeout",
    "write_timeout",
    "accept_error",
];

/// What one source is counted as: an IPv4 address (also in its IPv4-mapped IPv6 form, as a
/// dual-stack listener reports it), or an IPv6 /64, because one subscriber is usually given a
/// whole /64 and could otherwise open the cap's worth of connections from each of its addresses.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    // SipHash (std's default) rather than a fast hash: the keys are chosen by whoever connects.
    by_source: HashMap<IpAddr, u32>,
}

/// The stream connections open now, in all and per source, shared by every TCP and TLS listener.
#[derive(Debug)]
pub struct StreamConnections {
    limits: StreamLimits,
    counts: Mutex<Counts>,
    gauge: IntGauge,
}

impl StreamConnections {
    /// `gauge` follows the number of open connections.
    pub fn new(limits: StreamLimits, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
            gauge,
        })
    }

    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// A slot for a connection from `ip`, given back when the slot drops; or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<StreamSlot, Refusal> {
        let key = source_key(ip);
        let mut c = self.counts.lock();
        if c.total >= self.limits.max_connections {
            return Err(Refusal::GlobalCap);
        }
        let n = c.by_source.entry(key).or_insert(0);
        if *n >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIpCap);
        }
        *n += 1;
        c.total += 1;
        self.gauge.inc();
        Ok(StreamSlot {
            table: Arc::clone(self),
            key,
        })
    }

    pub fn total(&self) -> u32 {
        self.counts.lock().total
    }

    pub fn from_source(&self, ip: IpAddr) -> u32 {
        let c = self.counts.lock();
        c.by_source.get(&source_key(ip)).copied().unwrap_or(0)
    }

    fn release(&self, key: IpAddr) {
        let mut c = self.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                // An entry per source ever seen would grow without bound.
                c.by_source.remove(&key);
            }
        }
        self.gauge.dec();
    }
}

/// One open connection's place in [`StreamConnections`]; dropping it, on whatever path the
/// connection ends, gives the place back.
#[derive(Debug)]
pub struct StreamSlot {
    table: Arc<StreamConnections>,
    key: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.table.release(self.key);
    }
}

/// Why a connection's deadline closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    FirstMessage,
    Idle,
    Write,
}

impl Expiry {
    /// The `reason` label of `iceway_turn_stream_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::FirstMessage => "first_message_timeout",
            Self::Idle => "idle_timeout",
            Self::Write => "write_timeout",
        }
    }
}

/// The deadlines of one connection: a first STUN message within `first_message_timeout` of
/// accept, then, while it holds no allocation, a frame at least every `idle_timeout`. A live
/// allocation suspends the idle deadline: its own lifetime, kept up by Refresh, governs the
/// connection, and a client may rightly be silent on it while peers send to it.
#[derive(Debug, Clone)]
pub struct StreamDeadlines {
    first_message_by: Instant,
    idle_timeout: Duration,
    write_timeout: Duration,
    greeted: bool,
    last_frame: Instant,
}

impl StreamDeadlines {
    pub fn new(limits: &StreamLimits, accepted: Instant) -> Self {
        Self {
            first_message_by: accepted + limits.first_message_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            greeted: false,
            last_frame: accepted,
        }
    }

    /// When the TLS handshake must be done: the first message's deadline covers it too.
    pub fn handshake_by(&self) -> Instant {
        self.first_message_by
    }

    /// When a write to the client that starts at `now` must be done.
    pub fn write_by(&self, now: Instant) -> Instant {
        now + self.write_timeout
    }

    /// A complete frame arrived. Only a STUN message (with the magic cookie) meets the
    /// first-message deadline: ChannelData means nothing before an allocation exists.
    pub fn on_frame(&mut self, frame: &[u8], now: Instant) {
        self.last_frame = now;
        if !self.greeted && is_stun(frame) {
            self.greeted = true;
        }
    }

    /// The next deadline and what it enforces; `None` while an allocation lives.
    pub fn next(&self, has_allocation: bool) -> Option<(Instant, Expiry)> {
        if !self.greeted {
            Some((self.first_message_by, Expiry::FirstMessage))
        } else if has_allocation {
            None
        } else {
            Some((self.last_frame + self.idle_timeout, Expiry::Idle))
        }
    }

    /// What has expired at `now`, if anything.
    pub fn expired(&self, now: Instant, has_allocation: bool) -> Option<Expiry> {
        self.next(has_allocation)
            .filter(|(at, _)| *at <= now)
            .map(|(_, why)| why)
    }
}

fn is_stun(frame: &[u8]) -> bool {
    frame.len() >= 20 && frame[0] & 0xC0 == 0 && frame[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// The accept loop's pause after a failed accept: running out of descriptors (EMFILE, ENFILE)
/// fails every accept until some close, and retrying at once would spin a core. The pause
/// doubles from 10 ms to 1 s and starts over after an accept succeeds; errors are logged at most
/// once per `LOG_EVERY`, with the count of those not logged.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptPause {
    pub sleep: Duration,
    /// `Some(n)`: log this error now, and that `n` earlier ones were not logged.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self {
            next: Self::FIRST,
            last_log: None,
            unlogged: 0,
        }
    }

    pub fn failed(&mut self, now: Instant) -> AcceptPause {
        let sleep = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let due = self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::LOG_EVERY);
        let log = if due {
            self.last_log = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        };
        AcceptPause { sleep, log }
    }

    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: u32, per_ip: u32) -> StreamLimits {
        StreamLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            first_message_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(3),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_source_cap_refuses_only_that_source_and_slots_come_back() {
        let gauge = IntGauge::new("g", "g").expect("gauge");
        let table = StreamConnections::new(limits(10, 2), gauge.clone());
        let a1 = table.admit(ip("192.0.2.1")).expect("first");
        let a2 = table.admit(ip("192.0.2.1")).expect("second");
        assert_eq!(table.admit(ip("192.0.2.1")).err(), Some(Refusal::PerIpCap));
        let b = table.admit(ip("192.0.2.2")).expect("another source");
        assert_eq!((table.total(), gauge.get()), (3, 3));
        drop(a1);
        let a3 = table.admit(ip("192.0.2.1")).expect("slot given back");
        drop((a2, a3, b));
        assert_eq!((table.total(), gauge.get()), (0, 0));
        assert_eq!(table.from_source(ip("192.0.2.1")), 0);
        assert!(
            table.counts.lock().by_source.is_empty(),
            "no entry left over"
        );
    }

    #[test]
    fn global_cap_refuses_every_source() {
        let table = StreamConnections::new(limits(2, 5), IntGauge::new("g", "g").expect("g"));
        let _a = table.admit(ip("192.0.2.1")).expect("a");
        let _b = table.admit(ip("192.0.2.2")).expect("b");
        assert_eq!(table.admit(ip("192.0.2.3")).err(), Some(Refusal::GlobalCap));
        assert_eq!(table.admit(ip("192.0.2.1")).err(), Some(Refusal::GlobalCap));
        assert_eq!(
            table.from_source(ip("192.0.2.3")),
            0,
            "a refusal takes nothing"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let table = StreamConnections::new(limits(10, 1), IntGauge::new("g", "g").expect("g"));
        let _a = table.admit(ip("2001:db8:1:2::1")).expect("a");
        assert_eq!(
            table.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::PerIpCap),
            "same /64"
        );
        let _b = table.admit(ip("2001:db8:1:3::1")).expect("another /64");
        let _c = table.admit(ip("198.51.100.7")).expect("v4");
        assert_eq!(
            table.admit(ip("::ffff:198.51.100.7")).err(),
            Some(Refusal::PerIpCap)
        );
    }

    fn stun_binding() -> [u8; 20] {
        let mut m = [0u8; 20];
        m[1] = 0x01;
        m[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m
    }

    #[test]
    fn first_message_then_idle_deadline() {
        let t0 = Instant::now();
        let l = limits(1, 1);
        let mut d = StreamDeadlines::new(&l, t0);
        assert_eq!(
            d.next(false),
            Some((t0 + l.first_message_timeout, Expiry::FirstMessage))
        );
        // ChannelData and STUN-looking bytes without the cookie are no first message.
        d.on_frame(&[0x40, 0x00, 0x00, 0x00], t0);
        let mut no_cookie = stun_binding();
        no_cookie[4] = 0;
        d.on_frame(&no_cookie, t0);
        assert_eq!(
            d.expired(t0 + l.first_message_timeout, true),
            Some(Expiry::FirstMessage)
        );
        let t1 = t0 + Duration::from_millis(500);
        d.on_frame(&stun_binding(), t1);
        assert_eq!(d.next(false), Some((t1 + l.idle_timeout, Expiry::Idle)));
        assert_eq!(
            d.expired(t1 + l.idle_timeout - Duration::from_millis(1), false),
            None
        );
        assert_eq!(d.expired(t1 + l.idle_timeout, false), Some(Expiry::Idle));
        let t2 = t1 + Duration::from_secs(1);
        d.on_frame(&[0x40, 0x00, 0x00, 0x00], t2);
        assert_eq!(
            d.next(false),
            Some((t2 + l.idle_timeout, Expiry::Idle)),
            "any frame is traffic"
        );
    }

    #[test]
    fn a_live_allocation_suspends_the_idle_deadline() {
        let t0 = Instant::now();
        let l = limits(1, 1);
        let mut d = StreamDeadlines::new(&l, t0);
        d.on_frame(&stun_binding(), t0);
        assert_eq!(d.next(true), None);
        assert_eq!(d.expired(t0 + Duration::from_secs(3600), true), None);
        // The allocation ended long after the last frame: the connection goes at once.
        assert_eq!(
            d.expired(t0 + Duration::from_secs(3600), false),
            Some(Expiry::Idle)
        );
    }

    #[test]
    fn accept_backoff_doubles_to_a_cap_resets_and_rate_limits_logs() {
        let mut b = AcceptBackoff::new();
        let t0 = Instant::now();
        let sleeps: Vec<_> = (0..9).map(|_| b.failed(t0).sleep.as_millis()).collect();
        assert_eq!(sleeps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(t0).sleep, AcceptBackoff::FIRST);

        let mut b = AcceptBackoff::new();
        assert_eq!(b.failed(t0).log, Some(0), "the first error is logged");
        assert_eq!(b.failed(t0 + Duration::from_secs(1)).log, None);
        assert_eq!(b.failed(t0 + Duration::from_secs(2)).log, None);
        assert_eq!(
            b.failed(t0 + AcceptBackoff::LOG_EVERY).log,
            Some(2),
            "then one line per interval, counting the quiet ones"
        );
    }
}
