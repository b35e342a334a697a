//! One task per WebSocket: authenticate, then move frames between the socket, the session's
//! mailbox and the router until either side ends. The protocol rules are [`Session`]'s
//! (`session/`, no I/O); this loop feeds it and carries out what it asks for.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use iceway_auth::{AppClaims, IceServer};

use crate::limits::UserSlot;
use crate::protocol::{self, ClientFrame, Parsed, Resume, close};
use crate::resume;
use crate::router::{Mailbox, Router, SessionId};
use crate::server::Shared;
use crate::session::{Command, End, Incoming, Output, Routed, Session, Token};

/// What an upgrade brings besides the socket: a bearer token and a resume request, from the
/// request's headers (native clients); browsers send both in their `auth` frame.
#[derive(Debug, Default)]
pub(crate) struct Hello {
    pub bearer: Option<String>,
    pub resume: Option<Resume>,
}

/// The task of one upgraded socket. Not an `async fn`: an async fn keeps its arguments in the
/// task for its whole life, and the socket and hello would then be held twice (argument and
/// working copy); boxing them first keeps an idle connection's task small.
///
/// The future itself is boxed too: the caller's task awaits it from an `async` block that
/// captures it, and a captured future is stored twice in that block (the capture, and the
/// copy being awaited), so unboxed its ~700 bytes would be paid twice per connection.
pub(crate) fn serve(
    socket: WebSocket,
    hello: Hello,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    Box::pin(serve_boxed(Box::new(socket), Box::new(hello), shared))
}

/// How a socket silent past the idle timeout is closed.
const SILENT: End = End::Close(close::POLICY, "idle timeout");

/// A session whose socket dropped, waiting for its client to resume it.
pub(crate) struct Detached {
    pub session: Box<Session>,
    pub mailbox: Arc<Mailbox>,
    pub slot: UserSlot,
    /// Tells this detachment's expiry from a later one's, should the session be resumed
    /// and dropped again.
    generation: u64,
}

/// Not an `async fn`, for the reason [`run`] is not.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_boxed(
    mut socket: Box<WebSocket>,
    hello: Box<Hello>,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    async move {
        // An idle connection's task is as large as what is live across the session's run, plus
        // every local whose scope spans more than one await (moved from or not): so the
        // admission is taken apart inside the match, and only what outlives the run is bound.
        let (mut session, mailbox, slot, how) =
            match Box::pin(admit(&mut socket, hello, &shared)).await {
                Ok(Admitted {
                    session,
                    mailbox,
                    slot,
                    how,
                }) => {
                    shared.metrics.connection(how.label());
                    shared.metrics.connections.inc();
                    if session.role() == iceway_auth::Role::Viewer && how != How::Resumed {
                        shared.metrics.viewers.inc();
                    }
                    (session, mailbox, slot, how)
                }
                Err(end) => return Box::pin(finish(&mut socket, end, &shared)).await,
            };
        let end = run(&mut socket, &mut session, &mailbox, &shared, how).await;
        shared.metrics.connections.dec();
        let resumable = !shared.config.resume_grace.is_zero() && !shared.close_all.is_cancelled();
        let end = if end == End::Resumed {
            // Its client is on a new socket, which is waiting for this one to let go.
            detach(session, mailbox, slot, &shared);
            End::Close(
                close::RESUMED_ELSEWHERE,
                "session resumed on another socket",
            )
        } else if end == End::Gone && resumable {
            // The socket dropped without a word (a phone changing networks): the session waits
            // for its client, its peers are not told, and what is sent to it queues.
            detach(session, mailbox, slot, &shared);
            return;
        } else if end == End::Silent && resumable {
            // Silent past the idle timeout: most likely as dead as a dropped socket, so the
            // session waits the same way; the close frame is for a client that is still there.
            detach(session, mailbox, slot, &shared);
            SILENT
        } else {
            end_session(session, &shared).await;
            drop(slot);
            if end == End::Silent { SILENT } else { end }
        };
        Box::pin(finish(&mut socket, end, &shared)).await;
    }
}

