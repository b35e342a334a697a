//! Shared helpers for the process-level tests: start `iceway-turn` on free loopback ports, run
//! coturn's tools with a time bound, and craft STUN messages.
#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use iceway_testkit::coturn::{EchoPeer, require};
pub use iceway_testkit::{Proc, free_port};

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

pub struct TurnServer {
    pub proc: Proc,
    pub port: u16,
    pub admin: SocketAddr,
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub secret_file: tempfile::NamedTempFile,
    log: mpsc::Receiver<String>,
}

pub struct ServerOptions<'a> {
    /// The listen address's IP (default 127.0.0.1; "0.0.0.0" is the shipped default).
    pub listen_ip: Option<&'a str>,
    pub args: Vec<&'a str>,
    pub env: Vec<(&'a str, String)>,
    pub secret: bool,
    pub user: bool,
}

impl Default for ServerOptions<'_> {
    fn default() -> Self {
        Self {
            listen_ip: None,
            args: Vec::new(),
            env: Vec::new(),
            secret: true,
            user: true,
        }
    }
}

impl TurnServer {
    pub fn start(opts: ServerOptions<'_>) -> Self {
        // A wildcard listener takes its port on every address, which another test's socket on
        // some 127.x address may hold: it asks for port 0 and reads the port from the log.
        let port = if opts.listen_ip.is_some() {
            0
        } else {
            free_port()
        };
        let listen: SocketAddr = format!("{}:{port}", opts.listen_ip.unwrap_or("127.0.0.1"))
            .parse()
            .expect("listen addr");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut secret_file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(secret_file, "{SECRET}").expect("write secret");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iceway-turn"));
        cmd.args([
            "--listen",
            &listen.to_string(),
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
        .stdout(Stdio::null());
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
        // Every server log line is also kept in the temp dir, for a failed test's post-mortem.
        let keep = std::env::temp_dir().join(format!("iceway-turn-test-{port}.log"));
        let (proc, log) = Proc::spawn_with_stderr_lines(&mut cmd, "iceway-turn", Some(&keep));
        let mut server = TurnServer {
            proc,
            port,
            admin: addr,
            addr,
            tls_addr: None,
            secret_file,
            log,
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
                "listening udp" if server.port == 0 => {
                    let bound: Option<SocketAddr> = v["addr"].as_str().and_then(|a| a.parse().ok());
                    server.port = bound.expect("listening udp names its address").port();
                    server.addr = SocketAddr::from(([127, 0, 0, 1], server.port));
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
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("iceway-turn still running after {timeout:?}")
                }
            }
        }
        self.proc.wait()
    }

    /// The next JSON log line within `timeout`; other lines are echoed to the test's stderr.
    pub fn next_log(&self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(left).ok()?;
            match serde_json::from_str(&line) {
                Ok(v) => return Some(v),
                Err(_) => eprintln!("iceway-turn: {line}"),
            }
        }
    }

    /// Waits (bounded) for a log line with this message.
    pub fn wait_log(&self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
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

// ---- process accounting from /proc (the soak) ----

/// Resident set size of a process in kB (VmRSS of /proc/PID/status).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Open file descriptors of a process (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU seconds (user + system, all threads) a process has used: utime + stime of
/// /proc/PID/stat, counted after the command name's last ')'.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let mut f = rest.split_whitespace().skip(11);
    let ticks: u64 = f
        .by_ref()
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// The local ports of the UDP sockets a process holds: its socket fds' inodes looked up in
/// /proc/PID/net/udp and udp6 (the process's network namespace).
pub fn udp_ports(pid: u32) -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(n.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (cols.get(1), cols.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

/// A self-signed certificate for `localhost` and 127.0.0.1 with its key, written as PEM files for
/// `--tls-cert` / `--tls-key`; the files last as long as this value.
pub struct TestCert {
    pub der: rustls::pki_types::CertificateDer<'static>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCert {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("cert");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
        Self {
            der: made.cert.der().clone(),
            cert,
            key,
            _dir: dir,
        }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn args(&self) -> [&str; 4] {
        [
            "--tls-cert",
            self.cert.to_str().expect("utf8 path"),
            "--tls-key",
            self.key.to_str().expect("utf8 path"),
        ]
    }
}
