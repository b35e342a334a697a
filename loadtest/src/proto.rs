//! Sans-IO protocol pieces of the load tool: the TURN allocation handshake (control plane, on the
//! `stun` crate), and the hand-rolled data-path framing (ChannelData, Send/Data indications, the
//! ceiling relay's 4-byte frame, STUN Binding) with the probe stamp each packet carries.
//!
//! Nothing here touches a socket or a clock: callers pass bytes and timestamps in and get bytes out.

use std::net::{IpAddr, SocketAddr};

use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, Message, MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
const STUN_HEADER: usize = 20;
const IPPROTO_UDP: u8 = 17;

/// The probe stamp at the start of every data payload: sequence number and send time (ns since
/// the run's epoch). The rest of the payload is filler up to the requested size.
pub const STAMP_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u32,
    pub sent_ns: u64,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.seq.to_be_bytes());
        out[4..12].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    pub fn read(b: &[u8]) -> Option<Self> {
        let seq = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
        let sent_ns = u64::from_be_bytes(b.get(4..12)?.try_into().ok()?);
        Some(Self { seq, sent_ns })
    }
}

/// How data travels between the client and its allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// ChannelData (RFC 8656 §12.4) on the given channel number.
    Channel(u16),
    /// Send indications out, Data indications back, with a prebuilt header for the peer.
    Indication { header: Vec<u8> },
    /// The ceiling relay's frame: 2-byte tag, 2-byte length, payload.
    Ceiling,
    /// STUN Binding requests; the stamp lives in the transaction id.
    Binding,
}

impl Framing {
    pub fn send_indication(peer: SocketAddr) -> Self {
        // The transaction id of an indication is not matched by anyone; a fixed one lets the
        // header be built once and copied per packet.
        let txid = [0x1c_u8; 12];
        let mut header = Vec::with_capacity(48);
        header.extend_from_slice(&0x0016_u16.to_be_bytes()); // Send indication
        header.extend_from_slice(&0_u16.to_be_bytes()); // length, patched per packet
        header.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        header.extend_from_slice(&txid);
        let addr = xor_address(peer, &txid);
        header.extend_from_slice(&ATTR_XOR_PEER_ADDRESS.0.to_be_bytes());
        header.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        header.extend_from_slice(&addr);
        header.extend_from_slice(&ATTR_DATA.0.to_be_bytes());
        header.extend_from_slice(&0_u16.to_be_bytes()); // DATA length, patched per packet
        Framing::Indication { header }
    }

