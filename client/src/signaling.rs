//! The WebSocket side of signaling: connect with the app token as a bearer header (native
//! clients, DESIGN §3), wait for `welcome`, then exchange frames through channels. A writer task
//! keeps the heartbeat; a reader task hands parsed frames on and reports how the socket closed.
//! A socket on which nothing arrives for three heartbeats is given up (a network change leaves
//! it half-open), and the next connect resumes the session with the secret `welcome` gave.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::protocol::{ClientFrame, IceServer, ServerFrame, ice_servers_of};

const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// A resume can wait for the server to find the replica that held the session dead (its
/// `replica_ttl`, 10 s by default) before `welcome`.
const RESUME_WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(20);
/// Heartbeats without a byte from the server before the socket is taken for dead.
const SILENT_HEARTBEATS: u32 = 3;
/// Frames kept while disconnected, sent after a resume (oldest dropped past it).
const MAX_UNSENT: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("signaling URL {0:?} is not a ws:// or wss:// URL")]
    BadUrl(String),
    #[error("cannot reach the signaling server: {0}")]
    Connect(#[source] tungstenite::Error),
    #[error("the signaling server refused the token ({0})")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("no welcome from the signaling server within {0:?}")]
    NoWelcome(Duration),
    #[error("the signaling server closed the connection before welcome ({0})")]
    ClosedEarly(String),
    #[error("the welcome frame's iceServers are malformed: {0}")]
    BadIceServers(#[source] serde_json::Error),
}

impl SignalError {
    /// Errors a reconnect cannot fix.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            SignalError::Unauthorized(_) | SignalError::Forbidden(_) | SignalError::BadUrl(_)
        )
    }
}

/// What the server said in `welcome`.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub session: String,
    pub ice_servers: Vec<IceServer>,
    pub heartbeat: Duration,
    /// How to resume this session on the next connect, if the server offers resume.
    pub resume: Option<Resume>,
    /// The session asked for was resumed: its peers, presence and watches are as they were.
    pub resumed: bool,
}

/// A session and the secret to take it back with (`Iceway-Resume`, docs/signaling.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub session: String,
    pub secret: String,
}

/// Something from the server: a frame, or the end of the connection.
#[derive(Debug)]
pub enum Incoming {
    Frame(ServerFrame),
    Closed(Closed),
}

/// How the connection ended. `code` is the WebSocket close code when the server sent one.
#[derive(Debug, Clone)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl Closed {
    /// 4001 unauthorized, 4003 forbidden and 4010 replaced (the camera was published by a
    /// newer connection) cannot be fixed by reconnecting; reconnecting after 4010 would take
    /// the camera back from the device that replaced this one.
    pub fn is_fatal(&self) -> bool {
        matches!(self.code, Some(4001) | Some(4003) | Some(4010))
    }
}

/// Sends frames to the server. Cloneable, and it outlives a connection: [`attach`] points it
/// at the next one. Frames sent while no connection takes them are kept (the last
/// `MAX_UNSENT`) and go out after a resume, or are dropped when the next connection is a new
/// session. `send` returns whether the frame went to a live connection.
///
/// [`attach`]: Self::attach
#[derive(Debug, Clone, Default)]
pub struct SignalSender {
    inner: Arc<Mutex<Outbox>>,
}

#[derive(Debug, Default)]
struct Outbox {
    tx: Option<mpsc::UnboundedSender<ClientFrame>>,
    unsent: VecDeque<ClientFrame>,
    /// The current connection's writer: asked to finish, and telling when it has.
    writer: Option<WriterControl>,
}

#[derive(Debug, Clone, Default)]
struct WriterControl {
    close: tokio_util::sync::CancellationToken,
    done: tokio_util::sync::CancellationToken,
}

impl SignalSender {
    pub fn send(&self, frame: ClientFrame) -> bool {
        let mut outbox = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let frame = match &outbox.tx {
            Some(tx) => match tx.send(frame) {
                Ok(()) => return true,
                Err(mpsc::error::SendError(frame)) => frame,
            },
            None => frame,
        };
        outbox.tx = None;
        if outbox.unsent.len() >= MAX_UNSENT {
            outbox.unsent.pop_front();
        }
        outbox.unsent.push_back(frame);
        false
    }

