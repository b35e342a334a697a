//! One process holds every session and camera.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Delivery, Hub, Mailbox, Router, RouterError, SendError, SessionId};

#[derive(Debug, Default)]
pub struct MemoryRouter {
    hub: Hub,
    /// Published cameras. Locked before the hub, so a watch and a publish cannot interleave
    /// between reading the presence and telling the watchers.
    cameras: Mutex<HashMap<String, SessionId>>,
}

impl MemoryRouter {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Router for MemoryRouter {
    fn register<'a>(
        &'a self,
        session: &'a SessionId,
        mailbox: Arc<Mailbox>,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        self.hub.insert_session(session.clone(), mailbox);
        async { Ok(()) }.boxed()
    }

    fn local_mailbox(&self, session: &str) -> Option<Arc<Mailbox>> {
        self.hub.mailbox(session)
    }

    fn unregister<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, ()> {
        self.hub.remove_session(session);
        async {}.boxed()
    }

    fn send<'a>(
        &'a self,
        to: &'a SessionId,
        delivery: Delivery,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        let r = self.hub.deliver(to, Arc::new(delivery));
        async move { r }.boxed()
    }

    fn publish<'a>(
        &'a self,
        camera: &'a str,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        let mut cameras = self.cameras.lock();
        let previous = cameras.insert(camera.to_owned(), session.clone());
        if let Some(previous) = previous.filter(|p| p != session) {
            let _ = self.hub.deliver(
                &previous,
                Arc::new(Delivery::Replaced {
                    camera: camera.to_owned(),
                }),
            );
        }
        self.hub.observe(camera, Some(session.clone()));
        drop(cameras);
        async { Ok(()) }.boxed()
    }

    fn unpublish<'a>(&'a self, camera: &'a str, session: &'a SessionId) -> BoxFuture<'a, ()> {
        let mut cameras = self.cameras.lock();
        if cameras.get(camera) == Some(session) {
            cameras.remove(camera);
            self.hub.observe(camera, None);
        }
        drop(cameras);
        async {}.boxed()
    }

    fn watch<'a>(
        &'a self,
        camera: &'a str,
        viewer: &'a SessionId,
    ) -> BoxFuture<'a, Result<(), RouterError>> {
        let cameras = self.cameras.lock();
        let current = cameras.get(camera).cloned();
        self.hub.add_watcher(camera, viewer, Some(current));
        drop(cameras);
        async { Ok(()) }.boxed()
    }

    fn unwatch<'a>(&'a self, camera: &'a str, viewer: &'a SessionId) -> BoxFuture<'a, ()> {
        self.hub.remove_watcher(camera, viewer);
        async {}.boxed()
    }

    fn camera_gone<'a>(&'a self, _camera: &'a str, _session: &'a SessionId) -> BoxFuture<'a, ()> {
        // In one process a camera's session leaves through `unpublish` as its task ends.
        async {}.boxed()
    }

    fn alive<'a>(&'a self, sessions: &'a [SessionId]) -> BoxFuture<'a, Vec<bool>> {
        let alive = sessions.iter().map(|s| self.hub.contains(s)).collect();
        async move { alive }.boxed()
    }
}
