//! One task per WebSocket: authenticate, send `welcome`, then move frames between the socket
//! and the session's mailbox until either side ends. The protocol rules are `Session`'s
//! handlers and the pure `view_change`; the loop around them only moves frames and keeps time.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use iceway_auth::{AppClaims, IceServer, Role};

use crate::limits::{LivenessAction, RateDecision, RateLimiter, UserSlot};
use crate::protocol::{
    self, ClientFrame, ErrorCode, Parsed, Ref, RelayBody, RelayFrame, ServerFrame, close,
};
use crate::router::{Delivery, Mailbox, SendError, SessionId, new_session_id, now_us};
use crate::server::Shared;

/// Why a connection ends, and the close frame it gets (if any).
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client went away or the socket failed; nothing to send.
    Gone,
    Close(u16, &'static str),
}

/// The task of one upgraded socket. Not an `async fn`: an async fn keeps its arguments in the
/// task for its whole life, and the socket would then be held twice (argument and working
/// copy); boxing it first keeps an idle connection's task small.
pub(crate) fn serve(
    socket: WebSocket,
    bearer: Option<String>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    serve_boxed(Box::new(socket), bearer, shared)
}

async fn serve_boxed(mut socket: Box<WebSocket>, bearer: Option<String>, shared: Arc<Shared>) {
    let (mut session, mailbox) = match Box::pin(admit(&mut socket, bearer, &shared)).await {
        Ok(admitted) => admitted,
        Err(end) => {
            Box::pin(finish(&mut socket, end, &shared)).await;
            return;
        }
    };
    let role = session.role;
    shared.metrics.connection("accepted");
    shared.metrics.connections.inc();
    if role == Role::Viewer {
        shared.metrics.viewers.inc();
    }
    let end = session.run(&mut socket, &mailbox).await;
    Box::pin(session.leave_all()).await;
    shared.router.unregister(&session.id).await;
    shared.metrics.connections.dec();
    if role == Role::Viewer {
        shared.metrics.viewers.dec();
    }
    Box::pin(finish(&mut socket, end, &shared)).await;
}

/// Authenticates, takes a per-user slot and registers the session with the router.
async fn admit(
    socket: &mut WebSocket,
    bearer: Option<String>,
    shared: &Arc<Shared>,
) -> Result<(Box<Session>, Arc<Mailbox>), End> {
    let claims = authenticate(socket, bearer, shared).await?;
    let user: Arc<str> = Arc::from(claims.sub.as_str());
    let Some(slot) = shared.users.acquire(&user) else {
        shared.metrics.connection("user_limit");
        return Err(End::Close(
            close::POLICY,
            "too many connections for this user",
        ));
    };
    let id = new_session_id();
    let mailbox = Mailbox::new();
    if let Err(e) = shared.router.register(&id, mailbox.clone()).await {
        tracing::warn!(error = %e, "cannot register session");
        shared.metrics.connection("backplane_error");
        return Err(End::Close(1011, "backplane unavailable"));
    }
    let session = Session::new(id, user, claims, slot, shared.clone());
    Ok((Box::new(session), mailbox))
}

/// Verifies the `Authorization` token, or waits for an `auth` frame.
async fn authenticate(
    socket: &mut WebSocket,
    bearer: Option<String>,
    shared: &Shared,
) -> Result<AppClaims, End> {
    let token = match bearer {
        Some(token) => token,
        None => match tokio::time::timeout(shared.config.auth_timeout, socket.recv()).await {
            Err(_) => return Err(refuse(shared, "timeout", "no auth frame in time")),
            Ok(None | Some(Err(_))) => return Err(End::Gone),
            Ok(Some(Ok(Message::Text(text)))) => match protocol::parse(&text) {
                Ok(Parsed {
                    frame: ClientFrame::Auth { token },
                    ..
                }) => token,
                _ => return Err(refuse(shared, "missing", "first frame must be auth")),
            },
            Ok(Some(Ok(Message::Close(_)))) => return Err(End::Gone),
            Ok(Some(Ok(_))) => return Err(refuse(shared, "missing", "first frame must be auth")),
        },
    };
    shared.creds.verifier.verify(&token).map_err(|e| {
        shared.metrics.auth_failure(e.reason());
        shared.metrics.connection("unauthorized");
        End::Close(close::UNAUTHORIZED, "invalid token")
    })
}

