//! Hostile traffic over UDP against the release-shaped binary on loopback: floods of failing
//! Allocates, unauthenticated requests from 100,000 source addresses, attributes smuggled after
//! MESSAGE-INTEGRITY, and every per-allocation and per-client cap refused with its code. Each case
//! prints the server's CPU seconds and RSS while under it (for the notes; nothing asserts speed).
//! The TCP and TLS cases are in `hostile_stream.rs`.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use iceway_auth::turn_credential::password;
use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

/// CPU seconds (user + system) and resident set of a process, from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu_secs: f64,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // USER_HZ is 100 on every Linux architecture this runs on.
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    Usage {
        cpu_secs: ticks as f64 / 100.0,
        rss_kib,
    }
}

fn report(case: &str, before: Usage, after: Usage, wall: Duration) {
    eprintln!(
        "hostile case {case:?}: server CPU {:.2} s over {:.2} s wall, RSS {} KiB -> {} KiB",
        after.cpu_secs - before.cpu_secs,
        wall.as_secs_f64(),
        before.rss_kib,
        after.rss_kib
    );
}

/// A relay range outside the kernel's ephemeral range (32768–60999 by default), so the other
/// tests' sockets cannot sit in it; spread by PID so parallel runs of this file rarely meet.
fn private_relay_range(len: u16) -> (u16, u16) {
    let lo = 10_000 + (std::process::id() % 400) as u16 * 50;
    (lo, lo + len - 1)
}

fn allocate_request() -> Message {
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    m
}

fn bound_client(server: SocketAddr, ip: Ipv4Addr) -> Client {
    let socket = UdpSocket::bind((ip, 0)).expect("bind a loopback source");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    Client { socket, server }
}

fn rest(user: &str) -> (String, String) {
    let username = format!("{}:{user}", unix_now() + 3600);
    let pw = password(SECRET.as_bytes(), &username);
    (username, pw)
}

