//! The protocol rules as plain tests: bytes in, bytes out, time advanced by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

use super::credentials::{CredentialFailure, CredentialStore, Grant, StaticUsers, long_term_key};
use super::message::{self as msg};
use super::server::*;
use crate::metrics::Metrics;
use crate::policy::{PeerPolicy, default_deny};

const REALM: &str = "test.realm";

struct FakeRelays {
    next: usize,
    released: Vec<RelayId>,
    v6: bool,
    exhausted: bool,
    requests: Vec<PortRequest>,
    reserved: Vec<[u8; 8]>,
    /// Reserved ports were reserved in IPv6 (whatever family the claim names).
    reserved_v6: bool,
}

impl RelayPorts for FakeRelays {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError> {
        self.requests.push(port);
        if self.exhausted || matches!(port, PortRequest::Reserved(t) if !self.reserved.contains(&t))
        {
            return Err(RelayError::Exhausted);
        }
        self.next += 1;
        let family = match port {
            PortRequest::Reserved(_) if self.reserved_v6 => Family::V6,
            _ => family,
        };
        let local: SocketAddr = match family {
            Family::V4 => format!("10.0.0.1:{}", 50000 + self.next),
            Family::V6 if self.v6 => format!("[fd00::1]:{}", 50000 + self.next),
            Family::V6 => return Err(RelayError::FamilyUnsupported),
        }
        .parse()
        .expect("addr");
        Ok(Relay {
            id: self.next,
            local,
        })
    }

    fn release(&mut self, id: RelayId) {
        self.released.push(id);
    }
}

/// Credentials that expire at a fixed time, with per-user limits.
struct Expiring {
    expires_at: SystemTime,
    alloc: Option<u32>,
}

impl CredentialStore for Expiring {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        if now >= self.expires_at {
            return Err(CredentialFailure { reason: "expired" });
        }
        Ok(Grant {
            user: username
                .split(':')
                .next_back()
                .unwrap_or(username)
                .to_owned(),
            keys: vec![long_term_key(username, realm, "pw")],
            expires_at: Some(self.expires_at),
            alloc_limit: self.alloc,
            kbps: None,
        })
    }
}

struct Harness {
    server: Server,
    relays: FakeRelays,
    now: Now,
    client: FiveTuple,
}

fn config() -> CoreConfig {
    CoreConfig {
        realm: REALM.into(),
        external_ips: vec!["203.0.113.7".parse().expect("ip")],
        ..CoreConfig::default()
    }
}

fn harness_with(config: CoreConfig, creds: Box<dyn CredentialStore>) -> Harness {
    let policy = PeerPolicy::new(Vec::new(), default_deny());
    let shared = Arc::new(Shared::new(
        config,
        creds,
        policy,
        Metrics::new().expect("metrics"),
    ));
    Harness {
        server: Server::new(shared),
        relays: FakeRelays {
            next: 0,
            released: Vec::new(),
            v6: true,
            exhausted: false,
            requests: Vec::new(),
            reserved: Vec::new(),
            reserved_v6: false,
        },
        now: Now {
            instant: Instant::now(),
            unix: SystemTime::now(),
        },
        client: FiveTuple {
            client: "198.51.100.1:40000".parse().expect("addr"),
            server: "192.0.2.10:3478".parse().expect("addr"),
            transport: Transport::Udp,
        },
    }
}

fn harness() -> Harness {
    harness_with(
        config(),
        Box::new(StaticUsers::new(&[("alice".into(), "pw".into())], REALM)),
    )
}

struct Req {
    m: Message,
}

impl Req {
    fn new(method: Method) -> Self {
        let mut m = Message::new();
        m.set_type(MessageType::new(method, CLASS_REQUEST));
        m.transaction_id = stun::agent::TransactionId::new();
        m.write_header();
        Self { m }
    }

    fn attr(mut self, t: AttrType, v: &[u8]) -> Self {
        self.m.add(t, v);
        self
    }

    fn peer(mut self, addr: &str) -> Self {
        msg::add_xor_address(
            &mut self.m,
            ATTR_XOR_PEER_ADDRESS,
            addr.parse().expect("addr"),
        );
        self
    }

