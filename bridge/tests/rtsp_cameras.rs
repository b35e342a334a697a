//! The bridge between a real RTSP server and real WebRTC viewers: GStreamer's RTSP server
//! (`tests/fake_camera.py`, a live H.264 test pattern with a GOP that does not restart per
//! client, as a camera's) in front, iceway-signal and iceway-turn in this process, and
//! iceway-client's viewer (webrtc-rs) watching relay only. Needs Debian's python3 with
//! GStreamer's RTSP server (scripts/install-test-deps.sh installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceway_auth::{AppClaims, Role, mint_hs256};
use iceway_bridge::config::{CameraConfig, Transport};
use iceway_bridge::{Bridge, Config};
use iceway_client::protocol::{ClientFrame, ServerFrame};
use iceway_client::signaling::{self, Incoming};
use iceway_client::viewer::{self, ViewerOptions, ViewerReport};
use iceway_service::Shutdown;
use iceway_signal::{Config as SignalServerConfig, SignalServer};
use iceway_testkit::{Proc, require};
use iceway_turn::config::{Config as TurnServerConfig, TurnConfig};
use iceway_turn::server::TurnServer;
use tokio_util::sync::CancellationToken;

const JWT: &[u8] = b"bridge-test-app-key-0123456789abcdef";
const PYTHON: &str = "/usr/bin/python3";
const INSTALL: &str = "scripts/install-test-deps.sh";

fn token(sub: &str, role: Role, cams: &[&str]) -> String {
    let cams = cams.iter().map(|c| (*c).to_owned()).collect();
    let claims = AppClaims::new(
        sub,
        role,
        cams,
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    mint_hs256("default", JWT, &claims)
}

/// GStreamer's RTSP server as a camera; killed by pid on drop.
struct FakeCamera {
    proc: Option<Proc>,
    port: u16,
    args: Vec<String>,
}

impl FakeCamera {
    fn start(args: &[&str]) -> Self {
        Self::start_on(0, args.iter().map(|a| (*a).to_owned()).collect())
    }

    fn start_on(port: u16, args: Vec<String>) -> Self {
        require(PYTHON, INSTALL);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_camera.py");
        let mut proc = Proc::spawn(
            Command::new(PYTHON)
                .arg(script)
                .args(["--port", &port.to_string()])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "fake camera",
        );
        let stdout = proc.child_mut().stdout.take().expect("stdout");
        let line =
            iceway_testkit::read_first_line(stdout, Duration::from_secs(20)).unwrap_or_else(|| {
                panic!("the fake camera did not start (GStreamer RTSP server: {INSTALL})")
            });
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            proc: Some(proc),
            port,
            args,
        }
    }

    fn url(&self) -> String {
        format!("rtsp://127.0.0.1:{}/cam", self.port)
    }

    fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.terminate();
        }
    }

    /// The same camera back on the same port (as a camera that rebooted).
    fn restart(&mut self) {
        self.stop();
        let again = Self::start_on(self.port, self.args.clone());
        *self = again;
    }
}

/// iceway-turn and iceway-signal in this process, on loopback.
struct Stack {
    signal_url: String,
    dir: tempfile::TempDir,
    stops: Vec<Shutdown>,
}

impl Stack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let secret = dir.path().join("turn-secret");
        std::fs::write(&secret, "5b2d8c4f6a0e9b3d7c1f5a8e7f3c1a9e\n").expect("secret");
        let jwt = dir.path().join("jwt");
        std::fs::write(&jwt, JWT).expect("jwt");
        // Tests of this binary run in parallel, each with its own TURN: disjoint relay ranges.
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 20;
        let lo = 20_000 + (std::process::id() % 20) as u16 * 2_000 + n * 100;
        let mut turn_cfg = TurnServerConfig {
            turn: TurnConfig {
                listen: vec!["127.0.0.1:0".parse().expect("addr")],
                tls_listen: Vec::new(),
                realm: "iceway".into(),
                relay_range: format!("{lo}-{}", lo + 99),
                allow_peers: vec!["127.0.0.0/8".parse().expect("net")],
                threads: 1,
                ..TurnConfig::default()
            },
            ..TurnServerConfig::default()
        };
        turn_cfg.turn_credentials.secret_file = Some(secret.clone());
        let turn = TurnServer::bind(&turn_cfg, &prometheus::Registry::new())
            .await
            .expect("turn");
        let turn_addr: SocketAddr = turn.local_addrs()[0];
        let turn_stop = Shutdown::new();
        tokio::spawn(turn.run(turn_stop.clone()));

        let mut cfg = SignalServerConfig::default();
        cfg.signal.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.jwt.secret_file = Some(jwt);
        cfg.turn_credentials.secret_file = Some(secret);
        cfg.turn_credentials.urls = vec![format!("turn:{turn_addr}?transport=udp")];
        let signal = SignalServer::bind(&cfg, &prometheus::Registry::new())
            .await
            .expect("signal");
        let signal_url = format!("ws://{}/v1/ws", signal.local_addr());
        let signal_stop = Shutdown::new();
        tokio::spawn(signal.run(signal_stop.clone()));
        Self {
            signal_url,
            dir,
            stops: vec![turn_stop, signal_stop],
        }
    }

    fn jwt_file(&self) -> PathBuf {
        self.dir.path().join("jwt")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for s in &self.stops {
            s.begin_drain();
        }
    }
}

