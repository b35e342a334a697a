//! A real WebRTC call (the Rust reference camera and viewer, VP8 through iceway-turn) whose
//! camera and viewer are on two signal replicas sharing a real `redis-server`, while Redis is
//! paused for 8 s and then killed and restarted empty. The media flows peer to peer through
//! TURN, so a backplane fault must not stop it: frames keep arriving during each fault and the
//! call is never torn down.
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
use iceway_testkit::{RedisServer, wait_until};
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
    redis: &RedisServer,
    turn: SocketAddr,
) -> (String, Shutdown) {
    let jwt = dir.path().join("jwt");
    std::fs::write(&jwt, JWT).expect("write jwt");
    let mut cfg = SignalServerConfig::default();
    cfg.signal.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.signal.redis_url = Some(redis.url());
    cfg.signal.presence_ttl = Duration::from_secs(3);
    cfg.signal.replica_ttl = Duration::from_secs(2);
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

/// Frames received during `fault`: sampled when it starts and when it is over.
async fn frames_during(progress: &AtomicU64, fault: impl Future<Output = ()>) -> u64 {
    let before = progress.load(Ordering::Relaxed);
    fault.await;
    progress.load(Ordering::Relaxed) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_flowing_while_redis_pauses_and_restarts_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = RedisServer::start().await;
    let (turn_addr, _turn) = turn(&dir).await;
    let (url_a, _a) = replica(&dir, &redis, turn_addr).await;
    let (url_b, _b) = replica(&dir, &redis, turn_addr).await;

    let stop = CancellationToken::new();
    let cam = tokio::spawn(camera::run(
        CameraOptions {
            signal_url: url_a,
            token: token(Role::Camera, "cam1", &[]),
            token_file: None,
            clip: Arc::new(Clip::builtin()),
            relay_only: true,
            bind: None,
            ice_servers: None,
            duration: Some(Duration::from_secs(120)),
        },
        stop.clone(),
    ));
    let progress = Arc::new(AtomicU64::new(0));
    let view = tokio::spawn(viewer::run(
        ViewerOptions {
            signal_url: url_b,
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
        stop.clone(),
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

    let paused = frames_during(&progress, async {
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

    let restarted = frames_during(&progress, async {
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

    // The call is still the same one: it goes on, and ends only when stopped.
    let after = frames_during(&progress, tokio::time::sleep(Duration::from_secs(3))).await;
    assert!(after >= 45, "{after}");
    assert!(!view.is_finished(), "the viewer gave up: {:?}", view.await);
    stop.cancel();
    let _ = cam.await;
    let report = view.await.expect("viewer task").expect("viewer");
    println!(
        "viewer: {} frames, reason {:?}",
        report.frames, report.reason
    );
}
