//! The Rust reference client keeps its signaling socket past its token's `exp`: when the
//! server sends `token-expiring`, it reads its token file again and sends the fresh token on
//! the open socket. Without a fresher token the server closes the socket with 4001.

use std::time::{Duration, SystemTime};

use iceway_auth::{AppClaims, Role, mint_hs256};
use iceway_client::protocol::ServerFrame;
use iceway_client::signaling::{self, Incoming};
use iceway_service::Shutdown;
use iceway_signal::{Config, SignalServer};

const SECRET: &[u8] = b"token-refresh-test-secret-0123456789abcdef";

fn token(sub: &str, life: Duration) -> String {
    let claims = AppClaims::new(sub, Role::Camera, vec![], SystemTime::now(), life);
    mint_hs256("default", SECRET, &claims)
}

/// An in-process signal server whose tokens are asked for 2 s before `exp` and honoured 1 s
/// past it.
async fn server(dir: &tempfile::TempDir) -> (String, Shutdown) {
    let secret = dir.path().join("jwt");
    std::fs::write(&secret, SECRET).expect("write secret");
    let mut config = Config::default();
    config.signal.listen = "127.0.0.1:0".parse().expect("addr");
    config.jwt.secret_file = Some(secret);
    config.jwt.leeway = Duration::from_secs(1);
    config.signal.token_refresh_lead = Duration::from_secs(2);
    config.turn_credentials.urls = vec!["stun:stun.test:3478".into()];
    let registry = prometheus::Registry::new();
    let server = SignalServer::bind(&config, &registry).await.expect("bind");
    let url = format!("ws://{}/v1/ws", server.local_addr());
    let shutdown = Shutdown::new();
    tokio::spawn(server.run(shutdown.clone()));
    (url, shutdown)
}

/// The next frame or close, skipping pongs; `None` if nothing came within `wait`.
async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Incoming>,
    wait: Duration,
) -> Option<Incoming> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}

#[tokio::test]
async fn a_token_file_kept_current_carries_the_socket_past_exp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _shutdown) = server(&dir).await;
    let file = dir.path().join("token");
    let short = token("cam1", Duration::from_secs(4));
    std::fs::write(&file, &short).expect("write token");
    let (_welcome, sender, mut rx) =
        signaling::connect_refreshing(&url, &short, Some(file.clone()))
            .await
            .expect("connect");
    // The app's sidecar puts a fresh token in the file before the old one runs out.
    std::fs::write(&file, token("cam1", Duration::from_secs(3600))).expect("write fresh");
    let mut refreshed = false;
    while let Some(incoming) = next(&mut rx, Duration::from_secs(10)).await {
        match incoming {
            Incoming::Frame(ServerFrame::TokenRefreshed { .. }) => {
                refreshed = true;
                break;
            }
            Incoming::Frame(_) => {}
            Incoming::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert!(refreshed, "the server accepted the token from the file");
    // Past the first token's exp and leeway, the socket is still open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(sender.send(iceway_client::protocol::ClientFrame::Ping));
    if let Some(Incoming::Closed(c)) = next(&mut rx, Duration::from_secs(2)).await {
        panic!("closed after the first token's exp: {c:?}");
    }
}

#[tokio::test]
async fn without_a_fresher_token_the_socket_closes_4001_at_exp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _shutdown) = server(&dir).await;
    let short = token("cam1", Duration::from_secs(3));
    let (_welcome, _sender, mut rx) = signaling::connect_refreshing(&url, &short, None)
        .await
        .expect("connect");
    loop {
        match next(&mut rx, Duration::from_secs(15)).await {
            Some(Incoming::Closed(c)) => {
                assert_eq!(c.code, Some(4001), "{c:?}");
                break;
            }
            Some(Incoming::Frame(_)) => {}
            None => panic!("the socket outlived its token"),
        }
    }
}