    /// Sends what is queued, closes the socket with a close frame (1000: the session ends now,
    /// its peers hear it at once) and waits up to `wait` for that to be done. For a clean exit:
    /// a process that just ends leaves the server waiting out a resume grace.
    pub async fn close(&self, wait: Duration) {
        let writer = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writer
            .take();
        if let Some(w) = writer {
            w.close.cancel();
            let _ = tokio::time::timeout(wait, w.done.cancelled()).await;
        }
    }

    /// Sends from now on through `connection`'s socket. `resumed`: the frames kept meanwhile
    /// go first; else they belonged to the old session and are dropped.
    pub fn attach(&self, connection: &SignalSender, resumed: bool) {
        let (tx, writer) = {
            let c = connection.inner.lock().unwrap_or_else(|e| e.into_inner());
            (c.tx.clone(), c.writer.clone())
        };
        let mut outbox = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let unsent = std::mem::take(&mut outbox.unsent);
        outbox.tx = tx;
        outbox.writer = writer;
        if resumed && let Some(tx) = &outbox.tx {
            for frame in unsent {
                let _ = tx.send(frame);
            }
        }
    }

    fn connected(tx: mpsc::UnboundedSender<ClientFrame>, writer: WriterControl) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Outbox {
                tx: Some(tx),
                unsent: VecDeque::new(),
                writer: Some(writer),
            })),
        }
    }
}

/// Connects, authenticates and waits for `welcome`.
pub async fn connect(
    url: &str,
    token: &str,
) -> Result<(Welcome, SignalSender, mpsc::UnboundedReceiver<Incoming>), SignalError> {
    connect_refreshing(url, token, None).await
}

/// The token to connect with: the one in `file` if it is set and readable, else `fallback`.
/// A sidecar or the operator keeps the file current; it is read again at each use.
pub fn current_token(file: Option<&Path>, fallback: &str) -> String {
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// As [`connect`]; when the server sends `token-expiring`, the token in `token_file` is read
/// again and sent on the open socket, so the connection outlives the token it started with.
pub async fn connect_refreshing(
    url: &str,
    token: &str,
    token_file: Option<PathBuf>,
) -> Result<(Welcome, SignalSender, mpsc::UnboundedReceiver<Incoming>), SignalError> {
    connect_resuming(url, token, token_file, None).await
}

/// As [`connect_refreshing`], asking to resume `resume`'s session (the previous connection's
/// [`Welcome::resume`]); [`Welcome::resumed`] says whether it was.
pub async fn connect_resuming(
    url: &str,
    token: &str,
    token_file: Option<PathBuf>,
    resume: Option<&Resume>,
) -> Result<(Welcome, SignalSender, mpsc::UnboundedReceiver<Incoming>), SignalError> {
    let refresh = token_file.map_or(TokenRefresh::None, TokenRefresh::File);
    connect_with(url, token, refresh, resume).await
}

/// Where a fresh token comes from when the server says the current one is expiring.
#[derive(Clone, Default)]
pub enum TokenRefresh {
    /// Nowhere: the socket closes (4001) when the token runs out.
    #[default]
    None,
    /// The token in this file, which a sidecar or the operator keeps current.
    File(PathBuf),
    /// Minted on demand by a service that holds the signing key (iceway-bridge).
    Mint(Arc<dyn Fn() -> String + Send + Sync>),
}

impl std::fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Mint(_) => f.write_str("Mint"),
        }
    }
}

impl TokenRefresh {
    /// The token to use now; `current` when no fresher one is to be had.
    pub fn fresh(&self, current: &str) -> String {
        match self {
            Self::None => current.to_owned(),
            Self::File(path) => current_token(Some(path), current),
            Self::Mint(mint) => mint(),
        }
    }
}

