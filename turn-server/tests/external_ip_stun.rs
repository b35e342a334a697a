//! `turn.external_ip_stun` behind a real NAT, in network namespaces this test creates:
//!
//!   relay ns 10.77.0.2 -- router ns [nft masquerade] 203.0.113.2 -- public ns 203.0.113.1 (STUN)
//!
//! The relay learns the router's public address from the STUN server and advertises it in
//! XOR-RELAYED-ADDRESS; with a STUN server that never answers it does not start. Needs root, `ip`
//! and `nft` (CI has them; a missing one fails, as the other namespace tests do). Traffic stays in
//! these namespaces; they are deleted when the test ends, passing or failing.

mod common;

use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, PASSWORD, Proc, REALM, USER};
use iceway_testkit::netns::{Netns, sh};
use stun::attributes::ATTR_XOR_RELAYED_ADDRESS;
use stun::message::CLASS_SUCCESS_RESPONSE;

const STUN_IP: &str = "203.0.113.1";
const NAT_PUBLIC: &str = "203.0.113.2";
const RELAY_IP: &str = "10.77.0.2";

/// The three namespaces, deleted on drop.
struct Nat {
    public: Netns,
    router: Netns,
    relay: Netns,
}

impl Nat {
    fn new() -> Self {
        common::require("ip");
        common::require("nft");
        let nat = Nat {
            public: Netns::new("iwsp"),
            router: Netns::new("iwsr"),
            relay: Netns::new("iwsl"),
        };
        // Link names are made in the root namespace before they move: unique per test too.
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (wan, wan_peer) = (format!("sw{id}"), format!("sp{id}"));
        let (lan, lan_peer) = (format!("sl{id}"), format!("sh{id}"));
        sh(&[
            "ip", "link", "add", &wan, "type", "veth", "peer", "name", &wan_peer,
        ]);
        sh(&["ip", "link", "set", &wan, "netns", nat.router.name()]);
        sh(&["ip", "link", "set", &wan_peer, "netns", nat.public.name()]);
        sh(&[
            "ip", "link", "add", &lan, "type", "veth", "peer", "name", &lan_peer,
        ]);
        sh(&["ip", "link", "set", &lan, "netns", nat.router.name()]);
        sh(&["ip", "link", "set", &lan_peer, "netns", nat.relay.name()]);
        let (pu, ro, re) = (nat.public.name(), nat.router.name(), nat.relay.name());
        sh(&[
            "ip", "-n", pu, "link", "set", &wan_peer, "name", "eth0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            pu,
            "addr",
            "add",
            &format!("{STUN_IP}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", ro, "link", "set", &wan, "name", "wan", "up"]);
        sh(&[
            "ip",
            "-n",
            ro,
            "addr",
            "add",
            &format!("{NAT_PUBLIC}/24"),
            "dev",
            "wan",
        ]);
        sh(&["ip", "-n", ro, "link", "set", &lan, "name", "lan", "up"]);
        sh(&["ip", "-n", ro, "addr", "add", "10.77.0.1/24", "dev", "lan"]);
        sh(&[
            "ip", "-n", re, "link", "set", &lan_peer, "name", "eth0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            re,
            "addr",
            "add",
            &format!("{RELAY_IP}/24"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            re,
            "route",
            "add",
            "default",
            "via",
            "10.77.0.1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            ro,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let rules = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(
            rules.path(),
            "table ip nat {\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan\" counter masquerade\n  }\n}\n",
        )
        .expect("write rules");
        let rules = rules.path().to_str().expect("utf-8 path").to_owned();
        sh(&["ip", "netns", "exec", ro, "nft", "-f", &rules]);
        nat
    }

    /// A UDP socket bound to `addr` inside namespace `ns`.
    fn udp_socket(ns: &Netns, addr: &str) -> UdpSocket {
        let addr = addr.to_owned();
        ns.enter(move || UdpSocket::bind(addr.as_str()).expect("bind in namespace"))
    }
}

/// iceway-turn in namespace `ns`, its JSON log lines on a channel.
fn turn_in(ns: &str, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    turn_in_env(ns, args, &[])
}

fn turn_in_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, mpsc::Receiver<String>) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_iceway-turn")])
        .args([
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--realm",
            REALM,
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env("ICEWAY_TURN__THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd.envs(env.iter().copied());
    Proc::spawn_with_stderr_lines(&mut cmd, "iceway-turn", None)
}

/// Reads log lines until one whose message is in `wanted`, or until the process ends (`None`)
/// or `timeout` passes (panics).
fn wait_message(
    log: &mpsc::Receiver<String>,
    wanted: &[&str],
    timeout: Duration,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => {
                eprintln!("iceway-turn: {line}");
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if wanted.iter().any(|w| v["message"] == *w) {
                    return Some(v);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("none of {wanted:?} within {timeout:?}"),
        }
    }
}

fn start_stun_server(nat: &Nat) -> Proc {
    let listen = format!("{STUN_IP}:3478");
    let (proc, log) = turn_in(nat.public.name(), &["--stun-only", "--listen", &listen]);
    let v = wait_message(
        &log,
        &["ready", "iceway-turn failed"],
        Duration::from_secs(20),
    );
    assert_eq!(
        v.map(|v| v["message"].clone()),
        Some("ready".into()),
        "STUN server start"
    );
    proc
}

#[test]
fn relay_behind_nat_advertises_the_address_stun_reports() {
    let nat = Nat::new();
    let _stun = start_stun_server(&nat);
    let listen = format!("{RELAY_IP}:3478");
    let (_relay, log) = turn_in(
        nat.relay.name(),
        &[
            "--listen",
            &listen,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--relay-range",
            "50000-50100",
            "--external-ip-stun",
            &format!("{STUN_IP}:3478"),
        ],
    );
    let found = wait_message(
        &log,
        &["external address discovered", "iceway-turn failed"],
        Duration::from_secs(20),
    )
    .expect("relay running");
    assert_eq!(found["message"], "external address discovered", "{found}");
    assert_eq!(found["external_ip"], NAT_PUBLIC, "{found}");
    wait_message(&log, &["ready"], Duration::from_secs(20)).expect("relay ready");

    let client = Client {
        socket: Nat::udp_socket(&nat.relay, "10.77.0.2:0"),
        server: listen.parse().expect("addr"),
    };
    client
        .socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let r = client.allocate(USER, PASSWORD);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "Allocate: {r}");
    let v = r
        .get(ATTR_XOR_RELAYED_ADDRESS)
        .expect("XOR-RELAYED-ADDRESS");
    let relayed =
        iceway_turn::proto::message::decode_xor_address(&v, &r.transaction_id.0).expect("decodes");
    assert_eq!(
        relayed.ip(),
        NAT_PUBLIC.parse::<IpAddr>().expect("ip"),
        "not the private {RELAY_IP}"
    );
    assert!((50000..=50100).contains(&relayed.port()));
}

#[test]
fn unreachable_stun_server_fails_the_start_within_the_deadline() {
    let nat = Nat::new();
    // The public namespace is there but nothing listens on this port: the requests cross the
    // NAT and are never answered. A 2 s deadline (default 5 s), set through the environment.
    let listen = format!("{RELAY_IP}:3478");
    let started = Instant::now();
    let (mut relay, log) = turn_in_env(
        nat.relay.name(),
        &[
            "--listen",
            &listen,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--external-ip-stun",
            &format!("{STUN_IP}:3479"),
        ],
        &[("ICEWAY_TURN__EXTERNAL_IP_STUN_TIMEOUT", "2s")],
    );
    let failed = wait_message(
        &log,
        &["iceway-turn failed", "ready"],
        Duration::from_secs(15),
    )
    .expect("a failure logged");
    assert_eq!(failed["message"], "iceway-turn failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("turn.external_ip_stun: no mapped address"),
        "{error}"
    );
    assert!(
        error.contains(&format!("{STUN_IP}:3479: no answer")),
        "{error}"
    );
    let status = relay.wait();
    assert!(!status.success(), "{status}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "failed after {took:?} (deadline 2 s)"
    );
}
