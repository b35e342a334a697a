//! Each mode, briefly, against a real server; the report must add up.
//! Needs coturn's `turnserver` (apt-get install -y --no-install-recommends coturn).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use iceway_auth::turn_credential::CredentialFormat;
use iceway_loadtest::credentials::CredentialSource;
use iceway_loadtest::datagram::{StunOptions, TurnOptions, TurnProtocol, run_stun, run_turn};
use iceway_loadtest::driver::DriverConfig;
use iceway_loadtest::engine::{LoadPlan, Pace};
use iceway_loadtest::stats::Report;
use iceway_loadtest::tls::{TlsClient, Trust};
use iceway_loadtest::transport::TransportKind;

fn config(pace: Pace, payload: usize, server_pid: u32) -> DriverConfig {
    DriverConfig {
        threads: 2,
        setup_concurrency: 16,
        setup_timeout: Duration::from_secs(20),
        plan: LoadPlan {
            pace,
            payload,
            duration: Duration::from_millis(800),
            packets_per_flow: None,
            drain: Duration::from_secs(2),
            loss_timeout: Duration::from_millis(300),
            interval: Duration::from_millis(100),
            refresh: None,
            churn_per_flow: 0.0,
        },
        server_pid: Some(server_pid),
        progress: false,
    }
}

fn turn_options(
    server: SocketAddr,
    protocol: TurnProtocol,
    n: usize,
    creds: CredentialSource,
    cfg: DriverConfig,
) -> TurnOptions {
    TurnOptions {
        server,
        protocol,
        allocations: n,
        transport: TransportKind::Udp,
        credentials: creds,
        peer: None,
        echo_bind: "127.0.0.1:0".parse().expect("literal"),
        bind: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        driver: cfg,
    }
}

fn rest(secret: &str) -> CredentialSource {
    CredentialSource::minted(secret, CredentialFormat::Rest, Duration::from_secs(600))
        .expect("a secret")
}

/// sent = received + lost, something got through, and the server did measurable work.
fn assert_adds_up(r: &Report) {
    let t = &r.traffic;
    assert!(t.sent > 0, "nothing sent: {t:?}");
    assert!(t.received > 0, "nothing came back: {t:?}");
    assert_eq!(t.sent, t.received + t.lost, "report does not add up: {t:?}");
    assert_eq!(t.latency_us.count, t.received);
    assert!(t.latency_us.p50 > 0.0 && t.latency_us.p50 <= t.latency_us.max);
    let server = r.server.as_ref().expect("server accounting with a PID");
    assert!(server.pid > 0);
    assert!(!r.series.is_empty());
}

fn assert_relay_adds_up(r: &Report, allocations: u64) {
    assert_adds_up(r);
    let setup = r.setup.as_ref().expect("turn reports setup");
    assert_eq!(setup.succeeded, allocations, "setup failed: {setup:?}");
    assert_eq!(setup.failed, 0);
    let t = &r.traffic;
    let to_peer = t.relayed_to_peer.expect("built-in echo peer counts");
    // Every packet that came back went through the peer, and the peer saw no more than was sent.
    assert!(to_peer >= t.received && to_peer <= t.sent, "{t:?}");
    assert_eq!(t.relayed_total, Some(to_peer + t.received));
}

#[test]
fn turn_channel_load_with_rest_credentials_against_coturn_adds_up() {
    let server = common::coturn(common::Auth::Secret("s3cret-0123456789ab"));
    let creds = rest("s3cret-0123456789ab");
    let cfg = config(Pace::Paced { pps: 50.0 }, 120, server.pid());
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Channel,
        20,
        creds,
        cfg,
    ))
    .expect("turn load runs");
    assert_relay_adds_up(&r, 20);
}

#[test]
fn turn_indication_flood_with_static_user_against_coturn_adds_up() {
    let server = common::coturn(common::Auth::User("alice", "pw"));
    let creds = CredentialSource::Static {
        username: "alice".into(),
        password: "pw".into(),
    };
    let cfg = config(Pace::Flood { window: 4 }, 1000, server.pid());
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Indication,
        8,
        creds,
        cfg,
    ))
    .expect("turn load runs");
    assert_relay_adds_up(&r, 8);
}

#[test]
fn turn_with_wrong_secret_fails_with_401() {
    let server = common::coturn(common::Auth::Secret("right-secret-0123456789"));
    let creds = rest("wrong-secret-0123456789");
    let cfg = config(Pace::Paced { pps: 10.0 }, 120, server.pid());
    let err = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Channel,
        3,
        creds,
        cfg,
    ))
    .expect_err("no allocation can succeed");
    assert!(err.to_string().contains("Allocate 401"), "{err}");
}

