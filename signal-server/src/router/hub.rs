//! The sessions of this process and the cameras they watch. Both routers keep one; only what
//! reaches the hub reaches a connection.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::mailbox::Refused;
use super::{Delivery, Mailbox, SendError, SessionId};

/// A camera's presence as this process knows it: `None` not yet known (Redis lookup pending),
/// `Some(None)` offline, `Some(Some(s))` online as session `s`.
pub type Known = Option<Option<SessionId>>;

#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<SessionId, Arc<Mailbox>>,
    watches: HashMap<String, Watch>,
}

#[derive(Debug, Default)]
struct Watch {
    known: Known,
    /// The newest presence epoch seen for the camera (online or offline): a report with an
    /// older one is stale and dropped. 0 where presence has no epochs (one process).
    epoch: u64,
    viewers: Vec<SessionId>,
}

impl Hub {
    pub fn insert_session(&self, session: SessionId, mailbox: Arc<Mailbox>) {
        self.state.lock().sessions.insert(session, mailbox);
    }

    pub fn remove_session(&self, session: &str) {
        self.state.lock().sessions.remove(session);
    }

    pub fn mailbox(&self, session: &str) -> Option<Arc<Mailbox>> {
        self.state.lock().sessions.get(session).cloned()
    }

    pub fn contains(&self, session: &str) -> bool {
        self.state.lock().sessions.contains_key(session)
    }

    pub fn session_ids(&self) -> Vec<SessionId> {
        self.state.lock().sessions.keys().cloned().collect()
    }

    /// Hands `delivery` to a session of this process.
    pub fn deliver(&self, to: &str, delivery: Arc<Delivery>) -> Result<(), SendError> {
        let mut state = self.state.lock();
        deliver(&mut state, to, delivery)
    }

    /// Adds `viewer` to the watchers of `camera`. A new watch starts from `initial`; if the
    /// presence is known the viewer is told at once. Returns whether this is the first watcher
    /// here (the Redis router then subscribes to the camera's channel).
    pub fn add_watcher(&self, camera: &str, viewer: &SessionId, initial: Known) -> bool {
        let mut state = self.state.lock();
        let first = !state.watches.contains_key(camera);
        let watch = state.watches.entry(camera.to_owned()).or_default();
        if first {
            watch.known = initial;
        }
        if !watch.viewers.contains(viewer) {
            crate::session::push_small(&mut watch.viewers, viewer.clone());
        }
        if let Some(session) = watch.known.clone() {
            let d = Arc::new(Delivery::CameraState {
                camera: camera.to_owned(),
                session,
            });
            let _ = deliver(&mut state, viewer, d);
        }
        first
    }

    /// Removes `viewer` from the watchers of `camera`; returns whether it was the last one.
    pub fn remove_watcher(&self, camera: &str, viewer: &str) -> bool {
        let mut state = self.state.lock();
        let Some(watch) = state.watches.get_mut(camera) else {
            return false;
        };
        watch.viewers.retain(|v| &**v != viewer);
        if watch.viewers.is_empty() {
            state.watches.remove(camera);
            return true;
        }
        false
    }

    /// What this process knows of `camera`, if anyone here watches it.
    pub fn known(&self, camera: &str) -> Option<Known> {
        self.state
            .lock()
            .watches
            .get(camera)
            .map(|w| w.known.clone())
    }

    /// Watched cameras and what is known of each, for a presence sweep.
    pub fn watched(&self) -> Vec<(String, Known)> {
        let state = self.state.lock();
        state
            .watches
            .iter()
            .map(|(c, w)| (c.clone(), w.known.clone()))
            .collect()
    }

    /// Records the presence of `camera` and tells its watchers if it changed.
    pub fn observe(&self, camera: &str, session: Option<SessionId>) {
        self.observe_if(camera, None, session, None);
    }

    /// As [`observe`](Self::observe), with the presence's epoch if known (a missing key has
    /// none): dropped if an event or read of a newer epoch was seen (two publishes racing on two replicas, a refresh racing an
    /// unpublish), and only applied if what is known still equals `expected`: a lookup
    /// answered after a newer event must not undo that event.
    pub fn observe_if(
        &self,
        camera: &str,
        expected: Option<&Known>,
        session: Option<SessionId>,
        epoch: Option<u64>,
    ) {
        let mut state = self.state.lock();
        let Some(watch) = state.watches.get_mut(camera) else {
            return;
        };
        if epoch.is_some_and(|e| e < watch.epoch) || expected.is_some_and(|e| *e != watch.known) {
            return;
        }
        if let Some(e) = epoch {
            watch.epoch = e;
        }
        if watch.known.as_ref() == Some(&session) {
            return;
        }
        watch.known = Some(session.clone());
        let viewers = watch.viewers.clone();
        let d = Arc::new(Delivery::CameraState {
            camera: camera.to_owned(),
            session,
        });
        for v in &viewers {
            let _ = deliver(&mut state, v, d.clone());
        }
    }

    /// An offline event for `session` of `epoch`: applies only if it is the session known
    /// online, and not older than what was seen.
    pub fn observe_offline(&self, camera: &str, session: &str, epoch: Option<u64>) {
        let expected: Known = Some(Some(SessionId::from(session)));
        self.observe_if(camera, Some(&expected), None, epoch);
    }
}