/// As [`connect_resuming`], with fresh tokens from `refresh`.
pub async fn connect_with(
    url: &str,
    token: &str,
    refresh: TokenRefresh,
    resume: Option<&Resume>,
) -> Result<(Welcome, SignalSender, mpsc::UnboundedReceiver<Incoming>), SignalError> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        return Err(SignalError::BadUrl(url.to_owned()));
    }
    let mut request = url
        .into_client_request()
        .map_err(|_| SignalError::BadUrl(url.to_owned()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        SignalError::Unauthorized("token has characters not allowed in a header".into())
    })?;
    request.headers_mut().insert("Authorization", bearer);
    if let Some(r) = resume
        && let Ok(value) = HeaderValue::from_str(&format!("{} {}", r.session, r.secret))
    {
        request.headers_mut().insert("Iceway-Resume", value);
    }
    let welcome_timeout = if resume.is_some() {
        RESUME_WELCOME_TIMEOUT
    } else {
        WELCOME_TIMEOUT
    };
    let (ws, _response) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let reason = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_else(|| resp.status().to_string());
            return Err(match resp.status().as_u16() {
                401 => SignalError::Unauthorized(reason),
                403 => SignalError::Forbidden(reason),
                _ => SignalError::Connect(tungstenite::Error::Http(resp)),
            });
        }
        Err(e) => return Err(SignalError::Connect(e)),
    };
    let (mut sink, mut stream) = ws.split();

    // Until welcome arrives nothing else may happen, so read it inline.
    let welcome = tokio::time::timeout(welcome_timeout, async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Text(text)) => match ServerFrame::parse(&text) {
                    Ok(ServerFrame::Welcome {
                        session,
                        ice_servers,
                        heartbeat,
                        resume,
                        resumed,
                        ..
                    }) => {
                        let ice_servers =
                            ice_servers_of(&ice_servers).map_err(SignalError::BadIceServers)?;
                        let heartbeat = heartbeat
                            .filter(|s| s.is_finite() && *s > 0.0)
                            .map(Duration::from_secs_f64)
                            .unwrap_or(DEFAULT_HEARTBEAT);
                        let resume = resume.map(|secret| Resume {
                            session: session.clone(),
                            secret,
                        });
                        return Ok(Welcome {
                            session,
                            ice_servers,
                            heartbeat,
                            resume,
                            resumed,
                        });
                    }
                    Ok(ServerFrame::Error { code, message, .. }) => {
                        let text = message.unwrap_or_else(|| code.clone());
                        match code.as_str() {
                            "unauthorized" => return Err(SignalError::Unauthorized(text)),
                            "forbidden" => return Err(SignalError::Forbidden(text)),
                            _ => tracing::warn!(%code, %text, "error before welcome"),
                        }
                    }
                    Ok(other) => tracing::debug!(?other, "frame before welcome ignored"),
                    Err(e) => tracing::warn!(error = %e, "malformed frame before welcome"),
                },
                Ok(Message::Close(frame)) => return Err(close_error(frame)),
                Ok(_) => {}
                Err(e) => return Err(SignalError::Connect(e)),
            }
        }
        Err(SignalError::ClosedEarly("connection ended".into()))
    })
    .await
    .map_err(|_| SignalError::NoWelcome(welcome_timeout))??;

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ClientFrame>();
    let (in_tx, in_rx) = mpsc::unbounded_channel::<Incoming>();
    let refresh_tx = out_tx.clone();
    let mut current = token.to_owned();
    let heartbeat = welcome.heartbeat;
    // Milliseconds since `epoch` when the server was last heard; the writer checks it at each
    // ping and tells the reader to give the socket up when it is too old.
    let epoch = tokio::time::Instant::now();
    let heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let silent = tokio_util::sync::CancellationToken::new();
    let (heard_w, silent_w) = (heard.clone(), silent.clone());
    let control = WriterControl {
        close: tokio_util::sync::CancellationToken::new(),
        done: tokio_util::sync::CancellationToken::new(),
    };
    let writer_control = control.clone();

    tokio::spawn(async move {
        let _done = writer_control.done.drop_guard();
        let mut ping = tokio::time::interval(heartbeat);
        ping.tick().await;
        let limit = heartbeat * SILENT_HEARTBEATS;
        loop {
            let frame = tokio::select! {
                f = out_rx.recv() => match f {
                    Some(f) => f,
                    None => break,
                },
                () = writer_control.close.cancelled() => {
                    // Asked to close: what is queued goes first, then the close frame.
                    while let Ok(f) = out_rx.try_recv() {
                        if sink.send(Message::text(f.to_json())).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                _ = ping.tick() => {
                    let last = Duration::from_millis(heard_w.load(std::sync::atomic::Ordering::Relaxed));
                    if epoch.elapsed().saturating_sub(last) > limit {
                        silent_w.cancel();
                        return;
                    }
                    ClientFrame::Ping
                }
                () = silent_w.cancelled() => return,
            };
            if sink.send(Message::text(frame.to_json())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    tokio::spawn(async move {
        let mut closed = Closed {
            code: None,
            reason: "connection ended".into(),
        };
        loop {
            let msg = tokio::select! {
                m = stream.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                () = silent.cancelled() => {
                    closed.reason = format!("nothing from the server for {SILENT_HEARTBEATS} heartbeats");
                    break;
                }
            };
            let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            heard.store(ms, std::sync::atomic::Ordering::Relaxed);
            match msg {
                Ok(Message::Text(text)) => match ServerFrame::parse(&text) {
                    Ok(ServerFrame::Pong) => {}
                    Ok(ServerFrame::TokenExpiring { exp }) => {
                        let fresh = refresh.fresh(&current);
                        if fresh != current {
                            tracing::info!(exp, "token expiring: sending a fresh one");
                            current = fresh.clone();
                            let _ = refresh_tx.send(ClientFrame::Auth { token: fresh });
                        } else {
                            tracing::warn!(exp, "token expiring and no fresher one to send");
                        }
                    }
                    Ok(frame) => {
                        if in_tx.send(Incoming::Frame(frame)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed frame from server"),
                },
                Ok(Message::Close(frame)) => {
                    closed = Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame
                            .map(|f| f.reason.to_string())
                            .unwrap_or_else(|| "closed".into()),
                    };
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    closed.reason = e.to_string();
                    break;
                }
            }
        }
        // The writer ends with the reader, so the socket is dropped, not left half-open.
        silent.cancel();
        let _ = in_tx.send(Incoming::Closed(closed));
    });

    Ok((welcome, SignalSender::connected(out_tx, control), in_rx))
}

fn close_error(frame: Option<CloseFrame>) -> SignalError {
    let code = frame.as_ref().map(|f| u16::from(f.code));
    let reason = frame
        .map(|f| f.reason.to_string())
        .unwrap_or_else(|| "no reason".into());
    match code {
        Some(4001) => SignalError::Unauthorized(reason),
        Some(4003 | 4010) => SignalError::Forbidden(reason),
        _ => SignalError::ClosedEarly(reason),
    }
}

/// Capped exponential backoff between reconnect attempts (0.5 s, 1 s, 2 s … 10 s).
pub fn backoff(attempt: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempt.min(5));
    Duration::from_millis(ms.min(10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn frames_sent_while_disconnected_follow_a_resume_and_not_a_new_session() {
        let sender = SignalSender::default();
        assert!(!sender.send(ClientFrame::Ping), "no connection yet");
        assert!(!sender.send(ClientFrame::Publish));
        let (tx, mut rx) = mpsc::unbounded_channel();
        sender.attach(&SignalSender::connected(tx, WriterControl::default()), true);
        assert_eq!(rx.try_recv().ok(), Some(ClientFrame::Ping));
        assert_eq!(rx.try_recv().ok(), Some(ClientFrame::Publish));
        assert!(sender.send(ClientFrame::Leave));
        assert_eq!(rx.try_recv().ok(), Some(ClientFrame::Leave));

        drop(rx);
        for _ in 0..MAX_UNSENT + 10 {
            sender.send(ClientFrame::Ping);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        sender.attach(
            &SignalSender::connected(tx, WriterControl::default()),
            false,
        );
        assert!(
            rx.try_recv().is_err(),
            "a new session does not get the old one's frames"
        );

        drop(rx);
        for _ in 0..MAX_UNSENT + 10 {
            sender.send(ClientFrame::Ping);
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        sender.attach(&SignalSender::connected(tx, WriterControl::default()), true);
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, MAX_UNSENT, "bounded while disconnected");
    }

    #[test]
    fn fatal_closes_are_auth_and_forbidden() {
        let c = |code| Closed {
            code: Some(code),
            reason: String::new(),
        };
        assert!(c(4001).is_fatal());
        assert!(c(4003).is_fatal());
        assert!(c(4010).is_fatal());
        assert!(!c(1001).is_fatal());
    }
}
