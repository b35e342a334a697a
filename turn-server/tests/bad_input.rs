//! The bad-input matrix: crafted datagrams from a raw UDP socket against a running server. Each
//! case asserts the exact answer (an error code, or silence proven by the next Binding being
//! the first reply) and that the server still serves another client afterwards.

mod common;

use std::net::SocketAddr;

use common::*;
use iceway_auth::turn_credential::password;
use stun::attributes::*;
use stun::message::*;

fn rest_user(expiry: u64, user: &str, secret: &str) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let pw = password(secret.as_bytes(), &username);
    (username, pw)
}

fn allocate_request() -> Message {
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    m
}

/// The server answers someone else, right after each case.
fn still_serving(server: SocketAddr, case: &str) {
    let other = Client::new(server);
    let m = request(METHOD_BINDING);
    let r = other.ask(&m.raw);
    assert_eq!(
        r.typ, BINDING_SUCCESS,
        "server stopped serving after case {case:?}"
    );
}

fn expect_code(client: &Client, bytes: &[u8], code: u16, case: &str) -> Message {
    let r = client.ask(bytes);
    assert_eq!(error_code(&r), Some(code), "case {case:?}: got {r}");
    still_serving(client.server, case);
    r
}

fn expect_silence(client: &Client, bytes: &[u8], case: &str) {
    client.send(bytes);
    // Datagrams on loopback to one shard are handled in order: if the bad one had been
    // answered, that answer would arrive before the Binding success.
    client.binding_ok();
    still_serving(client.server, case);
}

fn refix_fingerprint(bytes: &mut [u8]) {
    let n = bytes.len();
    let fp = stun::fingerprint::fingerprint_value(&bytes[..n - 8]);
    bytes[n - 4..].copy_from_slice(&fp.to_be_bytes());
}