struct Admitted {
    session: Box<Session>,
    mailbox: Arc<Mailbox>,
    slot: UserSlot,
    how: How,
}

/// How a socket came by its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    New,
    /// Resumed from this process.
    Resumed,
    /// Resumed from another replica, which handed it over.
    MovedIn,
}

impl How {
    fn label(self) -> &'static str {
        match self {
            How::New => "accepted",
            How::Resumed => "resumed",
            How::MovedIn => "moved_in",
        }
    }
}

/// The session leaves: peers are told, the router forgets it.
async fn end_session(mut session: Box<Session>, shared: &Arc<Shared>) {
    let role = session.role();
    session.leave();
    Box::pin(route_all(&mut session, shared)).await;
    shared.router.unregister(session.id()).await;
    if role == iceway_auth::Role::Viewer {
        shared.metrics.viewers.dec();
    }
}

fn detach(session: Box<Session>, mailbox: Arc<Mailbox>, slot: UserSlot, shared: &Arc<Shared>) {
    let id = session.id().clone();
    let generation = shared.next_generation();
    shared.detached.lock().insert(
        id.clone(),
        Detached {
            session,
            mailbox,
            slot,
            generation,
        },
    );
    let shared = shared.clone();
    let grace = shared.config.resume_grace;
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            // Draining: nobody will resume here; end it now so peers hear before we exit.
            () = shared.close_all.cancelled() => {}
        }
        let expired = {
            let mut detached = shared.detached.lock();
            match detached.get(&id) {
                Some(d) if d.generation == generation => detached.remove(&id),
                _ => None,
            }
        };
        if let Some(d) = expired {
            expire(d, &shared).await;
        }
    });
}

/// The grace ran out: frames that waited for the session are answered `peer-gone` to their
/// senders, and the session leaves.
async fn expire(d: Detached, shared: &Arc<Shared>) {
    let id = d.session.id().clone();
    shared.router.unregister(&id).await;
    crate::router::refuse_waiting(&*shared.router, &id, &d.mailbox).await;
    shared.metrics.connection("resume_expired");
    end_session(d.session, shared).await;
    drop(d.slot);
}

/// Authenticates, then resumes the session asked for or starts a new one: takes a per-user
/// slot and registers it with the router.
///
/// Takes the hello boxed, and frees the box when it is done: a box moved out of in the
/// connection's task would be freed only when the task ends.
async fn admit(
    socket: &mut WebSocket,
    hello: Box<Hello>,
    shared: &Arc<Shared>,
) -> Result<Admitted, End> {
    let (claims, resume) = authenticate(socket, *hello, shared).await?;
    let token = token_of(claims, shared);
    let resume = resume.filter(|r| shared.resume_key.verify(&r.session, &r.token));
    if let Some(resume) = &resume
        && let Some(d) = Box::pin(resume::take_local(shared, resume, &token)).await
    {
        let Detached {
            mut session,
            mailbox,
            slot,
            ..
        } = d;
        let secret = Some(shared.resume_key.secret(session.id()));
        session.resumed(token, secret, Instant::now());
        return Ok(Admitted {
            session,
            mailbox,
            slot,
            how: How::Resumed,
        });
    }
    let who = resume::who(&token);
    // A slot taken for a resume that finds nothing to move in serves the new session.
    let mut slot = None;
    if let Some(resume) = &resume {
        let user: Arc<str> = Arc::from(token.sub.as_str());
        let taken = user_slot(shared, &user)?;
        let mailbox = Mailbox::new();
        mailbox.set_owner(who.tag());
        let id = crate::router::SessionId::from(resume.session.as_str());
        let state = Box::pin(
            shared
                .router
                .claim(&id, &resume.token, &who, mailbox.clone()),
        )
        .await;
        if let Some(state) = state {
            let secret = Some(shared.resume_key.secret(&id));
            let session =
                Session::restore(state, token, secret, shared.rules.clone(), Instant::now());
            return Ok(Admitted {
                session: Box::new(session),
                mailbox,
                slot: taken,
                how: How::MovedIn,
            });
        }
        slot = Some(taken);
    }
    let id = shared.router.new_session_id();
    let secret = (!shared.config.resume_grace.is_zero()).then(|| shared.resume_key.secret(&id));
    // Made before it is registered (making it has no effects) so that the per-user slot
    // counts the session's own copy of the user's name, not a second one.
    let session = Box::new(Session::new(
        id,
        token,
        secret,
        shared.rules.clone(),
        Instant::now(),
    ));
    let slot = match slot {
        Some(slot) => slot,
        None => user_slot(shared, session.user())?,
    };
    let mailbox = Mailbox::new();
    mailbox.set_owner(who.tag());
    if let Err(e) = shared.router.register(session.id(), mailbox.clone()).await {
        tracing::warn!(error = %e, "cannot register session");
        shared.metrics.connection("backplane_error");
        return Err(End::Close(1011, "backplane unavailable"));
    }
    Ok(Admitted {
        session,
        mailbox,
        slot,
        how: How::New,
    })
}