fn refuse(shared: &Shared, reason: &'static str, why: &'static str) -> End {
    shared.metrics.auth_failure(reason);
    shared.metrics.connection("unauthorized");
    End::Close(close::UNAUTHORIZED, why)
}

async fn finish(socket: &mut WebSocket, end: End, shared: &Shared) {
    let End::Close(code, reason) = end else {
        return;
    };
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if tokio::time::timeout(shared.config.write_timeout, socket.send(frame))
        .await
        .map_or(true, |r| r.is_err())
    {
        return;
    }
    // Closing a TCP socket with unread input makes the kernel send RST, and a client can then
    // lose our close frame. So read (and drop) what the client still sends until its close
    // reply, briefly. After an oversized frame tungstenite cannot read on, so skip it there.
    if code == close::TOO_LARGE {
        return;
    }
    let drain = async {
        for _ in 0..CLOSE_DRAIN_FRAMES {
            match socket.recv().await {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN_TIME, drain).await;
}

/// Bounds on reading after our close frame: a well-behaved client answers at once.
const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(2);
const CLOSE_DRAIN_FRAMES: usize = 10_000;

/// What a viewer knows of one camera it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// Watch sent, presence not yet reported to the client.
    Pending,
    Offline,
    Online(SessionId),
}

/// What to do when a watched camera's presence is reported.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Send(ServerFrame),
    /// Tell the camera session that this viewer joins.
    Join(SessionId),
}

/// The frames a viewer gets when a camera's presence changes from `prev` to `now`. A camera
/// that comes back under a new session is reported as leaving and coming online again, so
/// clients only ever handle one transition at a time.
pub(crate) fn view_change(
    camera: &str,
    prev: &View,
    now: Option<&SessionId>,
) -> (View, Vec<Effect>) {
    let online = |s: &SessionId| {
        vec![
            Effect::Send(ServerFrame::CameraOnline {
                camera: camera.to_owned(),
                session: s.to_string(),
            }),
            Effect::Join(s.clone()),
        ]
    };
    let offline = || {
        Effect::Send(ServerFrame::CameraOffline {
            camera: camera.to_owned(),
        })
    };
    let left = |s: &SessionId| {
        Effect::Send(ServerFrame::PeerLeft {
            peer: s.to_string(),
        })
    };
    match (prev, now) {
        (View::Pending, None) => (View::Offline, vec![offline()]),
        (View::Offline, None) => (View::Offline, vec![]),
        (View::Pending | View::Offline, Some(s)) => (View::Online(s.clone()), online(s)),
        (View::Online(old), None) => (View::Offline, vec![left(old), offline()]),
        (View::Online(old), Some(s)) if old == s => (prev.clone(), vec![]),
        (View::Online(old), Some(s)) => {
            let mut effects = vec![left(old), offline()];
            effects.extend(online(s));
            (View::Online(s.clone()), effects)
        }
    }
}

struct Watch {
    camera: String,
    view: View,
}

struct Session {
    id: SessionId,
    user: Arc<str>,
    role: Role,
    /// Viewer role: the cameras the token allows.
    cams: Box<[String]>,
    shared: Arc<Shared>,
    rate: RateLimiter,
    /// Camera role: the camera published by this session.
    published: Option<String>,
    /// Camera role: viewer sessions that joined.
    viewers: Vec<SessionId>,
    /// Viewer role: cameras watched.
    watches: Vec<Watch>,
    last_heard: Instant,
    last_ping: Option<Instant>,
    next_peer_check: Instant,
    /// Frames fed to the socket but not yet flushed: the loop flushes once per wake-up, not
    /// once per frame.
    unflushed: bool,
    _slot: UserSlot,
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