#[test]
fn stun_binding_flood_against_coturn_adds_up() {
    let server = common::coturn(common::Auth::Secret("some-secret-0123456789"));
    let opts = StunOptions {
        server: server.addr,
        sockets: 8,
        transport: TransportKind::Udp,
        bind: vec![],
        driver: config(Pace::Flood { window: 8 }, 0, server.pid()),
    };
    let r = run_stun(&opts).expect("stun load runs");
    assert_adds_up(&r);
    assert!(r.setup.is_none());
    assert!(r.traffic.relayed_total.is_none());
}

#[test]
fn ceiling_relay_load_adds_up() {
    let relay = common::ceiling(Path::new(env!("CARGO_BIN_EXE_ceiling-relay")));
    let cfg = config(Pace::Flood { window: 8 }, 120, relay.pid());
    let r = run_turn(&turn_options(
        relay.addr,
        TurnProtocol::Ceiling,
        10,
        CredentialSource::None,
        cfg,
    ))
    .expect("ceiling load runs");
    assert_relay_adds_up(&r, 10);
}

#[test]
fn cli_prints_json_and_writes_a_self_contained_html_report() {
    let server = common::coturn(common::Auth::Secret("cli-secret-0123456789"));
    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_iceway-loadtest"))
        .args(["turn", "--server", &server.addr.to_string(), "-n", "5"])
        .args([
            "--secret",
            "cli-secret-0123456789",
            "--rate",
            "50",
            "--duration",
            "500ms",
        ])
        .args([
            "--packets",
            "20",
            "--json",
            "--server-pid",
            &server.pid().to_string(),
        ])
        .arg("--report")
        .arg(&html)
        .output()
        .expect("run iceway-loadtest");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Report = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report");
    assert_relay_adds_up(&r, 5);
    assert!(r.traffic.sent <= 5 * 20, "--packets caps each flow");
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    assert!(page.contains("<svg") && !page.contains("<script") && !page.contains("src="));
}

#[test]
fn turn_channel_load_with_jwt_credentials_against_iceway_turn_adds_up() {
    let server = common::iceway_turn("kid:main jwt-secret-0123456789\n", &[]);
    let creds = CredentialSource::minted(
        "kid:main jwt-secret-0123456789",
        CredentialFormat::Jwt,
        Duration::from_secs(600),
    )
    .expect("a secret");
    let cfg = config(Pace::Flood { window: 4 }, 120, server.pid());
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Channel,
        10,
        creds,
        cfg,
    ))
    .expect("turn load runs");
    assert_relay_adds_up(&r, 10);
}

#[test]
fn turn_indication_paced_with_static_user_against_iceway_turn_adds_up() {
    let server = common::iceway_turn("unused-secret-0123456789\n", &["bob:pw"]);
    let creds = CredentialSource::Static {
        username: "bob".into(),
        password: "pw".into(),
    };
    let cfg = config(Pace::Paced { pps: 50.0 }, 1000, server.pid());
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Indication,
        10,
        creds,
        cfg,
    ))
    .expect("turn load runs");
    assert_relay_adds_up(&r, 10);
}

#[test]
fn turn_with_rest_credentials_against_iceway_turn_adds_up() {
    let server = common::iceway_turn("rest-secret-0123456789\n", &[]);
    let cfg = config(Pace::Paced { pps: 50.0 }, 120, server.pid());
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Channel,
        5,
        rest("rest-secret-0123456789"),
        cfg,
    ))
    .expect("turn load runs");
    assert_relay_adds_up(&r, 5);
}

#[test]
fn stun_binding_flood_against_iceway_turn_adds_up() {
    let server = common::iceway_turn("some-secret-0123456789\n", &[]);
    let opts = StunOptions {
        server: server.addr,
        sockets: 8,
        transport: TransportKind::Udp,
        bind: vec![],
        driver: config(Pace::Flood { window: 8 }, 0, server.pid()),
    };
    let r = run_stun(&opts).expect("stun load runs");
    assert_adds_up(&r);
}

#[test]
fn turn_over_tcp_against_coturn_adds_up() {
    let server = common::coturn(common::Auth::Secret("tcp-secret-0123456789"));
    let mut opts = turn_options(
        server.addr,
        TurnProtocol::Channel,
        5,
        rest("tcp-secret-0123456789"),
        config(Pace::Flood { window: 4 }, 120, server.pid()),
    );
    opts.transport = TransportKind::Tcp;
    let r = run_turn(&opts).expect("turn load over TCP runs");
    assert_eq!(r.protocol, "turn-channel/tcp");
    assert_relay_adds_up(&r, 5);
}

#[test]
fn turn_indications_over_tcp_against_iceway_turn_add_up() {
    let server = common::iceway_turn("tcp-secret-0123456789\n", &[]);
    let mut opts = turn_options(
        server.addr,
        TurnProtocol::Indication,
        5,
        rest("tcp-secret-0123456789"),
        config(Pace::Paced { pps: 50.0 }, 1000, server.pid()),
    );
    opts.transport = TransportKind::Tcp;
    let r = run_turn(&opts).expect("turn load over TCP runs");
    assert_relay_adds_up(&r, 5);
}

