//! Starting real servers for the load tests: coturn's turnserver and the ceiling relay.
//! Processes are killed by their own PID when the guard drops.

#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub use iceway_testkit::coturn::{Auth, turnserver as coturn};
pub use iceway_testkit::{Proc, Server, free_port};

/// How long a server has to start listening.
pub const STARTUP: Duration = Duration::from_secs(15);

/// The ceiling relay built with this crate; it prints "listening on ADDR".
pub fn ceiling(bin: &Path) -> Server {
    listening_on(bin, "ceiling-relay")
}

/// A ceiling (`ceiling-relay`, `ceiling-ws`) on a free loopback port: it prints "listening on
/// ADDR" first.
pub fn listening_on(bin: &Path, name: &str) -> Server {
    let mut proc = Proc::spawn(
        Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
        name,
    );
    let stdout = proc.child_mut().stdout.take().expect("piped stdout");
    let line = iceway_testkit::read_first_line(stdout, STARTUP);
    let addr = line
        .as_deref()
        .and_then(|l| l.trim().strip_prefix("listening on "))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from {name}: {line:?}"));
    Server::new(proc, addr, None)
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

pub const SIGNAL_JWT_SECRET: &str = "loadtest-signal-secret-0123456789abcdef";

/// iceway-signal on a free loopback port with an HS256 app-token key.
pub fn iceway_signal() -> Server {
    iceway_signal_with(&[])
}

/// As [`iceway_signal`], with extra `ICEWAY_...` settings in its environment.
pub fn iceway_signal_with(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt");
    std::fs::write(&key, SIGNAL_JWT_SECRET).expect("write key");
    let port = free_port();
    let admin = free_port();
    let mut proc = Proc::spawn(
        Command::new(workspace_bin(
            "iceway-signal",
            "iceway-signal",
            "ICEWAY_SIGNAL_BIN",
        ))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--jwt-secret-file")
        .arg(&key)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null()),
        "iceway-signal",
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_tcp(addr, &mut proc);
    Server::new(proc, addr, Some(dir))
}

/// Waits until a TCP listener accepts on `addr`, up to [`STARTUP`].
pub fn wait_for_tcp(addr: SocketAddr, proc: &mut Proc) {
    iceway_testkit::wait_for_tcp(addr, proc, STARTUP);
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
    iceway_testkit::coturn::spawn_stun_server(cmd, "iceway-turn", port, dir)
}

/// iceway-turn with a TLS listener beside its UDP/TCP one, presenting a self-signed
/// certificate for "localhost" (the CA file a client should trust is `ca`).
pub struct TlsTurn {
    pub server: Server,
    pub tls_addr: SocketAddr,
    pub ca: std::path::PathBuf,
}

pub fn iceway_turn_tls(secret_lines: &str) -> TlsTurn {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (ca, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca, cert.cert.pem()).expect("write cert");
    std::fs::write(&key, cert.signing_key.serialize_pem()).expect("write key");
    let secret_file = dir.path().join("secrets");
    std::fs::write(&secret_file, secret_lines).expect("write secrets");
    let (port, tls_port, admin) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(iceway_turn_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--realm", "iceway-test", "--relay-range", "40000-60000"])
        .args(["--allow-peers", "127.0.0.0/8"])
        .arg("--secret-file")
        .arg(&secret_file)
        .arg("--tls-cert")
        .arg(&ca)
        .arg("--tls-key")
        .arg(&key)
        .env("ICEWAY_TURN__TLS_LISTEN", format!("127.0.0.1:{tls_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut proc = Proc::spawn(&mut cmd, "iceway-turn");
    let tls_addr: SocketAddr = ([127, 0, 0, 1], tls_port).into();
    iceway_testkit::wait_for_stun(([127, 0, 0, 1], port).into(), &mut proc, STARTUP);
    wait_for_tcp(tls_addr, &mut proc);
    TlsTurn {
        server: Server::new(proc, ([127, 0, 0, 1], port).into(), Some(dir)),
        tls_addr,
        ca,
    }
}
