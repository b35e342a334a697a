//! A viewer's picture of each camera it watches, and the frames a presence change turns into.

use crate::protocol::ServerFrame;
use crate::router::SessionId;

/// What a viewer knows of one camera it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    /// Watch sent, presence not yet reported to the client.
    Pending,
    Offline,
    Online(SessionId),
}

/// What to do when a watched camera's presence is reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    Send(ServerFrame),
    /// Tell the camera session that this viewer joins.
    Join(SessionId),
}

/// The frames a viewer gets when a camera's presence changes from `prev` to `now`. A camera
/// that comes back under a new session is reported as leaving and coming online again, so
/// clients only ever handle one transition at a time.
pub fn view_change(camera: &str, prev: &View, now: Option<&SessionId>) -> (View, Vec<Effect>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