    fn into_frame(self, reference: Option<Ref>) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message,
            reference,
            peer: self.peer,
        }
    }
}

/// Deliveries written between two flushes at most, so one busy peer cannot hold back the
/// reads of this socket for long.
const MAX_BATCH: usize = 32;

/// Whether the loop goes on after a frame.
type Step = Result<(), End>;

enum Event {
    Drain,
    Delivery,
    Message(Option<Result<Message, axum::Error>>),
    Timer,
}

impl Session {
    fn new(
        id: SessionId,
        user: Arc<str>,
        claims: AppClaims,
        slot: UserSlot,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        let c = &shared.config;
        Self {
            rate: RateLimiter::new(c.rate_per_second, c.rate_burst, c.rate_strikes, now),
            next_peer_check: now + c.heartbeat,
            id,
            user,
            role: claims.role,
            cams: claims.cams.into_boxed_slice(),
            shared,
            published: None,
            viewers: Vec::new(),
            watches: Vec::new(),
            last_heard: now,
            last_ping: None,
            unflushed: false,
            _slot: slot,
        }
    }

    async fn run(&mut self, socket: &mut WebSocket, mailbox: &Mailbox) -> End {
        if let Err(end) = Box::pin(self.send_welcome(socket)).await {
            return end;
        }
        let drained = self.shared.close_all.clone();
        let mut batched = 0;
        loop {
            // Deliveries first: they are already queued, and the socket's reads can wait.
            // Relayed frames are only fed to the socket; one flush (one write) follows the
            // batch. Frames of our own are flushed at once, so only a run of unflushed relays
            // counts: a full batch always ends in the flush below, never in a wait that the
            // queued deliveries would not wake.
            if !self.unflushed {
                batched = 0;
            }
            let next = if batched < MAX_BATCH {
                mailbox.pop()
            } else {
                None
            };
            let step = if let Some(d) = next {
                batched += 1;
                Box::pin(self.on_delivery(socket, d)).await
            } else if self.unflushed {
                self.flush(socket).await
            } else if mailbox.is_closed() {
                Err(End::Close(close::POLICY, "not reading frames fast enough"))
            } else {
                let wake = self.next_wake();
                let event = tokio::select! {
                    () = drained.cancelled() => Event::Drain,
                    () = mailbox.wait() => Event::Delivery,
                    msg = socket.recv() => Event::Message(msg),
                    () = tokio::time::sleep_until(wake.into()) => Event::Timer,
                };
                // The handlers are boxed: they run briefly, while an idle connection would
                // otherwise carry their largest state in its task for its whole life.
                match event {
                    Event::Drain => Err(End::Close(close::GOING_AWAY, "server is draining")),
                    Event::Delivery => Ok(()),
                    Event::Message(msg) => Box::pin(self.on_message(socket, msg)).await,
                    Event::Timer => Box::pin(self.on_timer(socket)).await,
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send_welcome(&mut self, socket: &mut WebSocket) -> Step {
        let welcome = ServerFrame::Welcome {
            session: self.id.to_string(),
            role: self.role,
            ice_servers: self.ice_servers(),
            heartbeat: self.shared.config.heartbeat.as_secs().max(1),
        };
        self.send(socket, &welcome).await
    }

    fn ice_servers(&self) -> Vec<IceServer> {
        match self
            .shared
            .creds
            .ice
            .for_user(&self.user, SystemTime::now())
        {
            Ok(r) => r.ice_servers,
            Err(e) => {
                // Signaling still works without TURN (direct and STUN paths); say why in logs.
                tracing::warn!(error = %e, "cannot mint TURN credentials");
                Vec::new()
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let liveness = self
            .shared
            .liveness
            .next_wake(self.last_heard, self.last_ping);
        if self.viewers.is_empty() {
            liveness
        } else {
            liveness.min(self.next_peer_check)
        }
    }

    /// Sends a frame of our own at once. These are rare next to relayed frames, and writing
    /// each alone keeps the socket's write buffer (never shrunk) at one frame's size on the
    /// idle connections that only ever get them.
    async fn send(&mut self, socket: &mut WebSocket, frame: &ServerFrame) -> Step {
        self.feed(socket, frame.to_json()).await?;
        self.flush(socket).await
    }

    /// Queues a text frame; the run loop flushes before it waits for the next event.
    async fn feed(&mut self, socket: &mut WebSocket, text: String) -> Step {
        self.unflushed = true;
        write_result(
            tokio::time::timeout(self.shared.config.write_timeout, socket.feed(text.into())).await,
        )
    }

    async fn flush(&mut self, socket: &mut WebSocket) -> Step {
        self.unflushed = false;
        let mut flush = socket.flush();
        // Nearly always done at once (the kernel takes the bytes). Only a client that stops
        // reading needs the timer, boxed so every idle task does not carry one inline.
        if let Poll::Ready(r) = futures_util::poll!(&mut flush) {
            return r.map_err(|_| End::Gone);
        }
        write_result(
            Box::pin(tokio::time::timeout(
                self.shared.config.write_timeout,
                flush,
            ))
            .await,
        )
    }

    async fn send_error(
        &mut self,
        socket: &mut WebSocket,
        code: ErrorCode,
        message: impl Into<String>,
        reference: Option<Ref>,
    ) -> Step {
        self.send(socket, &ServerFrame::error(code, message, reference))
            .await
    }

    async fn on_timer(&mut self, socket: &mut WebSocket) -> Step {
        let now = Instant::now();
        match self
            .shared
            .liveness
            .due(now, self.last_heard, self.last_ping)
        {
            LivenessAction::Close => return Err(End::Close(close::POLICY, "idle timeout")),
            LivenessAction::Ping => {
                self.last_ping = Some(now);
                if socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return Err(End::Gone);
                }
            }
            LivenessAction::Wait => {}
        }
        if now >= self.next_peer_check {
            self.next_peer_check = now + self.shared.config.heartbeat;
            self.check_viewers(socket).await?;
        }
        Ok(())
    }

    /// Drops viewers whose session vanished without a word (their replica died).
    async fn check_viewers(&mut self, socket: &mut WebSocket) -> Step {
        if self.viewers.is_empty() {
            return Ok(());
        }
        let alive = self.shared.router.alive(&self.viewers).await;
        let gone: Vec<SessionId> = self
            .viewers
            .iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(v, _)| v.clone())
            .collect();
        for viewer in gone {
            self.viewers.retain(|v| *v != viewer);
            let frame = ServerFrame::PeerLeft {
                peer: viewer.to_string(),
            };
            self.send(socket, &frame).await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Step {
        let msg = match msg {
            None => return Err(End::Gone),
            Some(Err(e)) => return Err(read_error(e)),
            Some(Ok(msg)) => msg,
        };
        self.last_heard = Instant::now();
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(_) => return Err(End::Gone),
            Message::Pong(_) => return Ok(()),
            Message::Ping(_) => return self.rate_check(socket, "ping-frame", None).await.map(drop),
            Message::Binary(_) => {
                if !self.rate_check(socket, "binary", None).await? {
                    return Ok(());
                }
                metrics.message("binary", ErrorCode::BadMessage.as_str());
                return self
                    .send_error(
                        socket,
                        ErrorCode::BadMessage,
                        "binary frames are not supported; send JSON text",
                        None,
                    )
                    .await;
            }
        };
        if let Some(frame) = protocol::parse_relay(&text) {
            return Box::pin(self.on_relay_frame(socket, frame)).await;
        }
        let parsed = match protocol::parse(&text) {
            Ok(p) => p,
            Err(rejection) => {
                if !self
                    .rate_check(socket, rejection.kind, rejection.reference.clone())
                    .await?
                {
                    return Ok(());
                }
                metrics.message(rejection.kind, ErrorCode::BadMessage.as_str());
                return self.send(socket, &rejection.to_frame()).await;
            }
        };
        let kind = parsed.frame.kind();
        if !self
            .rate_check(socket, kind, parsed.reference.clone())
            .await?
        {
            return Ok(());
        }
        let reference = parsed
            .reference
            .or_else(|| Some(Ref::Text(kind.to_owned())));
        let outcome = self.on_frame(socket, parsed.frame).await?;
        self.answer(socket, kind, outcome, reference).await
    }

    /// Counts a handled frame and sends its refusal, if any.
    async fn answer(
        &mut self,
        socket: &mut WebSocket,
        kind: &'static str,
        outcome: Option<Refusal>,
        reference: Option<Ref>,
    ) -> Step {
        match outcome {
            None => {
                self.shared.metrics.message(kind, "ok");
                Ok(())
            }
            Some(refusal) => {
                self.shared.metrics.message(kind, refusal.code.as_str());
                self.send(socket, &refusal.into_frame(reference)).await
            }
        }
    }

    /// An offer, answer or candidate read on the fast path (the same checks as `on_frame`).
    async fn on_relay_frame(&mut self, socket: &mut WebSocket, frame: RelayFrame<'_>) -> Step {
        let kind = frame.kind;
        if !self
            .rate_check(socket, kind, frame.reference.clone())
            .await?
        {
            return Ok(());
        }
        let outcome = self
            .relay(socket, frame.to, |from| frame.render(from))
            .await?;
        let reference = frame.reference.or_else(|| Some(Ref::Text(kind.to_owned())));
        self.answer(socket, kind, outcome, reference).await
    }

    /// Applies the rate limit to one incoming frame. `Ok(false)`: refused and already
    /// answered with `rate-limited`; the frame must not be processed.
    async fn rate_check(
        &mut self,
        socket: &mut WebSocket,
        kind: &'static str,
        reference: Option<Ref>,
    ) -> Result<bool, End> {
        let decision = self.rate.check(Instant::now());
        if decision != RateDecision::Allow {
            self.shared
                .metrics
                .message(kind, ErrorCode::RateLimited.as_str());
        }
        match decision {
            RateDecision::Allow => Ok(true),
            RateDecision::Refuse => {
                self.send_error(
                    socket,
                    ErrorCode::RateLimited,
                    "too many frames; slow down",
                    reference,
                )
                .await?;
                Ok(false)
            }
            RateDecision::Close => Err(End::Close(close::POLICY, "too many frames")),
        }
    }

    /// Handles one client frame; `Some` is the error to answer with.
    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        frame: ClientFrame,
    ) -> Result<Option<Refusal>, End> {
        let refused = |code, msg: &str| Ok(Some(Refusal::new(code, msg)));
        match frame {
            ClientFrame::Auth { .. } => refused(ErrorCode::BadMessage, "already authenticated"),
            ClientFrame::Ping => {
                self.send(socket, &ServerFrame::Pong).await?;
                Ok(None)
            }
            ClientFrame::Publish { camera } => {
                if self.role != Role::Camera {
                    return refused(ErrorCode::Forbidden, "only a camera token may publish");
                }
                if camera.as_deref().is_some_and(|c| c != &*self.user) {
                    return refused(
                        ErrorCode::Forbidden,
                        "a camera publishes only as its own sub",
                    );
                }
                let camera = self.user.to_string();
                if let Err(e) = self.shared.router.publish(&camera, &self.id).await {
                    tracing::warn!(error = %e, "publish failed");
                    return refused(ErrorCode::Internal, "presence backplane unavailable");
                }
                if self.published.is_none() {
                    self.shared.metrics.cameras_online.inc();
                }
                self.published = Some(camera.clone());
                let ack = ServerFrame::CameraOnline {
                    camera,
                    session: self.id.to_string(),
                };
                self.send(socket, &ack).await?;
                Ok(None)
            }
            ClientFrame::Watch { camera } => {
                if self.role != Role::Viewer {
                    return refused(ErrorCode::Forbidden, "only a viewer token may watch");
                }
                if !self.cams.contains(&camera) {
                    return refused(ErrorCode::Forbidden, "camera is not in this token's cams");
                }
                if let Some(watch) = self.watches.iter().find(|w| w.camera == camera) {
                    // A repeated watch restarts the call: clients send it after an ICE failure
                    // to have the camera make a fresh offer.
                    let view = watch.view.clone();
                    Box::pin(self.rewatch(socket, camera, view)).await?;
                    return Ok(None);
                }
                if self.watches.len() >= self.shared.config.max_watches_per_connection {
                    return refused(
                        ErrorCode::Forbidden,
                        "this connection watches too many cameras",
                    );
                }
                self.watches.push(Watch {
                    camera: camera.clone(),
                    view: View::Pending,
                });
                if let Err(e) = self.shared.router.watch(&camera, &self.id).await {
                    tracing::warn!(error = %e, "watch failed");
                    self.watches.retain(|w| w.camera != camera);
                    return refused(ErrorCode::Internal, "presence backplane unavailable");
                }
                Ok(None)
            }
            ClientFrame::Offer { to, sdp } => {
                let body = RelayBody::Offer { sdp };
                self.relay(socket, &to, |from| {
                    ServerFrame::relayed(from, body).to_json()
                })
                .await
            }
            ClientFrame::Answer { to, sdp } => {
                let body = RelayBody::Answer { sdp };
                self.relay(socket, &to, |from| {
                    ServerFrame::relayed(from, body).to_json()
                })
                .await
            }
            ClientFrame::Candidate { to, candidate } => {
                let body = RelayBody::Candidate { candidate };
                self.relay(socket, &to, |from| {
                    ServerFrame::relayed(from, body).to_json()
                })
                .await
            }
            ClientFrame::Leave { camera } => match self.role {
                Role::Camera => {
                    self.unpublish().await;
                    Ok(None)
                }
                Role::Viewer => match camera {
                    None => {
                        self.unwatch_all().await;
                        Ok(None)
                    }
                    Some(camera) if self.watches.iter().any(|w| w.camera == camera) => {
                        self.unwatch(&camera).await;
                        Ok(None)
                    }
                    Some(_) => refused(ErrorCode::NotFound, "not watching that camera"),
                },
            },
        }
    }

    /// Relays an offer, answer or candidate to a peer of this session: a camera to the viewers
    /// that joined it, a viewer to the cameras it watches. Anything else is `peer-gone`, so a
    /// session id is no use to anyone it was not given to.
    /// `render` makes the peer's frame from this session's id; it runs only for a peer.
    async fn relay(
        &mut self,
        socket: &mut WebSocket,
        to: &str,
        render: impl FnOnce(&str) -> String,
    ) -> Result<Option<Refusal>, End> {
        let camera_of_peer = self.watches.iter().find_map(|w| match &w.view {
            View::Online(s) if **s == *to => Some((w.camera.clone(), s.clone())),
            _ => None,
        });
        let peer = match (&camera_of_peer, self.viewers.iter().find(|v| ***v == *to)) {
            (Some((_, s)), _) => s.clone(),
            (None, Some(v)) => v.clone(),
            (None, None) => return Ok(Some(Refusal::peer_gone(to))),
        };
        let delivery = Delivery::Relay {
            text: render(&self.id),
            sent_at_us: now_us(),
        };
        match self.shared.router.send(&peer, delivery).await {
            Ok(()) => Ok(None),
            Err(SendError::Gone) => {
                if let Some((camera, session)) = camera_of_peer {
                    self.shared.router.camera_gone(&camera, &session).await;
                } else {
                    self.viewers.retain(|v| *v != peer);
                    self.send(socket, &ServerFrame::peer_gone(to, None)).await?;
                    let left = ServerFrame::PeerLeft {
                        peer: to.to_owned(),
                    };
                    self.send(socket, &left).await?;
                    self.shared
                        .metrics
                        .message("relay", ErrorCode::PeerGone.as_str());
                    return Ok(None);
                }
                Ok(Some(Refusal::peer_gone(to)))
            }
            Err(SendError::Full) => Ok(Some(Refusal::new(
                ErrorCode::RateLimited,
                "the peer is not keeping up",
            ))),
            Err(SendError::Backplane(e)) => {
                tracing::warn!(error = %e, "relay failed");
                Ok(Some(Refusal::new(
                    ErrorCode::Internal,
                    "relay backplane unavailable",
                )))
            }
        }
    }

    async fn on_delivery(&mut self, socket: &mut WebSocket, delivery: Arc<Delivery>) -> Step {
        // A relayed frame has one receiver, so its text moves to the socket without a copy.
        let delivery = match Arc::try_unwrap(delivery) {
            Ok(Delivery::Relay { text, sent_at_us }) => {
                return self.write_relayed(socket, text, sent_at_us).await;
            }
            Ok(other) => Arc::new(other),
            Err(shared) => shared,
        };
        match &*delivery {
            Delivery::Relay { text, sent_at_us } => {
                self.write_relayed(socket, text.clone(), *sent_at_us).await
            }
            Delivery::ViewerJoined {
                camera,
                viewer,
                user,
            } => {
                if self.published.as_deref() != Some(camera.as_str()) {
                    return Ok(());
                }
                if !self.viewers.contains(viewer) {
                    let max = self.shared.config.max_viewers_per_camera;
                    if self.viewers.len() >= max {
                        let refusal = Delivery::WatchRefused {
                            camera: camera.clone(),
                            message: format!("camera already has {max} viewers"),
                        };
                        let _ = self.shared.router.send(viewer, refusal).await;
                        return Ok(());
                    }
                    self.viewers.push(viewer.clone());
                }
                let frame = ServerFrame::ViewerJoined {
                    viewer: viewer.to_string(),
                    user: user.clone(),
                };
                self.send(socket, &frame).await
            }
            Delivery::ViewerLeft { camera, viewer } => {
                if self.published.as_deref() != Some(camera.as_str())
                    || !self.viewers.contains(viewer)
                {
                    return Ok(());
                }
                self.viewers.retain(|v| v != viewer);
                let frame = ServerFrame::PeerLeft {
                    peer: viewer.to_string(),
                };
                self.send(socket, &frame).await
            }
            Delivery::WatchRefused { camera, message } => {
                if !self.watches.iter().any(|w| w.camera == *camera) {
                    return Ok(());
                }
                self.watches.retain(|w| w.camera != *camera);
                self.shared.router.unwatch(camera, &self.id).await;
                self.send_error(
                    socket,
                    ErrorCode::Forbidden,
                    message.clone(),
                    Some(Ref::Text("watch".to_owned())),
                )
                .await
            }
            Delivery::Replaced { camera } => {
                if self.published.as_deref() != Some(camera.as_str()) {
                    return Ok(());
                }
                self.published = None;
                self.viewers.clear();
                self.shared.metrics.cameras_online.dec();
                self.send_error(
                    socket,
                    ErrorCode::Forbidden,
                    format!("camera {camera} was published by a newer connection"),
                    Some(Ref::Text("publish".to_owned())),
                )
                .await
            }
            Delivery::CameraState { camera, session } => {
                let Some(watch) = self.watches.iter_mut().find(|w| w.camera == *camera) else {
                    return Ok(());
                };
                let (view, effects) = view_change(camera, &watch.view, session.as_ref());
                watch.view = view;
                for effect in effects {
                    match effect {
                        Effect::Send(frame) => self.send(socket, &frame).await?,
                        Effect::Join(camera_session) => {
                            let join = Delivery::ViewerJoined {
                                camera: camera.clone(),
                                viewer: self.id.clone(),
                                user: self.user.to_string(),
                            };
                            if self.shared.router.send(&camera_session, join).await
                                == Err(SendError::Gone)
                            {
                                self.shared
                                    .router
                                    .camera_gone(camera, &camera_session)
                                    .await;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn write_relayed(
        &mut self,
        socket: &mut WebSocket,
        text: String,
        sent_at_us: u64,
    ) -> Step {
        // Observed at hand-off to the socket, before the write can wait on the client.
        let latency = now_us().saturating_sub(sent_at_us);
        self.shared
            .metrics
            .relay_latency
            .observe(Duration::from_micros(latency).as_secs_f64());
        self.feed(socket, text).await
    }

    /// A `watch` of a camera already watched: answer as for a first watch, and if the camera
    /// is online tell it again that this viewer joins (a fresh `viewer-joined`).
    async fn rewatch(&mut self, socket: &mut WebSocket, camera: String, view: View) -> Step {
        match view {
            // The first watch's answer is still on its way.
            View::Pending => Ok(()),
            View::Offline => {
                self.send(socket, &ServerFrame::CameraOffline { camera })
                    .await
            }
            View::Online(session) => {
                let online = ServerFrame::CameraOnline {
                    camera: camera.clone(),
                    session: session.to_string(),
                };
                self.send(socket, &online).await?;
                let join = Delivery::ViewerJoined {
                    camera: camera.clone(),
                    viewer: self.id.clone(),
                    user: self.user.to_string(),
                };
                if self.shared.router.send(&session, join).await == Err(SendError::Gone) {
                    self.shared.router.camera_gone(&camera, &session).await;
                }
                Ok(())
            }
        }
    }

    async fn unpublish(&mut self) {
        if let Some(camera) = self.published.take() {
            self.shared.router.unpublish(&camera, &self.id).await;
            self.shared.metrics.cameras_online.dec();
            self.viewers.clear();
        }
    }

    async fn unwatch(&mut self, camera: &str) {
        let Some(i) = self.watches.iter().position(|w| w.camera == camera) else {
            return;
        };
        let watch = self.watches.swap_remove(i);
        if let View::Online(session) = &watch.view {
            let left = Delivery::ViewerLeft {
                camera: watch.camera.clone(),
                viewer: self.id.clone(),
            };
            let _ = self.shared.router.send(session, left).await;
        }
        self.shared.router.unwatch(&watch.camera, &self.id).await;
    }

    async fn unwatch_all(&mut self) {
        let cameras: Vec<String> = self.watches.iter().map(|w| w.camera.clone()).collect();
        for camera in cameras {
            self.unwatch(&camera).await;
        }
    }

    /// Runs when the connection ends: peers learn it left.
    async fn leave_all(&mut self) {
        self.unpublish().await;
        self.unwatch_all().await;
    }
}

fn write_result(r: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) -> Step {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(close::POLICY, "not reading frames fast enough")),
    }
}

fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close::TOO_LARGE, "frame too large"),
        Some(tungstenite::Error::Utf8(_)) => End::Close(1007, "invalid UTF-8"),
        Some(tungstenite::Error::Protocol(_)) => End::Close(1002, "protocol error"),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Send(f) => serde_json::to_value(f).expect("json")["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                Effect::Join(s) => format!("join {s}"),
            })
            .collect()
    }

    #[test]
    fn viewer_of_an_offline_camera_hears_offline_then_online() {
        let s1: SessionId = Arc::from("s1");
        let (v, e) = view_change("cam", &View::Pending, None);
        assert_eq!(frames(&e), ["camera-offline"]);
        let (v, e) = view_change("cam", &v, Some(&s1));
        assert_eq!(frames(&e), ["camera-online", "join s1"]);
        assert_eq!(v, View::Online(s1));
    }

    #[test]
    fn camera_reconnecting_under_a_new_session_is_left_offline_online() {
        let s1: SessionId = Arc::from("s1");
        let s2: SessionId = Arc::from("s2");
        let (v, e) = view_change("cam", &View::Online(s1.clone()), Some(&s2));
        assert_eq!(
            frames(&e),
            ["peer-left", "camera-offline", "camera-online", "join s2"]
        );
        assert_eq!(v, View::Online(s2.clone()));
        let (_, e) = view_change("cam", &v, Some(&s2));
        assert!(e.is_empty(), "no repeat for the same session");
        let (v, e) = view_change("cam", &View::Online(s1), None);
        assert_eq!(frames(&e), ["peer-left", "camera-offline"]);
        let (_, e) = view_change("cam", &v, None);
        assert!(e.is_empty());
    }
}
