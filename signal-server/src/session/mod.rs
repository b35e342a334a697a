//! The rules of one signaling session, without I/O (the shape of `turn-server/src/proto`):
//! [`Session`] is fed what the client sent, what the router delivered, what router operations
//! returned and the time, and is drained with [`Session::poll_output`]. The connection task
//! (`connection.rs`) only moves frames between the socket, the mailbox and the router, so
//! every rule here is unit-tested without sockets or Redis (`tests.rs`).
//!
//! Router operations leave as [`Command`]s and come back as [`Routed`] results. The session
//! never waits for one: what it must do once a result is known travels in the command (a
//! [`Then`]) and returns with the result.

mod view;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceway_auth::{IceServer, Role};

use crate::config::SignalConfig;
use crate::limits::{Liveness, LivenessAction, RateDecision, RateLimiter};
use crate::metrics::Metrics;
use crate::protocol::{self, ClientFrame, ErrorCode, Ref, RelayBody, ServerFrame, close};
use crate::router::{Delivery, RouterError, SendError, SessionId, SessionState, Who, now_us};

pub use view::{Effect, View, view_change};

/// What every session of a process shares: limits and counters, no I/O.
#[derive(Debug)]
pub struct Rules {
    pub config: SignalConfig,
    pub liveness: Liveness,
    pub metrics: Metrics,
    /// How long past its `exp` a token is still honoured (the JWT leeway).
    pub token_leeway: Duration,
}

impl Rules {
    pub fn new(config: SignalConfig, metrics: Metrics, token_leeway: Duration) -> Self {
        Self {
            liveness: Liveness {
                heartbeat: config.heartbeat,
                idle_timeout: config.idle_timeout,
            },
            config,
            metrics,
            token_leeway,
        }
    }
}

/// A verified app token, as the connection hands it over (at connect, and for each refresh).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub sub: String,
    pub role: Role,
    /// Viewer: the cameras it may watch.
    pub cams: Vec<String>,
    /// Unix seconds, echoed in `token-expiring` and `token-refreshed`.
    pub exp: u64,
    /// Time left until `exp` when handed over: the session keeps time with `Instant`s only.
    pub expires_in: Duration,
    /// TURN credentials minted for this token's user.
    pub ice_servers: Vec<IceServer>,
}

/// Longest token life the session schedules for; beyond it is "never" in practice, and an
/// `Instant` cannot hold arbitrary far futures.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a connection ends, and the close frame it gets (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The socket failed or ended without a close frame (a phone changing networks): the
    /// session may be resumed within the grace.
    Gone,
    /// The client closed the socket: it is done with the session.
    Left,
    /// The client resumed the session on another socket (here or on another replica): this
    /// one is closed with 4011 and the session goes on without it.
    Resumed,
    /// Nothing heard from the client for the idle timeout: the socket is closed with 4008, but
    /// it is most likely dead (a network that went away), so the session waits for a resume
    /// as after `Gone`.
    Silent,
    Close(u16, &'static str),
}

/// A WebSocket message from the client, as far as the rules care. Close frames and read
/// errors end the connection before they get here.
#[derive(Clone, Copy, Debug)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary,
    Ping,
    Pong,
}

/// What the connection must do next.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// A frame of the server's own: write it and flush at once.
    Send(String),
    /// A frame relayed from a peer: write it; the connection flushes once per batch.
    Relay(String),
    /// A WebSocket ping.
    Ping,
    /// Run this router operation and hand its result to [`Session::on_routed`] before
    /// anything else. Boxed: queued outputs stay small.
    Route(Box<Command>),
    /// Verify this fresh token and hand the result to [`Session::on_token`].
    Verify {
        token: String,
        reference: Option<Ref>,
    },
    /// Close the connection; nothing after this is read.
    End(End),
}

/// A router operation a session asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Publish {
        camera: String,
        reference: Option<Ref>,
    },
    Unpublish {
        camera: String,
    },
    Watch {
        camera: String,
        reference: Option<Ref>,
    },
    Unwatch {
        camera: String,
    },
    Send {
        to: SessionId,
        delivery: Delivery,
        then: Then,
    },
    /// A camera session found gone: declare the camera offline if presence still names it.
    CameraGone {
        camera: String,
        session: SessionId,
    },
    /// Which of these viewer sessions still exist.
    Alive {
        sessions: Vec<SessionId>,
    },
}

