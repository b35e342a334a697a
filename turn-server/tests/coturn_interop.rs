//! Interop with clients nobody here wrote: Debian coturn's `turnutils_uclient`,
//! `turnutils_stunclient` and `turnutils_peer` against a running `iceway-turn`.
//! Needs: apt-get install -y --no-install-recommends coturn

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;

/// uclient runs one at a time: the loss assertions should not depend on how many other tests
/// share the two cores.
static UCLIENT: Mutex<()> = Mutex::new(());

const RUN_LIMIT: Duration = Duration::from_secs(90);

fn interop_server() -> TurnServer {
    // Loopback peers are allowed only here, for turnutils_peer. Debian's turnutils_uclient
    // picks channel numbers up to 0x7FFF (RFC 5766), past the RFC 8656 default.
    TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        env: vec![("ICEWAY_TURN__RFC5766_CHANNEL_NUMBERS", "true".into())],
        ..Default::default()
    })
}

fn uclient(server_port: u16, flags: &[&str]) -> (UclientReport, String) {
    uclient_to("127.0.0.1", server_port, flags)
}

fn uclient_to(server_ip: &str, server_port: u16, flags: &[&str]) -> (UclientReport, String) {
    let _one_at_a_time = UCLIENT.lock().unwrap_or_else(|p| p.into_inner());
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-p".into(),
        server_port.to_string(),
        "-n".into(),
        "30".into(),
        "-m".into(),
        "4".into(),
    ]);
    args.extend(["-l".into(), "180".into(), server_ip.into()]);
    let run = run_bounded("turnutils_uclient", &args, RUN_LIMIT);
    let report = parse_uclient(&run.output).unwrap_or_else(|| {
        panic!(
            "cannot parse turnutils_uclient {args:?} output:\n{}",
            run.output
        )
    });
    (report, run.output)
}

fn assert_no_loss(report: UclientReport, output: &str) {
    assert!(report.sent > 0, "nothing sent:\n{output}");
    assert_eq!(report.lost, 0, "{report:?}\n{output}");
    assert_eq!(report.received, report.sent, "{report:?}\n{output}");
    assert_eq!(report.lost_percent, 0.0);
}

fn peer_flags(peer: &EchoPeer) -> Vec<String> {
    vec![
        "-e".into(),
        "127.0.0.1".into(),
        "-r".into(),
        peer.port.to_string(),
    ]
}

fn flags<'a>(base: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

#[test]
fn rest_credentials_relay_over_channels_without_loss() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let (report, out) = uclient(server.port, &flags(&base, &["-c", "-W", SECRET]));
    assert_no_loss(report, &out);
    // Live relay counters, no per-user labels.
    let to_peer = server.metric(r#"iceway_turn_relayed_packets_total{direction="to_peer"}"#);
    let to_client = server.metric(r#"iceway_turn_relayed_packets_total{direction="to_client"}"#);
    assert!(
        to_peer >= report.sent as f64 && to_client >= report.received as f64,
        "{to_peer} {to_client}"
    );
}

#[test]
fn static_user_relays_over_channels_and_over_reserved_rtcp_ports() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let (report, out) = uclient(
        server.port,
        &flags(&base, &["-c", "-u", USER, "-w", PASSWORD]),
    );
    assert_no_loss(report, &out);
    // Without -c, uclient also allocates RTCP relays through EVEN-PORT + RESERVATION-TOKEN
    // and sends those sessions to the peer's second port.
    let (report, out) = uclient(server.port, &flags(&base, &["-u", USER, "-w", PASSWORD]));
    assert_no_loss(report, &out);
}

/// The shipped listener, `0.0.0.0`: every answer and every relayed datagram leaves from the
/// address its client sent to (uclient's sockets are connected and drop anything else), while
/// the shard batches them (one sendmmsg per socket, each datagram with its own source).
#[test]
fn the_wildcard_listener_answers_from_the_address_each_client_used() {
    let server = TurnServer::start(ServerOptions {
        listen_ip: Some("0.0.0.0"),
        args: vec!["--allow-peers", "127.0.0.0/8"],
        env: vec![
            ("ICEWAY_TURN__RFC5766_CHANNEL_NUMBERS", "true".into()),
            ("ICEWAY_TURN__RELAY_IP", "127.0.0.1".into()),
        ],
        ..Default::default()
    });
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    for server_ip in ["127.0.0.2", "127.0.0.3"] {
        // Channels (ChannelData back), then Send/Data indications.
        let (report, out) =
            uclient_to(server_ip, server.port, &flags(&base, &["-c", "-W", SECRET]));
        assert_no_loss(report, &out);
        let (report, out) =
            uclient_to(server_ip, server.port, &flags(&base, &["-s", "-W", SECRET]));
        assert_no_loss(report, &out);
    }
    // A Binding answered from each address it was sent to, mapped address right.
    let client = Client::new(server.addr);
    for last in 1..=8u8 {
        let to = std::net::SocketAddr::from(([127, 0, 0, last], server.port));
        let m = request(stun::message::METHOD_BINDING);
        client.socket.send_to(&m.raw, to).expect("send");
        let mut buf = [0u8; 1500];
        let (_, from) = client.socket.recv_from(&mut buf).expect("a Binding answer");
        assert_eq!(from, to, "answered from another address");
    }
}

