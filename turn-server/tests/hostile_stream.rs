//! Hostile TCP clients against the real `iceway-turn`: floods of connections from one address,
//! connections that never speak, and a quiet client whose allocation must keep it connected.
//! The limits are set small through the environment; every wait is bounded and waits on the
//! event (the server closing a socket, a metric reaching its value).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use stun::attributes::*;
use stun::message::*;

const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const THIRD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

const GAUGE: &str = "iceway_turn_stream_connections ";

fn rejected(reason: &str) -> String {
    format!("iceway_turn_stream_rejected_total{{reason=\"{reason}\"}}")
}

/// Several hundred sockets are open at once in this process and in the server it starts.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn start(per_ip: u32, total: u32, first_message: &str, idle: &str) -> TurnServer {
    raise_nofile_limit();
    TurnServer::start(ServerOptions {
        env: vec![
            ("ICEWAY_TURN__STREAM_MAX_CONNECTIONS", total.to_string()),
            (
                "ICEWAY_TURN__STREAM_MAX_CONNECTIONS_PER_IP",
                per_ip.to_string(),
            ),
            (
                "ICEWAY_TURN__STREAM_FIRST_MESSAGE_TIMEOUT",
                first_message.into(),
            ),
            ("ICEWAY_TURN__STREAM_IDLE_TIMEOUT", idle.into()),
        ],
        ..Default::default()
    })
}

/// A TCP connection to `server` from the loopback address `from` (all of 127/8 is on `lo`).
fn try_connect_from(from: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
    s.connect_timeout(&SockAddr::from(server), Duration::from_secs(5))?;
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn connect_from(from: IpAddr, server: SocketAddr) -> TcpStream {
    try_connect_from(from, server).unwrap_or_else(|e| panic!("connect from {from}: {e}"))
}

/// `n` connections from `from`, and how many of them the server had already reset before the
/// connect call returned (it can accept and refuse that fast).
fn connect_many(from: IpAddr, server: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut open = Vec::with_capacity(n);
    let mut reset = 0;
    for _ in 0..n {
        match try_connect_from(from, server) {
            Ok(s) => open.push(s),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => reset += 1,
            Err(e) => panic!("connect from {from}: {e}"),
        }
    }
    (open, reset)
}

/// Whether the server has closed `s` (EOF or reset); `s` is non-blocking.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Waits, with poll(2) on every socket, until at least `want` of `streams` are closed by the
/// server or `timeout` passes; returns how many are closed then.
fn wait_closed(streams: &mut [TcpStream], want: usize, timeout: Duration) -> usize {
    for s in streams.iter() {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut closed = vec![false; streams.len()];
    let deadline = Instant::now() + timeout;
    let count = loop {
        for (s, c) in streams.iter_mut().zip(closed.iter_mut()) {
            *c = *c || closed_by_server(s);
        }
        let n = closed.iter().filter(|c| **c).count();
        let left = deadline.saturating_duration_since(Instant::now());
        if n >= want || left.is_zero() {
            break n;
        }
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .zip(&closed)
            .filter(|(_, c)| !**c)
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            })
            .collect();
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd entries on open sockets.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    };
    for s in streams.iter() {
        s.set_nonblocking(false).expect("blocking");
    }
    count
}

/// Polls the admin `/metrics` until `line` reads `value`, for at most `timeout`.
fn wait_metric(server: &TurnServer, line: &str, value: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let now = server.metric(line);
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line} is {now}, not {value}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// STUN over one TCP connection, framed by each message's length field.
struct StreamClient {
    stream: TcpStream,
}

impl StreamClient {
    fn connect(from: IpAddr, server: SocketAddr) -> Self {
        Self {
            stream: connect_from(from, server),
        }
    }

    fn ask(&mut self, bytes: &[u8]) -> Message {
        self.stream.write_all(bytes).expect("send request");
        let mut raw = vec![0u8; 20];
        self.stream
            .read_exact(&mut raw)
            .expect("a response header within 10 s");
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        raw.resize(20 + len, 0);
        self.stream
            .read_exact(&mut raw[20..])
            .expect("the response body");
        let mut m = Message::new();
        m.unmarshal_binary(&raw).expect("response decodes");
        m
    }