/// What a [`Command::Send`]'s result means to the session that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    /// Nothing: a notice whose loss the peer learns of another way.
    Ignore,
    /// A relayed offer, answer or candidate: its outcome answers the client's frame.
    Relay {
        kind: RelayKind,
        reference: Option<Ref>,
        /// The peer is the session of this watched camera (a viewer's frame).
        camera: Option<String>,
    },
    /// A join sent to the session of `camera`.
    Join { camera: String },
}

/// The relayed frame types, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayKind {
    Offer,
    Answer,
    Candidate,
}

impl RelayKind {
    pub fn of(kind: &str) -> Self {
        match kind {
            "offer" => RelayKind::Offer,
            "answer" => RelayKind::Answer,
            _ => RelayKind::Candidate,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RelayKind::Offer => "offer",
            RelayKind::Answer => "answer",
            RelayKind::Candidate => "candidate",
        }
    }
}

/// The result of a [`Command`].
#[derive(Clone, Debug, PartialEq)]
pub enum Routed {
    Published {
        camera: String,
        reference: Option<Ref>,
        result: Result<(), RouterError>,
    },
    Watched {
        camera: String,
        reference: Option<Ref>,
        result: Result<(), RouterError>,
    },
    Sent {
        to: SessionId,
        then: Then,
        result: Result<(), SendError>,
    },
    Alive {
        sessions: Vec<SessionId>,
        alive: Vec<bool>,
    },
    /// A command with nothing to report.
    Done,
}

/// A refused client frame: the `error` to answer with.
struct Refusal {
    code: ErrorCode,
    message: String,
    /// `peer-gone`: the session that is gone.
    peer: Option<String>,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            peer: None,
        }
    }

    fn peer_gone(peer: &str) -> Self {
        Self {
            code: ErrorCode::PeerGone,
            message: format!("{peer} is gone"),
            peer: Some(peer.to_owned()),
        }
    }

    /// A presence operation failed in the backplane; the reason stays in the logs.
    fn presence(_: RouterError) -> Self {
        Self::new(ErrorCode::Internal, "presence backplane unavailable")
    }

    fn into_frame(self, reference: Option<Ref>) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message,
            reference,
            peer: self.peer,
        }
    }
}

struct Watch {
    camera: String,
    view: View,
}

