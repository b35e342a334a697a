//! The session rules driven the way the connection loop drives them, with the router's
//! answers chosen by each test: no socket, no Redis, no clock.
#![allow(clippy::unwrap_used)]

use super::*;
use serde_json::{Value, json};

fn rules() -> Arc<Rules> {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let config = SignalConfig {
        heartbeat: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        rate_per_second: 10,
        rate_burst: 5,
        rate_strikes: 3,
        max_viewers_per_camera: 2,
        max_watches_per_connection: 2,
        ..SignalConfig::default()
    };
    Arc::new(Rules::new(config, metrics, Duration::from_secs(5)))
}

fn sid(s: &str) -> SessionId {
    Arc::from(s)
}

/// A token for `sub` with `expires_in` left on it.
fn token(sub: &str, role: Role, cams: &[&str], expires_in: Duration) -> Token {
    Token {
        sub: sub.to_owned(),
        role,
        cams: cams.iter().map(|c| (*c).to_owned()).collect(),
        exp: 1_900_000_000,
        expires_in,
        ice_servers: vec![],
    }
}

const HOUR: Duration = Duration::from_secs(3600);

fn session(id: &str, user: &str, role: Role, cams: &[&str], t0: Instant) -> Session {
    let mut s = Session::new(sid(id), token(user, role, cams, HOUR), None, rules(), t0);
    drain(&mut s);
    s
}

fn camera(t0: Instant) -> Session {
    session("C", "cam1", Role::Camera, &[], t0)
}

fn viewer(t0: Instant) -> Session {
    session("V", "alice", Role::Viewer, &["cam1", "cam2", "cam3"], t0)
}

fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// The JSON frames among `outs`, own and relayed.
fn frames(outs: &[Output]) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(t) | Output::Relay(t) => Some(serde_json::from_str(t).unwrap()),
            _ => None,
        })
        .collect()
}

fn commands(outs: &[Output]) -> Vec<Command> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Route(c) => Some((**c).clone()),
            _ => None,
        })
        .collect()
}

fn text(s: &mut Session, frame: Value, now: Instant) -> Vec<Output> {
    s.on_message(Incoming::Text(&frame.to_string()), now);
    drain(s)
}

/// A camera published and joined by viewer `V`.
fn joined_camera(t0: Instant) -> Session {
    let mut c = camera(t0);
    text(&mut c, json!({"type":"publish"}), t0);
    c.on_routed(Routed::Published {
        camera: "cam1".into(),
        reference: None,
        result: Ok(()),
    });
    drain(&mut c);
    c.on_delivery(Arc::new(Delivery::ViewerJoined {
        camera: "cam1".into(),
        viewer: sid("V"),
        user: "alice".into(),
    }));
    assert_eq!(
        frames(&drain(&mut c)),
        [json!({"type":"viewer-joined","viewer":"V","user":"alice"})]
    );
    c
}

/// A viewer watching cam1, online as session `C`.
fn watching_viewer(t0: Instant) -> Session {
    let mut v = viewer(t0);
    let outs = text(&mut v, json!({"type":"watch","camera":"cam1"}), t0);
    assert_eq!(
        commands(&outs),
        [Command::Watch {
            camera: "cam1".into(),
            reference: Some(Ref::Text("watch".into()))
        }]
    );
    v.on_routed(Routed::Watched {
        camera: "cam1".into(),
        reference: None,
        result: Ok(()),
    });
    v.on_delivery(Arc::new(Delivery::CameraState {
        camera: "cam1".into(),
        session: Some(sid("C")),
    }));
    let outs = drain(&mut v);
    assert_eq!(
        frames(&outs),
        [json!({"type":"camera-online","camera":"cam1","session":"C"})]
    );
    assert!(matches!(
        &commands(&outs)[..],
        [Command::Send { to, delivery: Delivery::ViewerJoined { .. }, then: Then::Join { .. } }] if **to == *"C"
    ));
    v
}