#[test]
fn stun_over_tcp_against_iceway_turn_adds_up() {
    let server = common::iceway_turn("some-secret-0123456789\n", &[]);
    let opts = StunOptions {
        server: server.addr,
        sockets: 4,
        transport: TransportKind::Tcp,
        bind: vec![],
        driver: config(Pace::Flood { window: 8 }, 0, server.pid()),
    };
    let r = run_stun(&opts).expect("stun load over TCP runs");
    assert_adds_up(&r);
}

#[test]
fn turn_over_tls_against_iceway_turn_adds_up() {
    let turn = common::iceway_turn_tls("tls-secret-0123456789\n");
    let trust = Trust::CaFile(turn.ca.clone());
    let mut opts = turn_options(
        turn.tls_addr,
        TurnProtocol::Channel,
        8,
        rest("tls-secret-0123456789"),
        config(Pace::Flood { window: 4 }, 120, turn.server.pid()),
    );
    opts.transport = TransportKind::Tls(TlsClient::new(&trust, "localhost").expect("TLS client"));
    let r = run_turn(&opts).expect("turn load over TLS runs");
    assert_eq!(r.protocol, "turn-channel/tls");
    assert_relay_adds_up(&r, 8);

    // A client that trusts another certificate makes no allocation, and says why.
    let other = common::iceway_turn_tls("tls-secret-0123456789\n");
    opts.transport = TransportKind::Tls(
        TlsClient::new(&Trust::CaFile(other.ca.clone()), "localhost").expect("TLS client"),
    );
    opts.driver.server_pid = None;
    let err = run_turn(&opts).expect_err("the certificate is not trusted");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}

#[test]
fn stun_over_tls_against_iceway_turn_adds_up() {
    let turn = common::iceway_turn_tls("some-secret-0123456789\n");
    let opts = StunOptions {
        server: turn.tls_addr,
        sockets: 4,
        transport: TransportKind::Tls(
            TlsClient::new(&Trust::Insecure, "localhost").expect("TLS client"),
        ),
        bind: vec![],
        driver: config(Pace::Flood { window: 8 }, 0, turn.server.pid()),
    };
    let r = run_stun(&opts).expect("stun load over TLS runs");
    assert_eq!(r.protocol, "stun-binding/tls");
    assert_adds_up(&r);
}

/// Refresh and churn while data flows: the report adds up, allocations were refreshed and
/// replaced, and nothing failed.
fn assert_control_ran(r: &Report) {
    let c = r
        .traffic
        .control
        .as_ref()
        .expect("control report with refresh and churn");
    assert!(c.refreshes > 0, "{c:?}");
    assert!(c.released > 0 && c.reopened > 0, "{c:?}");
    assert_eq!(
        (c.refresh_failures, c.release_failures, c.reopen_failures),
        (0, 0, 0),
        "{c:?}"
    );
    assert!(c.errors.is_empty(), "{c:?}");
    assert!(r.traffic.received > 0);
}

#[test]
fn turn_channel_refresh_and_churn_against_iceway_turn_add_up() {
    let server = common::iceway_turn("churn-secret-0123456789\n", &[]);
    let mut cfg = config(Pace::Paced { pps: 50.0 }, 120, server.pid());
    cfg.plan.duration = Duration::from_secs(3);
    cfg.plan.refresh = Some(Duration::from_millis(700));
    // 8 replacements a second over 10 allocations.
    cfg.plan.churn_per_flow = 0.8;
    let mut opts = turn_options(
        server.addr,
        TurnProtocol::Channel,
        10,
        rest("churn-secret-0123456789"),
        cfg,
    );
    opts.bind = vec![];
    let r = run_turn(&opts).expect("turn load with churn runs");
    assert_relay_adds_up(&r, 10);
    assert_control_ran(&r);
    assert_eq!(r.load.churn_per_second, 8.0);
}

#[test]
fn turn_indication_refresh_and_churn_against_coturn_add_up() {
    let server = common::coturn(common::Auth::Secret("churn-secret-0123456789ab"));
    let mut cfg = config(Pace::Paced { pps: 50.0 }, 200, server.pid());
    cfg.plan.duration = Duration::from_secs(3);
    cfg.plan.refresh = Some(Duration::from_millis(700));
    cfg.plan.churn_per_flow = 0.5;
    let r = run_turn(&turn_options(
        server.addr,
        TurnProtocol::Indication,
        8,
        rest("churn-secret-0123456789ab"),
        cfg,
    ))
    .expect("turn load with churn runs");
    assert_relay_adds_up(&r, 8);
    assert_control_ran(&r);
}
