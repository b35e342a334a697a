//! A real WebRTC call (the Rust reference camera and viewer, VP8 through iceway-turn) whose
//! camera and viewer are on two signal replicas sharing a real `redis-server`, while Redis is
//! paused for 8 s and then killed and restarted empty; and while the viewer's network changes
//! (its signaling socket left half-open) and the camera's replica crashes. The media flows
//! peer to peer through TURN, so none of these may stop it: frames keep arriving during each
//! fault and the call is never torn down (signaling resumes the sessions).
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y --no-install-recommends
//! redis-server`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use iceway_auth::{AppClaims, Role, mint_hs256};
use iceway_client::camera::{self, CameraOptions};
use iceway_client::media::Clip;
use iceway_client::viewer::{self, ViewerOptions};
use iceway_service::Shutdown;
use iceway_signal::{Config as SignalServerConfig, SignalServer};
use iceway_testkit::{CutProxy, Front, RedisServer, wait_until};
use iceway_turn::config::{Config as TurnServerConfig, TurnConfig};
use iceway_turn::server::TurnServer;
use tokio_util::sync::CancellationToken;

const JWT: &[u8] = b"call-through-faults-jwt-secret-0123456789";

fn token(role: Role, sub: &str, cams: &[&str]) -> String {
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

async fn turn(dir: &tempfile::TempDir) -> (SocketAddr, Shutdown) {
    let secret = dir.path().join("turn-secret");
    std::fs::write(&secret, "7f3c1a9e5b2d8c4f6a0e9b3d7c1f5a8e\n").expect("write secret");
    let lo = 30_000 + (std::process::id() % 200) as u16 * 100;
    let mut cfg = TurnServerConfig {
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
    cfg.turn_credentials.secret_file = Some(secret);
    let server = TurnServer::bind(&cfg, &prometheus::Registry::new())
        .await
        .expect("turn");
    let addr = server.local_addrs()[0];
    let shutdown = Shutdown::new();
    tokio::spawn(server.run(shutdown.clone()));
    (addr, shutdown)
}

/// A signal replica in this process, routing through `redis` with short TTLs.
async fn replica(
    dir: &tempfile::TempDir,
    redis_url: String,
    turn: SocketAddr,
) -> (String, Shutdown) {
    let jwt = dir.path().join("jwt");
    std::fs::write(&jwt, JWT).expect("write jwt");
    let mut cfg = SignalServerConfig::default();
    cfg.signal.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.signal.redis_url = Some(redis_url);
    cfg.signal.presence_ttl = Duration::from_secs(3);
    // Longer than the 5 s cut: a replica cut off for longer than its TTL is dead to the
    // others, as if it had crashed (the other test).
    cfg.signal.replica_ttl = Duration::from_secs(10);
    cfg.signal.backplane_timeout = Duration::from_secs(2);
    cfg.jwt.secret_file = Some(jwt);
    cfg.turn_credentials.secret_file = Some(dir.path().join("turn-secret"));
    cfg.turn_credentials.urls = vec![format!("turn:{turn}?transport=udp")];
    let server = SignalServer::bind(&cfg, &prometheus::Registry::new())
        .await
        .expect("signal");
    let url = format!("ws://{}/v1/ws", server.local_addr());
    let shutdown = Shutdown::new();
    tokio::spawn(server.run(shutdown.clone()));
    (url, shutdown)
}

fn signal_config(
    dir: &tempfile::TempDir,
    redis: &RedisServer,
    turn: SocketAddr,
) -> SignalServerConfig {
    let jwt = dir.path().join("jwt");
    std::fs::write(&jwt, JWT).expect("write jwt");
    let mut cfg = SignalServerConfig::default();
    cfg.signal.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.signal.redis_url = Some(redis.url());
    cfg.signal.presence_ttl = Duration::from_secs(3);
    cfg.signal.replica_ttl = Duration::from_secs(2);
    cfg.signal.backplane_timeout = Duration::from_secs(2);
    // Clients give a silent socket up after three heartbeats.
    cfg.signal.heartbeat = Duration::from_secs(2);
    cfg.jwt.secret_file = Some(jwt);
    cfg.turn_credentials.secret_file = Some(dir.path().join("turn-secret"));
    cfg.turn_credentials.urls = vec![format!("turn:{turn}?transport=udp")];
    cfg
}

/// A signal replica on a runtime of its own, so that it can crash: dropping the runtime ends
/// every task of it at once (its sockets and Redis connections close, nothing of it runs
/// again, no session is ended politely), as when the process is killed.
struct Crashable {
    addr: SocketAddr,
    registry: prometheus::Registry,
    crash: Option<std::sync::mpsc::Sender<()>>,
}

impl Crashable {
    fn start(cfg: SignalServerConfig) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (crash, crashed) = std::sync::mpsc::channel::<()>();
        let registry = prometheus::Registry::new();
        let r = registry.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let addr = rt.block_on(async {
                let server = SignalServer::bind(&cfg, &r).await.expect("signal");
                let addr = server.local_addr();
                tokio::spawn(server.run(Shutdown::new()));
                addr
            });
            addr_tx.send(addr).expect("send addr");
            // Until crashed, or until the test ends and drops the handle.
            let _ = crashed.recv();
            rt.shutdown_background();
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("replica started");
        Self {
            addr,
            registry,
            crash: Some(crash),
        }
    }

    fn crash(&mut self) {
        self.crash.take();
    }

    /// `iceway_signal_connections_total{result}` so far.
    fn connections(&self, result: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == "iceway_signal_connections_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "result" && l.value() == result)
            })
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// How long until a connection with `result` is counted here (the resume took).
    async fn until_counted(&self, result: &str, since: Instant) -> Duration {
        let before = self.connections(result);
        wait_until(
            &format!("a {result} connection"),
            Duration::from_secs(30),
            || async { self.connections(result) > before },
        )
        .await;
        since.elapsed()
    }
}