    fn binding_ok(&mut self) {
        let r = self.ask(&request(METHOD_BINDING).raw);
        assert_eq!(r.typ, BINDING_SUCCESS, "Binding over TCP: {r}");
    }

    fn nonce(&mut self) -> String {
        let r = self.ask(&allocate_request().raw);
        assert_eq!(error_code(&r), Some(401), "unauthenticated Allocate");
        String::from_utf8(r.get(ATTR_NONCE).expect("nonce")).expect("utf8")
    }

    /// An Allocate over this connection; returns the nonce it was signed with.
    fn allocate(&mut self) -> String {
        let nonce = self.nonce();
        let r = self.ask(&sign(allocate_request(), USER, PASSWORD, &nonce));
        assert_eq!(
            r.typ.class, CLASS_SUCCESS_RESPONSE,
            "Allocate over TCP: {r}"
        );
        assert!(r.get(ATTR_XOR_RELAYED_ADDRESS).is_ok(), "relayed address");
        nonce
    }

    fn refresh(&mut self, nonce: &str, lifetime: Option<u32>) {
        let mut m = request(METHOD_REFRESH);
        if let Some(secs) = lifetime {
            m.add(ATTR_LIFETIME, &secs.to_be_bytes());
        }
        let r = self.ask(&sign(m, USER, PASSWORD, nonce));
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "Refresh: {r}");
    }
}

fn allocate_request() -> Message {
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    m
}

#[test]
fn connections_past_the_caps_are_closed_at_once_and_other_sources_still_get_a_relay() {
    // Deadlines far beyond the test, so only the caps close anything.
    let server = start(50, 100, "60s", "60s");
    let addr = server.addr;

    let (mut flood, reset) = connect_many(FIRST, addr, 300);
    let closed = reset
        + wait_closed(
            &mut flood,
            250usize.saturating_sub(reset),
            Duration::from_secs(20),
        );
    assert_eq!(
        closed, 250,
        "all but the per-IP cap's 50 are closed by the server"
    );
    assert_eq!(server.metric(&rejected("per_ip_cap")), 250.0);
    assert_eq!(server.metric(GAUGE), 50.0);

    let mut other = StreamClient::connect(SECOND, addr);
    other.binding_ok();
    other.allocate();

    // 51 held; another source gets the 49 left under the global cap of 100.
    let (mut third, reset) = connect_many(THIRD, addr, 60);
    let closed = reset
        + wait_closed(
            &mut third,
            11usize.saturating_sub(reset),
            Duration::from_secs(20),
        );
    assert_eq!(closed, 11, "the connections past the global cap are closed");
    assert_eq!(server.metric(&rejected("global_cap")), 11.0);
    assert_eq!(server.metric(GAUGE), 100.0);
    other.binding_ok();

    drop((flood, third, other));
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(20));
    assert_eq!(server.metric(&rejected("first_message_timeout")), 0.0);
}

#[test]
fn connections_that_never_speak_are_closed_and_their_slots_come_back() {
    let server = start(50, 100, "1s", "2s");
    let addr = server.addr;

    let (mut silent, reset) = connect_many(FIRST, addr, 50);
    assert_eq!(reset, 0, "50 connections are within the per-IP cap");
    let mut talker = StreamClient::connect(SECOND, addr);
    talker.binding_ok();
    // Ten times the deadlines: a bound on the wait, not a measure of speed.
    let closed = wait_closed(&mut silent, 50, Duration::from_secs(10));
    assert_eq!(closed, 50, "connections without a STUN message are closed");
    let closed = wait_closed(
        std::slice::from_mut(&mut talker.stream),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(closed, 1, "a connection silent after its Binding is closed");
    assert_eq!(server.metric(&rejected("first_message_timeout")), 50.0);
    assert_eq!(server.metric(&rejected("idle_timeout")), 1.0);

    // The per-IP cap's 50 places are free again for the same address.
    let mut again: Vec<StreamClient> = (0..50)
        .map(|_| StreamClient::connect(FIRST, addr))
        .collect();
    for c in &mut again {
        c.binding_ok();
    }
    assert_eq!(server.metric(&rejected("per_ip_cap")), 0.0);

    drop((silent, talker, again));
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(20));
}

