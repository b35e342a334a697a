//! The `signal` mode, briefly, against a real iceway-signal and a real peerjs-server: every pair
//! connects and negotiates, and the report adds up (sent = received + lost).
//!
//! Needs `cargo build -p iceway-signal` (the binary next to this test's target dir, or
//! $ICEWAY_SIGNAL_BIN) and, for the PeerJS test, peerjs-server 1.0.2: `npm install
//! --prefix bench/signal peer@1.0.2` (or `npm install -g peer@1.0.2`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use iceway_loadtest::signal::{SignalOptions, SignalProtocol, run_signal};
use iceway_loadtest::stats::Report;

const PAIRS: usize = 10;

fn options(url: String, protocol: SignalProtocol, pid: u32, rate: f64) -> SignalOptions {
    SignalOptions {
        url,
        protocol,
        pairs: PAIRS,
        jwt_secret: common::SIGNAL_JWT_SECRET.as_bytes().to_vec(),
        jwt_kid: "default".into(),
        // 5 frames per second per camera: well under the server's default per-connection limit.
        rate,
        message_size: 500,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(10),
        bind: vec![],
        connect_concurrency: 8,
        setup_timeout: Duration::from_secs(30),
        server_pid: Some(pid),
        threads: 2,
        progress: false,
        interval: Duration::from_millis(100),
        storm: None,
    }
}

fn assert_adds_up(r: &Report) {
    let sig = r.signal.as_ref().expect("a signal section");
    assert!(sig.errors.is_empty(), "errors by code: {:?}", sig.errors);
    let setup = r.setup.as_ref().expect("a setup section");
    assert_eq!(
        setup.succeeded,
        2 * PAIRS as u64,
        "every camera and viewer connects"
    );
    assert_eq!(sig.pairs, PAIRS as u64);
    assert_eq!(sig.negotiated, PAIRS as u64, "every pair negotiates");
    assert_eq!(sig.watch_to_answer_us.count, PAIRS as u64);
    assert_eq!(sig.connections_held, 2 * PAIRS as u64);
    let t = &r.traffic;
    assert_eq!(t.sent, t.received + t.lost, "{t:?}");
    assert_eq!(
        t.latency_us.count, t.received,
        "one latency sample per message"
    );
    let server = r.server.as_ref().expect("a server section");
    assert!(server.rss_kb_after.is_some(), "server RSS read from /proc");
}

#[test]
fn iceway_signal_pairs_negotiate_relay_and_add_up() {
    let server = common::iceway_signal();
    let url = format!("ws://{}/v1/ws", server.addr);
    let r = run_signal(&options(url, SignalProtocol::Iceway, server.pid(), 50.0))
        .expect("the signal load runs");
    assert_adds_up(&r);
    // The run ended by deadline with every frame drained: none may be lost on loopback.
    assert!(r.traffic.sent > 0, "{:?}", r.traffic);
    assert_eq!(r.traffic.lost, 0, "{:?}", r.traffic);
}

#[test]
fn idle_hold_reports_rss_per_connection_and_sends_nothing() {
    let server = common::iceway_signal();
    let url = format!("ws://{}/v1/ws", server.addr);
    let r = run_signal(&options(url, SignalProtocol::Iceway, server.pid(), 0.0))
        .expect("the idle hold runs");
    assert_adds_up(&r);
    assert_eq!((r.traffic.sent, r.traffic.received), (0, 0));
    let server = r.server.expect("a server section");
    assert!(server.rss_bytes_per_flow.is_some(), "{server:?}");
}

/// peerjs from bench/signal/node_modules (what bench/signal/run.sh installs), else from PATH.
fn peerjs_bin() -> PathBuf {
    let local =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/signal/node_modules/.bin/peerjs");
    if local.is_file() {
        return local;
    }
    iceway_testkit::which("peerjs").unwrap_or_else(|| {
        panic!(
            "peerjs-server is not installed: npm install --prefix bench/signal peer@1.0.2 \
                 (or npm install -g peer@1.0.2)"
        )
    })
}

#[test]
fn peerjs_server_pairs_negotiate_relay_and_add_up() {
    let port = common::free_port();
    // Killed by its own PID when the test ends, passing or not.
    let mut server = common::Proc::spawn(
        Command::new(peerjs_bin())
            .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "peerjs",
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    common::wait_for_tcp(addr, &mut server);
    let url = format!("ws://{addr}/peerjs");
    let r = run_signal(&options(url, SignalProtocol::PeerJs, server.pid(), 50.0))
        .expect("the signal load runs");
    assert_adds_up(&r);
    assert!(r.traffic.sent > 0, "{:?}", r.traffic);
}

#[test]
fn cli_prints_json_that_adds_up() {
    let server = common::iceway_signal();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt");
    std::fs::write(&key, common::SIGNAL_JWT_SECRET).expect("write key");
    let out = Command::new(env!("CARGO_BIN_EXE_iceway-loadtest"))
        .args(["signal", "--url", &format!("ws://{}/v1/ws", server.addr)])
        .arg("--jwt-secret-file")
        .arg(&key)
        .args([
            "--pairs",
            &PAIRS.to_string(),
            "--rate",
            "50",
            "--duration",
            "1s",
        ])
        .args([
            "--drain",
            "10s",
            "--server-pid",
            &server.pid().to_string(),
            "--json",
        ])
        .output()
        .expect("run iceway-loadtest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).expect("the report is JSON");
    assert_adds_up(&r);
}

#[test]
fn cli_refuses_a_plan_over_the_open_file_limit() {
    // One pair more than the hard limit allows (20,000 files here: 10,001 pairs) is refused
    // before a single connect, so no server is needed.
    let (_, hard) = iceway_loadtest::signal::fd_limit::raise_soft_limit();
    if hard == u64::MAX {
        eprintln!("RLIMIT_NOFILE is unlimited here: no plan can exceed it");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_iceway-loadtest"))
        .args(["signal", "--url", "ws://127.0.0.1:9/v1/ws", "--jwt-secret"])
        .arg(common::SIGNAL_JWT_SECRET)
        .args(["--pairs", &(hard / 2 + 1).to_string(), "--json"])
        .output()
        .expect("run iceway-loadtest");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RLIMIT_NOFILE") && err.contains("--pairs"),
        "{err}"
    );
}

#[test]
fn drained_replica_sends_every_client_to_the_other_and_all_are_welcomed() {
    // Replica A drains at once on SIGTERM (no grace) and closes every socket 1001.
    let a = common::iceway_signal_with(&[("ICEWAY_DRAIN__TIMEOUT", "0s")]);
    let b = common::iceway_signal();
    let mut opts = options(
        format!("ws://{}/v1/ws", a.addr),
        SignalProtocol::Iceway,
        b.pid(),
        0.0,
    );
    opts.storm = Some(iceway_loadtest::signal::storm::StormOptions {
        reconnect_url: format!("ws://{}/v1/ws", b.addr),
        drain_pid: a.pid(),
        timeout: Duration::from_secs(30),
        kill_after: None,
    });
    let r = run_signal(&opts).expect("the storm runs");
    let storm = r
        .signal
        .as_ref()
        .and_then(|s| s.storm.clone())
        .expect("a storm section");
    assert_eq!(storm.clients, 2 * PAIRS as u64, "{storm:?}");
    assert_eq!(
        storm.lost_by.get("close 1001"),
        Some(&storm.clients),
        "every socket is closed going-away: {storm:?}"
    );
    assert_eq!(
        (storm.reconnected, storm.failed),
        (storm.clients, 0),
        "{storm:?}"
    );
    assert!(storm.errors.is_empty(), "{storm:?}");
}