fn deliver(state: &mut State, to: &str, delivery: Arc<Delivery>) -> Result<(), SendError> {
    let Some(mailbox) = state.sessions.get(to) else {
        return Err(SendError::Gone);
    };
    match mailbox.push(delivery) {
        Ok(()) => Ok(()),
        // Backpressure falls on the sender; the receiver is not closed for its flood.
        Err(Refused::SenderFull) => Err(SendError::Full),
        Err(Refused::Full) => {
            // Not even a notice fits: the receiver has stopped reading. Its task sees the
            // closed mailbox and closes its socket (4008); keeping it would mean dropping
            // notices silently.
            mailbox.close();
            state.sessions.remove(to);
            Err(SendError::Full)
        }
        Err(Refused::Closed) => {
            state.sessions.remove(to);
            Err(SendError::Gone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::MAILBOX_CAPACITY;

    fn session(hub: &Hub, id: &str) -> (SessionId, Arc<Mailbox>) {
        let mailbox = Mailbox::new();
        let id: SessionId = Arc::from(id);
        hub.insert_session(id.clone(), mailbox.clone());
        (id, mailbox)
    }

    fn state(rx: &mut Arc<Mailbox>) -> Option<Option<String>> {
        match rx.pop().as_deref() {
            Some(Delivery::CameraState { session, .. }) => {
                Some(session.as_ref().map(|s| s.to_string()))
            }
            _ => None,
        }
    }

    #[test]
    fn watchers_learn_presence_changes_once() {
        let hub = Hub::default();
        let (v, mut rx) = session(&hub, "v");
        assert!(hub.add_watcher("cam", &v, Some(None)));
        assert_eq!(state(&mut rx), Some(None));
        hub.observe("cam", Some(Arc::from("c1")));
        hub.observe("cam", Some(Arc::from("c1")));
        assert_eq!(state(&mut rx), Some(Some("c1".into())));
        assert_eq!(state(&mut rx), None, "no repeat for an unchanged presence");
        hub.observe_offline("cam", "c0", None);
        assert_eq!(
            state(&mut rx),
            None,
            "offline of a stale session is ignored"
        );
        hub.observe_offline("cam", "c1", None);
        assert_eq!(state(&mut rx), Some(None));
    }

    #[test]
    fn a_stale_lookup_does_not_undo_a_newer_event() {
        let hub = Hub::default();
        let (v, mut rx) = session(&hub, "v");
        hub.add_watcher("cam", &v, None);
        assert_eq!(state(&mut rx), None, "unknown presence is not reported");
        let before = hub.known("cam").expect("watched");
        hub.observe("cam", Some(Arc::from("c2")));
        hub.observe_if("cam", Some(&before), None, None);
        assert_eq!(state(&mut rx), Some(Some("c2".into())));
        assert_eq!(state(&mut rx), None);
    }

    #[test]
    fn a_session_that_stops_reading_is_dropped_not_buffered() {
        let hub = Hub::default();
        let (v, _rx) = session(&hub, "v");
        for _ in 0..MAILBOX_CAPACITY {
            hub.deliver(&v, Arc::new(Delivery::Replaced { camera: "c".into() }))
                .expect("room");
        }
        let full = hub.deliver(&v, Arc::new(Delivery::Replaced { camera: "c".into() }));
        assert_eq!(full, Err(SendError::Full));
        assert!(!hub.contains(&v));
    }

    #[test]
    fn a_viewers_burst_refuses_the_viewer_and_leaves_the_camera_connected() {
        let hub = Hub::default();
        let (camera, rx) = session(&hub, "cam-session");
        let frame = |from: &str| {
            Arc::new(Delivery::Relay {
                from: Arc::from(from),
                text: "{}".into(),
                sent_at_us: 0,
            })
        };
        // A burst the viewer's own rate limit allows (60), faster than the camera reads.
        let refused = (0..60)
            .filter(|_| hub.deliver(&camera, frame("v1")) == Err(SendError::Full))
            .count();
        assert_eq!(refused, 60 - crate::router::MAILBOX_PER_SENDER);
        assert!(hub.contains(&camera), "the camera keeps its session");
        assert!(!rx.is_closed());
        hub.deliver(&camera, frame("v2"))
            .expect("another viewer still reaches the camera");
    }

    #[test]
    fn a_report_of_an_older_epoch_is_dropped() {
        let hub = Hub::default();
        let (v, mut rx) = session(&hub, "v");
        hub.add_watcher("cam", &v, Some(None));
        assert_eq!(state(&mut rx), Some(None));
        // Two publishes race on two replicas: the newer one's event arrives first.
        hub.observe_if("cam", None, Some(Arc::from("b")), Some(20));
        hub.observe_if("cam", None, Some(Arc::from("a")), Some(10));
        assert_eq!(state(&mut rx), Some(Some("b".into())));
        assert_eq!(state(&mut rx), None, "the older publish does not win");
        // An offline event of the older session, or a stale read, changes nothing either.
        hub.observe_offline("cam", "a", Some(10));
        hub.observe_if("cam", None, None, Some(15));
        assert_eq!(state(&mut rx), None);
        hub.observe_offline("cam", "b", Some(20));
        assert_eq!(state(&mut rx), Some(None));
    }

    #[test]
    fn last_watcher_removes_the_watch() {
        let hub = Hub::default();
        let (a, _ra) = session(&hub, "a");
        let (b, _rb) = session(&hub, "b");
        assert!(hub.add_watcher("cam", &a, Some(None)));
        assert!(!hub.add_watcher("cam", &b, Some(None)));
        assert!(!hub.remove_watcher("cam", &a));
        assert!(hub.remove_watcher("cam", &b));
        assert!(hub.known("cam").is_none());
    }
}
