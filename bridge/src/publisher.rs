//! One camera on the signaling side: a camera session (DESIGN §3) that is published while the
//! RTSP stream is up and unpublished (`leave`: viewers see `camera-offline`) while it is down,
//! so a viewer that opened early just waits for `camera-online`. Each viewer that joins gets
//! its own peer connection, fed from the camera's [`Feed`] starting at the cached GOP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use iceway_auth::{AppClaims, Role, mint_hs256};
use iceway_client::peer::{self, PeerOptions};
use iceway_client::protocol::{ClientFrame, ServerFrame};
use iceway_client::signaling::{self, Incoming, SignalSender, TokenRefresh};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::BridgeConfig;
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::viewer::{self, ToViewer};

/// How long a draining camera waits for its `leave` and close frame to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Where a camera's app token comes from.
#[derive(Clone)]
pub enum CameraToken {
    /// Minted by the bridge with the app's HS256 key: `role: camera`, `sub: <id>`.
    Mint {
        secret: Arc<Vec<u8>>,
        audience: String,
        ttl: Duration,
    },
    /// A file a sidecar or the operator keeps current.
    File(PathBuf),
}

impl CameraToken {
    fn current(&self, id: &str) -> String {
        match self {
            CameraToken::Mint {
                secret,
                audience,
                ttl,
            } => {
                let mut claims =
                    AppClaims::new(id, Role::Camera, Vec::new(), SystemTime::now(), *ttl);
                claims.aud = Some(audience.clone());
                mint_hs256("default", secret, &claims)
            }
            CameraToken::File(path) => signaling::current_token(Some(path), ""),
        }
    }

    fn refresh(&self, id: &str) -> TokenRefresh {
        match self {
            CameraToken::File(path) => TokenRefresh::File(path.clone()),
            CameraToken::Mint { .. } => {
                let (this, id) = (self.clone(), id.to_owned());
                TokenRefresh::Mint(Arc::new(move || this.current(&id)))
            }
        }
    }
}

pub struct Publisher {
    pub id: String,
    pub cfg: Arc<BridgeConfig>,
    pub token: CameraToken,
    pub feed: Arc<Feed>,
    pub up: watch::Receiver<bool>,
    pub metrics: Metrics,
}