    fn udp(self) -> Self {
        self.attr(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0])
    }

    /// Signed with MESSAGE-INTEGRITY and nothing after it, for a test to append to.
    fn signed(mut self, user: &str, password: &str, nonce: &str) -> Message {
        self.m.add(ATTR_USERNAME, user.as_bytes());
        self.m.add(ATTR_REALM, REALM.as_bytes());
        self.m.add(ATTR_NONCE, nonce.as_bytes());
        MessageIntegrity::new_long_term_integrity(user.into(), REALM.into(), password.into())
            .add_to(&mut self.m)
            .expect("integrity");
        self.m
    }

    fn auth(mut self, user: &str, password: &str, nonce: &str) -> Vec<u8> {
        self.m.add(ATTR_USERNAME, user.as_bytes());
        self.m.add(ATTR_REALM, REALM.as_bytes());
        self.m.add(ATTR_NONCE, nonce.as_bytes());
        MessageIntegrity::new_long_term_integrity(user.into(), REALM.into(), password.into())
            .add_to(&mut self.m)
            .expect("integrity");
        stun::fingerprint::FINGERPRINT
            .add_to(&mut self.m)
            .expect("fingerprint");
        self.m.raw
    }

    fn bytes(self) -> Vec<u8> {
        self.m.raw
    }
}

impl Harness {
    fn send(&mut self, bytes: &[u8]) -> Vec<Output> {
        self.server
            .handle_client(bytes, self.client, self.now, &mut self.relays);
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Sends and expects exactly one response to the client; returns it decoded.
    fn ask(&mut self, bytes: &[u8]) -> Message {
        let out = self.send(bytes);
        assert_eq!(out.len(), 1, "expected one reply, got {out:?}");
        match &out[0] {
            Output::ToClient { data, .. } => {
                msg::decode(data).map_err(|e| e.0).expect("reply decodes")
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn nonce(&mut self) -> String {
        let r = self.ask(&Req::new(METHOD_ALLOCATE).udp().bytes());
        assert_eq!(code(&r), Some(401));
        String::from_utf8(msg::first(&r, ATTR_NONCE).expect("nonce").to_vec()).expect("utf8")
    }

    fn allocate(&mut self) -> (Message, String) {
        let nonce = self.nonce();
        let r = self.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "allocate failed: {:?}",
            code(&r)
        );
        (r, nonce)
    }

    fn advance(&mut self, secs: u64) {
        self.now.instant += Duration::from_secs(secs);
        self.now.unix += Duration::from_secs(secs);
    }
}

fn code(m: &Message) -> Option<u16> {
    let v = msg::first(m, ATTR_ERROR_CODE)?;
    Some(u16::from(v[2]) * 100 + u16::from(v[3]))
}

fn xor_addr(m: &Message, t: AttrType) -> SocketAddr {
    msg::decode_xor_address(msg::first(m, t).expect("address attr"), &m.transaction_id.0)
        .expect("address")
}

fn verify(m: &Message, user: &str, password: &str) {
    let mut m = m.clone();
    MessageIntegrity(long_term_key(user, REALM, password).to_vec())
        .check(&mut m)
        .expect("response integrity");
}

#[test]
fn binding_returns_the_mapped_address() {
    let mut h = harness();
    let r = h.ask(&Req::new(METHOD_BINDING).bytes());
    assert_eq!(r.typ, BINDING_SUCCESS);
    assert_eq!(xor_addr(&r, ATTR_XORMAPPED_ADDRESS), h.client.client);
    assert!(msg::first(&r, ATTR_SOFTWARE).is_some());
    stun::fingerprint::FINGERPRINT
        .check(&r)
        .expect("fingerprint");
}

#[test]
fn allocate_challenges_then_succeeds_with_external_ip() {
    let mut h = harness();
    let (r, _) = h.allocate();
    verify(&r, "alice", "pw");
    let relayed = xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS);
    assert_eq!(relayed, "203.0.113.7:50001".parse().expect("addr"));
    assert_eq!(xor_addr(&r, ATTR_XORMAPPED_ADDRESS), h.client.client);
    assert_eq!(msg::u32_attr(&r, ATTR_LIFETIME), Some(Ok(600)));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn retransmitted_allocate_gets_the_original_success_and_a_new_one_437() {
    let mut h = harness();
    let nonce = h.nonce();
    let req = Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce);
    let first = h.send(&req);
    let again = h.send(&req);
    match (&first[..], &again[..]) {
        ([Output::ToClient { data: a, .. }], [Output::ToClient { data: b, .. }]) => {
            assert_eq!(a, b)
        }
        other => panic!("unexpected {other:?}"),
    }
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(437));
    verify(&r, "alice", "pw");
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut h = harness();
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .auth("alice", "nope", &nonce),
    );
    assert_eq!(code(&r), Some(401));
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .auth("mallory", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(401));
    assert!(msg::first(&r, ATTR_NONCE).is_some());
}

#[test]
fn stale_and_foreign_nonces_get_438() {
    let mut h = harness();
    let nonce = h.nonce();
    h.advance(601);
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(438));
    let fresh =
        String::from_utf8(msg::first(&r, ATTR_NONCE).expect("nonce").to_vec()).expect("utf8");
    assert_ne!(fresh, nonce);
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .auth("alice", "pw", "0000000000000000deadbeef"),
    );
    assert_eq!(code(&r), Some(438));
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &fresh));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
}

