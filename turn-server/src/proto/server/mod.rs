//! The TURN/STUN server state machine of one shard: bytes, a five-tuple and the time in;
//! datagrams to send out. No sockets, no clock, no tokio.

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

mod allocate;
mod auth;
mod binding;
mod channel_bind;
mod permission;
mod refresh;
mod reply;
mod send;

pub use reply::{ErrorReply, Reply, StunError};

use super::channel_data::{self, HEADER_LEN};
use super::credentials::{CredentialStore, Grant};
use super::message::{self as msg, DecodeError};
use super::nonce::{NonceCheck, NonceKey};
use crate::metrics::{Metrics, RelayStats};
use crate::policy::{Bandwidth, PeerPolicy, QuotaLedger, SourceRateLimit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// The client side of an allocation (RFC 8656 §2: the 5-tuple client address, server address,
/// transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix: SystemTime,
}

impl Now {
    pub fn system() -> Self {
        Self {
            instant: Instant::now(),
            unix: SystemTime::now(),
        }
    }

    fn unix_secs(&self) -> u64 {
        self.unix
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// The I/O layer's handle for a relay socket.
pub type RelayId = usize;

#[derive(Debug, Clone, Copy)]
pub struct Relay {
    pub id: RelayId,
    /// The address the relay socket is bound to.
    pub local: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("no free port in the relay range")]
    Exhausted,
    #[error("this address family has no relay address")]
    FamilyUnsupported,
}

/// Which relay port the Allocate asked for (RFC 8656 §7.2: EVEN-PORT, RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    Even,
    /// An even port, and hold the next one under this token.
    EvenReserveNext([u8; 8]),
    /// The port held under this token.
    Reserved([u8; 8]),
}

/// The I/O layer binds relay sockets on the core's behalf, in the configured relay range, and
/// holds reserved ports (they may be claimed from any shard). Relay ids are small and reused
/// once released (slab indices): the core indexes a table by them.
pub trait RelayPorts {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError>;
    fn release(&mut self, id: RelayId);
}

// The limits' defaults (docs/turn-server.md#security explains each). Sized for the crowds the
// relay must serve: 200 clients starting at once behind one carrier NAT share an address and,
// with coturn-style REST credentials, often one user; a browser makes one allocation per TURN
// URL per peer connection and asks for a permission per remote candidate address.
pub const DEFAULT_USER_QUOTA: u32 = 512;
pub const DEFAULT_SOURCE_QUOTA: u32 = 1_024;
pub const DEFAULT_TOTAL_QUOTA: u32 = 10_000;
pub const DEFAULT_MAX_PERMISSIONS: usize = 32;
pub const DEFAULT_MAX_CHANNELS: usize = 32;
pub const DEFAULT_UNAUTHORIZED_PER_SEC: u32 = 100;
pub const DEFAULT_UNAUTHORIZED_BURST: u32 = 400;
pub const DEFAULT_UNAUTHORIZED_MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub realm: String,
    pub software: Option<String>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Refuse Refresh and other requests once the credential has expired, and end allocations
    /// when it expires.
    pub strict_expiry: bool,
    /// The advertised relay addresses (one per family) when relays sit behind NAT.
    pub external_ips: Vec<IpAddr>,
    pub user_quota: Option<u32>,
    /// Allocations per client address (IPv6: per /64), across all shards.
    pub source_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_kbps: Option<u32>,
    /// Permissions one allocation holds (and XOR-PEER-ADDRESSes one request carries).
    pub max_permissions: usize,
    pub max_channels: usize,
    pub alternate_server: Option<SocketAddr>,
    pub unauthorized_per_sec: u32,
    pub unauthorized_burst: u32,
    /// Sources the 401 limiter tracks per shard before newcomers share one bucket.
    pub unauthorized_max_sources: usize,
    pub stun_only: bool,
    /// Highest bindable channel number: 0x4FFF (RFC 8656) or 0x7FFF (RFC 5766, what coturn's
    /// clients use).
    pub channel_max: u16,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            realm: "iceway".into(),
            software: Some(concat!("iceway-turn/", env!("CARGO_PKG_VERSION")).into()),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            strict_expiry: false,
            external_ips: Vec::new(),
            user_quota: Some(DEFAULT_USER_QUOTA),
            source_quota: Some(DEFAULT_SOURCE_QUOTA),
            total_quota: Some(DEFAULT_TOTAL_QUOTA),
            max_kbps: None,
            max_permissions: DEFAULT_MAX_PERMISSIONS,
            max_channels: DEFAULT_MAX_CHANNELS,
            alternate_server: None,
            unauthorized_per_sec: DEFAULT_UNAUTHORIZED_PER_SEC,
            unauthorized_burst: DEFAULT_UNAUTHORIZED_BURST,
            unauthorized_max_sources: DEFAULT_UNAUTHORIZED_MAX_SOURCES,
            stun_only: false,
            channel_max: channel_data::CHANNEL_MAX,
        }
    }
}

