//! Shared helpers for the process-level tests: start `iceway-turn` on free loopback ports, run
//! coturn's tools with a time bound, and craft STUN messages.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stun::attributes::*;
use stun::integrity::MessageIntegrity;
use stun::message::*;

pub const REALM: &str = "iceway.test";
/// As `openssl rand -base64 16` printed it. It is alphanumeric up to its `==`, so the `KID=SECRET`
/// parser of earlier releases cut it into a kid and the secret `"="`; coturn's
/// `turnutils_uclient -W` signs with all of it, and so must the server.
pub const SECRET: &str = "S7Zrz29OvyUmMxSGCSuMVw==";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-pw";
pub const STARTUP: Duration = Duration::from_secs(20);

/// Fails the test with a clear message when a program the test needs is not installed.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed; these tests need Debian's coturn package: \
         apt-get install -y --no-install-recommends coturn"
    );
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free loopback port found");
}

pub struct TurnServer {
    pub child: Child,
    pub port: u16,
    pub admin: SocketAddr,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub secret_file: tempfile::NamedTempFile,
    log: mpsc::Receiver<serde_json::Value>,
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct ServerOptions<'a> {
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
    pub secret: bool,
    pub user: bool,
}

impl Default for ServerOptions<'_> {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            env: Vec::new(),
            secret: true,
            user: true,
        }
    }
}

impl TurnServer {
    pub fn start(opts: ServerOptions<'_>) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut secret_file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(secret_file, "{SECRET}").expect("write secret");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iceway-turn"));
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--realm",
            REALM,
        ])
        .env("RUST_LOG", "info")
        .env("ICEWAY_TURN__THREADS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if opts.secret {
            cmd.arg("--secret-file").arg(secret_file.path());
        }
        if opts.user {
            cmd.args(["--user", &format!("{USER}:{PASSWORD}")]);
        }
        cmd.args(&opts.args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn iceway-turn");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        // Every server log line is also kept in the temp dir, for a failed test's post-mortem.
        let mut keep = std::fs::File::create(
            std::env::temp_dir().join(format!("iceway-turn-test-{port}.log")),
        )
        .ok();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("iceway-turn: {line}"),
                }
            }
        });
        let mut server = TurnServer {
            child,
            port,
            admin: addr,
            addr,
            tls_addr: None,
            secret_file,
            log: rx,
        };
        let mut admin = None;
        let mut ready = false;
        while !ready {
            let v = server
                .next_log(STARTUP)
                .expect("iceway-turn did not start in time");
            match v["message"].as_str().unwrap_or_default() {
                "admin listening" => admin = v["addr"].as_str().and_then(|a| a.parse().ok()),
                "listening tls" => {
                    server.tls_addr = v["addr"].as_str().and_then(|a| a.parse().ok())
                }
                "ready" => ready = true,
                "iceway-turn failed" => panic!("iceway-turn failed to start: {v}"),
                _ => {}
            }
        }
        server.admin = admin.expect("admin address logged");
        server
    }

    /// Waits for the process to exit: its stderr closes, then it is reaped.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("iceway-turn still running after {timeout:?}")
                }
            }
        }
        self.child.wait().expect("reap iceway-turn")
    }

    pub fn next_log(&self, timeout: Duration) -> Option<serde_json::Value> {
        self.log.recv_timeout(timeout).ok()
    }

    /// Waits (bounded) for a log line with this message.
    pub fn wait_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = self
                .next_log(left)
                .unwrap_or_else(|| panic!("no log line {message:?} within {timeout:?}"));
            if v["message"] == message {
                return v;
            }
        }
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    pub fn metric(&self, line_prefix: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// coturn's UDP echo peer on a free loopback port, ready when it has echoed a probe.
///
/// `turnutils_peer -p P` listens on P and P+1 (uclient sends its RTCP sessions to P+1) and does
/// not fail when P+1 is taken, so both ports are probed; a peer missing either is restarted on
/// other ports. Without this, a port grabbed by a parallel test loses every RTCP session (50 %).
pub struct EchoPeer {
    child: Child,
    pub port: u16,
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An even loopback UDP port P with P+1 also free right now.
fn free_udp_port_pair() -> u16 {
    for _ in 0..200 {
        let port = free_port() & !1;
        if port < 1024 {
            continue;
        }
        let first = UdpSocket::bind(("127.0.0.1", port));
        let second = UdpSocket::bind(("127.0.0.1", port + 1));
        if first.is_ok() && second.is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback UDP ports found");
}

fn echoes(probe: &UdpSocket, port: u16) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..40 {
        let _ = probe.send_to(b"probe", ("127.0.0.1", port));
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            if &buf[..n] == b"probe" {
                return true;
            }
        }
    }
    false
}

impl EchoPeer {
    pub fn start() -> Self {
        require("turnutils_peer");
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        probe
            .set_read_timeout(Some(Duration::from_millis(250)))
            .expect("timeout");
        for _ in 0..5 {
            let port = free_udp_port_pair();
            let child = Command::new("turnutils_peer")
                .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnutils_peer");
            // Owned from here on, so a failed probe still kills and reaps it.
            let peer = EchoPeer { child, port };
            if echoes(&probe, port) && echoes(&probe, port + 1) {
                return peer;
            }
        }
        panic!("turnutils_peer did not echo on both of its ports in 5 attempts");
    }
}

pub struct Run {
    pub status: Option<i32>,
    pub output: String,
}

/// Runs a program with a hard time bound; killed (by its pid) when it overruns.
pub fn run_bounded(program: &str, args: &[String], timeout: Duration) -> Run {
    require(program);
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Run {
            status: out.status.code(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        },
        Ok(Err(e)) => panic!("{program}: {e}"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child this function spawned and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            let out = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(Result::ok);
            let text = out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("{program} {args:?} did not finish within {timeout:?}; output so far:\n{text}");
        }
    }
}

/// What `turnutils_uclient` reports at the end of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UclientReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub lost_percent: f64,
}

