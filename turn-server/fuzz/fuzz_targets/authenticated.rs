//! The protocol core past MESSAGE-INTEGRITY. Mutated bytes never carry a valid HMAC, so this
//! target builds its requests from a structured input and signs them itself: with a fixed nonce
//! key and a fixed clock the harness can compute a valid NONCE and MESSAGE-INTEGRITY, and every
//! input replays identically. Each input starts from a server holding one allocation (with a
//! permission and a channel), so Refresh, CreatePermission, ChannelBind, Send, ChannelData, peer
//! data and expiry all have state to work on.
//!
//! `ICEWAY_FUZZ_STATS=1` prints, every 200,000 inputs, how each method was answered, so a run
//! shows that signed, mutated requests reach the handlers (and not only 401/438).
#![no_main]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use hmac::{Hmac, Mac};
use iceway_turn::metrics::Metrics;
use iceway_turn::policy::PeerPolicy;
use iceway_turn::proto::channel_data::{self, CHANNEL_MAX_RFC5766, CHANNEL_MIN};
use iceway_turn::proto::credentials::{
    Chain, CredentialFailure, CredentialStore, Grant, StaticUsers, long_term_key,
};
use iceway_turn::proto::message;
use iceway_turn::proto::nonce::{NonceCheck, NonceKey};
use iceway_turn::proto::{
    CoreConfig, Family, FiveTuple, Now, Output, PortRequest, Relay, RelayError, RelayId,
    RelayPorts, Server, Shared, Transport,
};
use libfuzzer_sys::fuzz_target;
use sha1::Sha1;

const REALM: &str = "fuzz.realm";
const NONCE_KEY: [u8; 32] = [0x5a; 32];
/// 2026-12-01T00:00:00Z. Fixed, so the nonces the harness computes are the server's.
const T0_UNIX: u64 = 1_796_083_200;
/// bob's credential expires this long after T0: strict expiry and lenient expiry both matter.
const BOB_VALID_SECS: u64 = 1_200;
/// Bounds the work per input, and keeps the 401 limiter (burst 400) from ever refusing, which
/// would make an input's outcome depend on the wall clock the limiter was created at.
const MAX_OPS: usize = 48;
/// Relay sockets the fake I/O layer hands out before it reports exhaustion (508).
const MAX_RELAYS: usize = 6;
const SETUP_TXID: [u8; 12] = [0xa1; 12];

const MAGIC_COOKIE: u32 = 0x2112_A442;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
const ATTR_LIFETIME: u16 = 0x000D;
const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
const ATTR_DATA: u16 = 0x0013;
const ATTR_REALM: u16 = 0x0014;
const ATTR_NONCE: u16 = 0x0015;
const ATTR_REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
const ATTR_EVEN_PORT: u16 = 0x0018;
const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;
const ATTR_DONT_FRAGMENT: u16 = 0x001A;
const ATTR_RESERVATION_TOKEN: u16 = 0x0022;
const ATTR_ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
const ATTR_FINGERPRINT: u16 = 0x8028;

const METHOD_BINDING: u16 = 0x001;
const METHOD_ALLOCATE: u16 = 0x003;
const METHOD_REFRESH: u16 = 0x004;
const METHOD_SEND: u16 = 0x006;
const METHOD_DATA: u16 = 0x007;
const METHOD_CREATE_PERMISSION: u16 = 0x008;
const METHOD_CHANNEL_BIND: u16 = 0x009;

const CLASS_REQUEST: u8 = 0;
const CLASS_INDICATION: u8 = 1;
const CLASS_SUCCESS: u8 = 2;
const CLASS_ERROR: u8 = 3;

/// (name, password); alice is a static user, bob an expiring one with limits, mallory unknown.
const USERS: [(&str, &str); 3] = [
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("mallory", "mallory-pw"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

const fn v6(s: [u16; 8], port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        port,
    )
}

/// Two 5-tuples share a source address (per-source quota), one is IPv6, two are streams
/// (padded ChannelData).
const CLIENTS: [FiveTuple; 4] = [
    FiveTuple {
        client: v4(198, 51, 100, 1, 40000),
        server: v4(192, 0, 2, 10, 3478),
        transport: Transport::Udp,
    },
    FiveTuple {
        client: v4(198, 51, 100, 1, 40001),
        server: v4(192, 0, 2, 10, 3478),
        transport: Transport::Tcp,
    },
    FiveTuple {
        client: v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 40000),
        server: v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], 3478),
        transport: Transport::Udp,
    },
    FiveTuple {
        client: v4(203, 0, 113, 5, 5000),
        server: v4(192, 0, 2, 10, 5349),
        transport: Transport::Tls,
    },
];

/// Permitted peers (both families, two ports on one address) and denied ones in the forms the
/// policy unwraps.
const PEERS: [SocketAddr; 8] = [
    v4(203, 0, 113, 9, 7000),
    v4(203, 0, 113, 9, 7001),
    v4(198, 51, 100, 77, 9),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99], 7000),
    v4(10, 0, 0, 1, 80),
    v6([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1], 22),
    v6([0x2002, 0x7f00, 1, 0, 0, 0, 0, 0], 1),
    v4(192, 0, 0, 170, 53),
];