    /// Writes one packet carrying `stamp` with a payload of `size` bytes; returns its length.
    /// `out` must hold `size + 64` bytes.
    pub fn encode(&self, stamp: Stamp, size: usize, out: &mut [u8]) -> usize {
        match self {
            Framing::Channel(ch) => {
                out[..2].copy_from_slice(&ch.to_be_bytes());
                out[2..4].copy_from_slice(&(size as u16).to_be_bytes());
                stamp.write(&mut out[4..]);
                4 + size
            }
            Framing::Ceiling => {
                out[..2].copy_from_slice(&0x4000_u16.to_be_bytes());
                out[2..4].copy_from_slice(&(size as u16).to_be_bytes());
                stamp.write(&mut out[4..]);
                4 + size
            }
            Framing::Indication { header } => {
                let h = header.len();
                out[..h].copy_from_slice(header);
                let padded = size.div_ceil(4) * 4;
                let body = h - STUN_HEADER + padded;
                out[2..4].copy_from_slice(&(body as u16).to_be_bytes());
                out[h - 2..h].copy_from_slice(&(size as u16).to_be_bytes());
                stamp.write(&mut out[h..]);
                out[h + size..h + padded].fill(0);
                h + padded
            }
            Framing::Binding => {
                out[..2].copy_from_slice(&0x0001_u16.to_be_bytes());
                out[2..4].copy_from_slice(&0_u16.to_be_bytes());
                out[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
                stamp.write(&mut out[8..20]);
                STUN_HEADER
            }
        }
    }

    /// Finds the stamp in a packet that came back, or None for anything else (control
    /// responses, other channels, garbage).
    pub fn decode(&self, b: &[u8]) -> Option<Stamp> {
        match self {
            Framing::Channel(ch) => {
                if b.len() < 4 || u16::from_be_bytes([b[0], b[1]]) != *ch {
                    return None;
                }
                Stamp::read(&b[4..])
            }
            Framing::Ceiling => Stamp::read(b.get(4..)?),
            Framing::Indication { .. } => {
                // Data indication: type 0x0017.
                if b.len() < STUN_HEADER || b[0] != 0x00 || b[1] != 0x17 {
                    return None;
                }
                Stamp::read(find_attribute(b, ATTR_DATA.0)?)
            }
            Framing::Binding => {
                // Binding success response: 0x0101, stamp is the transaction id.
                if b.len() < STUN_HEADER || b[0] != 0x01 || b[1] != 0x01 {
                    return None;
                }
                Stamp::read(&b[8..20])
            }
        }
    }

    /// Bytes of framing around a payload of `size` bytes (for reporting wire sizes).
    pub fn overhead(&self, size: usize) -> usize {
        match self {
            Framing::Channel(_) | Framing::Ceiling => 4,
            Framing::Indication { header } => header.len() + size.div_ceil(4) * 4 - size,
            Framing::Binding => 0,
        }
    }
}

/// Walks a STUN message's attributes and returns the value of the first one of type `typ`.
pub fn find_attribute(b: &[u8], typ: u16) -> Option<&[u8]> {
    let len = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize;
    let end = (STUN_HEADER + len).min(b.len());
    let mut at = STUN_HEADER;
    while at + 4 <= end {
        let t = u16::from_be_bytes([b[at], b[at + 1]]);
        let l = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        let v = b.get(at + 4..at + 4 + l)?;
        if t == typ {
            return Some(v);
        }
        at += 4 + l.div_ceil(4) * 4;
    }
    None
}

fn xor_address(addr: SocketAddr, txid: &[u8; 12]) -> Vec<u8> {
    let cookie = STUN_MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (STUN_MAGIC_COOKIE >> 16) as u16;
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 1]);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(cookie.iter()).map(|(a, b)| a ^ b));
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 2]);
            v.extend_from_slice(&port.to_be_bytes());
            let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
            v.extend(ip.octets().iter().zip(key.iter()).map(|(a, b)| a ^ b));
        }
    }
    v
}

/// Long-term credentials for one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// What to set up on the allocation once it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Channel(u16),
    Permission,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("{method} refused: {code} {reason}")]
    Refused {
        method: &'static str,
        code: u16,
        reason: String,
    },
    #[error("server asked for credentials but none were given")]
    NoCredentials,
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("success without XOR-RELAYED-ADDRESS")]
    NoRelayedAddress,
    #[error("too many authentication rounds")]
    TooManyRounds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Allocate,
    Bind,
    Done,
    /// Refresh of a live allocation (then the binding again, back to Done).
    Refresh,
    /// Refresh with LIFETIME 0: the allocation is being released.
    Release,
    Released,
}

/// What the caller should do after feeding a response to the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this request (and keep it for retransmission).
    Send(Vec<u8>),
    /// The allocation is ready; data may flow.
    Ready { relayed: SocketAddr },
    /// Not a response to the outstanding request: ignore it.
    Ignore,
    /// The allocation is gone (a release was answered with success or 437).
    Released,
}

/// The client side of Allocate (401 → realm/nonce → authenticated Allocate, 438 → new nonce)
/// followed by a ChannelBind or CreatePermission towards one peer; later, while data flows, a
/// Refresh followed by the same binding again ([`Self::refresh`]), or a release
/// ([`Self::release`]).
pub struct AllocationHandshake {
    credentials: Option<Credentials>,
    peer: SocketAddr,
    binding: Binding,
    stage: Stage,
    txid: [u8; 12],
    realm: Option<String>,
    nonce: Option<String>,
    rounds: u8,
    relayed: Option<SocketAddr>,
    last_request: Vec<u8>,
}