fn relayed(m: &Message) -> SocketAddr {
    let v = m
        .get(ATTR_XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    iceway_turn::proto::message::decode_xor_address(&v, &m.transaction_id.0).expect("an address")
}

/// Signs like `common::sign` but appends `extra` after MESSAGE-INTEGRITY (then FINGERPRINT,
/// which anyone can compute): what an on-path attacker can do to a captured request.
fn sign_then_append(mut m: Message, nonce: &str, extra: (AttrType, &[u8])) -> Vec<u8> {
    m.add(ATTR_USERNAME, USER.as_bytes());
    m.add(ATTR_REALM, REALM.as_bytes());
    m.add(ATTR_NONCE, nonce.as_bytes());
    MessageIntegrity::new_long_term_integrity(USER.into(), REALM.into(), PASSWORD.into())
        .add_to(&mut m)
        .expect("MI");
    m.add(extra.0, extra.1);
    stun::fingerprint::FINGERPRINT
        .add_to(&mut m)
        .expect("fingerprint");
    m.raw
}

fn xor_peer_value(addr: SocketAddr) -> Vec<u8> {
    let mut m = request(METHOD_CREATE_PERMISSION);
    xor_peer(&mut m, addr);
    m.get(ATTR_XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS")
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_type(MessageType::new(METHOD_SEND, CLASS_INDICATION));
    m.transaction_id = stun::agent::TransactionId::new();
    m.write_header();
    xor_peer(&mut m, peer);
    m.add(ATTR_DATA, data);
    m.raw
}

/// Permissions are per IP address (RFC 8656 §9), so each peer needs its own.
fn peer_socket(ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("peer bind");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

fn raw_message(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.unmarshal_binary(bytes).expect("decodes");
    m
}

/// Sends `m` up to 40 times, 250 ms apart, until an answer with its transaction id arrives
/// (answers to earlier retransmissions are skipped).
fn ask_retransmitting(client: &Client, m: Message) -> Message {
    client
        .socket
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    for _attempt in 0..40 {
        client.send(&m.raw);
        let until = Instant::now() + Duration::from_millis(250);
        while Instant::now() < until {
            let Ok((n, _)) = client.socket.recv_from(&mut buf) else {
                break;
            };
            let r = raw_message(&buf[..n]);
            if r.transaction_id == m.transaction_id {
                return r;
            }
        }
    }
    panic!("no answer to {m} in 40 tries of 250 ms");
}

#[test]
fn a_flood_of_failing_allocates_leaves_the_relay_range_and_the_quotas_as_they_were() {
    const PORTS: u16 = 40;
    let (lo, hi) = private_relay_range(PORTS);
    let range = format!("{lo}-{hi}");
    // The user may hold exactly the range: one leaked slot or port and the last Allocate fails.
    let server = TurnServer::start(ServerOptions {
        args: vec!["--relay-range", &range],
        env: vec![("ICEWAY_TURN__USER_QUOTA", PORTS.to_string())],
        ..Default::default()
    });
    let pid = server.proc.pid();

    // Every way an authenticated Allocate can fail, before or after the quota slot and the
    // relay port are taken.
    let mut variants: Vec<(&str, Message, u16)> = Vec::new();
    let mut m = allocate_request();
    m.add(ATTR_LIFETIME, &[0, 0, 1]);
    variants.push(("3-byte LIFETIME", m, 400));
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    variants.push(("TCP transport", m, 442));
    let mut m = allocate_request();
    m.add(ATTR_RESERVATION_TOKEN, &[7; 8]);
    variants.push(("unknown RESERVATION-TOKEN", m, 508));
    let mut m = allocate_request();
    m.add(ATTR_REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
    variants.push(("IPv6 relay on an IPv4 server", m, 440));
    let mut m = allocate_request();
    m.add(ATTR_EVEN_PORT, &[0x80]);
    m.add(AttrType(0x8000), &[0x02, 0, 0, 0]);
    variants.push(("EVEN-PORT(R) with ADDITIONAL-ADDRESS-FAMILY", m, 400));
    let mut m = allocate_request();
    m.add(ATTR_LIFETIME, &[0, 0, 0, 60, 0]);
    variants.push(("5-byte LIFETIME", m, 400));

    let before = usage(pid);
    let t0 = Instant::now();
    let clients: Vec<Client> = (1..=4)
        .map(|i| bound_client(server.addr, Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let mut sent = 0;
    for c in &clients {
        let nonce = c.nonce();
        for round in 0..100 {
            for (case, m, code) in &variants {
                let mut m = m.clone();
                m.transaction_id = stun::agent::TransactionId::new();
                m.write_transaction_id();
                let r = c.ask(&sign(m, USER, PASSWORD, &nonce));
                assert_eq!(
                    error_code(&r),
                    Some(*code),
                    "{case} (round {round}): got {r}"
                );
                sent += 1;
            }
        }
    }
    report(
        &format!("{sent} failing Allocates"),
        before,
        usage(pid),
        t0.elapsed(),
    );
    assert_eq!(server.metric("iceway_turn_allocations "), 0.0);

    // All of the range and all of the quota are still there: one allocation per port.
    let mut live = Vec::new();
    for i in 0..PORTS {
        let c = Client::new(server.addr);
        let r = c.allocate(USER, PASSWORD);
        assert_eq!(
            r.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "allocation {i}: {r} {:?}",
            error_code(&r)
        );
        let port = relayed(&r).port();
        assert!(
            (lo..=hi).contains(&port),
            "relay port {port} outside {range}"
        );
        live.push(c);
    }
    let c = Client::new(server.addr);
    let r = c.allocate(USER, PASSWORD);
    assert_eq!(error_code(&r), Some(486), "past the user quota: {r}");
    assert_eq!(server.metric("iceway_turn_allocations "), f64::from(PORTS));
}

#[test]
fn requests_from_100000_unauthenticated_sources_do_not_lock_out_a_new_client() {
    const SOURCES: u32 = 100_000;
    // One shard, so its table of 65,536 sources really fills.
    let server = TurnServer::start(ServerOptions {
        env: vec![("ICEWAY_TURN__THREADS", "1".into())],
        ..Default::default()
    });
    let pid = server.proc.pid();
    let target = server.addr;
    let unauthenticated = allocate_request().raw;

    // Each source sends one unauthenticated Allocate from its own address in 127.1.0.0 and up,
    // twice round: the table fills, newcomers past it share the overflow bucket.
    let stop = Arc::new(AtomicBool::new(false));
    let first_pass = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, first_pass, sent) = (stop.clone(), first_pass.clone(), sent.clone());
        let msg = unauthenticated.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for pass in 0..2 {
                for i in 0..SOURCES {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
                    if let Ok(s) = UdpSocket::bind((ip, 0))
                        && s.send_to(&msg, target).is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if pass == 0 {
                    first_pass.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let before = usage(pid);
    let t0 = Instant::now();
    while !first_pass.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        first_pass.load(Ordering::Relaxed),
        "flood's first pass did not finish"
    );
    let during = usage(pid);

    // A newcomer from an address none of them used, retransmitting as RFC 8489 §6.2.1 says
    // (here with a 250 ms RTO), while the second pass of the flood goes on: the flood can fill
    // the server's socket buffer, so any one datagram may be dropped by the kernel.
    let newcomer = bound_client(target, Ipv4Addr::new(127, 250, 0, 1));
    let r = ask_retransmitting(&newcomer, allocate_request());
    assert_eq!(error_code(&r), Some(401), "newcomer: {r}");
    let nonce = String::from_utf8(r.get(ATTR_NONCE).expect("nonce")).expect("utf8");
    // Authenticated requests do not pass the 401 limiter at all.
    let signed = sign(allocate_request(), USER, PASSWORD, &nonce);
    let r = ask_retransmitting(&newcomer, raw_message(&signed));
    assert_eq!(
        r.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "newcomer's Allocate: {r} {:?}",
        error_code(&r)
    );

    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    let after = usage(pid);
    report(
        &format!(
            "{} unauthenticated Allocates from {SOURCES} sources",
            sent.load(Ordering::Relaxed)
        ),
        before,
        after,
        t0.elapsed(),
    );
    eprintln!(
        "  first pass: CPU {:.2} s, RSS {} KiB",
        during.cpu_secs - before.cpu_secs,
        during.rss_kib
    );
    // Strangers leave no per-source state past the limiter's bounded table (a few MiB).
    assert!(
        after.rss_kib < before.rss_kib + 64 * 1024,
        "RSS grew from {} KiB to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    assert_eq!(server.metric("iceway_turn_allocations "), 1.0);
}

#[test]
fn attributes_after_message_integrity_change_nothing() {
    let server = TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        ..Default::default()
    });
    let c = Client::new(server.addr);
    let nonce = c.nonce();
    let r = c.ask(&sign(allocate_request(), USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");

    // A CreatePermission for `good`, with `evil` appended after MI.
    let good = peer_socket(Ipv4Addr::new(127, 0, 0, 1));
    let evil = peer_socket(Ipv4Addr::new(127, 0, 0, 2));
    let mut m = request(METHOD_CREATE_PERMISSION);
    xor_peer(&mut m, good.local_addr().expect("addr"));
    let evil_value = xor_peer_value(evil.local_addr().expect("addr"));
    let bytes = sign_then_append(m, &nonce, (ATTR_XOR_PEER_ADDRESS, &evil_value));
    let r = c.ask(&bytes);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "CreatePermission: {r}");
    assert_eq!(server.metric("iceway_turn_permissions "), 1.0);
    c.send(&send_indication(
        evil.local_addr().expect("addr"),
        b"to evil",
    ));
    c.send(&send_indication(
        good.local_addr().expect("addr"),
        b"to good",
    ));
    let mut buf = [0u8; 64];
    let (n, _) = good
        .recv_from(&mut buf)
        .expect("the permitted peer gets its data");
    assert_eq!(&buf[..n], b"to good");
    assert!(
        evil.recv_from(&mut buf).is_err(),
        "the peer appended after MESSAGE-INTEGRITY was relayed to"
    );

    // A Refresh with LIFETIME=0 appended: the allocation stays, with the default lifetime.
    let bytes = sign_then_append(
        request(METHOD_REFRESH),
        &nonce,
        (ATTR_LIFETIME, &0u32.to_be_bytes()),
    );
    let r = c.ask(&bytes);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "Refresh: {r}");
    let lifetime = r.get(ATTR_LIFETIME).expect("LIFETIME");
    assert_ne!(
        lifetime,
        vec![0, 0, 0, 0],
        "the appended LIFETIME=0 was honoured"
    );
    assert_eq!(server.metric("iceway_turn_allocations "), 1.0);
    c.send(&send_indication(
        good.local_addr().expect("addr"),
        b"still here",
    ));
    let (n, _) = good.recv_from(&mut buf).expect("still relaying");
    assert_eq!(&buf[..n], b"still here");
}

#[test]
fn caps_refuse_with_their_codes_and_leave_others_served() {
    let server = TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        env: vec![
            ("ICEWAY_TURN__USER_QUOTA", "2".into()),
            ("ICEWAY_TURN__CLIENT_IP_QUOTA", "3".into()),
            ("ICEWAY_TURN__TOTAL_QUOTA", "5".into()),
            ("ICEWAY_TURN__MAX_PERMISSIONS", "4".into()),
            ("ICEWAY_TURN__MAX_CHANNELS", "3".into()),
            ("ICEWAY_TURN__MAX_RESERVATIONS", "1".into()),
        ],
        ..Default::default()
    });
    let pid = server.proc.pid();
    let before = usage(pid);
    let t0 = Instant::now();
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let b = Ipv4Addr::new(127, 0, 0, 2);
    // The client, the answer, and what signed it (a later Refresh must use the same).
    let alloc = |ip: Ipv4Addr, user: &str| {
        let c = bound_client(server.addr, ip);
        let nonce = c.nonce();
        let (u, p) = rest(user);
        let r = c.ask(&sign(allocate_request(), &u, &p, &nonce));
        (c, r, (u, p, nonce))
    };
    let rejections = |kind: &str| {
        server.metric(&format!(
            "iceway_turn_quota_rejections_total{{kind=\"{kind}\"}}"
        ))
    };

    // Per user: two allocations, the third refused.
    let (first, r, first_auth) = alloc(a, "u1");
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    let (_second, r, _) = alloc(a, "u1");
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    let (_, r, _) = alloc(a, "u1");
    assert_eq!(error_code(&r), Some(486), "user quota: {r}");
    assert_eq!(rejections("user"), 1.0);
    // Per client address: the third from `a` passes, the fourth is refused, `b` still served.
    let (_third, r, _) = alloc(a, "u2");
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    let (_, r, _) = alloc(a, "u3");
    assert_eq!(error_code(&r), Some(486), "client address quota: {r}");
    assert_eq!(rejections("source"), 1.0);
    let (_fourth, r, _) = alloc(b, "u4");
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    // Reservations: one EVEN-PORT(R) holds the next port; a second would park more.
    let c = bound_client(server.addr, b);
    let nonce = c.nonce();
    let mut m = allocate_request();
    m.add(ATTR_EVEN_PORT, &[0x80]);
    let (u, p) = rest("u5");
    let r = c.ask(&sign(m.clone(), &u, &p, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "EVEN-PORT(R): {r}");
    let _fifth = c;
    // Total: five live, the sixth refused from anywhere.
    let (_, r, _) = alloc(Ipv4Addr::new(127, 0, 0, 3), "u6");
    assert_eq!(error_code(&r), Some(486), "total quota: {r}");
    assert_eq!(rejections("total"), 1.0);
    assert_eq!(server.metric("iceway_turn_allocations "), 5.0);

    // The reservation cap: with one port held, the next EVEN-PORT(R) is refused 508. (The total
    // quota is full, so make room first.)
    let (u, p, nonce) = first_auth;
    let mut refresh = request(METHOD_REFRESH);
    refresh.add(ATTR_LIFETIME, &0u32.to_be_bytes());
    let r = first.ask(&sign(refresh, &u, &p, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "delete: {r}");
    let c = bound_client(server.addr, Ipv4Addr::new(127, 0, 0, 4));
    let nonce = c.nonce();
    let (u, p) = rest("u7");
    let r = c.ask(&sign(m, &u, &p, &nonce));
    assert_eq!(error_code(&r), Some(508), "reservation cap: {r}");

    // Permissions: four peers, the fifth refused; five in one request refused whole.
    let (u, p) = rest("u8");
    let r = c.ask(&sign(allocate_request(), &u, &p, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    let permit = |peers: &[SocketAddr]| {
        let mut m = request(METHOD_CREATE_PERMISSION);
        for &peer in peers {
            xor_peer(&mut m, peer);
        }
        c.ask(&sign(m, &u, &p, &nonce))
    };
    let peer = |i: u8| SocketAddr::from(([127, 9, 0, i], 5000));
    let five: Vec<SocketAddr> = (1..=5).map(peer).collect();
    let r = permit(&five);
    assert_eq!(error_code(&r), Some(508), "five peers in one request: {r}");
    for p in &five[..4] {
        let r = permit(&[*p]);
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "permission {p}: {r}");
    }
    let r = permit(&five[4..]);
    assert_eq!(error_code(&r), Some(508), "fifth permission: {r}");
    // Refreshing an installed permission is not a new one.
    let r = permit(&five[..1]);
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "refresh permission: {r}"
    );

    // Channels: three, the fourth refused; rebinding an existing one is fine.
    let bind = |number: u16, peer: SocketAddr| {
        let mut m = request(METHOD_CHANNEL_BIND);
        m.add(
            ATTR_CHANNEL_NUMBER,
            &[(number >> 8) as u8, number as u8, 0, 0],
        );
        xor_peer(&mut m, peer);
        c.ask(&sign(m, &u, &p, &nonce))
    };
    for i in 0..3u16 {
        let r = bind(0x4000 + i, five[usize::from(i)]);
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "channel {i}: {r}");
    }
    let r = bind(0x4003, five[3]);
    assert_eq!(error_code(&r), Some(508), "fourth channel: {r}");
    let r = bind(0x4000, five[0]);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "rebind: {r}");
    assert_eq!(server.metric("iceway_turn_channels "), 3.0);
    assert_eq!(server.metric("iceway_turn_permissions "), 4.0);
    report("caps", before, usage(pid), t0.elapsed());
    still_serving(server.addr);
}

fn still_serving(server: SocketAddr) {
    Client::new(server).binding_ok();
}