fn config(strict: bool) -> CoreConfig {
    let base = CoreConfig {
        realm: REALM.into(),
        ..CoreConfig::default()
    };
    if strict {
        // Production-like limits, expiry enforced, bandwidth capped, RFC 5766 channel numbers.
        CoreConfig {
            software: None,
            strict_expiry: true,
            nonce_lifetime: Duration::from_secs(300),
            external_ips: vec![
                "203.0.113.7".parse().expect("static ip"),
                "2001:db8:ffff::7".parse().expect("static ip"),
            ],
            max_kbps: Some(64),
            channel_max: CHANNEL_MAX_RFC5766,
            ..base
        }
    } else {
        // Caps small enough that a few operations reach every one of them.
        CoreConfig {
            user_quota: Some(2),
            source_quota: Some(2),
            total_quota: Some(3),
            max_permissions: 4,
            max_channels: 3,
            alternate_server: Some(v4(198, 51, 100, 200, 3478)),
            ..base
        }
    }
}

/// bob: a credential that expires, with its own allocation and bandwidth limits.
struct Expiring;

impl CredentialStore for Expiring {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        let expires_at = UNIX_EPOCH + Duration::from_secs(T0_UNIX + BOB_VALID_SECS);
        if username != USERS[1].0 {
            return Err(CredentialFailure {
                reason: "unknown_user",
            });
        }
        if now >= expires_at {
            return Err(CredentialFailure { reason: "expired" });
        }
        Ok(Grant {
            user: username.to_owned(),
            keys: vec![long_term_key(username, realm, USERS[1].1)],
            expires_at: Some(expires_at),
            alloc_limit: Some(1),
            kbps: Some(16),
        })
    }
}

/// Shared across inputs (metrics are costly to build); every input ends with `close_all`, and
/// the ledger and gauges must then be back to zero, so nothing carries over.
fn shared(strict: bool) -> &'static Arc<Shared> {
    static LENIENT: OnceLock<Arc<Shared>> = OnceLock::new();
    static STRICT: OnceLock<Arc<Shared>> = OnceLock::new();
    let cell = if strict { &STRICT } else { &LENIENT };
    cell.get_or_init(|| {
        let statics = StaticUsers::new(&[(USERS[0].0.into(), USERS[0].1.into())], REALM);
        let creds = Chain(vec![Box::new(statics), Box::new(Expiring)]);
        let mut s = Shared::new(
            config(strict),
            Box::new(creds),
            PeerPolicy::default(),
            Metrics::new().expect("metrics"),
        );
        s.nonce_key = NonceKey::from_bytes(NONCE_KEY);
        Arc::new(s)
    })
}

fn key_of(user: usize) -> [u8; 16] {
    static KEYS: OnceLock<[[u8; 16]; 3]> = OnceLock::new();
    KEYS.get_or_init(|| USERS.map(|(n, p)| long_term_key(n, REALM, p)))[user]
}

fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The I/O layer's relay sockets, with the checks the core must satisfy: it releases only what
/// it holds, once.
struct Relays {
    v6: bool,
    next_id: RelayId,
    next_port: u16,
    live: Vec<RelayId>,
    /// Ports held by EvenReserveNext, claimable by token.
    reserved: Vec<([u8; 8], u16)>,
}