impl AllocationHandshake {
    pub fn new(credentials: Option<Credentials>, peer: SocketAddr, binding: Binding) -> Self {
        Self {
            credentials,
            peer,
            binding,
            stage: Stage::Allocate,
            txid: [0; 12],
            realm: None,
            nonce: None,
            rounds: 0,
            relayed: None,
            last_request: Vec::new(),
        }
    }

    /// The first request (an unauthenticated Allocate).
    pub fn start(&mut self) -> Vec<u8> {
        self.request()
    }

    /// The outstanding request, for retransmission.
    pub fn last_request(&self) -> &[u8] {
        &self.last_request
    }

    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// A fresh handshake for a new allocation with the same credentials, peer and binding (the
    /// replacement of a churned allocation; it starts with its own 401 round).
    pub fn renew(&self) -> Self {
        Self::new(self.credentials.clone(), self.peer, self.binding)
    }

    /// Starts refreshing a ready allocation: a Refresh (default lifetime), then the ChannelBind
    /// or CreatePermission again, which refreshes the binding and its permission. Ends in
    /// `Step::Ready` like the first handshake.
    pub fn refresh(&mut self) -> Vec<u8> {
        self.stage = Stage::Refresh;
        self.rounds = 0;
        self.request()
    }

    /// Starts releasing the allocation (Refresh with LIFETIME 0). Ends in `Step::Released`; a
    /// 437 (no such allocation) counts as released too.
    pub fn release(&mut self) -> Vec<u8> {
        self.stage = Stage::Release;
        self.rounds = 0;
        self.request()
    }

    /// Feeds one datagram from the server.
    pub fn on_response(&mut self, b: &[u8]) -> Result<Step, HandshakeError> {
        if matches!(self.stage, Stage::Done | Stage::Released)
            || b.len() < STUN_HEADER
            || b[8..20] != self.txid
        {
            return Ok(Step::Ignore);
        }
        let mut m = Message::new();
        m.raw = b.to_vec();
        m.decode()
            .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        let method = match self.stage {
            Stage::Allocate => "Allocate",
            Stage::Bind => match self.binding {
                Binding::Channel(_) => "ChannelBind",
                Binding::Permission => "CreatePermission",
            },
            Stage::Refresh => "Refresh",
            Stage::Release => "Refresh(0)",
            Stage::Done | Stage::Released => return Ok(Step::Ignore),
        };
        if m.typ.class == CLASS_ERROR_RESPONSE {
            let mut ec = ErrorCodeAttribute::default();
            ec.get_from(&m)
                .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
            let code = ec.code.0;
            if self.stage == Stage::Release && code == 437 {
                self.stage = Stage::Released;
                return Ok(Step::Released);
            }
            if code == 401 || code == 438 {
                if self.credentials.is_none() {
                    return Err(HandshakeError::NoCredentials);
                }
                self.rounds += 1;
                // A second 401 after authenticating means the credentials are wrong.
                if self.rounds > 3 || (code == 401 && self.nonce.is_some() && self.rounds > 1) {
                    return Err(HandshakeError::Refused {
                        method,
                        code,
                        reason: String::from_utf8_lossy(&ec.reason).into_owned(),
                    });
                }
                if let Ok(realm) = TextAttribute::get_from_as(&m, ATTR_REALM) {
                    self.realm = Some(realm.text);
                }
                let nonce = TextAttribute::get_from_as(&m, ATTR_NONCE)
                    .map_err(|_| HandshakeError::Malformed(format!("{code} without NONCE")))?;
                self.nonce = Some(nonce.text);
                if self.realm.is_none() {
                    return Err(HandshakeError::Malformed(format!("{code} without REALM")));
                }
                return Ok(Step::Send(self.request()));
            }
            return Err(HandshakeError::Refused {
                method,
                code,
                reason: String::from_utf8_lossy(&ec.reason).into_owned(),
            });
        }
        if m.typ.class != CLASS_SUCCESS_RESPONSE {
            return Ok(Step::Ignore);
        }
        match self.stage {
            Stage::Allocate => {
                let mut relayed = XorMappedAddress::default();
                relayed
                    .get_from_as(&m, ATTR_XOR_RELAYED_ADDRESS)
                    .map_err(|_| HandshakeError::NoRelayedAddress)?;
                self.relayed = Some(SocketAddr::new(relayed.ip, relayed.port));
                self.stage = Stage::Bind;
                Ok(Step::Send(self.request()))
            }
            Stage::Bind => {
                self.stage = Stage::Done;
                Ok(Step::Ready {
                    relayed: self.relayed.ok_or(HandshakeError::NoRelayedAddress)?,
                })
            }
            Stage::Refresh => {
                self.stage = Stage::Bind;
                self.rounds = 0;
                Ok(Step::Send(self.request()))
            }
            Stage::Release => {
                self.stage = Stage::Released;
                Ok(Step::Released)
            }
            Stage::Done | Stage::Released => Ok(Step::Ignore),
        }
    }

