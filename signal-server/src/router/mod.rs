//! Routing between sessions: who is connected, which cameras are online, who watches them.
//!
//! [`Router`] has two implementations: [`MemoryRouter`] (one process holds everything) and
//! [`RedisRouter`] (replicas share presence through TTL keys and route frames over pub/sub).
//! Both keep the sessions of *this* process in a [`Hub`], which hands events to each session's
//! mailbox; a connection task reacts to what arrives there.

mod hub;
mod mailbox;
mod memory;
mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use hub::Hub;
pub use mailbox::{MAILBOX_CAPACITY, MAILBOX_PER_SENDER, Mailbox};
pub use memory::MemoryRouter;
pub use redis::{RedisRouter, RedisRouterConfig};

/// A session id: 128 random bits, base64url. Unguessable, so it doubles as a capability.
pub type SessionId = Arc<str>;

/// An event for one session, local or carried over Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Delivery {
    /// An offer, answer or candidate from a peer, as the JSON text the receiver gets (with
    /// `from`): rendered once by the sender, written as is. `sent_at_us` (Unix µs) feeds the
    /// relay latency histogram.
    Relay {
        /// The sending session: its share of the receiver's mailbox is counted.
        #[serde(default)]
        from: SessionId,
        text: String,
        sent_at_us: u64,
    },
    /// To a camera session: a viewer wants to watch.
    ViewerJoined {
        camera: String,
        viewer: SessionId,
        user: String,
    },
    /// To a camera session: a viewer stopped watching or disconnected.
    ViewerLeft { camera: String, viewer: SessionId },
    /// To a viewer session: the camera refused it (too many viewers).
    WatchRefused { camera: String, message: String },
    /// To a camera session: the same camera published from a newer connection.
    Replaced { camera: String },
    /// To the sender of frames that were waiting for a detached session whose grace ran out.
    PeerGone { peer: SessionId },
    /// To a viewer session: the camera's presence as now known; `None` is offline.
    CameraState {
        camera: String,
        session: Option<SessionId>,
    },
}

impl Delivery {
    /// The session whose action this is, if it is a peer's and not the server's own notice.
    pub fn sender(&self) -> Option<&SessionId> {
        match self {
            Delivery::Relay { from, .. } => Some(from),
            Delivery::ViewerJoined { viewer, .. } | Delivery::ViewerLeft { viewer, .. } => {
                Some(viewer)
            }
            Delivery::WatchRefused { .. }
            | Delivery::Replaced { .. }
            | Delivery::CameraState { .. }
            | Delivery::PeerGone { .. } => None,
        }
    }
}

/// Why a frame could not be handed to a session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the session is gone")]
    Gone,
    /// The sender's share of the receiver's mailbox is full: the sender slows down.
    #[error("the session is not keeping up with this sender")]
    Full,
    #[error("backplane: {0}")]
    Backplane(String),
}

/// A session as it moves between replicas (a client resuming on another one): what its rules
/// need to go on with the same id, peers and presence. Plain data; [`crate::session::Session`]
/// makes one and is made again from one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub id: SessionId,
    pub user: String,
    pub role: iceway_auth::Role,
    /// Camera role: the camera it published.
    #[serde(default)]
    pub published: Option<String>,
    /// Camera role: the viewer sessions that joined.
    #[serde(default)]
    pub viewers: Vec<SessionId>,
    /// Viewer role: the cameras it watches, with the camera session it joined (if online).
    #[serde(default)]
    pub watches: Vec<(String, Option<SessionId>)>,
}

/// A session handed over by the replica that held it: its state and the deliveries that
/// waited for it, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub state: SessionState,
    /// The presence epoch of the published camera (the router fills it in).
    #[serde(default)]
    pub epoch: u64,
    pub queued: Vec<Delivery>,
}

/// What the replica holding a session answers a request to hand it over.
#[derive(Debug)]
pub enum Claim {
    Handover(Handover),
    /// Still attached to a socket (half-open, most likely); that socket is being closed and
    /// a request a moment later finds the session ready to move.
    Busy,
    /// No such session here, or the secret is not its.
    No,
}

/// The server's side of a hand-over: the router asks it for a session another replica wants.
pub trait Claimer: Send + Sync + 'static {
    /// Hands over `session` if `secret` is its and `who` (the resuming token's `sub` and
    /// role) is its identity.
    fn claim(&self, session: &str, secret: &str, who: &Who) -> Claim;
}

/// The identity a resuming client's token gives: a session moves only to its own user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    pub user: String,
    pub role: iceway_auth::Role,
}