/// The same for `[::]`: answers leave from the IPv6 address they were sent to (IPV6_PKTINFO).
#[test]
fn the_ipv6_wildcard_listener_answers_from_the_address_used() {
    let Ok(probe) = std::net::UdpSocket::bind("[::1]:0") else {
        return; // no IPv6 loopback on this machine
    };
    drop(probe);
    let server = TurnServer::start(ServerOptions {
        listen_ip: Some("[::]"),
        ..Default::default()
    });
    let client = std::net::UdpSocket::bind("[::1]:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let to = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, server.port));
    for _ in 0..3 {
        let m = request(stun::message::METHOD_BINDING);
        client.send_to(&m.raw, to).expect("send");
        let mut buf = [0u8; 1500];
        let (n, from) = client.recv_from(&mut buf).expect("a Binding answer");
        assert_eq!(from, to, "answered from another address");
        let mut r = stun::message::Message::new();
        r.unmarshal_binary(&buf[..n]).expect("decodes");
        assert_eq!(r.transaction_id, m.transaction_id);
    }
}

#[test]
fn send_indications_relay_without_loss() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let (report, out) = uclient(server.port, &flags(&base, &["-s", "-c", "-W", SECRET]));
    assert_no_loss(report, &out);
}

#[test]
fn client_to_client_relays_without_loss() {
    let server = interop_server();
    let (report, out) = uclient(server.port, &["-y", "-c", "-u", USER, "-w", PASSWORD]);
    assert_no_loss(report, &out);
    let (report, out) = uclient(server.port, &["-y", "-s", "-c", "-W", SECRET]);
    assert_no_loss(report, &out);
}

#[test]
fn tcp_clients_relay_without_loss() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let (report, out) = uclient(server.port, &flags(&base, &["-t", "-c", "-W", SECRET]));
    assert_no_loss(report, &out);
    let (report, out) = uclient(
        server.port,
        &flags(&base, &["-t", "-s", "-c", "-u", USER, "-w", PASSWORD]),
    );
    assert_no_loss(report, &out);
    let (report, out) = uclient(server.port, &["-t", "-y", "-c", "-W", SECRET]);
    assert_no_loss(report, &out);
}