/// The bridge in this process with one camera; its metrics and a stop.
struct Running {
    registry: prometheus::Registry,
    stop: Shutdown,
}

impl Running {
    fn metric(&self, name_and_labels: &str) -> f64 {
        let text = iceway_service::metrics::encode(&self.registry);
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.begin_drain();
    }
}

async fn bridge(
    stack: &Stack,
    url: &str,
    credentials: Option<&Path>,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let mut config = Config::default();
    config.bridge.signal_url = stack.signal_url.clone();
    config.bridge.relay_only = true;
    config.bridge.reconnect_min = Duration::from_millis(200);
    config.bridge.reconnect_max = Duration::from_secs(1);
    config.bridge.cameras = vec![CameraConfig {
        id: "porch".into(),
        url: url.to_owned(),
        credentials_file: credentials.map(Path::to_path_buf),
        transport: Transport::Tcp,
        token_file: None,
    }];
    config.jwt.secret_file = Some(stack.jwt_file());
    config.drain.timeout = Duration::from_secs(2);
    tweak(&mut config);
    config.validate().expect("valid bridge config");
    let registry = prometheus::Registry::new();
    let bridge = Bridge::bind(&config, &registry).await.expect("bridge");
    let stop = Shutdown::new();
    tokio::spawn(bridge.run(stop.clone()));
    Running { registry, stop }
}

async fn watch(stack: &Stack, frames: u64, timeout: Duration) -> ViewerReport {
    let opts = ViewerOptions {
        signal_url: stack.signal_url.clone(),
        token: token("alice", Role::Viewer, &["porch"]),
        token_file: None,
        camera: "porch".into(),
        relay_only: true,
        bind: Some("127.0.0.1".parse().expect("ip")),
        ice_servers: None,
        frames,
        timeout,
        progress: None,
    };
    viewer::run(opts, CancellationToken::new())
        .await
        .expect("viewer")
}

fn assert_video(r: &ViewerReport, frames: u64) {
    assert!(r.ok, "{r:?}");
    assert!(r.frames >= frames, "{r:?}");
    assert!(r.keyframes >= 1, "no IDR with SPS/PPS in front: {r:?}");
    let pair = r
        .selected_pair
        .as_ref()
        .unwrap_or_else(|| panic!("no selected pair: {r:?}"));
    assert_eq!(pair.local, "relay", "{r:?}");
}

/// A signaling viewer that only listens to presence: `camera-online` / `camera-offline`.
struct Presence {
    _sender: signaling::SignalSender,
    rx: tokio::sync::mpsc::UnboundedReceiver<Incoming>,
}

async fn presence(stack: &Stack) -> Presence {
    let (_w, sender, rx) =
        signaling::connect(&stack.signal_url, &token("bob", Role::Viewer, &["porch"]))
            .await
            .expect("presence viewer");
    sender.send(ClientFrame::Watch {
        camera: "porch".into(),
    });
    Presence {
        _sender: sender,
        rx,
    }
}

/// Waits until the camera is reported `want` ("online" or "offline"); the first report of a
/// fresh watch says where it stands now.
async fn await_presence(p: &mut Presence, want: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if next_presence(p, left).await == want {
            return;
        }
    }
}

