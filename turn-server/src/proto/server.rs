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

use super::channel_data::{self, HEADER_LEN};
use super::credentials::{CredentialStore, Grant};
use super::message::{self as msg, DecodeError};
use super::nonce::{NonceCheck, NonceKey};
use crate::metrics::{Metrics, RelayStats};
use crate::policy::{Bandwidth, PeerPolicy, QuotaError, QuotaLedger, SourceRateLimit};

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
/// holds reserved ports (they may be claimed from any shard).
pub trait RelayPorts {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError>;
    fn release(&mut self, id: RelayId);
}

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
    pub total_quota: Option<u32>,
    pub max_kbps: Option<u32>,
    pub alternate_server: Option<SocketAddr>,
    pub unauthorized_per_sec: u32,
    pub unauthorized_burst: u32,
    pub stun_only: bool,
    /// Highest bindable channel number: 0x4FFF (RFC 8656) or 0x7FFE (RFC 5766, what coturn's
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
            user_quota: None,
            total_quota: None,
            max_kbps: None,
            alternate_server: None,
            unauthorized_per_sec: 20,
            unauthorized_burst: 50,
            stun_only: false,
            channel_max: channel_data::CHANNEL_MAX_RFC5766,
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

    fn within_bandwidth(&mut self, len: usize, now: Instant) -> bool {
        self.bandwidth.as_mut().is_none_or(|b| b.take(len, now))
    }
}

/// An error response ready to be encoded.
struct Reply {
    code: u16,
    reason: &'static str,
    /// Sign with this key (responses to authenticated requests), else only FINGERPRINT.
    key: Option<[u8; 16]>,
    extra: Vec<(AttrType, Vec<u8>)>,
    nonce: bool,
}

impl Reply {
    fn new(code: u16, reason: &'static str) -> Self {
        Self {
            code,
            reason,
            key: None,
            extra: Vec::new(),
            nonce: false,
        }
    }

    fn signed(mut self, key: [u8; 16]) -> Self {
        self.key = Some(key);
        self
    }
}

struct Authenticated {
    key: [u8; 16],
    username: String,
    /// `None` when an existing allocation's stored key was used (lenient expiry).
    grant: Option<Grant>,
}

pub struct Server {
    shared: Arc<Shared>,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<RelayId, FiveTuple>,
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

fn code_label(code: u16) -> &'static str {
    match code {
        300 => "300",
        400 => "400",
        401 => "401",
        403 => "403",
        420 => "420",
        437 => "437",
        438 => "438",
        440 => "440",
        441 => "441",
        442 => "442",
        443 => "443",
        486 => "486",
        508 => "508",
        _ => "other",
    }
}