#[test]
fn a_live_allocation_keeps_its_quiet_connection_open_until_it_is_deleted() {
    let server = start(50, 100, "1s", "2s");
    let addr = server.addr;

    let mut relay = StreamClient::connect(FIRST, addr);
    let nonce = relay.allocate();
    let mut control = StreamClient::connect(SECOND, addr);
    control.binding_ok();
    // The control connection spoke after the allocating one, so once the idle timeout has
    // closed it, the allocating one has been silent for longer than that timeout.
    let closed = wait_closed(
        std::slice::from_mut(&mut control.stream),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(closed, 1, "the control connection is closed as idle");
    let closed = wait_closed(
        std::slice::from_mut(&mut relay.stream),
        1,
        Duration::from_secs(4),
    );
    assert_eq!(closed, 0, "a connection with a live allocation is not idle");
    relay.refresh(&nonce, None);

    // Deleting the allocation hands the connection back to the idle timeout.
    relay.refresh(&nonce, Some(0));
    let closed = wait_closed(
        std::slice::from_mut(&mut relay.stream),
        1,
        Duration::from_secs(20),
    );
    assert_eq!(closed, 1, "idle once its allocation is gone");
    assert_eq!(server.metric(&rejected("idle_timeout")), 2.0);
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(20));
}

#[test]
fn a_client_that_stops_reading_is_closed_by_the_write_deadline_and_its_relay_port_comes_back() {
    raise_nofile_limit();
    let server = TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        env: vec![("ICEWAY_TURN__STREAM_WRITE_TIMEOUT", "1s".into())],
        ..Default::default()
    });
    // A receive window of a few KiB: the server's writes stall once its send buffer is full.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect_timeout(&SockAddr::from(server.addr), Duration::from_secs(5))
        .expect("connect");
    let stream = TcpStream::from(sock);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut client = StreamClient { stream };
    let nonce = client.nonce();
    let r = client.ask(&sign(allocate_request(), USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "Allocate: {r}");
    let v = r.get(ATTR_XOR_RELAYED_ADDRESS).expect("relayed address");
    let relayed = iceway_turn::proto::message::decode_xor_address(&v, &r.transaction_id.0)
        .expect("an address");
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
    let mut m = request(METHOD_CREATE_PERMISSION);
    xor_peer(&mut m, peer.local_addr().expect("peer addr"));
    let r = client.ask(&sign(m, USER, PASSWORD, &nonce));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "CreatePermission: {r}");
    assert_eq!(server.metric("iceway_turn_allocations "), 1.0);

    // The client reads nothing from here on; the peer sends 10 MB/s until the server gives up
    // on the client (bounded: 30 s).
    let payload = [7u8; 1000];
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric(&rejected("write_timeout")) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "a client that does not read still holds its connection"
        );
        for _ in 0..200 {
            let _ = peer.send_to(&payload, relayed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(10));
    wait_metric(
        &server,
        "iceway_turn_allocations ",
        0.0,
        Duration::from_secs(10),
    );
    // The relay port is closed: what the peer sends now is refused by the kernel.
    peer.connect(relayed).expect("connect the peer");
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = peer.send(&payload);
    let mut buf = [0u8; 16];
    let e = peer.recv(&mut buf).expect_err("nothing comes back");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

/// A TLS client trusting only `cert`: one Binding over the connection, then it is dropped.
fn tls_binding_ok(
    from: IpAddr,
    server: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, connect_from(from, server));
    let m = request(METHOD_BINDING);
    tls.write_all(&m.raw).expect("send over TLS");
    let mut raw = vec![0u8; 20];
    tls.read_exact(&mut raw).expect("a response over TLS");
    let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    raw.resize(20 + len, 0);
    tls.read_exact(&mut raw[20..]).expect("the response body");
    let mut r = Message::new();
    r.unmarshal_binary(&raw).expect("decodes");
    assert_eq!(r.typ, BINDING_SUCCESS, "Binding over TLS: {r}");
}