#[test]
fn welcome_comes_first_with_the_session_and_heartbeat() {
    let t0 = Instant::now();
    let mut s = Session::new(
        sid("S1"),
        token("cam1", Role::Camera, &[], HOUR),
        None,
        rules(),
        t0,
    );
    let outs = drain(&mut s);
    assert_eq!(
        frames(&outs),
        [json!({"type":"welcome","session":"S1","role":"camera","iceServers":[],"heartbeat":10})]
    );
}

#[test]
fn publish_is_answered_once_the_router_has_published() {
    let t0 = Instant::now();
    let mut c = camera(t0);
    let outs = text(&mut c, json!({"type":"publish","ref":7}), t0);
    assert!(
        frames(&outs).is_empty(),
        "nothing before the router answers"
    );
    assert_eq!(
        commands(&outs),
        [Command::Publish {
            camera: "cam1".into(),
            reference: Some(Ref::Number(7))
        }]
    );
    c.on_routed(Routed::Published {
        camera: "cam1".into(),
        reference: Some(Ref::Number(7)),
        result: Err(RouterError("down".into())),
    });
    let f = frames(&drain(&mut c));
    assert_eq!(f[0]["code"], "internal");
    assert_eq!(f[0]["ref"], 7);
    c.leave();
    assert!(
        commands(&drain(&mut c)).is_empty(),
        "a failed publish leaves nothing to unpublish"
    );
}

#[test]
fn only_a_camera_token_publishes_and_only_as_its_own_sub() {
    let t0 = Instant::now();
    let mut v = viewer(t0);
    let f = frames(&text(&mut v, json!({"type":"publish"}), t0));
    assert_eq!(f[0]["code"], "forbidden");
    let mut c = camera(t0);
    let outs = text(&mut c, json!({"type":"publish","camera":"cam2"}), t0);
    assert!(commands(&outs).is_empty());
    assert_eq!(frames(&outs)[0]["code"], "forbidden");
}

#[test]
fn a_viewer_watches_only_its_cams_and_at_most_its_cap() {
    let t0 = Instant::now();
    let mut v = viewer(t0);
    let outs = text(&mut v, json!({"type":"watch","camera":"other"}), t0);
    assert!(commands(&outs).is_empty(), "the router is never asked");
    assert_eq!(frames(&outs)[0]["code"], "forbidden");
    for cam in ["cam1", "cam2"] {
        let outs = text(&mut v, json!({"type":"watch","camera":cam}), t0);
        assert_eq!(commands(&outs).len(), 1);
    }
    let outs = text(&mut v, json!({"type":"watch","camera":"cam3"}), t0);
    assert!(commands(&outs).is_empty());
    assert_eq!(
        frames(&outs)[0]["message"],
        "this connection watches too many cameras"
    );
}

#[test]
fn a_failed_watch_is_forgotten_and_answered_internal() {
    let t0 = Instant::now();
    let mut v = viewer(t0);
    text(&mut v, json!({"type":"watch","camera":"cam1"}), t0);
    v.on_routed(Routed::Watched {
        camera: "cam1".into(),
        reference: Some(Ref::Text("watch".into())),
        result: Err(RouterError("down".into())),
    });
    assert_eq!(frames(&drain(&mut v))[0]["code"], "internal");
    // Not watched: a late presence report is ignored, and a new watch asks the router again.
    v.on_delivery(Arc::new(Delivery::CameraState {
        camera: "cam1".into(),
        session: Some(sid("C")),
    }));
    assert!(drain(&mut v).is_empty());
    let outs = text(&mut v, json!({"type":"watch","camera":"cam1"}), t0);
    assert!(matches!(&commands(&outs)[..], [Command::Watch { .. }]));
}

#[test]
fn a_repeated_watch_reports_again_and_rejoins() {
    let t0 = Instant::now();
    let mut v = watching_viewer(t0);
    let outs = text(&mut v, json!({"type":"watch","camera":"cam1"}), t0);
    assert_eq!(
        frames(&outs),
        [json!({"type":"camera-online","camera":"cam1","session":"C"})]
    );
    assert!(matches!(
        &commands(&outs)[..],
        [Command::Send {
            then: Then::Join { .. },
            ..
        }]
    ));
}