#[test]
fn request_checks_give_the_rfc_codes() {
    let mut h = harness();
    let nonce = h.nonce();
    let r = h.ask(&Req::new(METHOD_ALLOCATE).auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(400), "missing REQUESTED-TRANSPORT");
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .attr(ATTR_REQUESTED_TRANSPORT, &[6, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(442));
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(440));
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(AttrType(0x7ff0), &[1, 2, 3, 4])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(420));
    assert_eq!(
        msg::first(&r, ATTR_UNKNOWN_ATTRIBUTES),
        Some(&[0x7f, 0xf0][..])
    );
    let r = h.ask(&Req::new(METHOD_REFRESH).auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(437));
    h.relays.exhausted = true;
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(508));
    assert_eq!(
        h.server.shared().quotas.total(),
        0,
        "quota returned after a failed allocate"
    );
}

#[test]
fn permissions_send_indications_and_peer_data() {
    let mut h = harness();
    let (_, nonce) = h.allocate();
    let peer: SocketAddr = "198.51.100.9:7000".parse().expect("addr");
    // No permission yet: dropped both ways.
    let mut send = Req::new(METHOD_SEND)
        .peer("198.51.100.9:7000")
        .attr(ATTR_DATA, b"hi");
    send.m
        .set_type(MessageType::new(METHOD_SEND, CLASS_INDICATION));
    send.m.write_header();
    let send = send.bytes();
    assert!(h.send(&send).is_empty());
    assert_eq!(
        h.server.route_from_peer(1, peer, 2, h.now.instant),
        PeerRoute::Drop
    );

    let r = h.ask(
        &Req::new(METHOD_CREATE_PERMISSION)
            .peer("198.51.100.9:7000")
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    match &h.send(&send)[..] {
        [
            Output::ToPeer {
                relay: 1,
                peer: p,
                data,
            },
        ] => {
            assert_eq!(*p, peer);
            assert_eq!(data, b"hi");
        }
        other => panic!("unexpected {other:?}"),
    }
    h.server.handle_peer(1, peer, b"back", h.now.instant);
    let Some(Output::ToClient { data, .. }) = h.server.poll_output() else {
        panic!("no data indication")
    };
    let m = msg::decode(&data).map_err(|e| e.0).expect("indication");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(msg::first(&m, ATTR_DATA), Some(&b"back"[..]));
    assert_eq!(xor_addr(&m, ATTR_XOR_PEER_ADDRESS), peer);

    // Permissions last 300 s.
    h.advance(301);
    assert_eq!(
        h.server.route_from_peer(1, peer, 2, h.now.instant),
        PeerRoute::Drop
    );
}

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let mut h = harness();
    let (_, nonce) = h.allocate();
    let peer: SocketAddr = "198.51.100.9:7000".parse().expect("addr");
    let r = h.ask(
        &Req::new(METHOD_CHANNEL_BIND)
            .attr(ATTR_CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
            .peer("198.51.100.9:7000")
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let frame = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
    match &h.send(&frame)[..] {
        [Output::ToPeer { peer: p, data, .. }] => {
            assert_eq!(*p, peer);
            assert_eq!(data, b"abc");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        h.server.route_from_peer(1, peer, 3, h.now.instant),
        PeerRoute::Channel {
            to: h.client,
            number: 0x4001
        }
    );
    // Out of range, and a second number for the same peer.
    for (number, peer) in [
        ([0x3f, 0xff], "198.51.100.9:7000"),
        ([0x7f, 0xff], "198.51.100.9:7000"),
        ([0x40, 0x02], "198.51.100.9:7000"),
    ] {
        let r = h.ask(
            &Req::new(METHOD_CHANNEL_BIND)
                .attr(ATTR_CHANNEL_NUMBER, &[number[0], number[1], 0, 0])
                .peer(peer)
                .auth("alice", "pw", &nonce),
        );
        assert_eq!(code(&r), Some(400));
    }
    // Channel bindings last 600 s, but the permission (300 s) must be refreshed too.
    h.advance(301);
    assert!(h.send(&frame).is_empty());
}

#[test]
fn denied_peers_get_403() {
    let mut h = harness();
    let (_, nonce) = h.allocate();
    for peer in [
        "169.254.169.254:80",
        "127.0.0.1:9",
        "[::ffff:127.0.0.1]:9",
        "10.1.1.1:1",
        "0.0.0.0:1",
    ] {
        let r = h.ask(
            &Req::new(METHOD_CREATE_PERMISSION)
                .peer(peer)
                .auth("alice", "pw", &nonce),
        );
        assert_eq!(code(&r), Some(403), "{peer}");
    }
    let r = h.ask(
        &Req::new(METHOD_CHANNEL_BIND)
            .attr(ATTR_CHANNEL_NUMBER, &[0x40, 0, 0, 0])
            .peer("127.0.0.1:9")
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(403));
    // An IPv6 peer on an IPv4-only allocation.
    let r = h.ask(
        &Req::new(METHOD_CREATE_PERMISSION)
            .peer("[2001:db8::1]:9")
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(443));
}

#[test]
fn refresh_extends_and_zero_deletes() {
    let mut h = harness();
    let (_, nonce) = h.allocate();
    h.advance(500);
    let r = h.ask(
        &Req::new(METHOD_REFRESH)
            .attr(ATTR_LIFETIME, &99_999u32.to_be_bytes())
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(
        msg::u32_attr(&r, ATTR_LIFETIME),
        Some(Ok(3600)),
        "clamped to max_lifetime"
    );
    h.advance(500);
    h.server.sweep(h.now, &mut h.relays);
    assert_eq!(h.server.allocation_count(), 1);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_REFRESH)
            .attr(ATTR_LIFETIME, &[0, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(msg::u32_attr(&r, ATTR_LIFETIME), Some(Ok(0)));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.relays.released, vec![1]);
}

#[test]
fn partial_sweeps_take_their_share_and_a_full_pass_takes_all() {
    let mut h = harness();
    for port in 0..10u16 {
        h.client.client = SocketAddr::from(([198, 51, 100, 1], 41_000 + port));
        h.allocate();
    }
    assert_eq!(h.server.allocation_count(), 10);
    h.advance(601);
    h.server.sweep_part(h.now, &mut h.relays, 5);
    assert_eq!(
        h.server.allocation_count(),
        8,
        "a fifth of the slots per call"
    );
    for _ in 0..4 {
        h.server.sweep_part(h.now, &mut h.relays, 5);
    }
    assert_eq!(h.server.allocation_count(), 0, "five calls make a pass");
    assert_eq!(h.server.shared().quotas.total(), 0);
    // Released slots are skipped and the cursor wraps.
    h.server.sweep_part(h.now, &mut h.relays, 5);
    h.server.sweep(h.now, &mut h.relays);
}

#[test]
fn data_indications_written_by_hand_decode_like_stuns() {
    for peer in ["203.0.113.9:5000", "[2001:db8::7]:61000"] {
        let peer: SocketAddr = peer.parse().expect("addr");
        for len in 0..9usize {
            let payload: Vec<u8> = (0..len as u8).collect();
            let txid = [7u8; 12];
            let (head, n, pad) = crate::proto::server::data_indication_parts(peer, len, txid);
            let mut bytes = head[..n].to_vec();
            bytes.extend_from_slice(&payload);
            bytes.resize(bytes.len() + pad, 0);
            assert_eq!(bytes.len() % 4, 0);
            let m = msg::decode(&bytes).map_err(|e| e.0).expect("decodes");
            assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
            assert_eq!(m.transaction_id.0, txid);
            assert_eq!(msg::first(&m, ATTR_DATA).expect("DATA"), payload.as_slice());
            let xor = msg::first(&m, ATTR_XOR_PEER_ADDRESS).expect("peer");
            assert_eq!(msg::decode_xor_address(xor, &txid), Some(peer));
            // The same bytes as the message `stun` builds but for its random transaction id
            // (which an IPv6 address is XORed with too).
            if peer.is_ipv4() {
                let mut built = crate::proto::server::data_indication(peer, &payload);
                built[8..20].copy_from_slice(&txid);
                assert_eq!(bytes, built, "{peer} {len}");
            }
        }
    }
}

#[test]
fn allocations_expire_in_the_sweep() {
    let mut h = harness();
    h.allocate();
    h.advance(599);
    h.server.sweep(h.now, &mut h.relays);
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(2);
    h.server.sweep(h.now, &mut h.relays);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.shared().quotas.total(), 0);
}

#[test]
fn quotas_give_486() {
    let cfg = CoreConfig {
        total_quota: Some(1),
        ..config()
    };
    let mut h = harness_with(
        cfg,
        Box::new(StaticUsers::new(&[("alice".into(), "pw".into())], REALM)),
    );
    h.allocate();
    h.client.client.set_port(40001);
    let nonce = h.nonce();
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
    assert_eq!(code(&r), Some(486));

    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    let mut h = harness_with(
        config(),
        Box::new(Expiring {
            expires_at,
            alloc: Some(1),
        }),
    );
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .auth("123:bob", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    // Same user id under a newer REST timestamp still counts against bob's quota.
    h.client.client.set_port(40001);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .auth("456:bob", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(486));
}

#[test]
fn dual_stack_and_requested_family() {
    let mut h = harness();
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(msg::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    let relayed: Vec<_> = r
        .attributes
        .0
        .iter()
        .filter(|a| a.typ == ATTR_XOR_RELAYED_ADDRESS)
        .collect();
    assert_eq!(relayed.len(), 2);
    h.client.client.set_port(40001);
    h.relays.v6 = false;
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(440));
}

#[test]
fn expiry_policy_lenient_and_strict() {
    for strict in [false, true] {
        let expires_at = SystemTime::now() + Duration::from_secs(100);
        let cfg = CoreConfig {
            strict_expiry: strict,
            nonce_lifetime: Duration::from_secs(3600),
            ..config()
        };
        let mut h = harness_with(
            cfg,
            Box::new(Expiring {
                expires_at,
                alloc: None,
            }),
        );
        let nonce = h.nonce();
        let r = h.ask(
            &Req::new(METHOD_ALLOCATE)
                .udp()
                .auth("1:carol", "pw", &nonce),
        );
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        let lifetime = msg::u32_attr(&r, ATTR_LIFETIME);
        h.advance(90);
        let refresh = Req::new(METHOD_REFRESH).auth("1:carol", "pw", &nonce);
        h.advance(20);
        let r = h.ask(&refresh);
        if strict {
            assert!(
                matches!(lifetime, Some(Ok(l)) if l <= 100),
                "strict clamps to the credential"
            );
            assert_eq!(code(&r), Some(401));
        } else {
            assert_eq!(lifetime, Some(Ok(600)));
            assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
        }
        // A new allocation with the expired credential is refused either way.
        h.client.client.set_port(40001);
        let nonce = h.nonce();
        let r = h.ask(
            &Req::new(METHOD_ALLOCATE)
                .udp()
                .auth("1:carol", "pw", &nonce),
        );
        assert_eq!(code(&r), Some(401));
    }
}

#[test]
fn draining_refuses_new_allocations() {
    let mut h = harness();
    h.server.shared().start_drain();
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().bytes());
    assert_eq!(code(&r), Some(486));
    let cfg = CoreConfig {
        alternate_server: Some("192.0.2.99:3478".parse().expect("addr")),
        ..config()
    };
    let mut h = harness_with(cfg, Box::new(StaticUsers::default()));
    h.server.shared().start_drain();
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().bytes());
    assert_eq!(code(&r), Some(300));
    assert!(msg::first(&r, ATTR_ALTERNATE_SERVER).is_some());
}

#[test]
fn malformed_input_is_dropped_or_400() {
    let mut h = harness();
    assert!(h.send(&[0, 1, 0]).is_empty());
    let mut bytes = Req::new(METHOD_BINDING).bytes();
    bytes[4] ^= 0xff;
    assert!(h.send(&bytes).is_empty(), "wrong magic cookie");
    let mut bytes = Req::new(METHOD_BINDING)
        .attr(ATTR_SOFTWARE, b"abcd")
        .bytes();
    bytes[20 + 3] = 40; // attribute length past the end
    let r = h.ask(&bytes);
    assert_eq!(code(&r), Some(400));
    // Header failures (RFC 8489 §6.3) get no answer, for every method.
    for method in [METHOD_BINDING, METHOD_ALLOCATE, METHOD_REFRESH] {
        let good = Req::new(method).attr(ATTR_SOFTWARE, b"abcd").bytes();
        let mut odd = good.clone();
        odd[3] = 6; // not a multiple of 4
        let mut past = good.clone();
        past[3] = 12; // past the datagram
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        for bad in [odd, past, trailing] {
            assert!(h.send(&bad).is_empty(), "{bad:?} must get no answer");
        }
    }
    // A bad MESSAGE-INTEGRITY on a known user.
    let nonce = h.nonce();
    let mut bytes = Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce);
    let n = bytes.len();
    bytes[n - 12] ^= 1; // inside the HMAC, before FINGERPRINT
    let fp = stun::fingerprint::fingerprint_value(&bytes[..n - 8]);
    bytes[n - 4..].copy_from_slice(&fp.to_be_bytes());
    assert_eq!(code(&h.ask(&bytes)), Some(401));
}

#[test]
fn unauthenticated_floods_are_rate_limited() {
    let cfg = CoreConfig {
        unauthorized_per_sec: 1,
        unauthorized_burst: 3,
        ..config()
    };
    let mut h = harness_with(cfg, Box::new(StaticUsers::default()));
    let replies: usize = (0..10)
        .map(|_| h.send(&Req::new(METHOD_ALLOCATE).udp().bytes()).len())
        .sum();
    assert_eq!(replies, 3);
}

#[test]
fn stun_only_answers_binding_only() {
    let cfg = CoreConfig {
        stun_only: true,
        ..config()
    };
    let mut h = harness_with(cfg, Box::new(StaticUsers::default()));
    assert_eq!(
        h.ask(&Req::new(METHOD_BINDING).bytes()).typ,
        BINDING_SUCCESS
    );
    assert_eq!(
        code(&h.ask(&Req::new(METHOD_ALLOCATE).udp().bytes())),
        Some(400)
    );
}

#[test]
fn channel_numbers_default_to_the_rfc8656_range() {
    for (max, number, expect) in [
        (CoreConfig::default().channel_max, [0x70, 0x0d], Some(400)),
        (super::channel_data::CHANNEL_MAX_RFC5766, [0x70, 0x0d], None),
        // The last number of RFC 5766's range, which uclient picks one bind in 16,384.
        (super::channel_data::CHANNEL_MAX_RFC5766, [0x7f, 0xff], None),
        (CoreConfig::default().channel_max, [0x4f, 0xff], None),
        (CoreConfig::default().channel_max, [0x50, 0x00], Some(400)),
    ] {
        let mut h = harness_with(
            CoreConfig {
                channel_max: max,
                ..config()
            },
            Box::new(StaticUsers::new(&[("alice".into(), "pw".into())], REALM)),
        );
        let (_, nonce) = h.allocate();
        let r = h.ask(
            &Req::new(METHOD_CHANNEL_BIND)
                .attr(ATTR_CHANNEL_NUMBER, &[number[0], number[1], 0, 0])
                .peer("198.51.100.9:7000")
                .auth("alice", "pw", &nonce),
        );
        assert_eq!(code(&r), expect, "{number:02x?} with max {max:#x}");
    }
}

#[test]
fn even_port_reservation_token_round_trip() {
    let mut h = harness();
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_EVEN_PORT, &[0x80])
            .auth("alice", "pw", &nonce),
    );
    let token: [u8; 8] = msg::first(&r, ATTR_RESERVATION_TOKEN)
        .expect("token")
        .try_into()
        .expect("8 bytes");
    assert_eq!(h.relays.requests, vec![PortRequest::EvenReserveNext(token)]);
    h.relays.reserved.push(token);
    h.client.client.set_port(40001);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_RESERVATION_TOKEN, &token)
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    h.client.client.set_port(40002);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_RESERVATION_TOKEN, &[1; 8])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(508), "unknown token");
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_RESERVATION_TOKEN, &token)
            .attr(ATTR_EVEN_PORT, &[0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(400));
}