/// A connection slot for `user`, or the close frame for a user over its limit.
fn user_slot(shared: &Shared, user: &Arc<str>) -> Result<UserSlot, End> {
    shared.users.acquire(user).ok_or_else(|| {
        shared.metrics.connection("user_limit");
        End::Close(close::POLICY, "too many connections for this user")
    })
}

/// Verifies the `Authorization` token, or waits for an `auth` frame.
async fn authenticate(
    socket: &mut WebSocket,
    hello: Hello,
    shared: &Shared,
) -> Result<(AppClaims, Option<Resume>), End> {
    let (token, resume) = match hello.bearer {
        Some(token) => (token, hello.resume),
        None => match tokio::time::timeout(shared.config.auth_timeout, socket.recv()).await {
            Err(_) => return Err(refuse(shared, "timeout", "no auth frame in time")),
            Ok(None | Some(Err(_))) => return Err(End::Gone),
            Ok(Some(Ok(Message::Text(text)))) => match protocol::parse(&text) {
                Ok(Parsed {
                    frame: ClientFrame::Auth { token, resume },
                    ..
                }) => (token, resume),
                _ => return Err(refuse(shared, "missing", "first frame must be auth")),
            },
            Ok(Some(Ok(Message::Close(_)))) => return Err(End::Left),
            Ok(Some(Ok(_))) => return Err(refuse(shared, "missing", "first frame must be auth")),
        },
    };
    let claims = shared.creds.verifier.get().verify(&token).map_err(|e| {
        shared.metrics.auth_failure(e.reason());
        shared.metrics.connection("unauthorized");
        End::Close(close::UNAUTHORIZED, "invalid token")
    })?;
    Ok((claims, resume))
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

/// A verified token as the session takes it: the time left on it, and TURN credentials
/// minted for its user.
fn token_of(claims: AppClaims, shared: &Shared) -> Token {
    let now = SystemTime::now();
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
    Token {
        expires_in: exp.duration_since(now).unwrap_or_default(),
        ice_servers: ice_servers(shared, &claims.sub, now),
        sub: claims.sub,
        role: claims.role,
        cams: claims.cams,
        exp: claims.exp,
    }
}

fn ice_servers(shared: &Shared, user: &str, now: SystemTime) -> Vec<IceServer> {
    match shared.creds.ice.for_user(user, now) {
        Ok(r) => r.ice_servers,
        Err(e) => {
            // Signaling still works without TURN (direct and STUN paths); say why in logs.
            tracing::warn!(error = %e, "cannot mint TURN credentials");
            Vec::new()
        }
    }
}

/// Deliveries written between two flushes at most, so one busy peer cannot hold back the
/// reads of this socket for long.
const MAX_BATCH: u32 = 32;

/// Whether the loop goes on.
type Step = Result<(), End>;

enum Event {
    Drain,
    Delivery,
    Message(Option<Result<Message, axum::Error>>),
    Timer,
}

/// Frames fed to the socket but not yet flushed: the loop flushes once per wake-up, not once
/// per relayed frame.
#[derive(Default)]
struct Writes {
    unflushed: bool,
    batched: u32,
}

/// Feeds the session until it or the socket ends. Every output is carried out before the
/// next input, so the session sees its router results in the order it asked.
///
/// Not an `async fn`: that would copy its arguments into the task beside the originals; an
/// `async move` block uses what it captured in place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run<'a>(
    socket: &'a mut WebSocket,
    session: &'a mut Session,
    mailbox: &'a Mailbox,
    shared: &'a Arc<Shared>,
    how: How,
) -> impl Future<Output = End> + Send + 'a {
    async move {
        let mut writes = Writes::default();
        // The digest of the state last saved for a resume elsewhere (with a router that keeps
        // states); a session that came from elsewhere saves its state here at once.
        let mut saved = shared.router.keeps_state().then(|| match how {
            How::New => session.state_digest(),
            How::Resumed | How::MovedIn => 0,
        });
        loop {
            if let Err(end) = carry_out(socket, session, shared, &mut writes).await {
                return end;
            }
            // Deliveries first: they are already queued, and the socket's reads can wait. Only a
            // run of unflushed relays counts against the batch: a full batch always ends in the
            // flush below, never in a wait that the queued deliveries would not wake.
            if !writes.unflushed {
                writes.batched = 0;
            }
            let next = if writes.batched < MAX_BATCH {
                mailbox.pop()
            } else {
                None
            };
            if let Some(d) = next {
                writes.batched += 1;
                session.on_delivery(d);
                continue;
            }
            if writes.unflushed {
                writes.unflushed = false;
                if let Err(end) = flush(socket, shared).await {
                    return end;
                }
                continue;
            }
            if mailbox.is_closed() {
                return End::Close(close::POLICY, "not reading frames fast enough");
            }
            if let Some(saved) = &mut saved {
                let digest = session.state_digest();
                if digest != *saved {
                    *saved = digest;
                    shared.router.save(session.state());
                }
            }
            let wake = session.poll_timeout();
            let event = tokio::select! {
                () = shared.close_all.cancelled() => Event::Drain,
                () = mailbox.wait() => Event::Delivery,
                // `next`, not the async fn `recv` around it, which would take more room in
                // the task of every idle connection.
                msg = socket.next() => Event::Message(msg),
                () = tokio::time::sleep_until(wake.into()) => Event::Timer,
            };
            match event {
                Event::Drain => return End::Close(close::GOING_AWAY, "server is draining"),
                Event::Delivery => {
                    if mailbox.taken_over() {
                        return End::Resumed;
                    }
                }
                Event::Timer => session.on_timeout(Instant::now()),
                Event::Message(msg) => {
                    let msg = match msg {
                        None => return End::Gone,
                        Some(Err(e)) => return read_error(e),
                        Some(Ok(msg)) => msg,
                    };
                    let incoming = match &msg {
                        Message::Text(text) => Incoming::Text(text.as_str()),
                        Message::Binary(_) => Incoming::Binary,
                        Message::Ping(_) => Incoming::Ping,
                        Message::Pong(_) => Incoming::Pong,
                        Message::Close(frame) => return closed_by_client(frame.as_ref()),
                    };
                    session.on_message(incoming, Instant::now());
                }
            }
        }
    }
}