/// What every shard shares: configuration, credentials, the nonce key, quotas and metrics.
pub struct Shared {
    pub config: CoreConfig,
    pub credentials: Box<dyn CredentialStore>,
    pub nonce_key: NonceKey,
    pub policy: PeerPolicy,
    pub quotas: QuotaLedger,
    pub draining: AtomicBool,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        config: CoreConfig,
        credentials: Box<dyn CredentialStore>,
        policy: PeerPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            credentials,
            nonce_key: NonceKey::random(),
            policy,
            quotas: QuotaLedger::default(),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub enum Output {
    ToClient {
        to: FiveTuple,
        data: Vec<u8>,
    },
    ToPeer {
        relay: RelayId,
        peer: SocketAddr,
        data: Vec<u8>,
    },
}

/// Where a datagram from a peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRoute {
    Drop,
    /// Prefix a ChannelData header with this number and send to the client.
    Channel {
        to: FiveTuple,
        number: u16,
    },
    /// Wrap in a Data indication (no channel bound for this peer).
    Indication {
        to: FiveTuple,
    },
}

#[derive(Debug, Clone, Copy)]
struct RelayAddr {
    id: RelayId,
    advertised: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    relays: Vec<RelayAddr>,
    username: String,
    user: String,
    key: [u8; 16],
    credential_expires: Option<SystemTime>,
    created: Instant,
    expires: Instant,
    allocate_txid: [u8; 12],
    allocate_response: Vec<u8>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    bandwidth: Option<Bandwidth>,
}

impl Allocation {
    fn relay_for(&self, family: Family) -> Option<&RelayAddr> {
        self.relays
            .iter()
            .find(|r| Family::of(r.advertised.ip()) == family)
    }

    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|e| *e > now)
    }

    fn purge_permissions(&mut self, now: Instant, m: &Metrics) {
        let before = self.permissions.len();
        self.permissions.retain(|_, e| *e > now);
        m.permissions.sub((before - self.permissions.len()) as i64);
    }

    fn purge_channels(&mut self, now: Instant, m: &Metrics) {
        let before = self.channels.len();
        let by_peer = &mut self.channel_by_peer;
        self.channels.retain(|_, c| {
            let keep = c.expires > now;
            if !keep {
                by_peer.remove(&c.peer);
            }
            keep
        });
        m.channels.sub((before - self.channels.len()) as i64);
    }

    fn within_bandwidth(&mut self, len: usize, now: Instant) -> bool {
        self.bandwidth.as_mut().is_none_or(|b| b.take(len, now))
    }
}

pub struct Server {
    shared: Arc<Shared>,
    allocations: HashMap<FiveTuple, Allocation>,
    /// Indexed by `RelayId`, which the I/O layer keeps small and reuses (a slab index): the
    /// peer-to-client path finds its allocation without hashing the relay id.
    by_relay: Vec<Option<FiveTuple>>,
    /// Where the next partial sweep starts in `by_relay`.
    sweep_cursor: usize,
    unauthorized_swept: Instant,
    unauthorized: SourceRateLimit,
    out: VecDeque<Output>,
    stats: RelayStats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("allocations", &self.allocations.len())
            .finish_non_exhaustive()
    }
}

fn method_label(m: Method) -> &'static str {
    match m {
        METHOD_BINDING => "binding",
        METHOD_ALLOCATE => "allocate",
        METHOD_REFRESH => "refresh",
        METHOD_CREATE_PERMISSION => "create_permission",
        METHOD_CHANNEL_BIND => "channel_bind",
        _ => "other",
    }
}