impl Publisher {
    pub async fn run(mut self, stop: CancellationToken) {
        let mut attempt = 0u32;
        let sender = SignalSender::default();
        let mut resume: Option<signaling::Resume> = None;
        let mut viewers: HashMap<String, mpsc::UnboundedSender<ToViewer>> = HashMap::new();
        let mut viewers_stop = stop.child_token();
        let mut published = false;
        loop {
            let token = self.token.current(&self.id);
            let connected = tokio::select! {
                r = signaling::connect_with(&self.cfg.signal_url, &token, self.token.refresh(&self.id), resume.as_ref()) => r,
                () = stop.cancelled() => return,
            };
            let (welcome, connection, mut incoming) = match connected {
                Ok(ok) => ok,
                Err(e) => {
                    attempt += 1;
                    // A refused token will not be accepted on the next try either.
                    let delay = if e.is_fatal() {
                        self.cfg.auth_retry
                    } else {
                        signaling::backoff(attempt)
                    };
                    tracing::warn!(camera = %self.id, error = %e, retry_in = ?delay, "signaling unavailable");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            attempt = 0;
            sender.attach(&connection, welcome.resumed);
            resume = welcome.resume.clone();
            if !welcome.resumed {
                // A new session: nothing of the old one holds (viewers watch it again).
                viewers_stop.cancel();
                viewers_stop = stop.child_token();
                viewers.clear();
                published = false;
            }
            let peer_opts = PeerOptions {
                ice_servers: welcome.ice_servers.clone(),
                relay_only: self.cfg.relay_only,
                bind: None,
                signal_url: self.cfg.signal_url.clone(),
                codecs: Some(viewer::codecs()),
                keyframe_requests: true,
            };
            let closed = loop {
                let want = *self.up.borrow_and_update();
                if want != published {
                    published = want;
                    if want {
                        tracing::info!(camera = %self.id, "camera online");
                        sender.send(ClientFrame::Publish);
                    } else {
                        tracing::info!(camera = %self.id, "camera offline (RTSP stream down)");
                        sender.send(ClientFrame::Leave);
                        viewers_stop.cancel();
                        viewers_stop = stop.child_token();
                        viewers.clear();
                    }
                }
                let msg = tokio::select! {
                    m = incoming.recv() => Some(m),
                    r = self.up.changed() => {
                        // The RTSP side ends only when the bridge stops: the same as `stop`.
                        if r.is_ok() { continue; }
                        None
                    }
                    () = stop.cancelled() => None,
                };
                let Some(msg) = msg else {
                    viewers_stop.cancel();
                    if published {
                        sender.send(ClientFrame::Leave);
                    }
                    viewers.clear();
                    sender.close(CLOSE_WAIT).await;
                    return;
                };
                let frame = match msg {
                    Some(Incoming::Frame(f)) => f,
                    Some(Incoming::Closed(c)) => break Some(c),
                    None => break None,
                };
                self.on_frame(
                    frame,
                    published,
                    &peer_opts,
                    &sender,
                    &mut viewers,
                    &viewers_stop,
                );
                viewers.retain(|_, v| !v.is_closed());
            };
            let delay = match &closed {
                Some(c) if c.is_fatal() => {
                    tracing::error!(camera = %self.id, code = ?c.code, reason = %c.reason, "signaling refused this camera");
                    // The session is gone for good; the next connect starts a new one.
                    resume = None;
                    self.cfg.auth_retry
                }
                Some(c) => {
                    tracing::warn!(camera = %self.id, code = ?c.code, reason = %c.reason, "signaling closed; reconnecting");
                    Duration::ZERO
                }
                None => Duration::ZERO,
            };
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    fn on_frame(
        &self,
        frame: ServerFrame,
        published: bool,
        peer_opts: &PeerOptions,
        sender: &SignalSender,
        viewers: &mut HashMap<String, mpsc::UnboundedSender<ToViewer>>,
        stop: &CancellationToken,
    ) {
        match frame {
            ServerFrame::ViewerJoined { viewer, user } => {
                if !published {
                    return;
                }
                if viewers.len() >= self.cfg.max_viewers_per_camera
                    && !viewers.contains_key(&viewer)
                {
                    tracing::warn!(camera = %self.id, max = self.cfg.max_viewers_per_camera, "viewer refused: bridge.max_viewers_per_camera reached");
                    return;
                }
                tracing::info!(camera = %self.id, %viewer, user = user.as_deref().unwrap_or("?"), "viewer joined");
                let (tx, rx) = mpsc::unbounded_channel();
                // A viewer that joins again replaces its session (the old one's inbox closes).
                viewers.insert(viewer.clone(), tx);
                let session = viewer::Session {
                    camera: self.id.clone(),
                    viewer,
                    opts: peer_opts.clone(),
                    feed: Arc::clone(&self.feed),
                    signal: sender.clone(),
                    metrics: self.metrics.clone(),
                    joined: Instant::now(),
                };
                tokio::spawn(session.run(rx, stop.child_token()));
            }
            ServerFrame::Answer { from, sdp } => {
                if let Some(v) = viewers.get(&from) {
                    let _ = v.send(ToViewer::Answer(sdp));
                }
            }
            ServerFrame::Candidate {
                from,
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                if let Some(v) = viewers.get(&from) {
                    let _ = v.send(ToViewer::Candidate(peer::candidate_init(
                        candidate,
                        sdp_mid,
                        sdp_mline_index,
                    )));
                }
            }
            ServerFrame::PeerLeft { peer } if viewers.remove(&peer).is_some() => {
                tracing::info!(camera = %self.id, viewer = %peer, "viewer left");
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => {
                if code == "peer-gone"
                    && let Some(id) = reference.as_ref().and_then(|r| r.as_str())
                {
                    viewers.remove(id);
                }
                tracing::warn!(camera = %self.id, %code, message = message.as_deref().unwrap_or(""), "signaling error");
            }
            _ => {}
        }
    }
}
