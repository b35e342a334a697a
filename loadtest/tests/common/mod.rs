//! Starting real servers for the load tests: coturn's turnserver and the ceiling relay.
//! Processes are killed by their own PID when the guard drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both UDP and TCP right now (turnserver listens on both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP after 100 tries");
}

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed: apt-get install -y --no-install-recommends coturn"
    );
}

/// Starts a STUN/TURN server on loopback `port` and returns once it answers a Binding.
fn spawn_stun_server(mut cmd: Command, name: &str, port: u16, dir: tempfile::TempDir) -> Server {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_stun(addr, &mut child);
    Server {
        child,
        addr,
        _dir: Some(dir),
    }
}

/// Waits until the server answers a STUN Binding request (it is listening), up to 15 s.
pub fn wait_for_stun(addr: SocketAddr, child: &mut Child) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut req = [0_u8; 20];
    req[1] = 0x01;
    req[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
    req[8..20].copy_from_slice(b"loadtestwait");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0_u8; 512];
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited before listening: {status}");
        }
        let _ = s.send_to(&req, addr);
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if n >= 20 && buf[8..20] == req[8..20] {
                return;
            }
        }
    }
    panic!("server at {addr} did not answer STUN within 15 s");
}

pub enum Auth<'a> {
    Secret(&'a str),
    User(&'a str, &'a str),
}

pub fn coturn(auth: Auth<'_>) -> Server {
    require("turnserver");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut cmd = Command::new("turnserver");
    cmd.args([
        "-n",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",
    ])
    .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
    .args(["--listening-port", &port.to_string()])
    .args(["--min-port", "40000", "--max-port", "60000"])
    .args([
        "--realm",
        "iceway-test",
        "--log-file",
        "stdout",
        "--no-stdout-log",
    ])
    .arg(format!(
        "--pidfile={}",
        dir.path().join("turn.pid").display()
    ))
    .arg(format!("--userdb={}", dir.path().join("turndb").display()));
    match auth {
        Auth::Secret(s) => {
            cmd.args(["--use-auth-secret", &format!("--static-auth-secret={s}")]);
        }
        Auth::User(u, p) => {
            cmd.args(["--lt-cred-mech", "--user", &format!("{u}:{p}")]);
        }
    }
    spawn_stun_server(cmd, "turnserver", port, dir)
}

/// The ceiling relay built with this crate; it prints "listening on ADDR".
pub fn ceiling(bin: &Path) -> Server {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ceiling-relay");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from ceiling-relay: {line:?}"));
    Server {
        child,
        addr,
        _dir: None,
    }
}

/// A workspace binary next to this test's build (target/<profile>/NAME), or $ENV_VAR.
pub fn workspace_bin(name: &str, package: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/NAME
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (or set {env_var})",
        bin.display()
    );
    bin
}

pub fn iceway_turn_bin() -> std::path::PathBuf {
    workspace_bin("iceway-turn", "iceway-turn", "ICEWAY_TURN_BIN")
}

/// Waits (up to 15 s) until a TCP listener accepts on `addr`.
pub fn wait_for_tcp(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited before listening: {status}");
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        // Connection refused returns at once: yield briefly before the next attempt.
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} within 15 s");
}

pub const SIGNAL_JWT_SECRET: &str = "loadtest-signal-secret-0123456789abcdef";

/// iceway-signal on a free loopback port with an HS256 app-token key.
pub fn iceway_signal() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt");
    std::fs::write(&key, SIGNAL_JWT_SECRET).expect("write key");
    let port = free_port();
    let admin = free_port();
    let mut child = Command::new(workspace_bin(
        "iceway-signal",
        "iceway-signal",
        "ICEWAY_SIGNAL_BIN",
    ))
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .args(["--admin", &format!("127.0.0.1:{admin}")])
    .arg("--jwt-secret-file")
    .arg(&key)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn iceway-signal");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_tcp(addr, &mut child);
    Server {
        child,
        addr,
        _dir: Some(dir),
    }
}

/// peerjs-server (npm package `peer`, its `peerjs` command) on a free loopback port.
pub fn peerjs_server() -> Server {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("peerjs").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`peerjs` (peerjs-server) is not installed: npm install -g peer@1.0.2"
    );
    let port = free_port();
    let mut child = Command::new("peerjs")
        .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn peerjs");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_tcp(addr, &mut child);
    Server {
        child,
        addr,
        _dir: None,
    }
}

/// iceway-turn on a free loopback port, secrets from a file, loopback peers allowed.
pub fn iceway_turn(secret_lines: &str, users: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secrets");
    std::fs::write(&secret_file, secret_lines).expect("write secrets");
    let port = free_port();
    let admin = free_port();
    let mut cmd = Command::new(iceway_turn_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--realm", "iceway-test", "--relay-range", "40000-60000"])
        .args(["--allow-peers", "127.0.0.0/8"])
        .arg("--secret-file")
        .arg(&secret_file);
    for u in users {
        cmd.args(["--user", u]);
    }
    spawn_stun_server(cmd, "iceway-turn", port, dir)
}