/// A real call: the Rust camera on `camera_url`, the Rust viewer on `viewer_url`, both relay
/// only, VP8 through TURN, until 30 frames have arrived.
struct Call {
    cam: tokio::task::JoinHandle<Result<(), camera::CameraError>>,
    view: tokio::task::JoinHandle<Result<viewer::ViewerReport, viewer::ViewerError>>,
    /// Frames the viewer reassembled so far.
    progress: Arc<AtomicU64>,
    started: Instant,
    stop_viewer: CancellationToken,
    stop_camera: CancellationToken,
}

impl Call {
    async fn up(camera_url: String, viewer_url: String) -> Self {
        let (stop_viewer, stop_camera) = (CancellationToken::new(), CancellationToken::new());
        let cam = tokio::spawn(camera::run(
            CameraOptions {
                signal_url: camera_url,
                token: token(Role::Camera, "cam1", &[]),
                token_file: None,
                clip: Arc::new(Clip::builtin()),
                relay_only: true,
                bind: None,
                ice_servers: None,
                duration: Some(Duration::from_secs(120)),
            },
            stop_camera.clone(),
        ));
        let progress = Arc::new(AtomicU64::new(0));
        let view = tokio::spawn(viewer::run(
            ViewerOptions {
                signal_url: viewer_url,
                token: token(Role::Viewer, "alice", &["cam1"]),
                token_file: None,
                camera: "cam1".into(),
                relay_only: true,
                bind: None,
                ice_servers: None,
                frames: u64::MAX,
                timeout: Duration::from_secs(120),
                progress: Some(progress.clone()),
            },
            stop_viewer.clone(),
        ));
        let started = Instant::now();
        wait_until(
            "the call is up (30 frames)",
            Duration::from_secs(60),
            || {
                let p = progress.clone();
                async move { p.load(Ordering::Relaxed) >= 30 }
            },
        )
        .await;
        println!("call up after {:?}", started.elapsed());
        Self {
            cam,
            view,
            progress,
            started,
            stop_viewer,
            stop_camera,
        }
    }

    /// Ends the call, the viewer first (the camera leaving is not a fault to report), and
    /// returns the viewer's report. Neither side may have given up before.
    async fn end(self) -> viewer::ViewerReport {
        assert!(
            !self.view.is_finished(),
            "the viewer gave up: {:?}",
            self.view.await
        );
        assert!(
            !self.cam.is_finished(),
            "the camera gave up: {:?}",
            self.cam.await
        );
        self.stop_viewer.cancel();
        let report = self.view.await.expect("viewer task").expect("viewer");
        self.stop_camera.cancel();
        let _ = self.cam.await;
        report
    }
}