impl RelayPorts for Relays {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError> {
        if self.live.len() >= MAX_RELAYS {
            return Err(RelayError::Exhausted);
        }
        let (family, number) = match port {
            PortRequest::Reserved(t) => {
                let i = self
                    .reserved
                    .iter()
                    .position(|(r, _)| *r == t)
                    .ok_or(RelayError::Exhausted)?;
                // A reserved port keeps its family (IPv4 here) whatever the claim asks.
                (Family::V4, self.reserved.swap_remove(i).1)
            }
            _ => {
                if family == Family::V6 && !self.v6 {
                    return Err(RelayError::FamilyUnsupported);
                }
                if matches!(port, PortRequest::EvenReserveNext(_)) && self.reserved.len() >= 4 {
                    return Err(RelayError::Exhausted);
                }
                self.next_port += 2;
                let number = 50_000 + self.next_port;
                if let PortRequest::EvenReserveNext(t) = port {
                    self.reserved.push((t, number + 1));
                }
                (family, number)
            }
        };
        self.next_id += 1;
        self.live.push(self.next_id);
        let ip = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        };
        Ok(Relay {
            id: self.next_id,
            local: SocketAddr::new(ip, number),
        })
    }

    fn release(&mut self, id: RelayId) {
        let i = self
            .live
            .iter()
            .position(|l| *l == id)
            .expect("the core released a relay it does not hold");
        self.live.swap_remove(i);
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    strict: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request(Request),
    ChannelData {
        client: u8,
        number: ChannelSel,
        payload: Vec<u8>,
        length: Option<u16>,
        padding: u8,
    },
    Peer {
        relay: RelaySel,
        peer: PeerSel,
        payload: Vec<u8>,
    },
    /// Both clocks move; the sweep a shard runs every second follows.
    Advance {
        secs: u16,
    },
    /// Only the wall clock moves (NTP step): nonces and credential expiry see it, lifetimes not.
    WallClock {
        back: bool,
        secs: u16,
    },
    Sweep,
    ConnectionClosed {
        client: u8,
    },
    Drain,
    Raw {
        client: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Request {
    client: u8,
    method: MethodSel,
    class: ClassSel,
    txid: TxidSel,
    attrs: Vec<AttrSel>,
    auth: AuthSel,
    /// After MESSAGE-INTEGRITY: the server must ignore all of it but FINGERPRINT.
    tail: Vec<AttrSel>,
    fingerprint: FingerprintSel,
    padding: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MethodSel {
    Refresh,
    CreatePermission,
    ChannelBind,
    Send,
    Allocate,
    Binding,
    Data,
    Other(u16),
}

impl MethodSel {
    fn code(self) -> u16 {
        match self {
            MethodSel::Refresh => METHOD_REFRESH,
            MethodSel::CreatePermission => METHOD_CREATE_PERMISSION,
            MethodSel::ChannelBind => METHOD_CHANNEL_BIND,
            MethodSel::Send => METHOD_SEND,
            MethodSel::Allocate => METHOD_ALLOCATE,
            MethodSel::Binding => METHOD_BINDING,
            MethodSel::Data => METHOD_DATA,
            MethodSel::Other(m) => m & 0x0FFF,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ClassSel {
    /// Indication for Send and Data, request for the rest.
    Natural,
    Request,
    Indication,
    Success,
    Error,
}

#[derive(Arbitrary, Debug)]
enum TxidSel {
    Fresh,
    /// The setup Allocate's: a retransmission to be answered from the cache.
    Setup,
    Raw([u8; 12]),
}

#[derive(Arbitrary, Debug)]
struct AuthSel {
    user: UserSel,
    realm: RealmSel,
    nonce: NonceSel,
    integrity: IntegritySel,
    /// USERNAME, REALM and NONCE before the method's attributes rather than after.
    first: bool,
}

#[derive(Arbitrary, Debug)]
enum UserSel {
    /// alice on even clients, bob on odd ones.
    Natural,
    Alice,
    Bob,
    Mallory,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum RealmSel {
    Right,
    Omit,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum NonceSel {
    Current,
    Omit,
    /// Issued longer ago than any configured nonce lifetime.
    Stale,
    /// Issued for another client's address.
    OtherClient(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum IntegritySel {
    Correct,
    Omit,
    /// Another user's key (mallory's, or alice's for bob).
    WrongKey,
    Flip {
        at: u8,
        bits: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum FingerprintSel {
    None,
    Correct,
    Wrong(u32),
}

#[derive(Arbitrary, Debug)]
enum AttrSel {
    PeerAddress(PeerSel),
    Data(Vec<u8>),
    Lifetime(u32),
    ChannelNumber(ChannelSel),
    /// XORed with 17, so the default is UDP.
    RequestedTransport(u8),
    /// XORed with IPv4's family byte, so the default is IPv4.
    RequestedFamily(u8),
    /// XORed with IPv6's family byte, so the default is IPv6.
    AdditionalFamily(u8),
    EvenPort(u8),
    ReservationToken(TokenSel),
    DontFragment,
    Known(KnownAttr, Vec<u8>),
    Any(u16, Vec<u8>),
}

/// Attribute types the server reads or must refuse, given raw values.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum KnownAttr {
    XorPeerAddress,
    Data,
    Lifetime,
    ChannelNumber,
    RequestedTransport,
    RequestedAddressFamily,
    AdditionalAddressFamily,
    EvenPort,
    ReservationToken,
    DontFragment,
    Username,
    Realm,
    Nonce,
    MessageIntegrity,
    MessageIntegritySha256,
    PasswordAlgorithm,
    Userhash,
    Fingerprint,
    Software,
    ErrorCode,
    UnknownAttributes,
    XorRelayedAddress,
    XorMappedAddress,
    AlternateServer,
    Icmp,
    AddressErrorCode,
    UnknownRequired,
}

impl KnownAttr {
    fn code(self) -> u16 {
        use KnownAttr::*;
        match self {
            XorPeerAddress => ATTR_XOR_PEER_ADDRESS,
            Data => ATTR_DATA,
            Lifetime => ATTR_LIFETIME,
            ChannelNumber => ATTR_CHANNEL_NUMBER,
            RequestedTransport => ATTR_REQUESTED_TRANSPORT,
            RequestedAddressFamily => ATTR_REQUESTED_ADDRESS_FAMILY,
            AdditionalAddressFamily => ATTR_ADDITIONAL_ADDRESS_FAMILY,
            EvenPort => ATTR_EVEN_PORT,
            ReservationToken => ATTR_RESERVATION_TOKEN,
            DontFragment => ATTR_DONT_FRAGMENT,
            Username => ATTR_USERNAME,
            Realm => ATTR_REALM,
            Nonce => ATTR_NONCE,
            MessageIntegrity => ATTR_MESSAGE_INTEGRITY,
            MessageIntegritySha256 => 0x001C,
            PasswordAlgorithm => 0x001D,
            Userhash => 0x001E,
            Fingerprint => ATTR_FINGERPRINT,
            Software => 0x8022,
            ErrorCode => ATTR_ERROR_CODE,
            UnknownAttributes => 0x000A,
            XorRelayedAddress => 0x0016,
            XorMappedAddress => 0x0020,
            AlternateServer => 0x8023,
            Icmp => 0x8004,
            AddressErrorCode => 0x8001,
            UnknownRequired => 0x0030,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PeerSel {
    Table(u8),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    /// An XOR-PEER-ADDRESS value as is.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum ChannelSel {
    /// The channel the setup bound.
    Bound,
    Offset(u16),
    Raw(u16),
    /// A CHANNEL-NUMBER value as is.
    RawValue(Vec<u8>),
}

impl ChannelSel {
    fn number(&self) -> u16 {
        match self {
            ChannelSel::Bound | ChannelSel::RawValue(_) => CHANNEL_MIN,
            ChannelSel::Offset(n) => CHANNEL_MIN.wrapping_add(n % 0x4000),
            ChannelSel::Raw(n) => *n,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TokenSel {
    /// One the server handed out in this input (random, so the input cannot name it itself).
    Held(u8),
    Raw([u8; 8]),
    RawValue(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum RelaySel {
    Live(u8),
    Raw(u16),
}

fn peer_addr(p: &PeerSel) -> Option<SocketAddr> {
    match p {
        PeerSel::Table(i) => Some(PEERS[usize::from(*i) % PEERS.len()]),
        PeerSel::V4(o, port) => Some(SocketAddr::new(IpAddr::from(*o), *port)),
        PeerSel::V6(o, port) => Some(SocketAddr::new(IpAddr::from(*o), *port)),
        PeerSel::Raw(_) => None,
    }
}

fn xor_address(addr: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(txid);
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0, 0];
    v.extend_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            v[1] = 0x01;
            v.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m));
        }
        IpAddr::V6(ip) => {
            v[1] = 0x02;
            v.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m));
        }
    }
    v
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn stun_type(method: u16, class: u8) -> u16 {
    let c = u16::from(class);
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn class_of(typ: u16) -> u8 {
    (((typ >> 4) & 1) | ((typ >> 7) & 2)) as u8
}

fn method_of(typ: u16) -> u16 {
    (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80)
}

/// A STUN message under construction; the length field is kept current.
struct Builder {
    buf: Vec<u8>,
    padding: u8,
}

impl Builder {
    fn new(typ: u16, txid: &[u8; 12], padding: u8) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&typ.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(txid);
        Self { buf, padding }
    }

    fn set_len(&mut self, body: usize) {
        let len = u16::try_from(body).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    fn add(&mut self, typ: u16, value: &[u8]) {
        let value = &value[..value.len().min(1024)];
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        // Padding content is arbitrary (RFC 8489 §14): the receiver must not read it.
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(self.padding);
        }
        self.set_len(self.buf.len() - 20);
    }

    /// RFC 8489 §14.5: the HMAC covers the header with a length that includes
    /// MESSAGE-INTEGRITY and ends just before it.
    fn integrity(&mut self, key: &[u8; 16], sel: &IntegritySel, wrong: &[u8; 16]) {
        let key = match sel {
            IntegritySel::Omit => return,
            IntegritySel::Raw(v) => {
                self.add(ATTR_MESSAGE_INTEGRITY, v);
                return;
            }
            IntegritySel::WrongKey => wrong,
            IntegritySel::Correct | IntegritySel::Flip { .. } => key,
        };
        self.set_len(self.buf.len() - 20 + 24);
        let mut mac = hmac_sha1(key, &self.buf);
        if let IntegritySel::Flip { at, bits } = sel {
            mac[usize::from(*at) % 20] ^= bits | 1;
        }
        self.add(ATTR_MESSAGE_INTEGRITY, &mac);
    }

    fn fingerprint(&mut self, sel: &FingerprintSel) {
        let crc = match sel {
            FingerprintSel::None => return,
            FingerprintSel::Correct => {
                self.set_len(self.buf.len() - 20 + 8);
                crc32(&self.buf) ^ 0x5354_554E
            }
            FingerprintSel::Wrong(v) => *v,
        };
        self.add(ATTR_FINGERPRINT, &crc.to_be_bytes());
    }
}

/// One TLV of a STUN message as the harness reads it back, independently of the server.
fn attributes(buf: &[u8]) -> Vec<(usize, u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 20;
    while at + 4 <= buf.len() {
        let typ = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
        let Some(value) = buf.get(at + 4..at + 4 + len) else {
            break;
        };
        out.push((at, typ, value));
        at += 4 + len.div_ceil(4) * 4;
    }
    out
}

/// The long-term credential check redone from scratch: the first USERNAME names a known user,
/// REALM is present, the first NONCE is valid for this client now, and the first
/// MESSAGE-INTEGRITY is that user's HMAC. Any success the server sends for an authenticated
/// method must pass this.
fn independently_authenticated(req: &[u8], client: SocketAddr, now: Now, cfg: &CoreConfig) -> bool {
    let (mut user, mut realm, mut nonce) = (None, false, None);
    for (at, typ, value) in attributes(req) {
        match typ {
            ATTR_USERNAME if user.is_none() => {
                user = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|u| USERS[..2].iter().position(|(n, _)| *n == u)),
                );
            }
            ATTR_REALM if !realm => realm = std::str::from_utf8(value).is_ok(),
            ATTR_NONCE if nonce.is_none() => nonce = Some(value),
            ATTR_MESSAGE_INTEGRITY => {
                let (Some(Some(user)), true, Some(nonce)) = (user, realm, nonce) else {
                    return false;
                };
                let unix = now
                    .unix
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let fresh = NonceKey::from_bytes(NONCE_KEY).check(
                    nonce,
                    client,
                    unix,
                    cfg.nonce_lifetime.as_secs(),
                ) == NonceCheck::Valid;
                let mut signed = req[..at].to_vec();
                signed[2..4].copy_from_slice(&((at - 20 + 24) as u16).to_be_bytes());
                return fresh && value == hmac_sha1(&key_of(user), &signed);
            }
            _ => {}
        }
    }
    false
}

/// Whether a response's MESSAGE-INTEGRITY verifies under a known user's key.
fn response_signed(resp: &[u8]) -> Option<bool> {
    let (at, _, value) = attributes(resp)
        .into_iter()
        .find(|(_, t, _)| *t == ATTR_MESSAGE_INTEGRITY)?;
    let mut signed = resp[..at].to_vec();
    signed[2..4].copy_from_slice(&((at - 20 + 24) as u16).to_be_bytes());
    Some((0..2).any(|u| value == hmac_sha1(&key_of(u), &signed)))
}

fn error_code(resp: &[u8]) -> Option<u16> {
    attributes(resp)
        .into_iter()
        .find(|(_, t, _)| *t == ATTR_ERROR_CODE)
        .and_then(|(_, _, v)| Some(u16::from(*v.get(2)?) * 100 + u16::from(*v.get(3)?)))
}

fn report_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("ICEWAY_FUZZ_STATS").is_some())
}

fn stats() -> &'static Mutex<BTreeMap<String, u64>> {
    static STATS: OnceLock<Mutex<BTreeMap<String, u64>>> = OnceLock::new();
    STATS.get_or_init(Default::default)
}

fn count(what: impl FnOnce() -> String) {
    if report_enabled() {
        *stats()
            .lock()
            .expect("stats lock")
            .entry(what())
            .or_default() += 1;
    }
}

fn method_name(m: u16) -> String {
    match m {
        METHOD_BINDING => "binding".into(),
        METHOD_ALLOCATE => "allocate".into(),
        METHOD_REFRESH => "refresh".into(),
        METHOD_SEND => "send".into(),
        METHOD_DATA => "data".into(),
        METHOD_CREATE_PERMISSION => "create_permission".into(),
        METHOD_CHANNEL_BIND => "channel_bind".into(),
        _ => "other".into(),
    }
}

/// What the current operation was, for checking what it produced.
enum Sent {
    Request {
        client: usize,
        method: u16,
        txid: [u8; 12],
        bytes: Vec<u8>,
    },
    Indication,
    ChannelData,
    Peer,
    Housekeeping,
}

struct Run {
    strict: bool,
    shared: &'static Arc<Shared>,
    server: Server,
    relays: Relays,
    instant_offset: Duration,
    unix: u64,
    txids: u64,
    /// Per client, the transaction ids of Allocates that succeeded: a retransmission of one is
    /// answered from the cache without authentication.
    allocated: [Vec<[u8; 12]>; 4],
}

impl Run {
    fn new(strict: bool) -> Self {
        let shared = shared(strict);
        Self {
            strict,
            shared,
            server: Server::new(Arc::clone(shared)),
            relays: Relays {
                v6: !strict,
                next_id: 0,
                next_port: 0,
                live: Vec::new(),
                reserved: Vec::new(),
            },
            instant_offset: Duration::ZERO,
            unix: T0_UNIX,
            txids: 0,
            allocated: Default::default(),
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: base_instant() + self.instant_offset,
            unix: UNIX_EPOCH + Duration::from_secs(self.unix),
        }
    }

    fn fresh_txid(&mut self) -> [u8; 12] {
        self.txids += 1;
        let mut t = [0x7e; 12];
        t[4..].copy_from_slice(&self.txids.to_be_bytes());
        t
    }

    fn nonce(&self, client: usize, unix: u64) -> String {
        self.shared.nonce_key.issue(CLIENTS[client].client, unix)
    }

    fn attr(&self, b: &mut Builder, a: &AttrSel, txid: &[u8; 12]) {
        match a {
            AttrSel::PeerAddress(PeerSel::Raw(v)) => b.add(ATTR_XOR_PEER_ADDRESS, v),
            AttrSel::PeerAddress(p) => {
                let addr = peer_addr(p).expect("not raw");
                b.add(ATTR_XOR_PEER_ADDRESS, &xor_address(addr, txid));
            }
            AttrSel::Data(v) => b.add(ATTR_DATA, v),
            AttrSel::Lifetime(s) => b.add(ATTR_LIFETIME, &s.to_be_bytes()),
            AttrSel::ChannelNumber(ChannelSel::RawValue(v)) => b.add(ATTR_CHANNEL_NUMBER, v),
            AttrSel::ChannelNumber(c) => {
                let n = c.number().to_be_bytes();
                b.add(ATTR_CHANNEL_NUMBER, &[n[0], n[1], 0, 0]);
            }
            AttrSel::RequestedTransport(p) => b.add(ATTR_REQUESTED_TRANSPORT, &[p ^ 17, 0, 0, 0]),
            AttrSel::RequestedFamily(f) => {
                b.add(ATTR_REQUESTED_ADDRESS_FAMILY, &[f ^ 0x01, 0, 0, 0]);
            }
            AttrSel::AdditionalFamily(f) => {
                b.add(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[f ^ 0x02, 0, 0, 0]);
            }
            AttrSel::EvenPort(v) => b.add(ATTR_EVEN_PORT, &[*v]),
            AttrSel::ReservationToken(TokenSel::Held(i)) => {
                let held = &self.relays.reserved;
                let t = if held.is_empty() {
                    [0; 8]
                } else {
                    held[usize::from(*i) % held.len()].0
                };
                b.add(ATTR_RESERVATION_TOKEN, &t);
            }
            AttrSel::ReservationToken(TokenSel::Raw(t)) => b.add(ATTR_RESERVATION_TOKEN, t),
            AttrSel::ReservationToken(TokenSel::RawValue(v)) => b.add(ATTR_RESERVATION_TOKEN, v),
            AttrSel::DontFragment => b.add(ATTR_DONT_FRAGMENT, &[]),
            AttrSel::Known(k, v) => b.add(k.code(), v),
            AttrSel::Any(t, v) => b.add(*t, v),
        }
    }

    fn build(&mut self, r: &Request, client: usize) -> ([u8; 12], Vec<u8>) {
        let method = r.method.code();
        let class = match r.class {
            ClassSel::Natural if matches!(r.method, MethodSel::Send | MethodSel::Data) => {
                CLASS_INDICATION
            }
            ClassSel::Natural | ClassSel::Request => CLASS_REQUEST,
            ClassSel::Indication => CLASS_INDICATION,
            ClassSel::Success => CLASS_SUCCESS,
            ClassSel::Error => CLASS_ERROR,
        };
        let txid = match &r.txid {
            TxidSel::Fresh => self.fresh_txid(),
            TxidSel::Setup => SETUP_TXID,
            TxidSel::Raw(t) => *t,
        };
        let user = match &r.auth.user {
            UserSel::Natural => Some(client % 2),
            UserSel::Alice => Some(0),
            UserSel::Bob => Some(1),
            UserSel::Mallory => Some(2),
            UserSel::Raw(_) => None,
        };
        let username: &[u8] = match (&r.auth.user, user) {
            (UserSel::Raw(v), _) => v,
            (_, Some(u)) => USERS[u].0.as_bytes(),
            (_, None) => unreachable!("only Raw has no user"),
        };
        // A raw USERNAME is signed with mallory's key: unknown either way.
        let key = key_of(user.unwrap_or(2));
        let wrong = key_of(if user == Some(2) { 0 } else { 2 });
        let unix = self.unix;
        let nonce = match &r.auth.nonce {
            NonceSel::Current => Some(self.nonce(client, unix).into_bytes()),
            NonceSel::Omit => None,
            NonceSel::Stale => Some(self.nonce(client, unix.saturating_sub(700)).into_bytes()),
            NonceSel::OtherClient(i) => {
                let other = (client + 1 + usize::from(*i) % (CLIENTS.len() - 1)) % CLIENTS.len();
                Some(self.nonce(other, unix).into_bytes())
            }
            NonceSel::Raw(v) => Some(v.clone()),
        };
        let mut b = Builder::new(stun_type(method, class), &txid, r.padding);
        let credentials = |b: &mut Builder| {
            b.add(ATTR_USERNAME, username);
            match &r.auth.realm {
                RealmSel::Right => b.add(ATTR_REALM, REALM.as_bytes()),
                RealmSel::Omit => {}
                RealmSel::Raw(v) => b.add(ATTR_REALM, v),
            }
            if let Some(n) = &nonce {
                b.add(ATTR_NONCE, n);
            }
        };
        if r.auth.first {
            credentials(&mut b);
        }
        for a in &r.attrs {
            self.attr(&mut b, a, &txid);
        }
        if !r.auth.first {
            credentials(&mut b);
        }
        b.integrity(&key, &r.auth.integrity, &wrong);
        for a in &r.tail {
            self.attr(&mut b, a, &txid);
        }
        b.fingerprint(&r.fingerprint);
        (txid, b.buf)
    }

    fn check_invariants(&self) {
        let n = self.server.allocation_count();
        let cfg = &self.shared.config;
        let m = &self.shared.metrics;
        assert!(n <= CLIENTS.len(), "one allocation per 5-tuple");
        if let Some(total) = cfg.total_quota {
            assert!(n <= total as usize, "total quota exceeded: {n}");
        }
        assert_eq!(
            self.shared.quotas.total() as usize,
            n,
            "quota ledger vs allocations"
        );
        assert_eq!(m.allocations.get(), n as i64, "allocations gauge");
        let (perms, chans) = (m.permissions.get(), m.channels.get());
        assert!(
            perms >= 0 && perms as usize <= n * cfg.max_permissions,
            "permissions: {perms}"
        );
        assert!(
            chans >= 0 && chans as usize <= n * cfg.max_channels,
            "channels: {chans}"
        );
        let relays = self.relays.live.len();
        assert!(
            n <= relays && relays <= 2 * n,
            "{relays} relays for {n} allocations"
        );
    }

    /// Everything the operation produced must be what that kind of operation can produce.
    fn drain(&mut self, sent: &Sent) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.server.poll_output() {
            match &o {
                Output::ToPeer { relay, peer, .. } => {
                    assert!(
                        matches!(sent, Sent::Indication | Sent::ChannelData),
                        "relayed to a peer on {o:?}"
                    );
                    assert!(
                        self.relays.live.contains(relay),
                        "relayed through a released relay"
                    );
                    assert!(
                        self.shared.policy.permits(peer.ip()),
                        "relayed to a denied peer {peer}"
                    );
                    count(|| match sent {
                        Sent::Indication => "send indication -> peer".into(),
                        _ => "channel data -> peer".into(),
                    });
                }
                Output::ToClient { to, data } => {
                    assert!(CLIENTS.contains(to), "sent to a stranger {to:?}");
                    if channel_data::is_channel_data(data) {
                        assert!(matches!(sent, Sent::Peer), "ChannelData on {o:?}");
                        let cd = channel_data::parse(data).expect("own ChannelData parses");
                        assert!(
                            (CHANNEL_MIN..=self.shared.config.channel_max).contains(&cd.number)
                        );
                        if to.transport != Transport::Udp {
                            assert_eq!(data.len() % 4, 0, "ChannelData unpadded on a stream");
                        }
                        count(|| "peer data -> channel data".into());
                        continue;
                    }
                    assert!(
                        message::decode(data).is_ok(),
                        "own message does not decode: {data:?}"
                    );
                    let typ = u16::from_be_bytes([data[0], data[1]]);
                    let Sent::Request {
                        client,
                        method,
                        txid,
                        bytes,
                    } = sent
                    else {
                        assert!(matches!(sent, Sent::Peer), "message on {o:?}");
                        assert_eq!(method_of(typ), METHOD_DATA);
                        count(|| "peer data -> data indication".into());
                        continue;
                    };
                    assert_eq!(*to, CLIENTS[*client], "answered another 5-tuple");
                    assert_eq!(data[8..20], txid[..], "response transaction id");
                    assert_eq!(method_of(typ), *method, "response method");
                    let class = class_of(typ);
                    assert!(class == CLASS_SUCCESS || class == CLASS_ERROR);
                    if let Some(signed) = response_signed(data) {
                        assert!(signed, "response MESSAGE-INTEGRITY under no user's key");
                    }
                    if class == CLASS_SUCCESS && *method != METHOD_BINDING {
                        let retransmission =
                            *method == METHOD_ALLOCATE && self.allocated[*client].contains(txid);
                        assert!(
                            retransmission
                                || independently_authenticated(
                                    bytes,
                                    CLIENTS[*client].client,
                                    self.now(),
                                    &self.shared.config
                                ),
                            "success for a request that does not authenticate"
                        );
                        assert_eq!(response_signed(data), Some(true), "unsigned success");
                        if *method == METHOD_ALLOCATE && !retransmission {
                            self.allocated[*client].push(*txid);
                        }
                    }
                    count(|| {
                        let result = match error_code(data) {
                            Some(code) if class == CLASS_ERROR => code.to_string(),
                            _ => "ok".into(),
                        };
                        format!("{} {result}", method_name(*method))
                    });
                }
            }
            outs.push(o);
        }
        if matches!(sent, Sent::Request { .. }) {
            assert!(outs.len() <= 1, "more than one answer");
        }
        self.check_invariants();
        outs
    }

    fn request(&mut self, r: &Request) {
        let client = usize::from(r.client) % CLIENTS.len();
        let (txid, bytes) = self.build(r, client);
        let now = self.now();
        self.server
            .handle_client(&bytes, CLIENTS[client], now, &mut self.relays);
        let sent = if class_of(u16::from_be_bytes([bytes[0], bytes[1]])) == CLASS_REQUEST {
            Sent::Request {
                client,
                method: r.method.code(),
                txid,
                bytes,
            }
        } else {
            Sent::Indication
        };
        self.drain(&sent);
    }

    /// A signed request from client 0 (alice) that must succeed: the state every input starts
    /// from.
    fn setup_request(&mut self, method: u16, txid: [u8; 12], attrs: &[(u16, Vec<u8>)]) {
        let mut b = Builder::new(stun_type(method, CLASS_REQUEST), &txid, 0);
        for (t, v) in attrs {
            b.add(*t, v);
        }
        b.add(ATTR_USERNAME, USERS[0].0.as_bytes());
        b.add(ATTR_REALM, REALM.as_bytes());
        b.add(ATTR_NONCE, self.nonce(0, self.unix).as_bytes());
        b.integrity(&key_of(0), &IntegritySel::Correct, &key_of(2));
        b.fingerprint(&FingerprintSel::Correct);
        let now = self.now();
        self.server
            .handle_client(&b.buf, CLIENTS[0], now, &mut self.relays);
        let out = self.server.poll_output();
        match &out {
            Some(Output::ToClient { data, .. })
                if class_of(u16::from_be_bytes([data[0], data[1]])) == CLASS_SUCCESS => {}
            _ => panic!("setup request {method:#x} failed: {out:?}"),
        }
    }

    fn setup(&mut self) {
        let family = if self.strict {
            vec![]
        } else {
            vec![(ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])]
        };
        let mut attrs = vec![(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        attrs.extend(family);
        self.setup_request(METHOD_ALLOCATE, SETUP_TXID, &attrs);
        self.allocated[0].push(SETUP_TXID);
        let txid = self.fresh_txid();
        let peer = (ATTR_XOR_PEER_ADDRESS, xor_address(PEERS[0], &txid));
        self.setup_request(METHOD_CREATE_PERMISSION, txid, &[peer]);
        let txid = self.fresh_txid();
        let peer = (ATTR_XOR_PEER_ADDRESS, xor_address(PEERS[0], &txid));
        let number = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0]);
        self.setup_request(METHOD_CHANNEL_BIND, txid, &[number, peer]);
        self.check_invariants();
        assert_eq!(self.server.allocation_count(), 1);
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Request(r) => self.request(r),
            Op::ChannelData {
                client,
                number,
                payload,
                length,
                padding,
            } => {
                let len = length.unwrap_or(payload.len().min(usize::from(u16::MAX)) as u16);
                let mut data = channel_data::header(number.number(), len).to_vec();
                data.extend_from_slice(payload);
                data.extend(std::iter::repeat_n(0, usize::from(*padding % 4)));
                let now = self.now();
                let ft = CLIENTS[usize::from(*client) % CLIENTS.len()];
                self.server.handle_client(&data, ft, now, &mut self.relays);
                self.drain(&Sent::ChannelData);
            }
            Op::Peer {
                relay,
                peer,
                payload,
            } => {
                let relay = match relay {
                    RelaySel::Live(i) if !self.relays.live.is_empty() => {
                        self.relays.live[usize::from(*i) % self.relays.live.len()]
                    }
                    RelaySel::Live(_) => 1,
                    RelaySel::Raw(r) => usize::from(*r),
                };
                let peer = peer_addr(peer).unwrap_or(PEERS[0]);
                let now = self.now();
                self.server.handle_peer(relay, peer, payload, now.instant);
                self.drain(&Sent::Peer);
            }
            Op::Advance { secs } => {
                self.instant_offset += Duration::from_secs(u64::from(*secs));
                self.unix += u64::from(*secs);
                let now = self.now();
                self.server.sweep(now, &mut self.relays);
                self.drain(&Sent::Housekeeping);
            }
            Op::WallClock { back, secs } => {
                let secs = u64::from(*secs);
                self.unix = if *back {
                    self.unix.saturating_sub(secs)
                } else {
                    self.unix + secs
                };
            }
            Op::Sweep => {
                let now = self.now();
                self.server.sweep(now, &mut self.relays);
                self.drain(&Sent::Housekeeping);
            }
            Op::ConnectionClosed { client } => {
                let now = self.now();
                let ft = CLIENTS[usize::from(*client) % CLIENTS.len()];
                self.server
                    .connection_closed(&ft, now.instant, &mut self.relays);
                self.drain(&Sent::Housekeeping);
            }
            Op::Drain => self.shared.start_drain(),
            Op::Raw { client, bytes } => {
                let client = usize::from(*client) % CLIENTS.len();
                let now = self.now();
                self.server
                    .handle_client(bytes, CLIENTS[client], now, &mut self.relays);
                let sent = match bytes.get(..20) {
                    _ if channel_data::is_channel_data(bytes) => Sent::ChannelData,
                    Some(h) if class_of(u16::from_be_bytes([h[0], h[1]])) == CLASS_REQUEST => {
                        let mut txid = [0; 12];
                        txid.copy_from_slice(&h[8..20]);
                        Sent::Request {
                            client,
                            method: method_of(u16::from_be_bytes([h[0], h[1]])),
                            txid,
                            bytes: bytes.clone(),
                        }
                    }
                    _ => Sent::Indication,
                };
                self.drain(&sent);
            }
        }
    }

    fn finish(mut self) {
        let now = self.now();
        self.server.close_all(now.instant, &mut self.relays);
        self.shared.draining.store(false, Ordering::Relaxed);
        let m = &self.shared.metrics;
        assert_eq!(self.server.allocation_count(), 0);
        assert!(
            self.relays.live.is_empty(),
            "relays leaked: {:?}",
            self.relays.live
        );
        assert_eq!(self.shared.quotas.tracked(), (0, 0), "quota ledger leaked");
        assert_eq!(self.shared.quotas.total(), 0, "quota total leaked");
        assert_eq!(m.allocations.get(), 0, "allocations gauge");
        assert_eq!(m.permissions.get(), 0, "permissions gauge");
        assert_eq!(m.channels.get(), 0, "channels gauge");
    }
}

fn report() {
    static INPUTS: AtomicU64 = AtomicU64::new(0);
    let n = INPUTS.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_multiple_of(200_000) {
        let stats = stats().lock().expect("stats lock");
        let line: Vec<String> = stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        eprintln!("[authenticated] after {n} inputs: {}", line.join(", "));
    }
}

fuzz_target!(|input: Input| {
    let mut run = Run::new(input.strict);
    run.setup();
    for op in input.ops.iter().take(MAX_OPS) {
        run.op(op);
    }
    run.finish();
    if report_enabled() {
        report();
    }
});