mod decoders_never_panic {
    use proptest::prelude::*;

    use super::*;
    use crate::proto::channel_data;

    /// Arbitrary bytes, and bytes with a valid STUN header (cookie, matching length) so the
    /// attribute walk is reached too.
    fn datagrams() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (
                any::<u16>(),
                any::<[u8; 12]>(),
                proptest::collection::vec(any::<u8>(), 0..75)
            )
                .prop_map(|(t, txid, body)| {
                    let body_len = body.len() * 4;
                    let mut v = Vec::with_capacity(20 + body_len);
                    v.extend_from_slice(&(t & 0x3fff).to_be_bytes());
                    v.extend_from_slice(&(body_len as u16).to_be_bytes());
                    v.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    v.extend_from_slice(&txid);
                    for b in body {
                        v.extend_from_slice(&[0x00, b, 0x00, b % 9]);
                    }
                    v
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn through_the_whole_core(data in datagrams()) {
            let _ = msg::decode(&data);
            if let Ok(cd) = channel_data::parse(&data) {
                prop_assert!(cd.payload.len() + channel_data::HEADER_LEN <= data.len());
            }
            let mut h = harness();
            let _ = h.send(&data);
            h.server.handle_peer(1, "198.51.100.9:7".parse().expect("addr"), &data, h.now.instant);
            h.server.sweep(h.now, &mut h.relays);
        }
    }
}

/// Counts what an Allocate took and must give back.
fn held(h: &Harness) -> (usize, u32) {
    let taken = h.relays.next - h.relays.released.len();
    (
        taken - h.server.allocation_count(),
        h.server.shared().quotas.total(),
    )
}

#[test]
fn failing_allocates_take_nothing_and_leak_nothing() {
    let mut h = harness();
    let nonce = h.nonce();
    // A LIFETIME of three bytes, 150 times: each is refused with a signed 400 before any port or
    // quota slot is taken.
    for _ in 0..150 {
        let r = h.ask(
            &Req::new(METHOD_ALLOCATE)
                .udp()
                .attr(ATTR_LIFETIME, &[0, 0, 1])
                .auth("alice", "pw", &nonce),
        );
        assert_eq!(code(&r), Some(400));
        verify(&r, "alice", "pw");
    }
    assert!(h.relays.requests.is_empty(), "no relay port was asked for");
    assert_eq!(h.server.shared().quotas.total(), 0);
    // The relay range running out after the quota slot was taken gives the slot back.
    h.relays.exhausted = true;
    for port in 0..20 {
        h.client.client.set_port(41000 + port);
        let nonce = h.nonce();
        let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
        assert_eq!(code(&r), Some(508));
    }
    assert_eq!(held(&h), (0, 0));
    assert_eq!(h.server.shared().quotas.tracked(), (0, 0));
    // A later Allocate still succeeds, and Refresh 0 gives everything back.
    h.relays.exhausted = false;
    let (_, nonce) = h.allocate();
    assert_eq!(h.server.shared().quotas.total(), 1);
    let r = h.ask(
        &Req::new(METHOD_REFRESH)
            .attr(ATTR_LIFETIME, &0u32.to_be_bytes())
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(held(&h), (0, 0));
}

#[test]
fn attributes_after_message_integrity_change_nothing() {
    let mut h = harness_with(
        config(),
        Box::new(StaticUsers::new(&[("alice".into(), "pw".into())], REALM)),
    );
    let (_, nonce) = h.allocate();
    // A captured CreatePermission for 8.8.8.8 with another peer appended after MI.
    let mut m = Req::new(METHOD_CREATE_PERMISSION)
        .peer("8.8.8.8:1")
        .signed("alice", "pw", &nonce);
    msg::add_xor_address(
        &mut m,
        ATTR_XOR_PEER_ADDRESS,
        "9.9.9.9:1".parse().expect("addr"),
    );
    stun::fingerprint::FINGERPRINT
        .add_to(&mut m)
        .expect("fingerprint");
    let r = h.ask(&m.raw);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    let from_peer = |h: &mut Harness, peer: &str| {
        h.server
            .handle_peer(1, peer.parse().expect("addr"), b"x", h.now.instant);
        std::iter::from_fn(|| h.server.poll_output()).count()
    };
    assert_eq!(
        from_peer(&mut h, "8.8.8.8:1"),
        1,
        "the signed peer is permitted"
    );
    assert_eq!(
        from_peer(&mut h, "9.9.9.9:1"),
        0,
        "the appended peer is not"
    );
    // A LIFETIME=0 appended to a Refresh does not delete the allocation.
    let mut m = Req::new(METHOD_REFRESH).signed("alice", "pw", &nonce);
    m.add(ATTR_LIFETIME, &0u32.to_be_bytes());
    let r = h.ask(&m.raw);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_ne!(msg::u32_attr(&r, ATTR_LIFETIME), Some(Ok(0)));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn unknown_attributes_are_reported_only_after_authentication() {
    let mut h = harness();
    let unknown = AttrType(0x0031);
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(unknown, &[0; 4])
            .bytes(),
    );
    assert_eq!(code(&r), Some(401), "a stranger is challenged, not told");
    let nonce =
        String::from_utf8(msg::first(&r, ATTR_NONCE).expect("nonce").to_vec()).expect("utf8");
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(unknown, &[0; 4])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(code(&r), Some(420));
    assert_eq!(
        msg::first(&r, ATTR_UNKNOWN_ATTRIBUTES),
        Some(&[0x00, 0x31][..])
    );
    verify(&r, "alice", "pw");
    // Binding has no authentication: 420 at once. The SHA-256 integrity, PASSWORD-ALGORITHM
    // and USERHASH are not implemented, so they are not claimed.
    for t in [0x001C, 0x001D, 0x001E] {
        let r = h.ask(&Req::new(METHOD_BINDING).attr(AttrType(t), &[0; 4]).bytes());
        assert_eq!(code(&r), Some(420), "{t:#06x}");
    }
}

#[test]
fn an_allocate_on_a_5_tuple_in_use_gets_437_whoever_asks() {
    let users = StaticUsers::new(
        &[("alice".into(), "pw".into()), ("bob".into(), "pw2".into())],
        REALM,
    );
    let mut h = harness_with(config(), Box::new(users));
    let (_, nonce) = h.allocate();
    let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("bob", "pw2", &nonce));
    assert_eq!(code(&r), Some(437));
    let r = h.ask(&Req::new(METHOD_REFRESH).auth("bob", "pw2", &nonce));
    assert_eq!(code(&r), Some(441));
}

#[test]
fn permissions_channels_and_sources_are_capped() {
    let cfg = CoreConfig {
        max_permissions: 4,
        max_channels: 2,
        source_quota: Some(2),
        ..config()
    };
    let users = StaticUsers::new(&[("alice".into(), "pw".into())], REALM);
    let mut h = harness_with(cfg, Box::new(users));
    let (_, nonce) = h.allocate();
    let perm = |h: &mut Harness, peers: &[&str]| {
        let mut r = Req::new(METHOD_CREATE_PERMISSION);
        for p in peers {
            r = r.peer(p);
        }
        code(&h.ask(&r.auth("alice", "pw", &nonce)))
    };
    // Too many peers in one request: refused whole.
    assert_eq!(
        perm(
            &mut h,
            &[
                "8.8.8.1:1",
                "8.8.8.2:1",
                "8.8.8.3:1",
                "8.8.8.4:1",
                "8.8.8.5:1"
            ]
        ),
        Some(508)
    );
    assert_eq!(perm(&mut h, &["8.8.8.1:1", "8.8.8.2:1", "8.8.8.3:1"]), None);
    // Two more would pass the cap: neither is installed; refreshing installed ones is fine.
    assert_eq!(perm(&mut h, &["8.8.8.4:1", "8.8.8.5:1"]), Some(508));
    assert_eq!(perm(&mut h, &["8.8.8.1:1", "8.8.8.4:1"]), None);
    assert_eq!(perm(&mut h, &["8.8.8.5:1"]), Some(508));
    let bind = |h: &mut Harness, number: u16, peer: &str| {
        code(
            &h.ask(
                &Req::new(METHOD_CHANNEL_BIND)
                    .attr(
                        ATTR_CHANNEL_NUMBER,
                        &[(number >> 8) as u8, number as u8, 0, 0],
                    )
                    .peer(peer)
                    .auth("alice", "pw", &nonce),
            ),
        )
    };
    assert_eq!(bind(&mut h, 0x4000, "8.8.8.1:1"), None);
    assert_eq!(bind(&mut h, 0x4001, "8.8.8.2:1"), None);
    assert_eq!(bind(&mut h, 0x4002, "8.8.8.3:1"), Some(508));
    assert_eq!(
        bind(&mut h, 0x4001, "8.8.8.2:1"),
        None,
        "a refresh is not a new channel"
    );
    // Expired permissions and channels free their places.
    h.advance(301);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_REFRESH)
            .attr(ATTR_LIFETIME, &3600u32.to_be_bytes())
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let mut r = Req::new(METHOD_CREATE_PERMISSION);
    for p in ["9.9.9.1:1", "9.9.9.2:1", "9.9.9.3:1", "9.9.9.4:1"] {
        r = r.peer(p);
    }
    assert_eq!(code(&h.ask(&r.auth("alice", "pw", &nonce))), None);
    h.advance(300);
    let nonce = h.nonce();
    let ok = Req::new(METHOD_CHANNEL_BIND)
        .attr(ATTR_CHANNEL_NUMBER, &[0x40, 0x03, 0, 0])
        .peer("9.9.9.1:1")
        .auth("alice", "pw", &nonce);
    assert_eq!(h.ask(&ok).typ.class, CLASS_SUCCESS_RESPONSE);
    // A third allocation from one client address is over the per-source quota.
    for (port, want) in [(40001, None), (40002, Some(486))] {
        h.client.client.set_port(port);
        let nonce = h.nonce();
        let r = h.ask(&Req::new(METHOD_ALLOCATE).udp().auth("alice", "pw", &nonce));
        assert_eq!(code(&r), want);
    }
}

