//! coturn, the reference TURN implementation: its `turnserver` (a server to compare against)
//! and its `turnutils_peer` (a UDP echo peer behind a relay).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, Server, free_port, free_udp_port_pair, wait_for_stun};

/// How CI (and a developer) installs coturn's programs.
pub const INSTALL: &str =
    "these tests need Debian's coturn package: apt-get install -y --no-install-recommends coturn";

/// How long a server has to answer its first STUN Binding.
pub const STARTUP: Duration = Duration::from_secs(15);

/// Fails the test when one of coturn's programs is not installed.
pub fn require(program: &str) {
    crate::require(program, INSTALL);
}

/// How clients authenticate to [`turnserver`].
pub enum Auth<'a> {
    /// TURN REST credentials (`--use-auth-secret`) signed with this shared secret.
    Secret(&'a str),
    /// One long-term user (`--lt-cred-mech --user U:P`).
    User(&'a str, &'a str),
}

/// coturn's `turnserver` on a free loopback port (UDP and TCP, no TLS), realm `iceway-test`,
/// relaying on 127.0.0.1 ports 40000-60000 with loopback peers allowed; returns once it answers
/// a STUN Binding.
pub fn turnserver(auth: Auth<'_>) -> Server {
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

/// Starts a STUN/TURN server that listens on loopback `port` (its output discarded) and
/// returns once it answers a Binding; `dir` lives as long as the server.
pub fn spawn_stun_server(
    mut cmd: Command,
    name: &str,
    port: u16,
    dir: tempfile::TempDir,
) -> Server {
    let mut proc = Proc::spawn(cmd.stdout(Stdio::null()).stderr(Stdio::null()), name);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for_stun(addr, &mut proc, STARTUP);
    Server::new(proc, addr, Some(dir))
}

/// coturn's UDP echo peer on a free loopback port, ready when it has echoed a probe.
///
/// `turnutils_peer -p P` listens on P and P+1 (uclient sends its RTCP sessions to P+1) and does
/// not fail when P+1 is taken, so both ports are probed; a peer missing either is restarted on
/// other ports. Without this, a port grabbed by a parallel test loses every RTCP session (50 %).
pub struct EchoPeer {
    _proc: Proc,
    pub port: u16,
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
            // Owned from here on, so a failed probe still kills and reaps it.
            let proc = Proc::spawn(
                Command::new("turnutils_peer")
                    .args(["-L", "127.0.0.1", "-p", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
                "turnutils_peer",
            );
            let peer = EchoPeer { _proc: proc, port };
            if echoes(&probe, port) && echoes(&probe, port + 1) {
                return peer;
            }
        }
        panic!("turnutils_peer did not echo on both of its ports in 5 attempts");
    }
}
