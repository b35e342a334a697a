//! Helpers for the signal-server integration tests: an in-process server on port 0, tokens,
//! and a WebSocket client that waits on frames with a timeout (never a sleep).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use iceway_auth::{AppClaims, Role, mint_hs256};
use iceway_service::Shutdown;
use iceway_signal::{Config, SignalServer};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod cluster;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef-0123456789";
/// Every wait in these tests; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn secret_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), SECRET).unwrap();
    f
}

pub fn token(role: Role, sub: &str, cams: &[&str]) -> String {
    let claims = AppClaims::new(
        sub,
        role,
        cams.iter().map(|c| (*c).to_owned()).collect(),
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    mint_hs256("default", SECRET, &claims)
}

/// A token that expires `life` from now.
pub fn short_token(role: Role, sub: &str, cams: &[&str], life: Duration) -> String {
    let claims = AppClaims::new(
        sub,
        role,
        cams.iter().map(|c| (*c).to_owned()).collect(),
        SystemTime::now(),
        life,
    );
    mint_hs256("default", SECRET, &claims)
}

pub fn camera_token(sub: &str) -> String {
    token(Role::Camera, sub, &[])
}

pub fn viewer_token(sub: &str, cams: &[&str]) -> String {
    token(Role::Viewer, sub, cams)
}

pub fn expired_token(role: Role, sub: &str) -> String {
    let mut claims = AppClaims::new(
        sub,
        role,
        vec![],
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(60),
    );
    claims.iat = claims.exp - 60;
    mint_hs256("default", SECRET, &claims)
}

/// A server running in this process; dropped at the end of the test.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub registry: prometheus::Registry,
    pub task: Option<tokio::task::JoinHandle<Result<(), iceway_signal::SignalError>>>,
    _secret: tempfile::NamedTempFile,
}

pub fn test_config(secret: &tempfile::NamedTempFile) -> Config {
    let mut config = Config::default();
    config.signal.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.jwt.secret_file = Some(secret.path().to_owned());
    config.turn_credentials.urls = vec!["stun:stun.test:3478".into()];
    // A dropped socket ends its session at once here; the resume tests turn the grace on.
    config.signal.resume_grace = Duration::ZERO;
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let secret = secret_file();
        let mut config = test_config(&secret);
        tweak(&mut config);
        let registry = prometheus::Registry::new();
        let server = SignalServer::bind(&config, &registry).await.unwrap();
        let addr = server.local_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            registry,
            task: Some(task),
            _secret: secret,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    pub fn metrics(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A camera or viewer app.
pub struct Client {
    pub ws: Ws,
    pub session: String,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The socket ended without a close frame.
    NoCloseFrame,
}

pub async fn connect_raw(url: &str, bearer: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(req, Some(config), false),
    )
    .await
    .expect("connect timed out")?;
    Ok(ws)
}

impl Client {
    /// Connects with `Authorization: Bearer` and waits for `welcome`.
    pub async fn connect(url: &str, token: &str) -> Self {
        let ws = connect_raw(url, Some(token)).await.unwrap();
        Self::welcomed(ws).await
    }

    /// Connects like a browser: no header, then an `auth` frame.
    pub async fn connect_with_auth_frame(url: &str, token: &str) -> Self {
        let mut ws = connect_raw(url, None).await.unwrap();
        ws.send(Message::text(
            json!({"type":"auth","token":token}).to_string(),
        ))
        .await
        .unwrap();
        Self::welcomed(ws).await
    }

    /// Connects and returns the `welcome` too (its `resume` secret).
    pub async fn connect_welcomed(url: &str, token: &str) -> (Self, Value) {
        let ws = connect_raw(url, Some(token)).await.unwrap();
        let mut c = Self {
            ws,
            session: String::new(),
        };
        let welcome = c.expect("welcome").await;
        c.session = welcome["session"].as_str().unwrap().to_owned();
        (c, welcome)
    }

    /// Connects with a bearer token and `Iceway-Resume: <session> <secret>`, and returns the
    /// `welcome`.
    pub async fn resume(url: &str, token: &str, session: &str, secret: &str) -> (Self, Value) {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req.headers_mut().insert(
            "iceway-resume",
            format!("{session} {secret}").parse().unwrap(),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
            .unwrap();
        let mut c = Self {
            ws,
            session: String::new(),
        };
        let welcome = c.expect("welcome").await;
        c.session = welcome["session"].as_str().unwrap().to_owned();
        (c, welcome)
    }

    async fn welcomed(ws: Ws) -> Self {
        let mut c = Self {
            ws,
            session: String::new(),
        };
        let welcome = c.expect("welcome").await;
        c.session = welcome["session"].as_str().unwrap().to_owned();
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame as JSON; panics on timeout or close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next frame, which must have type `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], kind, "expected {kind}, got {v}");
        v
    }

    /// The next frame must be an error with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.expect("error").await;
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Skips frames until one of type `kind` arrives.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        for _ in 0..1000 {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
        panic!("no {kind} in 1000 frames");
    }

    pub async fn closed(self) -> Closed {
        closed(self.ws).await
    }

    pub async fn ping_pong(&mut self) {
        self.send(json!({"type":"ping"})).await;
        self.expect("pong").await;
    }
}

/// Reads until the server closes; returns its close code. Frames before it are skipped.
pub async fn closed(mut ws: Ws) -> Closed {
    for _ in 0..10_000 {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(Some(f)))) => return Closed::Code(u16::from(f.code)),
            Some(Ok(Message::Close(None))) => return Closed::Code(u16::from(CloseCode::Status)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Closed::NoCloseFrame,
        }
    }
    panic!("server never closed");
}
