//! Session resume: the secret a `welcome` carries, and taking a session over for a client
//! that reconnects with it — from this process (detached, or still attached to a half-open
//! socket) or from the replica that holds it (a hand-over through the router).

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::connection::Detached;
use crate::protocol::Resume;
use crate::router::{Claim, Claimer, Handover, Who};
use crate::server::Shared;
use crate::session::Token;

/// How long a resume waits for a half-open socket to let go of the session it asks for.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(2);
const TAKE_OVER_POLL: Duration = Duration::from_millis(10);

/// Keys the resume secrets: `HMAC(key, session id)`, so none is stored per session. With a
/// backplane every replica has the same key, so any of them can check any secret.
pub(crate) struct ResumeKey([u8; 32]);

impl ResumeKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn mac(&self, session: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(session.as_bytes());
        mac
    }

    /// The secret a client resumes `session` with (in its `welcome`).
    pub fn secret(&self, session: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.mac(session).finalize().into_bytes())
    }

    /// Whether `secret` is `session`'s, compared in constant time.
    pub fn verify(&self, session: &str, secret: &str) -> bool {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|tag| self.mac(session).verify_slice(&tag).is_ok())
    }
}

/// Who a token says its holder is.
pub(crate) fn who(token: &Token) -> Who {
    Who {
        user: token.sub.clone(),
        role: token.role,
    }
}

/// The session `resume` names, if it is in this process and `token` may have it: detached, or
/// attached to another socket (a phone's old connection, half-open since its network changed),
/// which is then asked to let go (it closes with 4011) and the session taken once it has.
pub(crate) async fn take_local(
    shared: &Shared,
    resume: &Resume,
    token: &Token,
) -> Option<Detached> {
    let who = who(token);
    if let Some(found) = take_detached(shared, &resume.session, &who) {
        return found;
    }
    let mailbox = shared.router.local_mailbox(&resume.session)?;
    if !mailbox.take_over(who.tag()) {
        return None;
    }
    let deadline = Instant::now() + TAKE_OVER_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(TAKE_OVER_POLL).await;
        if let Some(found) = take_detached(shared, &resume.session, &who) {
            return found;
        }
    }
    None
}

/// `Some(found)` if `session` is detached here (`found` is `None` when it is not `who`'s,
/// and it stays where it was); `None` if it is not detached here.
fn take_detached(shared: &Shared, session: &str, who: &Who) -> Option<Option<Detached>> {
    let mut detached = shared.detached.lock();
    let d = detached.get(session)?;
    if !d.session.may_resume(who) {
        return Some(None);
    }
    Some(detached.remove(session))
}

impl Claimer for Shared {
    /// Another replica's client resumes a session held here.
    fn claim(&self, session: &str, secret: &str, who: &Who) -> Claim {
        if !self.resume_key.verify(session, secret) {
            return Claim::No;
        }
        match take_detached(self, session, who) {
            Some(Some(d)) => {
                let Detached {
                    mut session,
                    mailbox,
                    slot,
                    ..
                } = d;
                let state = session.state();
                session.moved_away();
                if session.role() == iceway_auth::Role::Viewer {
                    self.metrics.viewers.dec();
                }
                self.metrics.connection("moved_away");
                drop(slot);
                Claim::Handover(Handover {
                    state,
                    epoch: 0,
                    queued: mailbox.drain(),
                })
            }
            Some(None) => Claim::No,
            None => match self.router.local_mailbox(session) {
                // Attached: its socket lets go of it, and the claim comes again.
                Some(mailbox) if mailbox.take_over(who.tag()) => Claim::Busy,
                _ => Claim::No,
            },
        }
    }
}