#[test]
fn frames_to_a_session_that_is_not_a_peer_never_reach_the_router() {
    let t0 = Instant::now();
    let mut v = watching_viewer(t0);
    let outs = text(&mut v, json!({"type":"offer","to":"X","sdp":"v=0"}), t0);
    assert!(commands(&outs).is_empty());
    let f = frames(&outs);
    assert_eq!(f[0]["code"], "peer-gone");
    assert_eq!(f[0]["peer"], "X");
    assert_eq!(f[0]["ref"], "offer");
}

#[test]
fn a_relayed_frame_names_its_sender_and_its_outcome_answers_the_client() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    let outs = text(
        &mut c,
        json!({"type":"offer","to":"V","sdp":"v=0","ref":1}),
        t0,
    );
    let [Command::Send { to, delivery, then }] = &commands(&outs)[..] else {
        panic!("{outs:?}");
    };
    assert_eq!(**to, *"V");
    let Delivery::Relay { text, .. } = delivery else {
        panic!("{delivery:?}");
    };
    let relayed: Value = serde_json::from_str(text).unwrap();
    assert_eq!(relayed, json!({"type":"offer","from":"C","sdp":"v=0"}));
    c.on_routed(Routed::Sent {
        to: to.clone(),
        then: then.clone(),
        result: Err(SendError::Full),
    });
    let f = frames(&drain(&mut c));
    assert_eq!(f[0]["code"], "rate-limited");
    assert_eq!(f[0]["ref"], 1);
    c.on_routed(Routed::Sent {
        to: to.clone(),
        then: then.clone(),
        result: Ok(()),
    });
    assert!(drain(&mut c).is_empty(), "success is silent");
}

#[test]
fn a_viewer_found_gone_is_peer_gone_then_peer_left_once() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    let outs = text(
        &mut c,
        json!({"type":"candidate","to":"V","candidate":"c"}),
        t0,
    );
    let [Command::Send { to, then, .. }] = &commands(&outs)[..] else {
        panic!("{outs:?}");
    };
    c.on_routed(Routed::Sent {
        to: to.clone(),
        then: then.clone(),
        result: Err(SendError::Gone),
    });
    let f = frames(&drain(&mut c));
    assert_eq!(f.len(), 2);
    assert_eq!(f[0]["code"], "peer-gone");
    assert_eq!(f[1], json!({"type":"peer-left","peer":"V"}));
    // Forgotten: the next frame to it is refused without the router.
    let outs = text(
        &mut c,
        json!({"type":"candidate","to":"V","candidate":"c"}),
        t0,
    );
    assert!(commands(&outs).is_empty());
    assert_eq!(frames(&outs)[0]["code"], "peer-gone");
}

#[test]
fn a_camera_found_gone_is_reported_to_the_router_and_answered_peer_gone() {
    let t0 = Instant::now();
    let mut v = watching_viewer(t0);
    let outs = text(&mut v, json!({"type":"answer","to":"C","sdp":"v=0"}), t0);
    let [Command::Send { to, then, .. }] = &commands(&outs)[..] else {
        panic!("{outs:?}");
    };
    v.on_routed(Routed::Sent {
        to: to.clone(),
        then: then.clone(),
        result: Err(SendError::Gone),
    });
    let outs = drain(&mut v);
    assert_eq!(
        commands(&outs),
        [Command::CameraGone {
            camera: "cam1".into(),
            session: sid("C")
        }]
    );
    assert_eq!(frames(&outs)[0]["code"], "peer-gone");
}

#[test]
fn a_camera_past_its_viewer_cap_refuses_the_newcomer_through_the_router() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    for v in ["V2", "V3"] {
        c.on_delivery(Arc::new(Delivery::ViewerJoined {
            camera: "cam1".into(),
            viewer: sid(v),
            user: "u".into(),
        }));
    }
    let outs = drain(&mut c);
    assert_eq!(frames(&outs).len(), 1, "V2 joins, V3 does not");
    assert!(matches!(
        &commands(&outs)[..],
        [Command::Send { to, delivery: Delivery::WatchRefused { .. }, then: Then::Ignore }] if **to == *"V3"
    ));
}