#[test]
fn wrong_password_cannot_allocate() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let _one_at_a_time = UCLIENT.lock().unwrap_or_else(|p| p.into_inner());
    let args: Vec<String> = [
        "-e",
        "127.0.0.1",
        "-r",
        &peer.port.to_string(),
        "-u",
        USER,
        "-w",
        "not-the-password",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "-p".into(),
        server.port.to_string(),
        "-n".into(),
        "3".into(),
        "127.0.0.1".into(),
    ])
    .collect();
    let run = run_bounded("turnutils_uclient", &args, RUN_LIMIT);
    assert!(
        run.output.contains("Cannot complete Allocation"),
        "{}",
        run.output
    );
    assert!(server.metric(r#"iceway_turn_auth_failures_total{reason="bad_integrity"}"#) >= 1.0);
}

#[test]
fn stunclient_gets_its_reflexive_address() {
    let server = interop_server();
    let run = run_bounded(
        "turnutils_stunclient",
        &["-p".into(), server.port.to_string(), "127.0.0.1".into()],
        RUN_LIMIT,
    );
    assert!(
        run.output.contains("UDP reflexive addr: 127.0.0.1:"),
        "{}",
        run.output
    );
    assert!(server.metric("iceway_stun_binding_requests_total") >= 1.0);
}

#[test]
fn stun_only_mode_answers_binding_and_refuses_allocate() {
    let server = TurnServer::start(ServerOptions {
        args: vec!["--stun-only"],
        secret: false,
        user: false,
        ..Default::default()
    });
    let run = run_bounded(
        "turnutils_stunclient",
        &["-p".into(), server.port.to_string(), "127.0.0.1".into()],
        RUN_LIMIT,
    );
    assert!(
        run.output.contains("UDP reflexive addr: 127.0.0.1:"),
        "{}",
        run.output
    );
    let client = Client::new(server.addr);
    let mut m = request(stun::message::METHOD_ALLOCATE);
    m.add(stun::attributes::ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert_eq!(error_code(&client.ask(&m.raw)), Some(400));
}

#[test]
fn tls_clients_relay_without_loss() {
    let cert = TestCert::new();
    let mut args = vec!["--allow-peers", "127.0.0.0/8"];
    args.extend(cert.args());
    let tls_port = free_port();
    let server = TurnServer::start(ServerOptions {
        args,
        env: vec![
            ("ICEWAY_TURN__TLS_LISTEN", format!("127.0.0.1:{tls_port}")),
            ("ICEWAY_TURN__RFC5766_CHANNEL_NUMBERS", "true".into()),
        ],
        ..Default::default()
    });
    assert_eq!(server.tls_addr.map(|a| a.port()), Some(tls_port));
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let (report, out) = uclient(tls_port, &flags(&base, &["-t", "-S", "-c", "-W", SECRET]));
    assert_no_loss(report, &out);
}

#[test]
fn sigterm_drains_refuses_new_allocations_and_exits_zero() {
    let mut server = TurnServer::start(ServerOptions {
        env: vec![("ICEWAY_DRAIN__TIMEOUT", "60s".into())],
        ..Default::default()
    });
    assert_eq!(server.http_get("/readyz").0, 200);
    let existing = Client::new(server.addr);
    let r = existing.allocate(USER, PASSWORD);
    assert_eq!(r.typ.class, stun::message::CLASS_SUCCESS_RESPONSE);

    server.proc.terminate();
    server.wait_log("draining", Duration::from_secs(20));
    assert_eq!(server.http_get("/readyz").0, 503);

    // A new client is refused with 486; the existing allocation is still served.
    let newcomer = Client::new(server.addr);
    let mut m = request(stun::message::METHOD_ALLOCATE);
    m.add(stun::attributes::ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert_eq!(error_code(&newcomer.ask(&m.raw)), Some(486));
    let nonce = {
        let mut m = request(stun::message::METHOD_REFRESH);
        m.add(stun::attributes::ATTR_LIFETIME, &[0, 0, 0, 0]);
        let r = existing.ask(&m.raw);
        assert_eq!(error_code(&r), Some(401));
        String::from_utf8(r.get(stun::attributes::ATTR_NONCE).expect("nonce")).expect("utf8")
    };
    let mut m = request(stun::message::METHOD_REFRESH);
    m.add(stun::attributes::ATTR_LIFETIME, &600u32.to_be_bytes());
    let r = existing.ask(&sign(m, USER, PASSWORD, &nonce));
    assert_eq!(
        r.typ.class,
        stun::message::CLASS_SUCCESS_RESPONSE,
        "existing allocation refreshed while draining"
    );

    // The last allocation goes away: the drain ends early and the process exits 0.
    let mut m = request(stun::message::METHOD_REFRESH);
    m.add(stun::attributes::ATTR_LIFETIME, &[0, 0, 0, 0]);
    let r = existing.ask(&sign(m, USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, stun::message::CLASS_SUCCESS_RESPONSE);
    server.wait_log("drain finished; stopping", Duration::from_secs(30));
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// 200 clients starting at once from one address with one credential, as behind a carrier NAT:
/// the default 401 limiter and quotas let every one allocate and relay.
#[test]
fn two_hundred_clients_from_one_address_all_allocate_with_the_defaults() {
    let server = interop_server();
    let peer = EchoPeer::start();
    let base = peer_flags(&peer);
    let _one_at_a_time = UCLIENT.lock().unwrap_or_else(|p| p.into_inner());
    let mut args: Vec<String> = flags(&base, &["-c", "-W", SECRET])
        .iter()
        .map(|s| s.to_string())
        .collect();
    for a in [
        "-p",
        &server.port.to_string(),
        "-n",
        "5",
        "-m",
        "200",
        "-l",
        "120",
    ] {
        args.push(a.to_string());
    }
    args.push("127.0.0.1".into());
    let run = run_bounded("turnutils_uclient", &args, RUN_LIMIT);
    let report = parse_uclient(&run.output)
        .unwrap_or_else(|| panic!("turnutils_uclient -m 200 did not finish:\n{}", run.output));
    // uclient retries an Allocate whose answer it did not see in time and then gets 437 for
    // its own allocation; that is the RFC's answer. Quota and capacity refusals are not.
    for refused in ["error 486", "error 508", "error 403"] {
        assert!(!run.output.contains(refused), "{refused}:\n{}", run.output);
    }
    assert_no_loss(report, &run.output);
    assert!(server.metric(r#"iceway_turn_allocations_total{result="ok"}"#) >= 200.0);
}

#[test]
fn uclient_summary_parses() {
    let out = "6: : start_mclient: tot_send_msgs=40, tot_recv_msgs=39\n\
               6: : Total lost packets 1 (2.500000%), total send dropped 0 (0.000000%)\n";
    assert_eq!(
        parse_uclient(out),
        Some(UclientReport {
            sent: 40,
            received: 39,
            lost: 1,
            lost_percent: 2.5
        })
    );
    assert_eq!(
        parse_uclient("0: : ERROR: Cannot complete Allocation"),
        None
    );
}