#[test]
fn reservations_refuse_additional_families_and_address_errors_say_why() {
    let mut h = harness();
    let nonce = h.nonce();
    for (even_port, token) in [(Some([0x80u8, 0, 0, 0]), None), (None, Some([1u8; 8]))] {
        let mut r = Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(msg::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        if let Some(v) = even_port {
            r = r.attr(ATTR_EVEN_PORT, &v);
        }
        if let Some(t) = token {
            r = r.attr(ATTR_RESERVATION_TOKEN, &t);
        }
        assert_eq!(code(&h.ask(&r.auth("alice", "pw", &nonce))), Some(400));
    }
    assert!(h.relays.requests.is_empty());
    // EVEN-PORT without R and an additional family is fine; an IPv6 relay that cannot be had
    // is reported as such.
    h.relays.v6 = false;
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(msg::ATTR_ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let v = msg::first(&r, msg::ATTR_ADDRESS_ERROR_CODE).expect("address error");
    assert_eq!((v[0], v[2], v[3]), (msg::FAMILY_V6, 4, 40));
    assert_eq!(&v[4..], b"Address Family not Supported");
}

#[test]
fn a_reservation_keeps_its_address_family() {
    let mut h = harness();
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
            .attr(ATTR_EVEN_PORT, &[0x80, 0, 0, 0])
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let token: [u8; 8] = msg::first(&r, ATTR_RESERVATION_TOKEN)
        .expect("token")
        .try_into()
        .expect("8 bytes");
    h.relays.reserved.push(token);
    h.relays.reserved_v6 = true;
    h.client.client.set_port(40001);
    let nonce = h.nonce();
    let r = h.ask(
        &Req::new(METHOD_ALLOCATE)
            .udp()
            .attr(ATTR_RESERVATION_TOKEN, &token)
            .auth("alice", "pw", &nonce),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    assert!(xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS).is_ipv6());
}