#[test]
fn a_replaced_camera_is_told_and_has_nothing_left_to_unpublish() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    c.on_delivery(Arc::new(Delivery::Replaced {
        camera: "cam1".into(),
    }));
    let outs = drain(&mut c);
    let f = frames(&outs);
    assert_eq!(f[0]["code"], "forbidden");
    assert_eq!(f[0]["ref"], "publish");
    assert_eq!(
        outs.last(),
        Some(&Output::End(End::Close(
            close::REPLACED,
            "replaced by a newer connection"
        )))
    );
    c.leave();
    assert!(commands(&drain(&mut c)).is_empty());
}

#[test]
fn a_flood_is_refused_then_closed() {
    let t0 = Instant::now();
    let mut v = viewer(t0);
    for _ in 0..5 {
        let f = frames(&text(&mut v, json!({"type":"ping"}), t0));
        assert_eq!(f, [json!({"type":"pong"})]);
    }
    for _ in 0..2 {
        let f = frames(&text(&mut v, json!({"type":"ping","ref":"p"}), t0));
        assert_eq!(f[0]["code"], "rate-limited");
        assert_eq!(f[0]["ref"], "p");
    }
    let outs = text(&mut v, json!({"type":"ping"}), t0);
    assert_eq!(
        outs,
        [Output::End(End::Close(close::POLICY, "too many frames"))]
    );
    assert!(
        text(&mut v, json!({"type":"ping"}), t0).is_empty(),
        "nothing after the end"
    );
}

#[test]
fn silence_is_pinged_then_closed_and_vanished_viewers_are_checked() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    let wake = c.poll_timeout();
    assert_eq!(wake, t0 + Duration::from_secs(10));
    c.on_timeout(wake);
    let outs = drain(&mut c);
    assert_eq!(outs[0], Output::Ping);
    assert_eq!(
        commands(&outs),
        [Command::Alive {
            sessions: vec![sid("V")]
        }]
    );
    c.on_routed(Routed::Alive {
        sessions: vec![sid("V")],
        alive: vec![false],
    });
    assert_eq!(
        frames(&drain(&mut c)),
        [json!({"type":"peer-left","peer":"V"})]
    );
    let wake = c.poll_timeout();
    c.on_timeout(wake);
    assert_eq!(drain(&mut c), [Output::Ping]);
    c.on_timeout(t0 + Duration::from_secs(30));
    assert_eq!(drain(&mut c), [Output::End(End::Silent)]);
}

#[test]
fn leaving_unpublishes_and_tells_watched_cameras() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    c.leave();
    assert_eq!(
        commands(&drain(&mut c)),
        [Command::Unpublish {
            camera: "cam1".into()
        }]
    );
    let mut v = watching_viewer(t0);
    text(&mut v, json!({"type":"watch","camera":"cam2"}), t0);
    v.leave();
    let cmds = commands(&drain(&mut v));
    assert!(
        matches!(
            &cmds[..],
            [
                Command::Unwatch { camera: c2 },
                Command::Send { delivery: Delivery::ViewerLeft { .. }, then: Then::Ignore, .. },
                Command::Unwatch { camera: c1 },
            ] if c1 == "cam1" && c2 == "cam2"
        ),
        "{cmds:?}"
    );
}

