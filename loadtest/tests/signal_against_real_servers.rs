//! The `signal` mode, briefly, against iceway-signal and peerjs-server; the report must add up.
//! Needs `cargo build -p iceway-signal` and peerjs-server (npm install -g peer@1.0.2).

mod common;

use std::time::Duration;

use iceway_loadtest::signal::{SignalOptions, SignalProtocol, run_signal};
use iceway_loadtest::stats::Report;

fn options(url: String, protocol: SignalProtocol, pid: u32) -> SignalOptions {
    SignalOptions {
        url,
        protocol,
        pairs: 10,
        jwt_secret: common::SIGNAL_JWT_SECRET.as_bytes().to_vec(),
        jwt_kid: "default".into(),
        // 5 messages per second per camera: well under any per-connection rate limit.
        rate: 50.0,
        message_size: 300,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        bind: vec![],
        connect_concurrency: 8,
        setup_timeout: Duration::from_secs(20),
        server_pid: Some(pid),
        threads: 2,
        progress: false,
        interval: Duration::from_millis(100),
    }
}

fn assert_adds_up(r: &Report) {
    let sig = r.signal.as_ref().expect("signal section");
    assert!(sig.errors.is_empty(), "errors: {:?}", sig.errors);
    assert_eq!(sig.negotiated, 10, "every pair negotiates");
    assert_eq!(sig.connections_held, 20);
    assert_eq!(sig.watch_to_answer_us.count, 10);
    let setup = r.setup.as_ref().expect("connections");
    assert_eq!(setup.succeeded, 20);
    let t = &r.traffic;
    assert!(t.sent > 0 && t.received > 0, "{t:?}");
    assert_eq!(t.sent, t.received + t.lost, "{t:?}");
    assert_eq!(t.latency_us.count, t.received);
    assert!(r.server.as_ref().is_some_and(|s| s.rss_kb_after.is_some()));
}

#[test]
fn signal_pairs_against_iceway_signal_negotiate_and_add_up() {
    let server = common::iceway_signal();
    let url = format!("ws://{}/v1/ws", server.addr);
    let r = run_signal(&options(url, SignalProtocol::Iceway, server.pid())).expect("signal load");
    assert_adds_up(&r);
}

#[test]
fn signal_pairs_against_peerjs_server_negotiate_and_add_up() {
    let server = common::peerjs_server();
    let url = format!("ws://{}/peerjs", server.addr);
    let r = run_signal(&options(url, SignalProtocol::PeerJs, server.pid())).expect("signal load");
    assert_adds_up(&r);
}