impl Server {
    pub fn new(shared: Arc<Shared>) -> Self {
        let c = &shared.config;
        let unauthorized =
            SourceRateLimit::new(c.unauthorized_per_sec, c.unauthorized_burst, 65_536);
        Self {
            shared,
            allocations: HashMap::default(),
            by_relay: HashMap::default(),
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
            Err((DecodeError::Malformed, Some(header))) if header.typ.class == CLASS_REQUEST => {
                self.send_error(&header, from, Reply::new(400, "Bad Request"), now);
                return;
            }
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
        let unknown = msg::unknown_required(&m);
        if !unknown.is_empty() {
            let mut reply = Reply::new(420, "Unknown Attribute");
            let v: Vec<u8> = unknown.iter().flat_map(|t| t.0.to_be_bytes()).collect();
            reply.extra.push((ATTR_UNKNOWN_ATTRIBUTES, v));
            self.send_error(&m, from, reply, now);
            return;
        }
        if m.typ.method == METHOD_BINDING {
            self.shared.metrics.binding_requests.inc();
            self.handle_binding(&m, from);
            return;
        }
        if self.shared.config.stun_only {
            self.send_error(&m, from, Reply::new(400, "STUN only"), now);
            return;
        }
        let result = match m.typ.method {
            METHOD_ALLOCATE => self.handle_allocate(&m, from, now, relays),
            METHOD_REFRESH => self.handle_refresh(&m, from, now, relays),
            METHOD_CREATE_PERMISSION => self.handle_create_permission(&m, from, now),
            METHOD_CHANNEL_BIND => self.handle_channel_bind(&m, from, now),
            _ => Err(Reply::new(400, "Unsupported Method")),
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
                    .with_label_values(&[label, code_label(reply.code)])
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
        let Some(ft) = self.by_relay.get(&relay) else {
            return PeerRoute::Drop;
        };
        let Some(a) = self.allocations.get_mut(ft) else {
            return PeerRoute::Drop;
        };
        if a.expires <= now || !a.permitted(peer.ip(), now) || !a.within_bandwidth(len, now) {
            return PeerRoute::Drop;
        }
        self.stats.to_client_bytes += len as u64;
        self.stats.to_client_packets += 1;
        match a.channel_by_peer.get(&peer) {
            Some(&number) if a.channels.get(&number).is_some_and(|c| c.expires > now) => {
                PeerRoute::Channel { to: *ft, number }
            }
            _ => PeerRoute::Indication { to: *ft },
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
        let t = now.instant;
        let strict = self.shared.config.strict_expiry;
        let expired: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| {
                a.expires <= t || (strict && a.credential_expires.is_some_and(|e| e <= now.unix))
            })
            .map(|(ft, _)| *ft)
            .collect();
        for ft in expired {
            self.remove_allocation(&ft, t, relays);
        }
        let m = &self.shared.metrics;
        for a in self.allocations.values_mut() {
            let before = a.permissions.len();
            a.permissions.retain(|_, e| *e > t);
            m.permissions.sub((before - a.permissions.len()) as i64);
            let before = a.channels.len();
            let by_peer = &mut a.channel_by_peer;
            a.channels.retain(|_, c| {
                let keep = c.expires > t;
                if !keep {
                    by_peer.remove(&c.peer);
                }
                keep
            });
            m.channels.sub((before - a.channels.len()) as i64);
        }
        self.unauthorized.sweep(t);
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
            self.by_relay.remove(&r.id);
            relays.release(r.id);
        }
        let m = &self.shared.metrics;
        m.allocations.dec();
        m.permissions.sub(a.permissions.len() as i64);
        m.channels.sub(a.channels.len() as i64);
        m.allocation_lifetime
            .observe(now.saturating_duration_since(a.created).as_secs_f64());
        self.shared.quotas.release(&a.user);
    }

    fn handle_binding(&mut self, m: &Message, from: FiveTuple) {
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        msg::add_xor_address(&mut r, ATTR_XORMAPPED_ADDRESS, from.client);
        self.finish(r, None, from);
    }

    fn handle_send(&mut self, m: &Message, from: FiveTuple, now: Instant) {
        let (Some(peer), Some(data)) = (
            msg::first(m, ATTR_XOR_PEER_ADDRESS)
                .and_then(|v| msg::decode_xor_address(v, &m.transaction_id.0)),
            msg::first(m, ATTR_DATA),
        ) else {
            return;
        };
        let Some(a) = self.allocations.get_mut(&from) else {
            return;
        };
        if a.expires <= now || !a.permitted(peer.ip(), now) || !a.within_bandwidth(data.len(), now)
        {
            return;
        }
        let Some(relay) = a.relay_for(Family::of(peer.ip())) else {
            return;
        };
        self.stats.to_peer_bytes += data.len() as u64;
        self.stats.to_peer_packets += 1;
        self.out.push_back(Output::ToPeer {
            relay: relay.id,
            peer,
            data: data.to_vec(),
        });
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

    fn challenge(
        &mut self,
        code: u16,
        reason: &'static str,
        from: FiveTuple,
        now: Instant,
    ) -> Reply {
        let mut r = Reply::new(code, reason);
        r.nonce = true;
        if code == 401 && !self.unauthorized.allow(from.client.ip(), now) {
            // Over the per-source limit: no answer at all (code 0 = drop).
            r.code = 0;
        }
        r
    }

    fn auth_failure(&self, reason: &'static str) {
        self.shared
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Long-term credential mechanism (RFC 8489 §9.2) with stateless nonces.
    fn authenticate(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
    ) -> Result<Authenticated, Reply> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(self.challenge(401, "Unauthorized", from, now.instant));
        }
        let text = |t| msg::first(m, t).and_then(|v| std::str::from_utf8(v).ok());
        let (Some(username), Some(_realm), Some(nonce)) = (
            text(ATTR_USERNAME),
            text(ATTR_REALM),
            msg::first(m, ATTR_NONCE),
        ) else {
            return Err(Reply::new(400, "Bad Request"));
        };
        let cfg = &self.shared.config;
        match self.shared.nonce_key.check(
            nonce,
            from.client,
            now.unix_secs(),
            cfg.nonce_lifetime.as_secs(),
        ) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.auth_failure("stale_nonce");
                return Err(self.challenge(438, "Stale Nonce", from, now.instant));
            }
        }
        let existing = self.allocations.get(&from);
        let (keys, grant) = match existing {
            // Lenient expiry: an allocation keeps the key it was created with.
            Some(a) if !cfg.strict_expiry && a.username == username => (vec![a.key], None),
            _ => match self
                .shared
                .credentials
                .lookup(username, &cfg.realm, now.unix)
            {
                Ok(g) => (g.keys.clone(), Some(g)),
                Err(e) => {
                    self.auth_failure(e.reason);
                    return Err(self.challenge(401, "Unauthorized", from, now.instant));
                }
            },
        };
        let mut checked = m.clone();
        let Some(key) = keys
            .into_iter()
            .find(|k| MessageIntegrity(k.to_vec()).check(&mut checked).is_ok())
        else {
            self.auth_failure("bad_integrity");
            return Err(self.challenge(401, "Unauthorized", from, now.instant));
        };
        if let Some(a) = self.allocations.get(&from) {
            if a.username != username {
                self.auth_failure("wrong_credentials");
                return Err(Reply::new(441, "Wrong Credentials").signed(key));
            }
        }
        Ok(Authenticated {
            key,
            username: username.to_owned(),
            grant,
        })
    }

    fn handle_allocate(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
        relays: &mut dyn RelayPorts,
    ) -> Result<(), Reply> {
        if self.live_allocation(&from, now.instant, relays) {
            let a = &self.allocations[&from];
            if a.allocate_txid == m.transaction_id.0 {
                // A retransmission whose response was lost: the same answer again, not 437.
                let data = a.allocate_response.clone();
                self.out.push_back(Output::ToClient { to: from, data });
                return Ok(());
            }
        }
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err(match self.shared.config.alternate_server {
                Some(alt) => {
                    let mut r = Reply::new(300, "Try Alternate");
                    let mut tmp = Message::new();
                    msg::add_plain_address(&mut tmp, ATTR_ALTERNATE_SERVER, alt);
                    r.extra
                        .push((ATTR_ALTERNATE_SERVER, tmp.attributes.0.remove(0).value));
                    r
                }
                None => Reply::new(486, "Server Draining"),
            });
        }
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        if self.allocations.contains_key(&from) {
            return Err(Reply::new(437, "Allocation Mismatch").signed(key));
        }
        match msg::leading_byte(m, ATTR_REQUESTED_TRANSPORT) {
            None | Some(Err(())) => return Err(Reply::new(400, "Bad Request").signed(key)),
            Some(Ok(msg::PROTO_UDP)) => {}
            Some(Ok(_)) => {
                return Err(Reply::new(442, "Unsupported Transport Protocol").signed(key));
            }
        }
        let token = match msg::first(m, ATTR_RESERVATION_TOKEN) {
            None => None,
            Some(v)
                if m.contains(ATTR_EVEN_PORT)
                    || m.contains(ATTR_REQUESTED_ADDRESS_FAMILY)
                    || v.len() != 8 =>
            {
                return Err(Reply::new(400, "Bad Request").signed(key));
            }
            Some(v) => {
                let mut t = [0u8; 8];
                t.copy_from_slice(v);
                Some(t)
            }
        };
        let port = match (msg::first(m, ATTR_EVEN_PORT), token) {
            (_, Some(t)) => PortRequest::Reserved(t),
            (Some([b, ..]), None) if b & 0x80 != 0 => PortRequest::EvenReserveNext(rand::random()),
            (Some([_, ..]), None) => PortRequest::Even,
            (Some([]), None) => return Err(Reply::new(400, "Bad Request").signed(key)),
            (None, None) => PortRequest::Any,
        };
        let requested = msg::leading_byte(m, ATTR_REQUESTED_ADDRESS_FAMILY);
        let additional = msg::leading_byte(m, msg::ATTR_ADDITIONAL_ADDRESS_FAMILY);
        let mut families = match (requested, additional) {
            (Some(_), Some(_)) => return Err(Reply::new(400, "Bad Request").signed(key)),
            (Some(Ok(msg::FAMILY_V4)), None) | (None, None) => vec![Family::V4],
            (Some(Ok(msg::FAMILY_V6)), None) => vec![Family::V6],
            (None, Some(Ok(msg::FAMILY_V6))) => vec![Family::V4, Family::V6],
            (Some(_), None) => {
                return Err(Reply::new(440, "Address Family not Supported").signed(key));
            }
            (None, Some(_)) => return Err(Reply::new(400, "Bad Request").signed(key)),
        };
        let grant = match auth.grant {
            Some(g) => g,
            None => return Err(Reply::new(437, "Allocation Mismatch").signed(key)),
        };
        let user_limit = grant.alloc_limit.or(cfg.user_quota);
        if let Err(e) = self
            .shared
            .quotas
            .acquire(&grant.user, user_limit, cfg.total_quota)
        {
            self.shared
                .metrics
                .quota_rejections
                .with_label_values(&[e.kind()])
                .inc();
            let reason = match e {
                QuotaError::User | QuotaError::Total => "Allocation Quota Reached",
            };
            self.shared
                .metrics
                .allocations_total
                .with_label_values(&["quota"])
                .inc();
            return Err(Reply::new(486, reason).signed(key));
        }
        // Relay sockets, one per family; the additional family may fail on its own (RFC 8656 §7.2).
        let mut bound: Vec<RelayAddr> = Vec::new();
        let mut address_error: Option<u16> = None;
        let primary = families.remove(0);
        for (i, family) in std::iter::once(primary).chain(families).enumerate() {
            match relays.allocate(family, if i == 0 { port } else { PortRequest::Any }) {
                Ok(relay) => {
                    let advertised_ip = cfg
                        .external_ips
                        .iter()
                        .copied()
                        .find(|ip| Family::of(*ip) == family)
                        .or_else(|| (!relay.local.ip().is_unspecified()).then(|| relay.local.ip()))
                        .filter(|ip| Family::of(*ip) == family)
                        .unwrap_or(from.server.ip());
                    bound.push(RelayAddr {
                        id: relay.id,
                        advertised: SocketAddr::new(advertised_ip, relay.local.port()),
                    });
                }
                Err(e) if i == 0 => {
                    self.shared.quotas.release(&grant.user);
                    self.shared
                        .metrics
                        .allocations_total
                        .with_label_values(&["error"])
                        .inc();
                    return Err(match e {
                        RelayError::Exhausted => {
                            Reply::new(508, "Insufficient Capacity").signed(key)
                        }
                        RelayError::FamilyUnsupported => {
                            Reply::new(440, "Address Family not Supported").signed(key)
                        }
                    });
                }
                Err(e) => {
                    address_error = Some(match e {
                        RelayError::Exhausted => 508,
                        RelayError::FamilyUnsupported => 440,
                    })
                }
            }
        }
        let lifetime = self.lifetime(m, &grant.expires_at, now)?;
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        for relay in &bound {
            msg::add_xor_address(&mut r, ATTR_XOR_RELAYED_ADDRESS, relay.advertised);
        }
        if let Some(code) = address_error {
            let mut v = msg::error_value(code, "Address Family not Supported");
            v[0] = msg::FAMILY_V6;
            r.add(msg::ATTR_ADDRESS_ERROR_CODE, &v);
        }
        r.add(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        if let PortRequest::EvenReserveNext(t) = port {
            r.add(ATTR_RESERVATION_TOKEN, &t);
        }
        msg::add_xor_address(&mut r, ATTR_XORMAPPED_ADDRESS, from.client);
        let data = self.encode(r, Some(key));
        let bandwidth = grant.kbps.or(cfg.max_kbps).map(|k| {
            let k = cfg.max_kbps.map_or(k, |max| k.min(max));
            Bandwidth::new(k, now.instant)
        });
        for relay in &bound {
            self.by_relay.insert(relay.id, from);
        }
        self.allocations.insert(
            from,
            Allocation {
                relays: bound,
                username: auth.username,
                user: grant.user,
                key,
                credential_expires: grant.expires_at,
                created: now.instant,
                expires: now.instant + lifetime,
                allocate_txid: m.transaction_id.0,
                allocate_response: data.clone(),
                permissions: HashMap::default(),
                channels: HashMap::default(),
                channel_by_peer: HashMap::default(),
                bandwidth,
            },
        );
        self.shared.metrics.allocations.inc();
        self.shared
            .metrics
            .allocations_total
            .with_label_values(&["ok"])
            .inc();
        self.out.push_back(Output::ToClient { to: from, data });
        Ok(())
    }

    /// The granted lifetime: the request's LIFETIME within [default, max]; with strict expiry
    /// never past the credential's expiry.
    fn lifetime(
        &self,
        m: &Message,
        credential_expires: &Option<SystemTime>,
        now: Now,
    ) -> Result<Duration, Reply> {
        let cfg = &self.shared.config;
        let requested = match msg::u32_attr(m, ATTR_LIFETIME) {
            Some(Ok(s)) => Duration::from_secs(u64::from(s)),
            Some(Err(())) => return Err(Reply::new(400, "Bad Request")),
            None => cfg.default_lifetime,
        };
        let mut lifetime = requested.max(cfg.default_lifetime).min(cfg.max_lifetime);
        if cfg.strict_expiry {
            if let Some(exp) = credential_expires {
                lifetime = lifetime.min(exp.duration_since(now.unix).unwrap_or(Duration::ZERO));
            }
        }
        Ok(lifetime)
    }

    fn handle_refresh(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
        relays: &mut dyn RelayPorts,
    ) -> Result<(), Reply> {
        let exists = self.live_allocation(&from, now.instant, relays);
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        if !exists {
            return Err(Reply::new(437, "Allocation Mismatch").signed(key));
        }
        if let Some(fam) = msg::leading_byte(m, ATTR_REQUESTED_ADDRESS_FAMILY) {
            let a = &self.allocations[&from];
            let family = match fam {
                Ok(msg::FAMILY_V4) => Family::V4,
                Ok(msg::FAMILY_V6) => Family::V6,
                _ => return Err(Reply::new(440, "Address Family not Supported").signed(key)),
            };
            if a.relay_for(family).is_none() {
                return Err(Reply::new(443, "Peer Address Family Mismatch").signed(key));
            }
        }
        let requested = match msg::u32_attr(m, ATTR_LIFETIME) {
            Some(Ok(0)) => Duration::ZERO,
            Some(Ok(_)) | None => {
                let exp = auth
                    .grant
                    .as_ref()
                    .and_then(|g| g.expires_at)
                    .or(self.allocations[&from].credential_expires);
                self.lifetime(m, &exp, now).map_err(|r| r.signed(key))?
            }
            Some(Err(())) => return Err(Reply::new(400, "Bad Request").signed(key)),
        };
        if requested.is_zero() {
            self.remove_allocation(&from, now.instant, relays);
        } else if let Some(a) = self.allocations.get_mut(&from) {
            a.expires = now.instant + requested;
            if let Some(g) = &auth.grant {
                a.credential_expires = g.expires_at;
            }
        }
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        r.add(ATTR_LIFETIME, &(requested.as_secs() as u32).to_be_bytes());
        self.finish(r, Some(key), from);
        Ok(())
    }

    fn check_peer(&self, a: &Allocation, peer: SocketAddr, key: [u8; 16]) -> Result<(), Reply> {
        if !self.shared.policy.permits(peer.ip()) {
            self.shared.metrics.peer_denied.inc();
            return Err(Reply::new(403, "Forbidden").signed(key));
        }
        if a.relay_for(Family::of(peer.ip())).is_none() {
            return Err(Reply::new(443, "Peer Address Family Mismatch").signed(key));
        }
        Ok(())
    }

    fn handle_create_permission(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
    ) -> Result<(), Reply> {
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        let Some(a) = self
            .allocations
            .get(&from)
            .filter(|a| a.expires > now.instant)
        else {
            return Err(Reply::new(437, "Allocation Mismatch").signed(key));
        };
        let mut peers = Vec::new();
        for attr in m
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        {
            let peer = msg::decode_xor_address(&attr.value, &m.transaction_id.0)
                .ok_or_else(|| Reply::new(400, "Bad Request").signed(key))?;
            self.check_peer(a, peer, key)?;
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return Err(Reply::new(400, "Bad Request").signed(key));
        }
        let expires = now.instant + self.shared.config.permission_lifetime;
        let metrics = self.shared.metrics.clone();
        if let Some(a) = self.allocations.get_mut(&from) {
            for ip in peers {
                if a.permissions.insert(ip, expires).is_none() {
                    metrics.permissions.inc();
                }
            }
        }
        let r = self.response(m, CLASS_SUCCESS_RESPONSE);
        self.finish(r, Some(key), from);
        Ok(())
    }

    fn handle_channel_bind(&mut self, m: &Message, from: FiveTuple, now: Now) -> Result<(), Reply> {
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        let Some(a) = self
            .allocations
            .get(&from)
            .filter(|a| a.expires > now.instant)
        else {
            return Err(Reply::new(437, "Allocation Mismatch").signed(key));
        };
        let bad = || Reply::new(400, "Bad Request").signed(key);
        let number = match msg::first(m, ATTR_CHANNEL_NUMBER) {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return Err(bad()),
        };
        if !(channel_data::CHANNEL_MIN..=self.shared.config.channel_max).contains(&number) {
            tracing::debug!(number, "channel number out of range");
            return Err(bad());
        }
        let peer = msg::first(m, ATTR_XOR_PEER_ADDRESS)
            .and_then(|v| msg::decode_xor_address(v, &m.transaction_id.0))
            .ok_or_else(bad)?;
        self.check_peer(a, peer, key)?;
        // A number stays with one peer, and a peer with one number, while bound.
        if a.channels
            .get(&number)
            .is_some_and(|c| c.peer != peer && c.expires > now.instant)
            || a.channel_by_peer.get(&peer).is_some_and(|n| *n != number)
        {
            tracing::debug!(number, %peer, "channel already bound differently");
            return Err(bad());
        }
        let cfg = &self.shared.config;
        let ch_expires = now.instant + cfg.channel_lifetime;
        let perm_expires = now.instant + cfg.permission_lifetime;
        let metrics = self.shared.metrics.clone();
        if let Some(a) = self.allocations.get_mut(&from) {
            if let Some(old) = a.channels.insert(
                number,
                Channel {
                    peer,
                    expires: ch_expires,
                },
            ) {
                a.channel_by_peer.remove(&old.peer);
            } else {
                metrics.channels.inc();
            }
            a.channel_by_peer.insert(peer, number);
            let e = a.permissions.entry(peer.ip()).or_insert_with(|| {
                metrics.permissions.inc();
                perm_expires
            });
            *e = (*e).max(perm_expires);
        }
        let r = self.response(m, CLASS_SUCCESS_RESPONSE);
        self.finish(r, Some(key), from);
        Ok(())
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
        if reply.code == 0 {
            return;
        }
        tracing::debug!(client = %to.client, method = method_label(req.typ.method), code = reply.code, reason = reply.reason, "error response");
        let mut r = self.response(req, CLASS_ERROR_RESPONSE);
        r.add(ATTR_ERROR_CODE, &msg::error_value(reply.code, reply.reason));
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