impl Who {
    /// A digest of the identity, kept with a session's mailbox (8 bytes, not the user's name).
    pub fn tag(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.user.hash(&mut h);
        self.role.hash(&mut h);
        h.finish().max(1)
    }
}

/// A router operation that failed in the backplane.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("backplane: {0}")]
pub struct RouterError(pub String);

/// Session routing, presence and watching. Futures are boxed so connection tasks can hold an
/// `Arc<dyn Router>` and not be generic over the backplane.
pub trait Router: Send + Sync + 'static {
    /// An id for a new session of this process.
    fn new_session_id(&self) -> SessionId {
        new_session_id()
    }

    /// Whether the backplane answers: `/readyz` reports it, and while it is down presence
    /// operations fail at once instead of waiting for their deadline.
    fn healthy(&self) -> bool {
        true
    }

    /// Makes `session` reachable; resolves once frames addressed to it can arrive.
    fn register<'a>(
        &'a self,
        session: &'a SessionId,
        mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    fn unregister<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()>;

    /// Hands `delivery` to `to`, wherever it is connected. A receiver on another replica is
    /// decided on there: the result is that replica's answer.
    fn send<'a>(
        &'a self,
        to: &'a SessionId,
        delivery: Delivery,
    ) -> BoxFuture<'a, Result<(), SendError>>;

    /// `session` is now camera `camera`. A previous session of the camera is sent `Replaced`
    /// and its watchers learn the new session.
    fn publish<'a>(
        &'a self,
        camera: &'a str,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    /// Camera `camera` goes offline, if `session` is still the one published.
    fn unpublish<'a>(&'a self, camera: &'a str, session: &'a SessionId) -> BoxFuture<'a, ()>;

    /// `viewer` watches `camera`: it will get `CameraState` now (once known) and at each change.
    fn watch<'a>(
        &'a self,
        camera: &'a str,
        viewer: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>>;

    fn unwatch<'a>(&'a self, camera: &'a str, viewer: &'a SessionId) -> BoxFuture<'a, ()>;

    /// A frame to camera session `session` found it gone: if presence still names it (its
    /// replica died), declare the camera offline now instead of waiting for the TTL.
    fn camera_gone<'a>(&'a self, camera: &'a str, session: &'a SessionId) -> BoxFuture<'a, ()>;

    /// The key resume secrets are made with. A backplane shares one between its replicas, so
    /// any of them can check a secret another handed out; `None`: the process's own.
    fn resume_key(&self) -> Option<[u8; 32]> {
        None
    }

    /// Installs the server's side of hand-overs (another replica asking for a session).
    fn set_claimer(&self, _claimer: std::sync::Weak<dyn Claimer>) {}

    /// Brings `session` (held by another replica) here for a client resuming it with
    /// `secret`: from now on it is reachable through `mailbox`, which starts with what waited
    /// for it. `None`: no other replica holds it (the client starts a new session).
    fn claim<'a>(
        &'a self,
        _session: &'a SessionId,
        _secret: &'a str,
        _who: &'a Who,
        _mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Option<SessionState>> {
        Box::pin(async { None })
    }

    /// Whether [`save`](Self::save) keeps anything: a backplane keeps each session's state
    /// so that its client can resume it on another replica even if this one crashes.
    fn keeps_state(&self) -> bool {
        false
    }

    /// `state` is what the session's rules hold now (saved in the background, newest wins).
    fn save(&self, _state: SessionState) {}

    /// The mailbox of `session` if it is attached here, so a resume can take it over.
    fn local_mailbox(&self, session: &str) -> Option<Arc<Mailbox>>;

    /// Which of `sessions` still exist anywhere. Unknown (the backplane cannot tell) counts
    /// as alive: a peer is never dropped for a blip.
    fn alive<'a>(&'a self, sessions: &'a [SessionId]) -> BoxFuture<'a, Vec<bool>>;
}

/// Answers each frame that waited in `session`'s mailbox `peer-gone` to its sender: the
/// session will not come to read them (its resume grace ran out, or it did not move here).
pub async fn refuse_waiting(router: &dyn Router, session: &SessionId, mailbox: &Mailbox) {
    while let Some(delivery) = mailbox.pop() {
        if let Delivery::Relay { from, .. } = &*delivery {
            let gone = Delivery::PeerGone {
                peer: session.clone(),
            };
            let _ = router.send(from, gone).await;
        }
    }
}

/// A fresh session id.
pub fn new_session_id() -> SessionId {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    Arc::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Microseconds since the Unix epoch, for `Relay::sent_at_us`.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