    /// A Refresh with LIFETIME 0 that releases the allocation (sent best-effort at the end).
    pub fn deallocate(&mut self) -> Vec<u8> {
        self.build(MessageType::new(METHOD_REFRESH, CLASS_REQUEST), |m| {
            m.add(ATTR_LIFETIME, &0_u32.to_be_bytes());
        })
    }

    fn request(&mut self) -> Vec<u8> {
        let peer = self.peer;
        let req = match (self.stage, self.binding) {
            (Stage::Allocate, _) => {
                self.build(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST), |m| {
                    m.add(ATTR_REQUESTED_TRANSPORT, &[IPPROTO_UDP, 0, 0, 0]);
                })
            }
            // No LIFETIME: the server's default lifetime again.
            (Stage::Refresh, _) => {
                self.build(MessageType::new(METHOD_REFRESH, CLASS_REQUEST), |_| {})
            }
            (Stage::Release | Stage::Released, _) => {
                self.build(MessageType::new(METHOD_REFRESH, CLASS_REQUEST), |m| {
                    m.add(ATTR_LIFETIME, &0_u32.to_be_bytes());
                })
            }
            (_, Binding::Channel(ch)) => {
                self.build(MessageType::new(METHOD_CHANNEL_BIND, CLASS_REQUEST), |m| {
                    let mut v = [0_u8; 4];
                    v[..2].copy_from_slice(&ch.to_be_bytes());
                    m.add(ATTR_CHANNEL_NUMBER, &v);
                    add_peer(m, peer);
                })
            }
            (_, Binding::Permission) => self.build(
                MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST),
                |m| add_peer(m, peer),
            ),
        };
        self.last_request = req.clone();
        req
    }

    fn build(&mut self, typ: MessageType, attrs: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new();
        m.typ = typ;
        // new_transaction_id only fails if the OS random source does.
        let _ = m.new_transaction_id();
        self.txid = m.transaction_id.0;
        m.write_header();
        attrs(&mut m);
        if let (Some(c), Some(realm), Some(nonce)) = (&self.credentials, &self.realm, &self.nonce) {
            m.add(ATTR_USERNAME, c.username.as_bytes());
            m.add(ATTR_REALM, realm.as_bytes());
            m.add(ATTR_NONCE, nonce.as_bytes());
            let integrity = MessageIntegrity::new_long_term_integrity(
                c.username.clone(),
                realm.clone(),
                c.password.clone(),
            );
            // Adding MESSAGE-INTEGRITY to a message that was just encoded cannot fail.
            let _ = integrity.add_to(&mut m);
        }
        m.raw.clone()
    }
}

fn add_peer(m: &mut Message, peer: SocketAddr) {
    let a = XorMappedAddress {
        ip: peer.ip(),
        port: peer.port(),
    };
    // add_to_as only writes bytes into the message.
    let _ = a.add_to_as(m, ATTR_XOR_PEER_ADDRESS);
}

/// The ceiling relay's only control message: a 0xFFFF-tagged frame naming the peer (IPv4
/// address and port); the relay answers with the same frame naming its relay socket.
pub const CEILING_BIND_TAG: u16 = 0xFFFF;

pub fn ceiling_bind_frame(addr: SocketAddr) -> Option<[u8; 10]> {
    let SocketAddr::V4(a) = addr else { return None };
    let mut f = [0_u8; 10];
    f[..2].copy_from_slice(&CEILING_BIND_TAG.to_be_bytes());
    f[2..4].copy_from_slice(&6_u16.to_be_bytes());
    f[4..8].copy_from_slice(&a.ip().octets());
    f[8..10].copy_from_slice(&a.port().to_be_bytes());
    Some(f)
}