#[test]
fn tls_connections_share_the_caps_and_a_stalled_handshake_meets_the_deadline() {
    raise_nofile_limit();
    let cert = TestCert::new();
    let server = TurnServer::start(ServerOptions {
        args: cert.args().to_vec(),
        env: vec![
            ("ICEWAY_TURN__TLS_LISTEN", "127.0.0.1:0".into()),
            ("ICEWAY_TURN__STREAM_MAX_CONNECTIONS", "100".into()),
            ("ICEWAY_TURN__STREAM_MAX_CONNECTIONS_PER_IP", "10".into()),
            ("ICEWAY_TURN__STREAM_FIRST_MESSAGE_TIMEOUT", "1s".into()),
            ("ICEWAY_TURN__STREAM_IDLE_TIMEOUT", "2s".into()),
        ],
        ..Default::default()
    });
    let tls = server.tls_addr.expect("TLS listener");
    let der = cert.der.clone();

    // Five plain TCP connections and five TLS connections from one address fill its cap of ten:
    // both listeners count against the same cap.
    let (mut plain, reset) = connect_many(FIRST, server.addr, 5);
    assert_eq!(reset, 0);
    let (mut stalled, reset) = connect_many(FIRST, tls, 5);
    assert_eq!(reset, 0);
    // Half of the TLS ones start a handshake record and never finish it; the deadline counts
    // from accept, the handshake included.
    for s in stalled.iter_mut().take(3) {
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .expect("partial ClientHello");
    }
    wait_metric(&server, GAUGE, 10.0, Duration::from_secs(10));
    // The eleventh, over TLS, is past the cap: reset at accept, before any handshake.
    let (mut over, _) = connect_many(FIRST, tls, 1);
    let opened = over.len();
    assert_eq!(
        wait_closed(&mut over, opened, Duration::from_secs(10)),
        opened
    );
    wait_metric(
        &server,
        &rejected("per_ip_cap"),
        1.0,
        Duration::from_secs(10),
    );
    // Another address is served over TLS meanwhile.
    tls_binding_ok(SECOND, tls, &der);

    // Ten times the deadline: a bound on the wait, not a measure of speed.
    assert_eq!(wait_closed(&mut stalled, 5, Duration::from_secs(10)), 5);
    assert_eq!(wait_closed(&mut plain, 5, Duration::from_secs(10)), 5);
    assert_eq!(server.metric(&rejected("first_message_timeout")), 10.0);
    // Their places are free again.
    tls_binding_ok(FIRST, tls, &der);
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(20));
}

#[test]
fn two_thousand_idle_connections_from_one_address_are_capped_and_closed_by_the_deadline() {
    raise_nofile_limit();
    // The default caps (256 per address, 10,000 in all); only the first-message deadline is
    // shortened (default 10 s) so the test does not wait for it.
    let server = TurnServer::start(ServerOptions {
        env: vec![("ICEWAY_TURN__STREAM_FIRST_MESSAGE_TIMEOUT", "2s".into())],
        ..Default::default()
    });
    let pid = server.proc.pid();
    let (cpu0, rss0) = (cpu_seconds(pid), rss_kb(pid));
    let started = Instant::now();
    let (mut idle, reset) = connect_many(FIRST, server.addr, 2000);
    let rss_peak = rss_kb(pid);
    // A newcomer from another address is served meanwhile.
    let mut newcomer = StreamClient::connect(SECOND, server.addr);
    newcomer.binding_ok();
    newcomer.allocate();
    // Ten times the deadline: a bound on the wait, not a measure of speed.
    let closed = reset + wait_closed(&mut idle, 2000 - reset, Duration::from_secs(20));
    assert_eq!(
        closed, 2000,
        "every idle connection is closed by the server"
    );
    // Each one either met the per-address cap at accept or the deadline after it (while the
    // 2,000 are opened, the first ones' deadlines pass and free places for later ones).
    let capped = server.metric(&rejected("per_ip_cap"));
    let timed_out = server.metric(&rejected("first_message_timeout"));
    assert_eq!(
        capped + timed_out,
        2000.0,
        "{capped} capped, {timed_out} timed out"
    );
    println!(
        "hostile case \"2000 idle TCP connections from one address\": {capped} refused at \
         accept, {timed_out} closed at the deadline; server CPU {:.2} s over {:.2} s wall, RSS \
         {rss0} KiB -> {rss_peak} KiB at the peak, {} KiB after",
        cpu_seconds(pid) - cpu0,
        started.elapsed().as_secs_f64(),
        rss_kb(pid)
    );
    drop(newcomer);
    wait_metric(&server, GAUGE, 0.0, Duration::from_secs(20));
}