/// Carries out what the session asked for since the last input.
async fn carry_out(
    socket: &mut WebSocket,
    session: &mut Session,
    shared: &Arc<Shared>,
    writes: &mut Writes,
) -> Step {
    while let Some(output) = session.poll_output() {
        match output {
            Output::Relay(text) => {
                writes.unflushed = true;
                Box::pin(feed(socket, shared, text)).await?;
            }
            // These are rare next to relayed frames, and writing each alone keeps the
            // socket's write buffer (never shrunk) at one frame's size on the idle
            // connections that only ever get them.
            Output::Send(text) => {
                Box::pin(feed(socket, shared, text)).await?;
                writes.unflushed = false;
                flush(socket, shared).await?;
            }
            Output::Ping => Box::pin(ping(socket, shared)).await?,
            Output::Verify { token, reference } => {
                let result = shared
                    .creds
                    .verifier
                    .get()
                    .verify(&token)
                    .map(|claims| token_of(claims, shared))
                    .map_err(|e| e.reason());
                session.on_token(result, reference, Instant::now());
            }
            Output::Route(command) => {
                let routed = Box::pin(execute(&*shared.router, session.id(), *command)).await;
                session.on_routed(routed);
            }
            Output::End(end) => return Err(end),
        }
    }
    Ok(())
}