impl Server {
    pub fn new(shared: Arc<Shared>) -> Self {
        let c = &shared.config;
        let unauthorized = SourceRateLimit::new(
            c.unauthorized_per_sec,
            c.unauthorized_burst,
            c.unauthorized_max_sources,
            Instant::now(),
        );
        Self {
            shared,
            allocations: HashMap::default(),
            by_relay: Vec::new(),
            sweep_cursor: 0,
            unauthorized_swept: Instant::now(),
            unauthorized,
            out: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A datagram (or stream frame) from a client.
    pub fn handle_client(
        &mut self,
        data: &[u8],
        from: FiveTuple,
        now: Now,
        relays: &mut dyn RelayPorts,
    ) {
        if channel_data::is_channel_data(data) {
            if let Ok(cd) = channel_data::parse(data) {
                if let Some((relay, peer)) =
                    self.route_channel_data(&from, cd.number, cd.payload.len(), now.instant)
                {
                    self.out.push_back(Output::ToPeer {
                        relay,
                        peer,
                        data: cd.payload.to_vec(),
                    });
                }
            }
            return;
        }
        let m = match msg::decode(data) {
            Ok(m) => m,
            // The header is sound but an attribute is not: the request is answered.
            Err((DecodeError::Malformed, Some(header))) if header.typ.class == CLASS_REQUEST => {
                self.send_error(&header, from, StunError::BadRequest.into(), now);
                return;
            }
            // Not STUN, a header that fails RFC 8489 §6.3, or a bad FINGERPRINT: silence.
            Err(_) => return,
        };
        if m.typ.class == CLASS_INDICATION {
            if m.typ.method == METHOD_SEND && !self.shared.config.stun_only {
                self.handle_send(&m, from, now.instant);
            }
            return;
        }
        if m.typ.class != CLASS_REQUEST {
            return;
        }
        if m.typ.method == METHOD_BINDING {
            if let Some(reply) = Reply::unknown_attributes(&m) {
                self.send_error(&m, from, reply, now);
                return;
            }
            self.shared.metrics.binding_requests.inc();
            self.handle_binding(&m, from);
            return;
        }
        if self.shared.config.stun_only {
            self.send_error(&m, from, Reply::from(StunError::StunOnly), now);
            return;
        }
        let result = match m.typ.method {
            METHOD_ALLOCATE => self.handle_allocate(&m, from, now, relays),
            METHOD_REFRESH => self.handle_refresh(&m, from, now, relays),
            METHOD_CREATE_PERMISSION => self.handle_create_permission(&m, from, now),
            METHOD_CHANNEL_BIND => self.handle_channel_bind(&m, from, now),
            _ => Err(Reply::from(StunError::UnsupportedMethod)),
        };
        let label = method_label(m.typ.method);
        match result {
            Ok(()) => self
                .shared
                .metrics
                .requests
                .with_label_values(&[label, "ok"])
                .inc(),
            Err(reply) => {
                self.shared
                    .metrics
                    .requests
                    .with_label_values(&[label, reply.label()])
                    .inc();
                self.send_error(&m, from, reply, now);
            }
        }
    }

    /// The ChannelData fast path: where to send `len` payload bytes on `number` from `from`.
    pub fn route_channel_data(
        &mut self,
        from: &FiveTuple,
        number: u16,
        len: usize,
        now: Instant,
    ) -> Option<(RelayId, SocketAddr)> {
        let a = self.allocations.get_mut(from)?;
        if a.expires <= now {
            return None;
        }
        let ch = a.channels.get(&number)?;
        if ch.expires <= now || !a.permitted(ch.peer.ip(), now) {
            return None;
        }
        let peer = ch.peer;
        if !a.within_bandwidth(len, now) {
            return None;
        }
        let relay = a.relay_for(Family::of(peer.ip()))?.id;
        self.stats.to_peer_bytes += len as u64;
        self.stats.to_peer_packets += 1;
        Some((relay, peer))
    }

    /// The peer-to-client fast path: what to do with `len` bytes that `peer` sent to `relay`.
    pub fn route_from_peer(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> PeerRoute {
        let Some(ft) = self.by_relay.get(relay).copied().flatten() else {
            return PeerRoute::Drop;
        };
        let Some(a) = self.allocations.get_mut(&ft) else {
            return PeerRoute::Drop;
        };
        if a.expires <= now || !a.permitted(peer.ip(), now) || !a.within_bandwidth(len, now) {
            return PeerRoute::Drop;
        }
        self.stats.to_client_bytes += len as u64;
        self.stats.to_client_packets += 1;
        match a.channel_by_peer.get(&peer) {
            Some(&number) if a.channels.get(&number).is_some_and(|c| c.expires > now) => {
                PeerRoute::Channel { to: ft, number }
            }
            _ => PeerRoute::Indication { to: ft },
        }
    }

    /// Slow path for peer data: queues the ChannelData or Data indication for the client.
    pub fn handle_peer(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8], now: Instant) {
        match self.route_from_peer(relay, peer, payload.len(), now) {
            PeerRoute::Drop => {}
            PeerRoute::Channel { to, number } => {
                let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
                let pad = if to.transport == Transport::Udp {
                    0
                } else {
                    channel_data::padded(payload.len()) - payload.len()
                };
                let mut data = Vec::with_capacity(HEADER_LEN + payload.len() + pad);
                data.extend_from_slice(&channel_data::header(number, len));
                data.extend_from_slice(payload);
                data.resize(data.len() + pad, 0);
                self.out.push_back(Output::ToClient { to, data });
            }
            PeerRoute::Indication { to } => {
                self.out.push_back(Output::ToClient {
                    to,
                    data: data_indication(peer, payload),
                });
            }
        }
    }

    /// Drops expired allocations, permissions and channels; flushes relay counters. One call per
    /// shard every second or so replaces a timer per allocation.
    pub fn sweep(&mut self, now: Now, relays: &mut dyn RelayPorts) {
        self.sweep_cursor = 0;
        self.sweep_part(now, relays, 1);
    }

    /// Sweeps the next 1/`parts` of the allocations (in relay-slot order), so that a shard
    /// holding many never stops relaying for a whole pass: `parts` calls make one.
    pub fn sweep_part(&mut self, now: Now, relays: &mut dyn RelayPorts, parts: usize) {
        let t = now.instant;
        let strict = self.shared.config.strict_expiry;
        let len = self.by_relay.len();
        let start = self.sweep_cursor.min(len);
        let end = (start + len.div_ceil(parts.max(1))).min(len);
        for id in start..end {
            let Some(ft) = self.by_relay[id] else {
                continue;
            };
            let Some(a) = self.allocations.get_mut(&ft) else {
                continue;
            };
            if a.expires <= t || (strict && a.credential_expires.is_some_and(|e| e <= now.unix)) {
                self.remove_allocation(&ft, t, relays);
                continue;
            }
            let m = &self.shared.metrics;
            a.purge_permissions(t, m);
            a.purge_channels(t, m);
        }
        self.sweep_cursor = if end >= len { 0 } else { end };
        if t.saturating_duration_since(self.unauthorized_swept) >= Duration::from_secs(1)
            || parts == 1
        {
            self.unauthorized.sweep(t);
            self.unauthorized_swept = t;
        }
        self.flush_stats();
    }

    pub fn flush_stats(&mut self) {
        self.stats.flush(&self.shared.metrics);
    }

    /// Releases everything (shutdown after the drain deadline).
    pub fn close_all(&mut self, now: Instant, relays: &mut dyn RelayPorts) {
        let all: Vec<FiveTuple> = self.allocations.keys().copied().collect();
        for ft in all {
            self.remove_allocation(&ft, now, relays);
        }
        self.flush_stats();
    }

    /// A stream connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn connection_closed(&mut self, ft: &FiveTuple, now: Instant, relays: &mut dyn RelayPorts) {
        self.remove_allocation(ft, now, relays);
    }

    fn remove_allocation(&mut self, ft: &FiveTuple, now: Instant, relays: &mut dyn RelayPorts) {
        let Some(a) = self.allocations.remove(ft) else {
            return;
        };
        for r in &a.relays {
            if let Some(slot) = self.by_relay.get_mut(r.id) {
                *slot = None;
            }
            relays.release(r.id);
        }
        let m = &self.shared.metrics;
        m.allocations.dec();
        m.permissions.sub(a.permissions.len() as i64);
        m.channels.sub(a.channels.len() as i64);
        m.allocation_lifetime
            .observe(now.saturating_duration_since(a.created).as_secs_f64());
        self.shared.quotas.release(&a.user, ft.client.ip());
    }

    /// The client's unexpired allocation, or the 437 a request on a bare 5-tuple gets.
    fn allocation_of(
        &self,
        from: &FiveTuple,
        now: Instant,
        key: [u8; 16],
    ) -> Result<&Allocation, Reply> {
        self.allocations
            .get(from)
            .filter(|a| a.expires > now)
            .ok_or_else(|| StunError::AllocationMismatch.signed(key))
    }

    fn live_allocation(
        &mut self,
        from: &FiveTuple,
        now: Instant,
        relays: &mut dyn RelayPorts,
    ) -> bool {
        match self.allocations.get(from) {
            Some(a) if a.expires <= now => {
                self.remove_allocation(from, now, relays);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn response(&self, req: &Message, class: MessageClass) -> Message {
        let mut r = Message::new();
        r.set_type(MessageType::new(req.typ.method, class));
        r.transaction_id = req.transaction_id;
        r.write_header();
        r
    }

    fn encode(&self, mut r: Message, key: Option<[u8; 16]>) -> Vec<u8> {
        if let Some(sw) = &self.shared.config.software {
            r.add(ATTR_SOFTWARE, sw.as_bytes());
        }
        if let Some(key) = key {
            // Cannot fail: FINGERPRINT is only added below.
            let _ = MessageIntegrity(key.to_vec()).add_to(&mut r);
        }
        let _ = stun::fingerprint::FINGERPRINT.add_to(&mut r);
        r.raw
    }

    fn finish(&mut self, r: Message, key: Option<[u8; 16]>, to: FiveTuple) {
        let data = self.encode(r, key);
        self.out.push_back(Output::ToClient { to, data });
    }

    fn send_error(&mut self, req: &Message, to: FiveTuple, reply: Reply, now: Now) {
        let Reply::Error(reply) = reply else {
            return;
        };
        let (code, reason) = (reply.error.code(), reply.error.reason());
        tracing::debug!(client = %to.client, method = method_label(req.typ.method), code, reason, "error response");
        let mut r = self.response(req, CLASS_ERROR_RESPONSE);
        r.add(ATTR_ERROR_CODE, &msg::error_value(code, reason));
        for (t, v) in &reply.extra {
            r.add(*t, v);
        }
        if reply.nonce {
            r.add(ATTR_REALM, self.shared.config.realm.as_bytes());
            let nonce = self.shared.nonce_key.issue(to.client, now.unix_secs());
            r.add(ATTR_NONCE, nonce.as_bytes());
        }
        self.finish(r, reply.key, to);
    }
}

/// The longest part of a Data indication before its payload: the header, XOR-PEER-ADDRESS of an
/// IPv6 peer and DATA's attribute header.
pub const DATA_INDICATION_HEAD_MAX: usize = 20 + 24 + 4;

/// A Data indication from `peer` (RFC 8656 §11.4) around a payload of `len` bytes, without
/// `stun` and without allocating, for the relay paths: the bytes before the payload (the first
/// `.1` of `.0`) and the padding after it (`.2` zero bytes). `data_indication` is the same
/// message built by `stun`.
pub fn data_indication_parts(
    peer: SocketAddr,
    len: usize,
    txid: [u8; 12],
) -> ([u8; DATA_INDICATION_HEAD_MAX], usize, usize) {
    const COOKIE: [u8; 4] = 0x2112_A442u32.to_be_bytes();
    let mut h = [0u8; DATA_INDICATION_HEAD_MAX];
    let (family, addr_len) = if peer.is_ipv4() { (1u8, 4) } else { (2u8, 16) };
    let pad = channel_data::padded(len) - len;
    let body = (4 + 4 + addr_len) + 4 + len + pad;
    let type_ = (METHOD_DATA, CLASS_INDICATION);
    h[..2].copy_from_slice(&MessageType::new(type_.0, type_.1).value().to_be_bytes());
    h[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    h[4..8].copy_from_slice(&COOKIE);
    h[8..20].copy_from_slice(&txid);
    h[20..22].copy_from_slice(&ATTR_XOR_PEER_ADDRESS.value().to_be_bytes());
    h[22..24].copy_from_slice(&((4 + addr_len) as u16).to_be_bytes());
    h[25] = family;
    h[26..28].copy_from_slice(&(peer.port() ^ 0x2112).to_be_bytes());
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE);
    key[4..].copy_from_slice(&txid);
    let mut octets = [0u8; 16];
    match peer.ip() {
        IpAddr::V4(ip) => octets[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => octets = ip.octets(),
    }
    for i in 0..addr_len {
        h[28 + i] = octets[i] ^ key[i];
    }
    let at = 28 + addr_len;
    h[at..at + 2].copy_from_slice(&ATTR_DATA.value().to_be_bytes());
    h[at + 2..at + 4].copy_from_slice(&(len as u16).to_be_bytes());
    (h, at + 4, pad)
}

/// A Data indication carrying `payload` from `peer` (used when no channel is bound).
pub fn data_indication(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_type(MessageType::new(METHOD_DATA, CLASS_INDICATION));
    m.transaction_id = stun::agent::TransactionId::new();
    m.write_header();
    msg::add_xor_address(&mut m, ATTR_XOR_PEER_ADDRESS, peer);
    m.add(ATTR_DATA, payload);
    m.raw
}