/// One authenticated connection's session.
pub struct Session {
    id: SessionId,
    user: Arc<str>,
    role: Role,
    /// Viewer role: the cameras the token allows.
    cams: Box<[String]>,
    rules: Arc<Rules>,
    rate: RateLimiter,
    /// Camera role: the camera published by this session. A `Box<str>`, not a `String`: a
    /// word less keeps `Session` at 296 bytes, a malloc size class below 304.
    published: Option<Box<str>>,
    /// Camera role: viewer sessions that joined.
    viewers: Vec<SessionId>,
    /// Viewer role: cameras watched.
    watches: Vec<Watch>,
    last_heard: Instant,
    last_ping: Option<Instant>,
    next_peer_check: Instant,
    /// The token's `exp` (Unix seconds) and the same instant on the session's clock.
    exp: u64,
    token_deadline: Instant,
    /// When `token-expiring` is due; `None` once sent for the current token.
    token_ask: Option<Instant>,
    out: VecDeque<Output>,
    ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for `token` that starts by sending `welcome`, with `resume` (the secret to
    /// resume it with) if resuming is on.
    pub fn new(
        id: SessionId,
        token: Token,
        resume: Option<String>,
        rules: Arc<Rules>,
        now: Instant,
    ) -> Self {
        let c = &rules.config;
        let mut session = Self {
            rate: RateLimiter::new(c.rate_per_second, c.rate_burst, c.rate_strikes, now),
            next_peer_check: now + c.heartbeat,
            id,
            user: Arc::from(token.sub.as_str()),
            role: token.role,
            cams: Box::default(),
            published: None,
            viewers: Vec::new(),
            watches: Vec::new(),
            last_heard: now,
            last_ping: None,
            exp: 0,
            token_deadline: now,
            token_ask: None,
            out: VecDeque::new(),
            ended: false,
            rules,
        };
        session.welcome(token, resume, false, now);
        session
    }

    /// The session another replica handed over (its client resumed here): it goes on with the
    /// same id, peers and presence, and is welcomed as `resumed`.
    pub fn restore(
        state: SessionState,
        token: Token,
        resume: Option<String>,
        rules: Arc<Rules>,
        now: Instant,
    ) -> Self {
        let c = &rules.config;
        let published = state.published.map(String::into_boxed_str);
        if published.is_some() {
            rules.metrics.cameras_online.inc();
        }
        let mut session = Self {
            rate: RateLimiter::new(c.rate_per_second, c.rate_burst, c.rate_strikes, now),
            next_peer_check: now + c.heartbeat,
            id: state.id,
            user: Arc::from(state.user.as_str()),
            role: state.role,
            cams: Box::default(),
            published,
            viewers: state.viewers,
            watches: state
                .watches
                .into_iter()
                .map(|(camera, session)| Watch {
                    camera,
                    view: session.map_or(View::Offline, View::Online),
                })
                .collect(),
            last_heard: now,
            last_ping: None,
            exp: 0,
            token_deadline: now,
            token_ask: None,
            out: VecDeque::new(),
            ended: false,
            rules,
        };
        session.welcome(token, resume, true, now);
        // The cameras it watches are watched here now; what the router reports of them is
        // compared with what the client was told, so only a change reaches it.
        for watch in &session.watches {
            session
                .out
                .push_back(Output::Route(Box::new(Command::Watch {
                    camera: watch.camera.clone(),
                    reference: None,
                })));
        }
        session
    }

    /// What another replica needs to go on with this session (see [`restore`](Self::restore)).
    pub fn state(&self) -> SessionState {
        SessionState {
            id: self.id.clone(),
            user: self.user.to_string(),
            role: self.role,
            published: self.published.as_deref().map(str::to_owned),
            viewers: self.viewers.clone(),
            watches: self
                .watches
                .iter()
                .map(|w| {
                    let session = match &w.view {
                        View::Online(s) => Some(s.clone()),
                        View::Pending | View::Offline => None,
                    };
                    (w.camera.clone(), session)
                })
                .collect(),
        }
    }

    /// A digest of what [`state`](Self::state) would return: the connection saves the state
    /// (for a resume elsewhere) only when this changes, not on every relayed frame.
    pub fn state_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.published.hash(&mut h);
        self.viewers.hash(&mut h);
        for w in &self.watches {
            w.camera.hash(&mut h);
            match &w.view {
                View::Online(s) => s.hash(&mut h),
                View::Pending | View::Offline => 0u8.hash(&mut h),
            }
        }
        h.finish()
    }

    /// The session moved to another replica: nothing more happens here, and its peers and
    /// presence are not touched (they are the new replica's now).
    pub fn moved_away(&mut self) {
        self.ended = true;
        self.out.clear();
        if self.published.take().is_some() {
            self.rules.metrics.cameras_online.dec();
        }
    }

    fn welcome(&mut self, token: Token, resume: Option<String>, resumed: bool, now: Instant) {
        let role = token.role;
        let ice_servers = self.take_token(token, now);
        let grace = self.rules.config.resume_grace.as_secs();
        let welcome = ServerFrame::Welcome {
            session: self.id.to_string(),
            role,
            ice_servers,
            heartbeat: self.rules.config.heartbeat.as_secs().max(1),
            resume_grace: resume.as_ref().map(|_| grace),
            resume,
            resumed,
        };
        self.send(&welcome);
    }

    /// Whether a reconnect by `who` may take this session over: same `sub` and `role`.
    pub fn may_resume(&self, who: &Who) -> bool {
        who.user == *self.user && who.role == self.role
    }

    /// The session's client is back on a new socket (within the resume grace): it is welcomed
    /// as `resumed`, with a fresh `resume` secret, and what was delivered meanwhile follows.
    pub fn resumed(&mut self, token: Token, resume: Option<String>, now: Instant) {
        // Its socket may have been closed for silence (`End::Silent`), which ended it there.
        self.ended = false;
        self.last_heard = now;
        self.last_ping = None;
        self.out.clear();
        self.welcome(token, resume, true, now);
    }