#[test]
fn bad_input_matrix_gets_exact_codes_and_the_server_keeps_serving() {
    // Default peer policy (loopback, link-local, RFC 1918 denied), one allocation per user.
    let server = TurnServer::start(ServerOptions {
        env: vec![("ICEWAY_TURN__USER_QUOTA", "1".into())],
        ..Default::default()
    });
    let addr = server.addr;
    let c = Client::new(addr);

    // Header-level garbage is dropped without an answer.
    let binding = request(METHOD_BINDING).raw;
    expect_silence(&c, &binding[..10], "truncated header");
    let mut bad_cookie = request(METHOD_BINDING).raw;
    bad_cookie[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    expect_silence(&c, &bad_cookie, "wrong magic cookie");
    // RFC 8489 §6.3 header checks: length not a multiple of 4, past the datagram, trailing
    // bytes. No answer: it may not be STUN at all, and an answer would make us a reflector.
    for method in [METHOD_BINDING, METHOD_ALLOCATE] {
        let mut m = request(method);
        m.add(ATTR_SOFTWARE, b"abcd");
        let mut odd = m.raw.clone();
        odd[2..4].copy_from_slice(&6u16.to_be_bytes());
        expect_silence(&c, &odd, "length not a multiple of 4");
        let mut past = m.raw.clone();
        past[2..4].copy_from_slice(&12u16.to_be_bytes());
        expect_silence(&c, &past, "length past the datagram");
        let mut trailing = m.raw.clone();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        expect_silence(&c, &trailing, "datagram longer than its length field");
    }

    // A sound header with a broken body gets 400.
    let mut m = request(METHOD_BINDING);
    m.add(ATTR_SOFTWARE, b"abcd");
    let mut past_end = m.raw.clone();
    past_end[22..24].copy_from_slice(&40u16.to_be_bytes());
    expect_code(&c, &past_end, 400, "attribute length past end");

    let mut m = request(METHOD_BINDING);
    m.add(AttrType(0x7ff0), &[1, 2, 3, 4]);
    let r = expect_code(&c, &m.raw, 420, "unknown comprehension-required attribute");
    assert_eq!(
        r.get(ATTR_UNKNOWN_ATTRIBUTES).expect("UNKNOWN-ATTRIBUTES"),
        vec![0x7f, 0xf0]
    );
    // An Allocate learns of unknown attributes only once authenticated (RFC 8489 §6.3.1).
    let mut m = allocate_request();
    m.add(AttrType(0x7ff0), &[1, 2, 3, 4]);
    expect_code(&c, &m.raw, 401, "unknown attribute, unauthenticated");
    let nonce = c.nonce();
    let mut m = allocate_request();
    m.add(AttrType(0x7ff0), &[1, 2, 3, 4]);
    expect_code(
        &c,
        &sign(m, USER, PASSWORD, &nonce),
        420,
        "unknown attribute, authenticated",
    );

    // Credentials.
    let nonce = c.nonce();
    let mut bad_mi = sign(allocate_request(), USER, PASSWORD, &nonce);
    let n = bad_mi.len();
    bad_mi[n - 12] ^= 0x01; // inside the HMAC, before FINGERPRINT
    refix_fingerprint(&mut bad_mi);
    expect_code(&c, &bad_mi, 401, "bad MESSAGE-INTEGRITY");

    let (u, p) = rest_user(unix_now() - 60, "carol", SECRET);
    expect_code(
        &c,
        &sign(allocate_request(), &u, &p, &nonce),
        401,
        "expired REST credential",
    );
    let (u, _) = rest_user(unix_now() + 3600, "carol", SECRET);
    let (_, p) = rest_user(unix_now() + 3600, "mallory", SECRET);
    expect_code(
        &c,
        &sign(allocate_request(), &u, &p, &nonce),
        401,
        "tampered REST username",
    );
    let (u, p) = rest_user(unix_now() + 3600, "carol", "some-other-secret");
    expect_code(
        &c,
        &sign(allocate_request(), &u, &p, &nonce),
        401,
        "REST credential from another secret",
    );
    expect_code(
        &c,
        &sign(allocate_request(), USER, "wrong", &nonce),
        401,
        "wrong static password",
    );
    assert!(server.metric(r#"iceway_turn_auth_failures_total{reason="expired"}"#) >= 1.0);

    let other = Client::new(addr);
    expect_code(
        &other,
        &sign(allocate_request(), USER, PASSWORD, &nonce),
        438,
        "nonce issued to another client",
    );
    expect_code(
        &c,
        &sign(
            allocate_request(),
            USER,
            PASSWORD,
            "65f0a1b2c3d4e5f601234567",
        ),
        438,
        "forged nonce",
    );

    // Address families: this server relays IPv4 only.
    let mut m = allocate_request();
    m.add(ATTR_REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    expect_code(
        &c,
        &sign(m, USER, PASSWORD, &nonce),
        440,
        "IPv6 relay requested",
    );
    let mut m = allocate_request();
    m.add(ATTR_REQUESTED_ADDRESS_FAMILY, &[0x03, 0, 0, 0]);
    expect_code(
        &c,
        &sign(m, USER, PASSWORD, &nonce),
        440,
        "unknown address family",
    );

    // An allocation, then requests on it that must be refused.
    let r = c.ask(&sign(allocate_request(), USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");
    for number in [0x3fffu16, 0x7fff, 0x8000] {
        let mut m = request(METHOD_CHANNEL_BIND);
        m.add(
            ATTR_CHANNEL_NUMBER,
            &[(number >> 8) as u8, number as u8, 0, 0],
        );
        xor_peer(&mut m, "192.0.2.1:9".parse().expect("addr"));
        expect_code(
            &c,
            &sign(m, USER, PASSWORD, &nonce),
            400,
            &format!("channel number {number:#06x}"),
        );
    }
    for peer in [
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:9",
        "127.0.0.1:9",
        "10.0.0.1:9",
        "0.0.0.0:9",
    ] {
        let mut m = request(METHOD_CREATE_PERMISSION);
        xor_peer(&mut m, peer.parse().expect("addr"));
        expect_code(
            &c,
            &sign(m, USER, PASSWORD, &nonce),
            403,
            &format!("denied peer {peer}"),
        );
    }
    let mut m = request(METHOD_CHANNEL_BIND);
    m.add(ATTR_CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
    xor_peer(&mut m, "169.254.169.254:80".parse().expect("addr"));
    expect_code(
        &c,
        &sign(m, USER, PASSWORD, &nonce),
        403,
        "channel to the metadata address",
    );
    assert!(server.metric("iceway_turn_peer_denied_total") >= 6.0);
    let r = c.ask(&sign(allocate_request(), USER, PASSWORD, &nonce));
    assert_eq!(
        error_code(&r),
        Some(437),
        "second Allocate on the same 5-tuple"
    );

    // Quota: alice already holds her one allocation.
    let second = Client::new(addr);
    let nonce2 = second.nonce();
    expect_code(
        &second,
        &sign(allocate_request(), USER, PASSWORD, &nonce2),
        486,
        "user quota exceeded",
    );
    assert!(server.metric(r#"iceway_turn_quota_rejections_total{kind="user"}"#) >= 1.0);

    // A bounded burst of pseudo-random garbage (xorshift, fixed seed) changes nothing.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let junk = Client::new(addr);
    for i in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 200) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|j| (x >> (j % 8 * 8)) as u8 ^ j as u8)
            .collect();
        if i % 3 == 0 && bytes.len() >= 20 {
            bytes[0] &= 0x3f; // look like STUN
            bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        } else if i % 3 == 1 && !bytes.is_empty() {
            bytes[0] = 0x40 | (bytes[0] & 0x3f); // look like ChannelData
        }
        junk.send(&bytes);
    }
    still_serving(addr, "garbage burst");

    // And a brand-new client still gets a relay.
    let fresh = Client::new(addr);
    let (u, p) = rest_user(unix_now() + 3600, "dave", SECRET);
    let nonce3 = fresh.nonce();
    let r = fresh.ask(&sign(allocate_request(), &u, &p, &nonce3));
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "fresh client allocate: {r}"
    );
    assert!(r.get(ATTR_XOR_RELAYED_ADDRESS).is_ok());
}