pub fn parse_ceiling_bind(b: &[u8]) -> Option<SocketAddr> {
    if b.len() < 10 || b[..2] != CEILING_BIND_TAG.to_be_bytes() {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(b[4], b[5], b[6], b[7]);
    Some(SocketAddr::new(
        IpAddr::V4(ip),
        u16::from_be_bytes([b[8], b[9]]),
    ))
}

/// Either control plane, behind one face for the driver.
pub enum Handshake {
    Turn(Box<AllocationHandshake>),
    Ceiling { request: Vec<u8>, done: bool },
}

impl Handshake {
    pub fn ceiling(peer: SocketAddr) -> Result<Self, HandshakeError> {
        let request = ceiling_bind_frame(peer)
            .ok_or_else(|| HandshakeError::Malformed("the ceiling relay is IPv4 only".into()))?
            .to_vec();
        Ok(Handshake::Ceiling {
            request,
            done: false,
        })
    }

    pub fn start(&mut self) -> Vec<u8> {
        match self {
            Handshake::Turn(h) => h.start(),
            Handshake::Ceiling { request, .. } => request.clone(),
        }
    }

    pub fn last_request(&self) -> &[u8] {
        match self {
            Handshake::Turn(h) => h.last_request(),
            Handshake::Ceiling { request, .. } => request,
        }
    }

    /// True once the allocation itself exists (before the permission or channel).
    pub fn allocated(&self) -> bool {
        match self {
            Handshake::Turn(h) => h.relayed().is_some(),
            Handshake::Ceiling { done, .. } => *done,
        }
    }

    pub fn on_response(&mut self, b: &[u8]) -> Result<Step, HandshakeError> {
        match self {
            Handshake::Turn(h) => h.on_response(b),
            Handshake::Ceiling { done, .. } => match parse_ceiling_bind(b) {
                Some(relayed) if !*done => {
                    *done = true;
                    Ok(Step::Ready { relayed })
                }
                _ => Ok(Step::Ignore),
            },
        }
    }

    pub fn deallocate(&mut self) -> Option<Vec<u8>> {
        match self {
            Handshake::Turn(h) => Some(h.deallocate()),
            Handshake::Ceiling { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().expect("literal address")
    }

    fn response(
        req: &[u8],
        class: stun::message::MessageClass,
        attrs: impl FnOnce(&mut Message),
    ) -> Vec<u8> {
        let mut q = Message::new();
        q.raw = req.to_vec();
        q.decode().expect("request decodes");
        let mut m = Message::new();
        m.typ = MessageType::new(q.typ.method, class);
        m.transaction_id = TransactionId(q.transaction_id.0);
        m.write_header();
        attrs(&mut m);
        m.raw.clone()
    }

    #[test]
    fn stamp_round_trips_through_every_framing() {
        let stamp = Stamp {
            seq: 7,
            sent_ns: 123_456_789,
        };
        for framing in [
            Framing::Channel(0x4001),
            Framing::Ceiling,
            Framing::send_indication(peer()),
            Framing::Binding,
        ] {
            let mut buf = vec![0_u8; 200];
            let n = framing.encode(stamp, 101, &mut buf);
            let back = match &framing {
                // The server turns a Send indication into a Data indication: same layout.
                Framing::Indication { .. } => {
                    buf[1] = 0x17;
                    buf[..n].to_vec()
                }
                Framing::Binding => {
                    buf[0] = 0x01;
                    buf[1] = 0x01;
                    buf[..n].to_vec()
                }
                _ => buf[..n].to_vec(),
            };
            assert_eq!(framing.decode(&back), Some(stamp), "{framing:?}");
        }
    }

    #[test]
    fn send_indication_is_a_valid_stun_message() {
        let framing = Framing::send_indication(peer());
        let mut buf = vec![0_u8; 300];
        let n = framing.encode(Stamp { seq: 1, sent_ns: 2 }, 121, &mut buf);
        let mut m = Message::new();
        m.raw = buf[..n].to_vec();
        m.decode().expect("decodes");
        assert_eq!(m.typ.method, stun::message::METHOD_SEND);
        let mut a = XorMappedAddress::default();
        a.get_from_as(&m, ATTR_XOR_PEER_ADDRESS).expect("peer");
        assert_eq!(SocketAddr::new(a.ip, a.port), peer());
        assert_eq!(m.get(ATTR_DATA).expect("data").len(), 121);
    }

    #[test]
    fn handshake_authenticates_after_401_then_binds_a_channel() {
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let mut h = AllocationHandshake::new(Some(creds), peer(), Binding::Channel(0x4000));
        let first = h.start();
        let unauth = response(&first, CLASS_ERROR_RESPONSE, |m| {
            ErrorCodeAttribute {
                code: stun::error_code::CODE_UNAUTHORIZED,
                reason: b"Unauthorized".to_vec(),
            }
            .add_to(m)
            .expect("error code");
            m.add(ATTR_REALM, b"iceway");
            m.add(ATTR_NONCE, b"n1");
        });
        let Ok(Step::Send(second)) = h.on_response(&unauth) else {
            panic!("expected an authenticated Allocate");
        };
        let mut m = Message::new();
        m.raw = second.clone();
        m.decode().expect("decodes");
        MessageIntegrity::new_long_term_integrity("u".into(), "iceway".into(), "p".into())
            .check(&mut m)
            .expect("integrity matches the long-term key");
        // A stray datagram with another transaction id is ignored.
        assert_eq!(h.on_response(&unauth), Ok(Step::Ignore));
        let ok = response(&second, CLASS_SUCCESS_RESPONSE, |m| {
            XorMappedAddress {
                ip: "127.0.0.1".parse().expect("ip"),
                port: 50000,
            }
            .add_to_as(m, ATTR_XOR_RELAYED_ADDRESS)
            .expect("relayed");
        });
        let Ok(Step::Send(bind)) = h.on_response(&ok) else {
            panic!("expected ChannelBind");
        };
        let mut m = Message::new();
        m.raw = bind.clone();
        m.decode().expect("decodes");
        assert_eq!(m.typ.method, METHOD_CHANNEL_BIND);
        let done = response(&bind, CLASS_SUCCESS_RESPONSE, |_| {});
        assert_eq!(
            h.on_response(&done),
            Ok(Step::Ready {
                relayed: "127.0.0.1:50000".parse().expect("addr")
            })
        );
        assert!(h.is_done());
    }

    fn method_of(req: &[u8]) -> stun::message::Method {
        let mut m = Message::new();
        m.raw = req.to_vec();
        m.decode().expect("decodes");
        m.typ.method
    }

    /// A handshake that is done, with realm and nonce from its 401.
    fn ready_handshake() -> AllocationHandshake {
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let mut h = AllocationHandshake::new(Some(creds), peer(), Binding::Channel(0x4000));
        let first = h.start();
        let unauth = response(&first, CLASS_ERROR_RESPONSE, |m| {
            ErrorCodeAttribute {
                code: stun::error_code::CODE_UNAUTHORIZED,
                reason: b"Unauthorized".to_vec(),
            }
            .add_to(m)
            .expect("error code");
            m.add(ATTR_REALM, b"iceway");
            m.add(ATTR_NONCE, b"n1");
        });
        let Ok(Step::Send(second)) = h.on_response(&unauth) else {
            panic!("expected an authenticated Allocate");
        };
        let ok = response(&second, CLASS_SUCCESS_RESPONSE, |m| {
            XorMappedAddress {
                ip: "127.0.0.1".parse().expect("ip"),
                port: 50000,
            }
            .add_to_as(m, ATTR_XOR_RELAYED_ADDRESS)
            .expect("relayed");
        });
        let Ok(Step::Send(bind)) = h.on_response(&ok) else {
            panic!("expected ChannelBind");
        };
        let done = response(&bind, CLASS_SUCCESS_RESPONSE, |_| {});
        assert!(matches!(h.on_response(&done), Ok(Step::Ready { .. })));
        h
    }

    #[test]
    fn refresh_renews_the_nonce_on_438_then_rebinds() {
        let mut h = ready_handshake();
        let refresh = h.refresh();
        assert_eq!(method_of(&refresh), METHOD_REFRESH);
        let stale = response(&refresh, CLASS_ERROR_RESPONSE, |m| {
            ErrorCodeAttribute {
                code: stun::error_code::CODE_STALE_NONCE,
                reason: b"Stale Nonce".to_vec(),
            }
            .add_to(m)
            .expect("error code");
            m.add(ATTR_REALM, b"iceway");
            m.add(ATTR_NONCE, b"n2");
        });
        let Ok(Step::Send(again)) = h.on_response(&stale) else {
            panic!("expected the Refresh again with the new nonce");
        };
        assert_eq!(method_of(&again), METHOD_REFRESH);
        let ok = response(&again, CLASS_SUCCESS_RESPONSE, |_| {});
        let Ok(Step::Send(bind)) = h.on_response(&ok) else {
            panic!("expected ChannelBind after the Refresh");
        };
        assert_eq!(method_of(&bind), METHOD_CHANNEL_BIND);
        let done = response(&bind, CLASS_SUCCESS_RESPONSE, |_| {});
        assert_eq!(
            h.on_response(&done),
            Ok(Step::Ready {
                relayed: "127.0.0.1:50000".parse().expect("addr")
            })
        );
    }

    #[test]
    fn release_ends_on_success_or_437_and_renew_starts_over() {
        let mut h = ready_handshake();
        let release = h.release();
        let mut m = Message::new();
        m.raw = release.clone();
        m.decode().expect("decodes");
        assert_eq!(m.typ.method, METHOD_REFRESH);
        assert_eq!(m.get(ATTR_LIFETIME).expect("lifetime"), vec![0, 0, 0, 0]);
        let gone = response(&release, CLASS_ERROR_RESPONSE, |m| {
            ErrorCodeAttribute {
                code: stun::error_code::CODE_ALLOC_MISMATCH,
                reason: b"Allocation Mismatch".to_vec(),
            }
            .add_to(m)
            .expect("error code");
        });
        assert_eq!(h.on_response(&gone), Ok(Step::Released));
        assert_eq!(h.on_response(&gone), Ok(Step::Ignore));

        let mut h = ready_handshake();
        let release = h.release();
        let ok = response(&release, CLASS_SUCCESS_RESPONSE, |_| {});
        assert_eq!(h.on_response(&ok), Ok(Step::Released));

        let mut fresh = h.renew();
        assert!(!fresh.is_done() && fresh.relayed().is_none());
        assert_eq!(method_of(&fresh.start()), METHOD_ALLOCATE);
    }

    #[test]
    fn wrong_password_is_refused_not_retried_forever() {
        let creds = Credentials {
            username: "u".into(),
            password: "bad".into(),
        };
        let mut h = AllocationHandshake::new(Some(creds), peer(), Binding::Permission);
        let mut req = h.start();
        let mut last = Ok(Step::Ignore);
        for _ in 0..5 {
            let unauth = response(&req, CLASS_ERROR_RESPONSE, |m| {
                ErrorCodeAttribute {
                    code: stun::error_code::CODE_UNAUTHORIZED,
                    reason: b"Unauthorized".to_vec(),
                }
                .add_to(m)
                .expect("error code");
                m.add(ATTR_REALM, b"r");
                m.add(ATTR_NONCE, b"n");
            });
            last = h.on_response(&unauth);
            match &last {
                Ok(Step::Send(r)) => req = r.clone(),
                _ => break,
            }
        }
        assert!(
            matches!(last, Err(HandshakeError::Refused { code: 401, .. })),
            "{last:?}"
        );
    }

    #[test]
    fn find_attribute_stops_at_truncated_input() {
        let mut b = vec![0_u8; 24];
        b[3] = 8; // claims 8 bytes of attributes
        b[20..24].copy_from_slice(&[0x00, 0x13, 0x00, 0x40]); // DATA of 64 bytes, missing
        assert_eq!(find_attribute(&b, 0x0013), None);
    }
}