    /// Makes `token` the session's: its cameras and its expiry. Returns its ICE servers.
    fn take_token(&mut self, token: Token, now: Instant) -> Vec<IceServer> {
        let life = token.expires_in.min(MAX_TOKEN_LIFE);
        self.exp = token.exp;
        self.token_deadline = now + life;
        let lead = self.rules.config.token_refresh_lead.min(life / 2);
        self.token_ask = Some(self.token_deadline - lead);
        self.cams = token.cams.into_boxed_slice();
        token.ice_servers
    }

    /// The result of an [`Output::Verify`]: a fresh token, or why it was refused.
    pub fn on_token(
        &mut self,
        result: Result<Token, &'static str>,
        reference: Option<Ref>,
        now: Instant,
    ) {
        if self.ended {
            return;
        }
        let token = match result {
            Ok(token) => token,
            Err(reason) => {
                self.rules.metrics.auth_failure(reason);
                let refusal = Refusal::new(ErrorCode::Unauthorized, "invalid token");
                return self.answer("auth", Some(refusal), reference);
            }
        };
        if token.sub != *self.user || token.role != self.role {
            // A session keeps its identity: its peers and presence were granted to it.
            self.rules.metrics.auth_failure("identity");
            let refusal = Refusal::new(
                ErrorCode::Unauthorized,
                "a fresh token must have the same sub and role",
            );
            return self.answer("auth", Some(refusal), reference);
        }
        let exp = token.exp;
        let ice_servers = self.take_token(token, now);
        let revoked: Vec<String> = self
            .watches
            .iter()
            .filter(|w| !self.cams.contains(&w.camera))
            .map(|w| w.camera.clone())
            .collect();
        for camera in revoked {
            self.unwatch(&camera);
            self.send(&ServerFrame::error(
                ErrorCode::Forbidden,
                format!("camera {camera} is no longer in this token's cams"),
                Some(Ref::Text("watch".to_owned())),
            ));
        }
        self.send(&ServerFrame::TokenRefreshed { exp, ice_servers });
        self.answer("auth", None, reference);
    }

    pub fn id(&self) -> &SessionId {
        &self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The token's `sub`, shared with whoever counts this session's connections per user.
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }

    /// The next thing for the connection to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        // A drained queue keeps its buffer: freeing it (and the mailbox's) made every relayed
        // frame allocate twice, about 8 % fewer messages per CPU-second, for about 0.2 kB per
        // idle connection (bench/signal/compare.sh).
        self.out.pop_front()
    }

    /// When [`on_timeout`](Self::on_timeout) is next due.
    pub fn poll_timeout(&self) -> Instant {
        let liveness = self
            .rules
            .liveness
            .next_wake(self.last_heard, self.last_ping);
        let token = self.token_ask.unwrap_or_else(|| self.token_close());
        let wake = liveness.min(token);
        if self.viewers.is_empty() {
            wake
        } else {
            wake.min(self.next_peer_check)
        }
    }

    fn token_close(&self) -> Instant {
        self.token_deadline + self.rules.token_leeway
    }

    pub fn on_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if now >= self.token_close() {
            return self.end(End::Close(close::UNAUTHORIZED, "token expired"));
        }
        if self.token_ask.is_some_and(|at| now >= at) {
            self.token_ask = None;
            self.send(&ServerFrame::TokenExpiring { exp: self.exp });
        }
        match self
            .rules
            .liveness
            .due(now, self.last_heard, self.last_ping)
        {
            LivenessAction::Close => return self.end(End::Silent),
            LivenessAction::Ping => {
                self.last_ping = Some(now);
                self.out.push_back(Output::Ping);
            }
            LivenessAction::Wait => {}
        }
        if now >= self.next_peer_check {
            self.next_peer_check = now + self.rules.config.heartbeat;
            // Viewers whose session vanished without a word (their replica died).
            if !self.viewers.is_empty() {
                self.route(Command::Alive {
                    sessions: self.viewers.clone(),
                });
            }
        }
    }

    /// The session ends: peers learn it left. Only router commands follow.
    pub fn leave(&mut self) {
        self.ended = true;
        // A publish or watch not yet run is dropped rather than run and undone.
        self.out.retain(|o| match o {
            Output::Route(c) => !matches!(**c, Command::Publish { .. } | Command::Watch { .. }),
            _ => false,
        });
        self.unpublish();
        self.unwatch_all();
    }

    /// A message from the client.
    pub fn on_message(&mut self, msg: Incoming<'_>, now: Instant) {
        if self.ended {
            return;
        }
        self.last_heard = now;
        let text = match msg {
            Incoming::Text(text) => text,
            Incoming::Pong => return,
            Incoming::Ping => {
                self.rate_check("ping-frame", None, now);
                return;
            }
            Incoming::Binary => {
                if self.rate_check("binary", None, now) {
                    self.rules
                        .metrics
                        .message("binary", ErrorCode::BadMessage.as_str());
                    self.send(&ServerFrame::error(
                        ErrorCode::BadMessage,
                        "binary frames are not supported; send JSON text",
                        None,
                    ));
                }
                return;
            }
        };
        if let Some(frame) = protocol::parse_relay(text) {
            if self.rate_check(frame.kind, frame.reference.clone(), now) {
                let reference = frame
                    .reference
                    .clone()
                    .or_else(|| Some(Ref::Text(frame.kind.to_owned())));
                self.relay(frame.kind, frame.to, reference, |from| frame.render(from));
            }
            return;
        }
        let parsed = match protocol::parse(text) {
            Ok(p) => p,
            Err(rejection) => {
                if self.rate_check(rejection.kind, rejection.reference.clone(), now) {
                    self.rules
                        .metrics
                        .message(rejection.kind, ErrorCode::BadMessage.as_str());
                    self.send(&rejection.to_frame());
                }
                return;
            }
        };
        let kind = parsed.frame.kind();
        if !self.rate_check(kind, parsed.reference.clone(), now) {
            return;
        }
        let reference = parsed
            .reference
            .or_else(|| Some(Ref::Text(kind.to_owned())));
        self.on_frame(kind, parsed.frame, reference);
    }

    /// Something the router delivered to this session.
    pub fn on_delivery(&mut self, delivery: Arc<Delivery>) {
        if self.ended {
            return;
        }
        // A relayed frame has one receiver, so its text moves to the socket without a copy.
        let delivery = match Arc::try_unwrap(delivery) {
            Ok(Delivery::Relay {
                text, sent_at_us, ..
            }) => return self.relayed(text, sent_at_us),
            Ok(other) => Arc::new(other),
            Err(shared) => shared,
        };
        match &*delivery {
            Delivery::Relay {
                text, sent_at_us, ..
            } => self.relayed(text.clone(), *sent_at_us),
            Delivery::ViewerJoined {
                camera,
                viewer,
                user,
            } => {
                if self.published.as_deref() != Some(camera.as_str()) {
                    return;
                }
                if !self.viewers.contains(viewer) {
                    let max = self.rules.config.max_viewers_per_camera;
                    if self.viewers.len() >= max {
                        self.route(Command::Send {
                            to: viewer.clone(),
                            delivery: Delivery::WatchRefused {
                                camera: camera.clone(),
                                message: format!("camera already has {max} viewers"),
                            },
                            then: Then::Ignore,
                        });
                        return;
                    }
                    push_small(&mut self.viewers, viewer.clone());
                }
                self.send(&ServerFrame::ViewerJoined {
                    viewer: viewer.to_string(),
                    user: user.clone(),
                });
            }
            Delivery::ViewerLeft { camera, viewer } => {
                if self.published.as_deref() != Some(camera.as_str())
                    || !self.viewers.contains(viewer)
                {
                    return;
                }
                self.viewers.retain(|v| v != viewer);
                self.send(&ServerFrame::PeerLeft {
                    peer: viewer.to_string(),
                });
            }
            Delivery::WatchRefused { camera, message } => {
                if !self.watches.iter().any(|w| w.camera == *camera) {
                    return;
                }
                self.watches.retain(|w| w.camera != *camera);
                self.route(Command::Unwatch {
                    camera: camera.clone(),
                });
                self.send(&ServerFrame::error(
                    ErrorCode::Forbidden,
                    message.clone(),
                    Some(Ref::Text("watch".to_owned())),
                ));
            }
            Delivery::Replaced { camera } => {
                if self.published.as_deref() != Some(camera.as_str()) {
                    return;
                }
                self.published = None;
                self.viewers.clear();
                self.rules.metrics.cameras_online.dec();
                self.send(&ServerFrame::error(
                    ErrorCode::Forbidden,
                    format!("camera {camera} was published by a newer connection"),
                    Some(Ref::Text("publish".to_owned())),
                ));
                // Closed with a code of its own, which clients do not reconnect on: two devices
                // with one camera token would otherwise take the camera from each other in turn.
                self.end(End::Close(
                    close::REPLACED,
                    "replaced by a newer connection",
                ));
            }
            Delivery::PeerGone { peer } => {
                self.send(&ServerFrame::peer_gone(peer, None));
            }
            Delivery::CameraState { camera, session } => {
                let Some(watch) = self.watches.iter_mut().find(|w| w.camera == *camera) else {
                    return;
                };
                let (view, effects) = view_change(camera, &watch.view, session.as_ref());
                watch.view = view;
                for effect in effects {
                    match effect {
                        Effect::Send(frame) => self.send(&frame),
                        Effect::Join(camera_session) => self.join(camera, camera_session),
                    }
                }
            }
        }
    }

    /// The result of a [`Command`] this session asked for.
    pub fn on_routed(&mut self, routed: Routed) {
        match routed {
            Routed::Done => {}
            Routed::Published {
                camera,
                reference,
                result,
            } => {
                if self.ended {
                    return;
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, "publish failed");
                    return self.answer("publish", Some(Refusal::presence(e)), reference);
                }
                if self.published.is_none() {
                    self.rules.metrics.cameras_online.inc();
                }
                self.published = Some(camera.as_str().into());
                self.send(&ServerFrame::CameraOnline {
                    camera,
                    session: self.id.to_string(),
                });
                self.answer("publish", None, reference);
            }
            Routed::Watched {
                camera,
                reference,
                result,
            } => {
                if self.ended {
                    return;
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, "watch failed");
                    self.watches.retain(|w| w.camera != camera);
                    return self.answer("watch", Some(Refusal::presence(e)), reference);
                }
                self.answer("watch", None, reference);
            }
            Routed::Sent { to, then, result } => self.on_sent(to, then, result),
            Routed::Alive { sessions, alive } => {
                if self.ended {
                    return;
                }
                for (viewer, _) in sessions.iter().zip(alive).filter(|(_, alive)| !alive) {
                    if !self.viewers.contains(viewer) {
                        continue;
                    }
                    self.viewers.retain(|v| v != viewer);
                    self.send(&ServerFrame::PeerLeft {
                        peer: viewer.to_string(),
                    });
                }
            }
        }
    }

    fn on_sent(&mut self, to: SessionId, then: Then, result: Result<(), SendError>) {
        match then {
            Then::Ignore => {}
            Then::Join { camera } => {
                if result == Err(SendError::Gone) {
                    self.route(Command::CameraGone {
                        camera,
                        session: to,
                    });
                }
            }
            Then::Relay {
                kind,
                reference,
                camera,
            } => {
                if self.ended {
                    return;
                }
                let refusal = match result {
                    Ok(()) => None,
                    Err(SendError::Gone) => match camera {
                        Some(camera) => {
                            self.route(Command::CameraGone {
                                camera,
                                session: to.clone(),
                            });
                            Some(Refusal::peer_gone(&to))
                        }
                        None => {
                            // A viewer that vanished: the camera hears it left, once.
                            self.viewers.retain(|v| *v != to);
                            self.send(&ServerFrame::peer_gone(&to, None));
                            self.send(&ServerFrame::PeerLeft {
                                peer: to.to_string(),
                            });
                            self.rules
                                .metrics
                                .message("relay", ErrorCode::PeerGone.as_str());
                            None
                        }
                    },
                    Err(SendError::Full) => Some(Refusal::new(
                        ErrorCode::RateLimited,
                        "the peer is not keeping up",
                    )),
                    Err(SendError::Backplane(e)) => {
                        tracing::warn!(error = %e, "relay failed");
                        Some(Refusal::new(
                            ErrorCode::Internal,
                            "relay backplane unavailable",
                        ))
                    }
                };
                self.answer(kind.as_str(), refusal, reference);
            }
        }
    }

    fn on_frame(&mut self, kind: &'static str, frame: ClientFrame, reference: Option<Ref>) {
        let refusal = match frame {
            ClientFrame::Auth { token, .. } => {
                // Answered once verified.
                self.out.push_back(Output::Verify { token, reference });
                return;
            }
            ClientFrame::Ping => {
                self.send(&ServerFrame::Pong);
                None
            }
            ClientFrame::Publish { camera } => {
                if self.role != Role::Camera {
                    Some(Refusal::new(
                        ErrorCode::Forbidden,
                        "only a camera token may publish",
                    ))
                } else if camera.as_deref().is_some_and(|c| c != &*self.user) {
                    Some(Refusal::new(
                        ErrorCode::Forbidden,
                        "a camera publishes only as its own sub",
                    ))
                } else {
                    let camera = self.user.to_string();
                    // Answered when the router has published.
                    return self.route(Command::Publish { camera, reference });
                }
            }
            ClientFrame::Watch { camera } => return self.watch(camera, reference),
            ClientFrame::Offer { to, sdp } => {
                return self.relay_body(kind, to, RelayBody::Offer { sdp }, reference);
            }
            ClientFrame::Answer { to, sdp } => {
                return self.relay_body(kind, to, RelayBody::Answer { sdp }, reference);
            }
            ClientFrame::Candidate { to, candidate } => {
                return self.relay_body(kind, to, RelayBody::Candidate { candidate }, reference);
            }
            ClientFrame::Leave { camera } => match (self.role, camera) {
                (Role::Camera, _) => {
                    self.unpublish();
                    None
                }
                (Role::Viewer, None) => {
                    self.unwatch_all();
                    None
                }
                (Role::Viewer, Some(camera)) if self.watches.iter().any(|w| w.camera == camera) => {
                    self.unwatch(&camera);
                    None
                }
                (Role::Viewer, Some(_)) => Some(Refusal::new(
                    ErrorCode::NotFound,
                    "not watching that camera",
                )),
            },
        };
        self.answer(kind, refusal, reference);
    }

    fn watch(&mut self, camera: String, reference: Option<Ref>) {
        let refuse = |code, message| Some(Refusal::new(code, message));
        let refusal = if self.role != Role::Viewer {
            refuse(ErrorCode::Forbidden, "only a viewer token may watch")
        } else if !self.cams.contains(&camera) {
            refuse(ErrorCode::Forbidden, "camera is not in this token's cams")
        } else if let Some(watch) = self.watches.iter().find(|w| w.camera == camera) {
            // A repeated watch restarts the call: clients send it after an ICE failure to
            // have the camera make a fresh offer.
            let view = watch.view.clone();
            self.rewatch(camera, view);
            None
        } else if self.watches.len() >= self.rules.config.max_watches_per_connection {
            refuse(
                ErrorCode::Forbidden,
                "this connection watches too many cameras",
            )
        } else {
            push_small(
                &mut self.watches,
                Watch {
                    camera: camera.clone(),
                    view: View::Pending,
                },
            );
            // Answered when the router has the watch.
            return self.route(Command::Watch { camera, reference });
        };
        self.answer("watch", refusal, reference);
    }

    /// A `watch` of a camera already watched: answer as for a first watch, and if the camera
    /// is online tell it again that this viewer joins (a fresh `viewer-joined`).
    fn rewatch(&mut self, camera: String, view: View) {
        match view {
            // The first watch's answer is still on its way.
            View::Pending => {}
            View::Offline => self.send(&ServerFrame::CameraOffline { camera }),
            View::Online(session) => {
                self.send(&ServerFrame::CameraOnline {
                    camera: camera.clone(),
                    session: session.to_string(),
                });
                self.join(&camera, session);
            }
        }
    }

    /// Tells camera session `session` that this viewer joins.
    fn join(&mut self, camera: &str, session: SessionId) {
        let delivery = Delivery::ViewerJoined {
            camera: camera.to_owned(),
            viewer: self.id.clone(),
            user: self.user.to_string(),
        };
        self.route(Command::Send {
            to: session,
            delivery,
            then: Then::Join {
                camera: camera.to_owned(),
            },
        });
    }

    /// [`relay`](Self::relay) of a frame parsed the slow way.
    fn relay_body(
        &mut self,
        kind: &'static str,
        to: String,
        body: RelayBody,
        reference: Option<Ref>,
    ) {
        self.relay(kind, &to, reference, |from| {
            ServerFrame::relayed(from, body).to_json()
        });
    }

    /// Relays an offer, answer or candidate to a peer of this session: a camera to the viewers
    /// that joined it, a viewer to the cameras it watches. Anything else is `peer-gone`, so a
    /// session id is no use to anyone it was not given to. `render` makes the peer's frame
    /// from this session's id; it runs only for a peer.
    fn relay(
        &mut self,
        kind: &'static str,
        to: &str,
        reference: Option<Ref>,
        render: impl FnOnce(&str) -> String,
    ) {
        let camera_of_peer = self.watches.iter().find_map(|w| match &w.view {
            View::Online(s) if **s == *to => Some((w.camera.clone(), s.clone())),
            _ => None,
        });
        let (peer, camera) = match (camera_of_peer, self.viewers.iter().find(|v| ***v == *to)) {
            (Some((camera, s)), _) => (s, Some(camera)),
            (None, Some(v)) => (v.clone(), None),
            (None, None) => return self.answer(kind, Some(Refusal::peer_gone(to)), reference),
        };
        let delivery = Delivery::Relay {
            from: self.id.clone(),
            text: render(&self.id),
            sent_at_us: now_us(),
        };
        self.route(Command::Send {
            to: peer,
            delivery,
            then: Then::Relay {
                kind: RelayKind::of(kind),
                reference,
                camera,
            },
        });
    }

    fn relayed(&mut self, text: String, sent_at_us: u64) {
        // Observed at hand-off to the socket, before the write can wait on the client.
        let latency = now_us().saturating_sub(sent_at_us);
        self.rules
            .metrics
            .relay_latency
            .observe(Duration::from_micros(latency).as_secs_f64());
        self.out.push_back(Output::Relay(text));
    }

    fn unpublish(&mut self) {
        if let Some(camera) = self.published.take() {
            self.route(Command::Unpublish {
                camera: camera.into_string(),
            });
            self.rules.metrics.cameras_online.dec();
            self.viewers.clear();
        }
    }

    fn unwatch(&mut self, camera: &str) {
        let Some(i) = self.watches.iter().position(|w| w.camera == camera) else {
            return;
        };
        let watch = self.watches.swap_remove(i);
        if let View::Online(session) = watch.view {
            self.route(Command::Send {
                to: session,
                delivery: Delivery::ViewerLeft {
                    camera: watch.camera.clone(),
                    viewer: self.id.clone(),
                },
                then: Then::Ignore,
            });
        }
        self.route(Command::Unwatch {
            camera: watch.camera,
        });
    }

    fn unwatch_all(&mut self) {
        while let Some(camera) = self.watches.last().map(|w| w.camera.clone()) {
            self.unwatch(&camera);
        }
    }

    /// Applies the rate limit to one incoming frame. `false`: refused (and answered with
    /// `rate-limited`, or the connection ends); the frame must not be processed.
    fn rate_check(&mut self, kind: &'static str, reference: Option<Ref>, now: Instant) -> bool {
        let decision = self.rate.check(now);
        if decision != RateDecision::Allow {
            self.rules
                .metrics
                .message(kind, ErrorCode::RateLimited.as_str());
        }
        match decision {
            RateDecision::Allow => true,
            RateDecision::Refuse => {
                self.send(&ServerFrame::error(
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                    reference,
                ));
                false
            }
            RateDecision::Close => {
                self.end(End::Close(close::POLICY, "too many frames"));
                false
            }
        }
    }

    /// Counts a handled frame and sends its refusal, if any.
    fn answer(&mut self, kind: &'static str, refusal: Option<Refusal>, reference: Option<Ref>) {
        match refusal {
            None => self.rules.metrics.message(kind, "ok"),
            Some(refusal) => {
                self.rules.metrics.message(kind, refusal.code.as_str());
                self.send(&refusal.into_frame(reference));
            }
        }
    }

    fn send(&mut self, frame: &ServerFrame) {
        if !self.ended {
            self.out.push_back(Output::Send(frame.to_json()));
        }
    }

    fn route(&mut self, command: Command) {
        self.out.push_back(Output::Route(Box::new(command)));
    }

    fn end(&mut self, end: End) {
        self.out.push_back(Output::End(end));
        self.ended = true;
    }
}

/// Pushes onto `v`, taking room for one element only if it has none: a session nearly always
/// has one camera or one viewer, and `Vec`'s first growth would take room for four. Later
/// growth is `Vec`'s own (amortized).
pub(crate) fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.capacity() == 0 {
        v.reserve_exact(1);
    }
    v.push(item);
}