/// After the session ended: runs its last router commands (leaving), writes nothing.
async fn route_all(session: &mut Session, shared: &Shared) {
    while let Some(output) = session.poll_output() {
        if let Output::Route(command) = output {
            let routed = execute(&*shared.router, session.id(), *command).await;
            session.on_routed(routed);
        }
    }
}

/// Runs one router command for session `me`.
async fn execute(router: &dyn Router, me: &SessionId, command: Command) -> Routed {
    match command {
        Command::Publish { camera, reference } => {
            let result = router.publish(&camera, me).await;
            Routed::Published {
                camera,
                reference,
                result,
            }
        }
        Command::Unpublish { camera } => {
            router.unpublish(&camera, me).await;
            Routed::Done
        }
        Command::Watch { camera, reference } => {
            let result = router.watch(&camera, me).await;
            Routed::Watched {
                camera,
                reference,
                result,
            }
        }
        Command::Unwatch { camera } => {
            router.unwatch(&camera, me).await;
            Routed::Done
        }
        Command::Send { to, delivery, then } => {
            let result = router.send(&to, delivery).await;
            Routed::Sent { to, then, result }
        }
        Command::CameraGone { camera, session } => {
            router.camera_gone(&camera, &session).await;
            Routed::Done
        }
        Command::Alive { sessions } => {
            let alive = router.alive(&sessions).await;
            Routed::Alive { sessions, alive }
        }
    }
}

async fn feed(socket: &mut WebSocket, shared: &Shared, text: String) -> Step {
    write_result(tokio::time::timeout(shared.config.write_timeout, socket.feed(text.into())).await)
}

async fn flush(socket: &mut WebSocket, shared: &Shared) -> Step {
    let mut flush = socket.flush();
    // Nearly always done at once (the kernel takes the bytes). Only a client that stops
    // reading needs the timer, boxed so every idle task does not carry one inline.
    if let Poll::Ready(r) = futures_util::poll!(&mut flush) {
        return r.map_err(|_| End::Gone);
    }
    write_result(Box::pin(tokio::time::timeout(shared.config.write_timeout, flush)).await)
}

/// A ping is a write like any other: a client that stops reading cannot hold it for ever.
async fn ping(socket: &mut WebSocket, shared: &Shared) -> Step {
    write_result(
        tokio::time::timeout(
            shared.config.write_timeout,
            socket.send(Message::Ping(Default::default())),
        )
        .await,
    )
}

fn write_result(r: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>) -> Step {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Gone),
        Err(_) => Err(End::Close(close::POLICY, "not reading frames fast enough")),
    }
}

/// A close frame from the client ends the session at once (its peers see `peer-left`), unless
/// it says it is only reconnecting: a socket a client gave up on after a network change may
/// still deliver that close frame once the network is back, after which the session must still
/// be there for the resume that follows.
fn closed_by_client(frame: Option<&CloseFrame>) -> End {
    match frame {
        Some(f) if f.code == close::RECONNECTING => End::Gone,
        _ => End::Left,
    }
}

fn read_error(e: axum::Error) -> End {
    let inner = e.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close::TOO_LARGE, "frame too large"),
        Some(tungstenite::Error::Utf8(_)) => End::Close(1007, "invalid UTF-8"),
        // A socket that just ends (a phone leaving the Wi-Fi) is not a protocol error: its
        // session may be resumed.
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => End::Gone,
        Some(tungstenite::Error::Protocol(_)) => End::Close(1002, "protocol error"),
        _ => End::Gone,
    }
}
