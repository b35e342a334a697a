//! The bare WebSocket relay (`ceiling-ws`) under a tiny `signal` load over loopback, and the
//! reconnect storm between two of them: every pair binds and negotiates, every frame arrives,
//! and a relay that exits has every client greeted again by the other.

mod common;

use std::path::Path;
use std::time::Duration;

use iceway_loadtest::signal::storm::StormOptions;
use iceway_loadtest::signal::{SignalOptions, SignalProtocol, run_signal};

const PAIRS: usize = 10;

fn ceiling_ws() -> iceway_testkit::Server {
    common::listening_on(Path::new(env!("CARGO_BIN_EXE_ceiling-ws")), "ceiling-ws")
}

fn options(url: String, pid: u32, rate: f64) -> SignalOptions {
    SignalOptions {
        url,
        protocol: SignalProtocol::Ceiling,
        pairs: PAIRS,
        jwt_secret: Vec::new(),
        jwt_kid: "default".into(),
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

#[test]
fn ceiling_ws_relays_every_candidate_of_every_pair() {
    let relay = ceiling_ws();
    let r = run_signal(&options(
        format!("ws://{}/", relay.addr),
        relay.pid(),
        200.0,
    ))
    .expect("the signal load runs against ceiling-ws");
    let sig = r.signal.as_ref().expect("a signal section");
    assert!(sig.errors.is_empty(), "errors by code: {:?}", sig.errors);
    let setup = r.setup.as_ref().expect("a setup section");
    assert_eq!(setup.succeeded, 2 * PAIRS as u64, "every end binds");
    assert_eq!(sig.negotiated, PAIRS as u64, "every pair negotiates");
    assert_eq!(sig.connections_held, 2 * PAIRS as u64);
    let t = &r.traffic;
    assert!(t.sent > 0, "{t:?}");
    assert_eq!((t.received, t.lost), (t.sent, 0), "{t:?}");
    assert_eq!(t.latency_us.count, t.received);
    let server = r.server.as_ref().expect("a server section");
    assert!(server.cpu_seconds > 0.0, "{server:?}");
    assert!(server.relayed_per_cpu_second.is_some(), "{server:?}");
}

#[test]
fn clients_of_a_relay_that_exits_are_all_greeted_by_the_other() {
    let (a, b) = (ceiling_ws(), ceiling_ws());
    let mut opts = options(format!("ws://{}/", a.addr), b.pid(), 0.0);
    opts.storm = Some(StormOptions {
        reconnect_url: format!("ws://{}/", b.addr),
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
    assert_eq!(storm.lost, storm.clients, "{storm:?}");
    assert_eq!(storm.lost_before_drain, 0, "{storm:?}");
    assert_eq!(
        (storm.reconnected, storm.failed),
        (storm.clients, 0),
        "{storm:?}"
    );
    assert_eq!(storm.reconnect_us.count, storm.clients);
    assert!(
        storm.storm_seconds > 0.0 && storm.storm_seconds < 30.0,
        "{storm:?}"
    );
    assert!(storm.server_cpu_us_per_connect.is_some(), "{storm:?}");
    assert_eq!(
        r.signal.as_ref().map(|s| s.connections_held),
        Some(storm.clients)
    );
}