async fn next_presence(p: &mut Presence, within: Duration) -> &'static str {
    let rx = &mut p.rx;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a presence frame in time")
            .expect("signaling open");
        match msg {
            Incoming::Frame(ServerFrame::CameraOnline { .. }) => return "online",
            Incoming::Frame(ServerFrame::CameraOffline { .. }) => return "offline",
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("presence socket closed: {c:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_camera_reaches_a_viewer_through_turn_starting_at_an_idr() {
    let camera = FakeCamera::start(&["--profile", "baseline", "--audio"]);
    let stack = Stack::start().await;
    let running = bridge(&stack, &camera.url(), None, |_| {}).await;
    let r = watch(&stack, 60, Duration::from_secs(40)).await;
    assert_video(&r, 60);
    // A second viewer joins mid-GOP: it starts from the cached IDR, not the next one (and if
    // the first packets are lost to the DTLS race, its PLI is answered from the cache).
    let r2 = watch(&stack, 45, Duration::from_secs(30)).await;
    assert_video(&r2, 45);
    assert!(running.metric("iceway_bridge_forwarded_bytes_total{kind=\"video\"}") > 0.0);
    assert!(
        running.metric("iceway_bridge_forwarded_bytes_total{kind=\"audio\"}") > 0.0,
        "G.711 passed through"
    );
    assert_eq!(running.metric("iceway_bridge_cameras{state=\"up\"}"), 1.0);
    assert!(running.metric("iceway_bridge_first_frame_seconds_count") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_profile_camera_behind_digest_auth_plays() {
    let camera = FakeCamera::start(&["--profile", "high", "--auth", "viewer:s3cret-pw"]);
    let stack = Stack::start().await;
    let creds = stack.write("camera-creds", "viewer:s3cret-pw\n");
    let _running = bridge(&stack, &camera.url(), Some(&creds), |_| {}).await;
    let r = watch(&stack, 60, Duration::from_secs(40)).await;
    assert_video(&r, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_reported_and_not_retried_in_a_loop() {
    let camera = FakeCamera::start(&["--auth", "viewer:right-password"]);
    let stack = Stack::start().await;
    let creds = stack.write("camera-creds", "viewer:wrong-password\n");
    let mut presence = presence(&stack).await;
    let running = bridge(&stack, &camera.url(), Some(&creds), |_| {}).await;
    assert_eq!(
        next_presence(&mut presence, Duration::from_secs(10)).await,
        "offline"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while running.metric("iceway_bridge_rtsp_reconnects_total{reason=\"auth\"}") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no auth failure counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // auth_retry is 60 s: in the next seconds nothing tries again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        running.metric("iceway_bridge_rtsp_reconnects_total{reason=\"auth\"}"),
        1.0
    );
    assert_eq!(running.metric("iceway_bridge_cameras{state=\"down\"}"), 1.0);
    drop(camera);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_camera_going_down_is_camera_offline_and_coming_back_is_camera_online() {
    let mut camera = FakeCamera::start(&[]);
    let stack = Stack::start().await;
    let running = bridge(&stack, &camera.url(), None, |c| {
        c.bridge.frame_timeout = Duration::from_secs(2);
    })
    .await;
    let mut presence = presence(&stack).await;
    await_presence(&mut presence, "online", Duration::from_secs(20)).await;
    assert_video(&watch(&stack, 30, Duration::from_secs(30)).await, 30);

    camera.stop();
    assert_eq!(
        next_presence(&mut presence, Duration::from_secs(15)).await,
        "offline"
    );
    camera.restart();
    assert_eq!(
        next_presence(&mut presence, Duration::from_secs(20)).await,
        "online"
    );
    assert_video(&watch(&stack, 30, Duration::from_secs(30)).await, 30);
    assert!(
        running.metric("iceway_bridge_rtsp_reconnects_total{reason=\"ended\"}")
            + running.metric("iceway_bridge_rtsp_reconnects_total{reason=\"error\"}")
            + running.metric("iceway_bridge_rtsp_reconnects_total{reason=\"timeout\"}")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_viewers_watch_one_camera_at_once() {
    let camera = FakeCamera::start(&[]);
    let stack = Stack::start().await;
    let running = bridge(&stack, &camera.url(), None, |_| {}).await;
    let stack = Arc::new(stack);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let s = Arc::clone(&stack);
        tasks.push(tokio::spawn(async move {
            watch(&s, 45, Duration::from_secs(45)).await
        }));
    }
    for t in tasks {
        assert_video(&t.await.expect("viewer task"), 45);
    }
    assert!(running.metric("iceway_bridge_first_frame_seconds_count") >= 3.0);
    drop(camera);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_opened_before_the_camera_exists_gets_video_when_it_comes_up() {
    // A port with nothing on it yet: the camera is still off.
    let port = iceway_testkit::free_port();
    let stack = Stack::start().await;
    let _running = bridge(
        &stack,
        &format!("rtsp://127.0.0.1:{port}/cam"),
        None,
        |_| {},
    )
    .await;
    let stack = Arc::new(stack);
    let s = Arc::clone(&stack);
    let mut presence = presence(&stack).await;
    let viewer = tokio::spawn(async move { watch(&s, 30, Duration::from_secs(60)).await });
    assert_eq!(
        next_presence(&mut presence, Duration::from_secs(10)).await,
        "offline"
    );
    let _camera = FakeCamera::start_on(port, Vec::new());
    let r = viewer.await.expect("viewer task");
    assert_video(&r, 30);
    assert!(r.camera_was_offline, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_unpublishes_every_camera_at_once_and_exits() {
    let camera = FakeCamera::start(&[]);
    let stack = Stack::start().await;
    let mut presence = presence(&stack).await;
    let jwt = stack.jwt_file();
    let mut bridge = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_iceway-bridge"))
            .args(["--signal-url", &stack.signal_url])
            .args(["--camera", &format!("porch={}", camera.url())])
            .arg("--jwt-secret-file")
            .arg(&jwt)
            .args(["--admin", "127.0.0.1:0", "--drain-timeout", "5s"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit()),
        "iceway-bridge",
    );
    await_presence(&mut presence, "online", Duration::from_secs(20)).await;
    let pid = i32::try_from(bridge.pid()).expect("pid");
    // SAFETY: kill(2) on the pid of a child this test spawned and still holds.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // Well before the 30 s resume grace a dropped socket would get: the bridge said `leave`.
    assert_eq!(
        next_presence(&mut presence, Duration::from_secs(5)).await,
        "offline"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = bridge.try_wait() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    drop(camera);
}