/// Frames received during `fault`: sampled when it starts and when it is over.
async fn frames_during(progress: &AtomicU64, fault: impl Future<Output = ()>) -> u64 {
    let before = progress.load(Ordering::Relaxed);
    fault.await;
    progress.load(Ordering::Relaxed) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_while_redis_pauses_restarts_empty_and_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = RedisServer::start().await;
    let (turn_addr, _turn) = turn(&dir).await;
    // The camera's replica reaches Redis through a proxy that can cut the network between them.
    let redis_addr: SocketAddr = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("redis addr");
    let cut = CutProxy::start(redis_addr).await;
    let (url_a, _a) = replica(&dir, format!("redis://{}/", cut.addr), turn_addr).await;
    let (url_b, _b) = replica(&dir, redis.url(), turn_addr).await;

    let call = Call::up(url_a, url_b).await;

    let paused = frames_during(&call.progress, async {
        redis.pause();
        tokio::time::sleep(Duration::from_secs(8)).await;
        redis.resume();
    })
    .await;
    // 30 fps for 8 s is 240; half of it is far above what a torn-down call would show.
    println!("redis paused 8 s: {paused} frames meanwhile");
    assert!(
        paused >= 120,
        "media stopped during the pause: {paused} frames"
    );

    let restarted = frames_during(&call.progress, async {
        redis.restart_empty().await;
        // Time for the replicas to reconnect and restore presence.
        tokio::time::sleep(Duration::from_secs(6)).await;
    })
    .await;
    println!("redis restarted empty: {restarted} frames in the 6 s after");
    assert!(
        restarted >= 90,
        "media stopped after the restart: {restarted}"
    );

    let isolated = frames_during(&call.progress, async {
        cut.cut();
        tokio::time::sleep(Duration::from_secs(5)).await;
        cut.heal();
    })
    .await;
    println!("camera's replica cut from redis for 5 s: {isolated} frames meanwhile");
    assert!(
        isolated >= 75,
        "media stopped during the cut: {isolated} frames"
    );

    // The call is still the same one: it goes on, and ends only when stopped.
    let after = frames_during(&call.progress, tokio::time::sleep(Duration::from_secs(3))).await;
    assert!(after >= 45, "{after}");
    let report = call.end().await;
    println!(
        "viewer: {} frames, {} peer connection(s), camera offline seen: {}, reason {:?}",
        report.frames, report.peer_connections, report.camera_was_offline, report.reason
    );
    // A `camera-offline` or `peer-left` for the live camera would have closed the viewer's peer
    // connection (a new one after it): one for the whole run means neither came. (The report's
    // camera_was_offline also counts an offline camera at the start, before it published.)
    assert_eq!(report.peer_connections, 1, "the call was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_when_the_viewers_network_changes_and_the_cameras_replica_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().await;
    let (turn_addr, _turn) = turn(&dir).await;
    let mut a = Crashable::start(signal_config(&dir, &redis, turn_addr));
    let b = Crashable::start(signal_config(&dir, &redis, turn_addr));
    // What the clients dial: one front (load balancer) each, camera to A, viewer to B.
    let cam_front = Front::start(a.addr).await;
    let viewer_front = Front::start(b.addr).await;

    let call = Call::up(
        format!("ws://{}/v1/ws", cam_front.addr),
        format!("ws://{}/v1/ws", viewer_front.addr),
    )
    .await;

    // The viewer's phone changes network: its socket is left half-open, nothing more gets
    // through it. The client notices the silence (three 2 s heartbeats) and resumes its
    // session on a new socket; the server closes the stale one.
    let network_change = Instant::now();
    let changed = frames_during(&call.progress, async {
        viewer_front.strand();
        let resumed = b.until_counted("resumed", network_change).await;
        println!("viewer network changed: signaling resumed after {resumed:?}");
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(resumed)).await;
    })
    .await;
    println!("viewer network changed: {changed} frames in the 10 s after");
    assert!(
        changed >= 150,
        "media stopped after the network change: {changed}"
    );

    // The camera's replica crashes; the load balancer sends its reconnect to B, where it
    // resumes from the state A saved, once A is found dead (replica TTL 2 s).
    let crash = Instant::now();
    let crashed = frames_during(&call.progress, async {
        cam_front.set_target(b.addr);
        let moved_in = b.connections("moved_in");
        a.crash();
        let resumed = b.until_counted("moved_in", crash).await;
        assert_eq!(b.connections("moved_in"), moved_in + 1);
        println!("camera's replica crashed: the camera resumed on the other after {resumed:?}");
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(resumed)).await;
    })
    .await;
    println!("camera's replica crashed: {crashed} frames in the 8 s after");
    assert!(crashed >= 120, "media stopped after the crash: {crashed}");

    // Past the time a crashed replica's sessions are declared gone: the call goes on.
    let after = frames_during(&call.progress, tokio::time::sleep(Duration::from_secs(4))).await;
    assert!(after >= 60, "{after}");
    let started = call.started;
    let report = call.end().await;
    println!(
        "viewer: {} frames, {} peer connection(s), {} signaling resume(s), camera offline seen: {}, \
         network change at {:?}, crash at {:?}",
        report.frames,
        report.peer_connections,
        report.signaling_resumes,
        report.camera_was_offline,
        network_change.duration_since(started),
        crash.duration_since(started),
    );
    // A `camera-offline` or `peer-left` for the live camera would have closed the viewer's peer
    // connection (a new one after it): one for the whole run means neither came. (The report's
    // camera_was_offline also counts an offline camera at the start, before it published.)
    assert_eq!(report.peer_connections, 1, "the call was restarted");
    assert!(report.signaling_resumes >= 1, "the viewer never resumed");
    drop(b);
}