/// Parses the summary lines
/// `start_mclient: tot_send_msgs=40, tot_recv_msgs=40` and
/// `Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`.
pub fn parse_uclient(output: &str) -> Option<UclientReport> {
    let mut sent = None;
    let mut received = None;
    let mut lost = None;
    for line in output.lines() {
        if let Some(rest) = line.split("start_mclient: tot_send_msgs=").nth(1) {
            let (s, r) = rest.split_once(", tot_recv_msgs=")?;
            sent = s.trim().parse().ok();
            received = r.trim().parse().ok();
        }
        if let Some(rest) = line.split("Total lost packets ").nth(1) {
            let (n, pct) = rest.split_once(" (")?;
            let pct = pct.split('%').next()?;
            lost = Some((n.trim().parse().ok()?, pct.trim().parse().ok()?));
        }
    }
    let (lost, lost_percent) = lost?;
    Some(UclientReport {
        sent: sent?,
        received: received?,
        lost,
        lost_percent,
    })
}

// ---- crafted STUN messages ----

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn request(method: Method) -> Message {
    let mut m = Message::new();
    m.set_type(MessageType::new(method, CLASS_REQUEST));
    m.transaction_id = stun::agent::TransactionId::new();
    m.write_header();
    m
}

pub fn xor_peer(m: &mut Message, addr: SocketAddr) {
    iceway_turn::proto::message::add_xor_address(m, ATTR_XOR_PEER_ADDRESS, addr);
}

pub fn sign(mut m: Message, user: &str, password: &str, nonce: &str) -> Vec<u8> {
    m.add(ATTR_USERNAME, user.as_bytes());
    m.add(ATTR_REALM, REALM.as_bytes());
    m.add(ATTR_NONCE, nonce.as_bytes());
    MessageIntegrity::new_long_term_integrity(user.into(), REALM.into(), password.into())
        .add_to(&mut m)
        .expect("MI");
    stun::fingerprint::FINGERPRINT
        .add_to(&mut m)
        .expect("fingerprint");
    m.raw
}

/// A UDP client socket speaking to the server with crafted bytes.
pub struct Client {
    pub socket: UdpSocket,
    pub server: SocketAddr,
}

impl Client {
    pub fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self { socket, server }
    }

    pub fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).expect("send");
    }

    pub fn recv(&self) -> Message {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = self
            .socket
            .recv_from(&mut buf)
            .expect("a response within 10 s");
        let mut m = Message::new();
        m.unmarshal_binary(&buf[..n]).expect("response decodes");
        m
    }

    pub fn ask(&self, bytes: &[u8]) -> Message {
        self.send(bytes);
        self.recv()
    }

    /// An unauthenticated Allocate, for the nonce of the 401.
    pub fn nonce(&self) -> String {
        let mut m = request(METHOD_ALLOCATE);
        m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        let r = self.ask(&m.raw);
        assert_eq!(error_code(&r), Some(401), "unauthenticated Allocate");
        String::from_utf8(r.get(ATTR_NONCE).expect("nonce")).expect("utf8")
    }

    pub fn allocate(&self, user: &str, password: &str) -> Message {
        let nonce = self.nonce();
        let mut m = request(METHOD_ALLOCATE);
        m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        self.ask(&sign(m, user, password, &nonce))
    }

    /// A Binding round trip: proves the server answers this socket, and that nothing else was
    /// queued for it before (the first datagram back must be this Binding's success).
    pub fn binding_ok(&self) {
        let m = request(METHOD_BINDING);
        let r = self.ask(&m.raw);
        assert_eq!(
            r.typ, BINDING_SUCCESS,
            "expected a Binding success, got {r}"
        );
        assert_eq!(
            r.transaction_id, m.transaction_id,
            "an earlier datagram was answered"
        );
    }
}

pub fn error_code(m: &Message) -> Option<u16> {
    let v = m.get(ATTR_ERROR_CODE).ok()?;
    Some(u16::from(*v.get(2)?) * 100 + u16::from(*v.get(3)?))
}