#[test]
fn a_publish_not_yet_run_when_the_session_ends_is_dropped() {
    let t0 = Instant::now();
    let mut c = camera(t0);
    c.on_message(Incoming::Text(r#"{"type":"publish"}"#), t0);
    c.leave();
    assert!(drain(&mut c).is_empty());
}

#[test]
fn binary_frames_are_refused_as_bad_messages() {
    let t0 = Instant::now();
    let mut v = viewer(t0);
    v.on_message(Incoming::Binary, t0);
    assert_eq!(frames(&drain(&mut v))[0]["code"], "bad-message");
}

#[test]
fn before_exp_the_client_is_asked_for_a_token_and_without_one_it_is_closed_4001() {
    let t0 = Instant::now();
    let mut c = Session::new(
        sid("C"),
        token("cam1", Role::Camera, &[], Duration::from_secs(120)),
        None,
        rules(),
        t0,
    );
    drain(&mut c);
    // Asked the configured lead (60 s) before exp; heard from meanwhile, so only the token
    // schedule is in play.
    let ask = t0 + Duration::from_secs(60);
    c.on_message(Incoming::Pong, ask);
    c.on_timeout(ask);
    assert_eq!(
        frames(&drain(&mut c)),
        [json!({"type":"token-expiring","exp":1_900_000_000u64})]
    );
    let exp = t0 + Duration::from_secs(120);
    c.on_message(Incoming::Pong, exp);
    c.on_timeout(exp);
    assert!(drain(&mut c).is_empty(), "the leeway (5 s) still holds");
    assert_eq!(c.poll_timeout(), exp + Duration::from_secs(5));
    c.on_timeout(exp + Duration::from_secs(5));
    assert_eq!(
        drain(&mut c),
        [Output::End(End::Close(
            close::UNAUTHORIZED,
            "token expired"
        ))]
    );
}

#[test]
fn a_short_lived_token_is_asked_for_at_half_its_life() {
    let t0 = Instant::now();
    let mut c = Session::new(
        sid("C"),
        token("cam1", Role::Camera, &[], Duration::from_secs(20)),
        None,
        rules(),
        t0,
    );
    drain(&mut c);
    assert_eq!(c.poll_timeout(), t0 + Duration::from_secs(10));
}

#[test]
fn a_fresh_token_moves_the_deadline_and_its_cams_replace_the_old_ones() {
    let t0 = Instant::now();
    let mut v = watching_viewer(t0);
    text(&mut v, json!({"type":"watch","camera":"cam2"}), t0);
    let outs = text(&mut v, json!({"type":"auth","token":"fresh","ref":3}), t0);
    assert_eq!(
        outs,
        [Output::Verify {
            token: "fresh".into(),
            reference: Some(Ref::Number(3))
        }]
    );
    v.on_token(
        Ok(token("alice", Role::Viewer, &["cam2"], 2 * HOUR)),
        Some(Ref::Number(3)),
        t0,
    );
    let outs = drain(&mut v);
    assert!(matches!(
        &commands(&outs)[..],
        [
            Command::Send { delivery: Delivery::ViewerLeft { .. }, .. },
            Command::Unwatch { camera },
        ] if camera == "cam1"
    ));
    let f = frames(&outs);
    assert_eq!(f[0]["code"], "forbidden");
    assert_eq!(f[0]["ref"], "watch");
    assert_eq!(
        f[1],
        json!({"type":"token-refreshed","exp":1_900_000_000u64,"iceServers":[]})
    );
    // The old token's hour passes without a word about it.
    let hour = t0 + HOUR + Duration::from_secs(5);
    v.on_message(Incoming::Pong, hour);
    v.on_timeout(hour);
    assert!(drain(&mut v).iter().all(|o| !matches!(o, Output::End(_))));
    // cam1 is no longer allowed.
    let f = frames(&text(&mut v, json!({"type":"watch","camera":"cam1"}), hour));
    assert_eq!(f[0]["code"], "forbidden");
}

#[test]
fn a_refresh_with_a_bad_token_or_another_identity_is_refused_and_changes_nothing() {
    let t0 = Instant::now();
    let mut c = joined_camera(t0);
    let before = c.poll_timeout();
    c.on_token(Err("expired"), Some(Ref::Text("auth".into())), t0);
    let f = frames(&drain(&mut c));
    assert_eq!(f[0]["code"], "unauthorized");
    assert_eq!(f[0]["ref"], "auth");
    c.on_token(
        Ok(token("cam2", Role::Camera, &[], 2 * HOUR)),
        Some(Ref::Text("auth".into())),
        t0,
    );
    let f = frames(&drain(&mut c));
    assert_eq!(f[0]["code"], "unauthorized");
    c.on_token(Ok(token("cam1", Role::Viewer, &[], 2 * HOUR)), None, t0);
    assert_eq!(frames(&drain(&mut c))[0]["code"], "unauthorized");
    assert_eq!(c.poll_timeout(), before);
}
