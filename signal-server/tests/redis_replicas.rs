//! Two `iceway-signal` processes sharing a real `redis-server`: what apps see when their camera
//! and viewer land on different replicas, and when a replica dies.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y --no-install-recommends
//! redis-server`).
#![allow(clippy::unwrap_used)]

mod common;

use common::cluster::{Redis, Replica, exchange, joined_across};
use common::*;
use serde_json::json;
use std::time::Duration;

/// Reads the viewer's frames until `camera-online`; `camera-offline` must come first.
async fn offline_then_online(viewer: &mut Client) -> serde_json::Value {
    let mut offline_seen = false;
    for _ in 0..20 {
        let f = viewer.recv().await;
        match f["type"].as_str() {
            Some("camera-offline") => offline_seen = true,
            Some("camera-online") => {
                assert!(offline_seen, "camera-online came before camera-offline");
                return f;
            }
            // A frame sent as the camera's replica died is answered peer-gone.
            Some("peer-left") => {}
            Some("error") if f["code"] == "peer-gone" => {}
            _ => panic!("unexpected frame {f}"),
        }
    }
    panic!("no camera-online");
}

#[tokio::test]
async fn camera_on_replica_a_and_viewer_on_replica_b_talk_and_survive_replica_a_dying() {
    let redis = Redis::start().await;
    let secret = secret_file();
    let mut a = Replica::start(&redis, &secret, &[]).await;
    let b = Replica::start(&redis, &secret, &[]).await;

    let (mut camera, mut viewer) = joined_across(&a, &b).await;
    exchange(&mut camera, &mut viewer).await;

    a.kill();
    assert_eq!(camera.closed().await, Closed::NoCloseFrame);

    // The phone reconnects, this time to replica B.
    let mut camera = Client::connect(&b.ws_url, &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let online = offline_then_online(&mut viewer).await;
    assert_eq!(online["session"], camera.session.as_str());
    let joined = camera.expect("viewer-joined").await;
    assert_eq!(joined["viewer"], viewer.session.as_str());
    exchange(&mut camera, &mut viewer).await;
}

#[tokio::test]
async fn viewer_sees_camera_offline_when_the_cameras_replica_dies() {
    let redis = Redis::start().await;
    let secret = secret_file();
    let mut a = Replica::start(&redis, &secret, &[]).await;
    let b = Replica::start(&redis, &secret, &[]).await;
    let (_camera, mut viewer) = joined_across(&a, &b).await;

    a.kill();
    // Nobody is left to announce it: the presence key expires and replica B notices.
    let mut frames = Vec::new();
    for _ in 0..2 {
        frames.push(viewer.recv().await["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(frames, ["peer-left", "camera-offline"]);

    // And a camera coming back anywhere is announced.
    let mut camera = Client::connect(&b.ws_url, &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], camera.session.as_str());
}

#[tokio::test]
async fn across_replicas_a_departed_peer_is_peer_left_then_peer_gone() {
    let redis = Redis::start().await;
    let secret = secret_file();
    let a = Replica::start(&redis, &secret, &[]).await;
    let b = Replica::start(&redis, &secret, &[]).await;
    let (mut camera, viewer) = joined_across(&a, &b).await;

    let gone = viewer.session.clone();
    drop(viewer);
    assert_eq!(camera.expect("peer-left").await["peer"], gone.as_str());
    camera
        .send(json!({"type":"offer","to":gone,"sdp":"v=0"}))
        .await;
    camera.expect_error("peer-gone").await;

    // A second viewer on B and a third on A both reach the camera on A.
    let mut v2 = Client::connect(&b.ws_url, &viewer_token("bob", &["cam1"])).await;
    v2.send(json!({"type":"watch","camera":"cam1"})).await;
    v2.expect("camera-online").await;
    let mut v3 = Client::connect(&a.ws_url, &viewer_token("carol", &["cam1"])).await;
    v3.send(json!({"type":"watch","camera":"cam1"})).await;
    v3.expect("camera-online").await;
    let mut joined = vec![
        camera.expect("viewer-joined").await["user"]
            .as_str()
            .unwrap()
            .to_owned(),
        camera.expect("viewer-joined").await["user"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    joined.sort();
    assert_eq!(joined, ["bob", "carol"]);
    exchange(&mut camera, &mut v2).await;
    exchange(&mut camera, &mut v3).await;

    // The camera leaving is heard on both replicas.
    camera.send(json!({"type":"leave"})).await;
    for v in [&mut v2, &mut v3] {
        v.expect("peer-left").await;
        v.expect("camera-offline").await;
    }
}

/// A network change takes a client to the other replica (a load balancer's choice): it
/// resumes there and keeps its session id, its peers hear nothing, and what was sent to it
/// in the gap follows. First the camera, whose old socket is gone (detached); then the
/// viewer, whose old socket is still open (half-open after a network change), which is
/// closed with 4011.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_another_replica_keeps_its_id_its_peers_and_its_frames() {
    let redis = Redis::start().await;
    let secret = secret_file();
    let grace = [("ICEWAY_SIGNAL__RESUME_GRACE", "20s")];
    let a = Replica::start(&redis, &secret, &grace).await;
    let b = Replica::start(&redis, &secret, &grace).await;
    let cam_token = camera_token("cam1");
    let (mut camera, cam_welcome) = Client::connect_welcomed(&a.ws_url, &cam_token).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let viewer_tok = viewer_token("alice", &["cam1"]);
    let (mut viewer, viewer_welcome) = Client::connect_welcomed(&b.ws_url, &viewer_tok).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    assert_eq!(
        viewer.expect("camera-online").await["session"],
        camera.session
    );
    camera.expect("viewer-joined").await;
    let (cam_id, viewer_id) = (camera.session.clone(), viewer.session.clone());

    // The camera's socket ends without a word; the viewer sends meanwhile.
    drop(camera);
    tokio::time::sleep(Duration::from_millis(300)).await;
    viewer
        .send(json!({"type":"candidate","to":cam_id,"candidate":"candidate:gap","sdpMid":"0","sdpMLineIndex":0}))
        .await;
    let (mut camera, w) = Client::resume(
        &b.ws_url,
        &cam_token,
        &cam_id,
        cam_welcome["resume"].as_str().unwrap(),
    )
    .await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(
        camera.session, cam_id,
        "same session id on the other replica"
    );
    let gap = camera.expect("candidate").await;
    assert_eq!(gap["candidate"], "candidate:gap");
    assert_eq!(gap["from"], viewer_id.as_str());
    exchange(&mut camera, &mut viewer).await;

    // The viewer moves to the camera's first replica while its old socket is still open.
    let (mut moved, w) = Client::resume(
        &a.ws_url,
        &viewer_tok,
        &viewer_id,
        viewer_welcome["resume"].as_str().unwrap(),
    )
    .await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(moved.session, viewer_id);
    assert_eq!(
        viewer.closed().await,
        Closed::Code(4011),
        "the stale socket"
    );
    exchange(&mut camera, &mut moved).await;

    // Past several heartbeats, liveness checks and moved-key refreshes (replica TTL 2 s):
    // nobody was told anyone left, and frames still flow both ways.
    tokio::time::sleep(Duration::from_secs(7)).await;
    exchange(&mut camera, &mut moved).await;
    camera.ping_pong().await;
    moved.ping_pong().await;

    // A resume secret is no use to another user, nor a forged one to anybody.
    let (stranger, w) = Client::resume(
        &b.ws_url,
        &viewer_token("mallory", &["cam1"]),
        &viewer_id,
        viewer_welcome["resume"].as_str().unwrap(),
    )
    .await;
    assert_ne!(w["resumed"], true);
    assert_ne!(stranger.session, viewer_id);
    let (forged, w) = Client::resume(&b.ws_url, &viewer_tok, &viewer_id, "AAAA").await;
    assert_ne!(w["resumed"], true);
    assert_ne!(forged.session, viewer_id);
    exchange(&mut camera, &mut moved).await;
}

/// A replica is SIGKILLed with a camera and a viewer on it, each in a call with a peer on the
/// other replica. Both reconnect to the surviving replica with their resume secrets and get
/// their sessions back from the state the dead replica saved in Redis: same ids, the camera
/// still published, the viewer still watching, a frame sent to the camera in the gap delivered,
/// and their peers never told anyone left, past the time a dead replica's sessions are
/// declared gone (the resumes fence the sessions before the dead replica's TTL runs out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_replica_resume_on_another_with_their_ids_and_peers() {
    let redis = Redis::start().await;
    let secret = secret_file();
    let grace = [("ICEWAY_SIGNAL__RESUME_GRACE", "20s")];
    let mut a = Replica::start(&redis, &secret, &grace).await;
    let b = Replica::start(&redis, &secret, &grace).await;

    let cam1_token = camera_token("cam1");
    let (mut cam1, cam1_welcome) = Client::connect_welcomed(&a.ws_url, &cam1_token).await;
    cam1.send(json!({"type":"publish"})).await;
    cam1.expect("camera-online").await;
    let (mut alice, _) =
        Client::connect_welcomed(&b.ws_url, &viewer_token("alice", &["cam1"])).await;
    alice.send(json!({"type":"watch","camera":"cam1"})).await;
    assert_eq!(alice.expect("camera-online").await["session"], cam1.session);
    cam1.expect("viewer-joined").await;

    let (mut cam2, _) = Client::connect_welcomed(&b.ws_url, &camera_token("cam2")).await;
    cam2.send(json!({"type":"publish"})).await;
    cam2.expect("camera-online").await;
    let bob_token = viewer_token("bob", &["cam2"]);
    let (mut bob, bob_welcome) = Client::connect_welcomed(&a.ws_url, &bob_token).await;
    bob.send(json!({"type":"watch","camera":"cam2"})).await;
    assert_eq!(bob.expect("camera-online").await["session"], cam2.session);
    cam2.expect("viewer-joined").await;
    exchange(&mut cam1, &mut alice).await;
    exchange(&mut cam2, &mut bob).await;
    let (cam1_id, bob_id) = (cam1.session.clone(), bob.session.clone());

    a.kill();
    assert_eq!(cam1.closed().await, Closed::NoCloseFrame);
    assert_eq!(bob.closed().await, Closed::NoCloseFrame);
    alice
        .send(json!({"type":"candidate","to":cam1_id,"candidate":"candidate:gap","sdpMid":"0","sdpMLineIndex":0}))
        .await;

    // Both reconnect at once, as clients do when their sockets close.
    let ((mut cam1, w1), (mut bob, w2)) = tokio::join!(
        Client::resume(
            &b.ws_url,
            &cam1_token,
            &cam1_id,
            cam1_welcome["resume"].as_str().unwrap(),
        ),
        Client::resume(
            &b.ws_url,
            &bob_token,
            &bob_id,
            bob_welcome["resume"].as_str().unwrap(),
        )
    );
    assert_eq!(w1["resumed"], true, "{w1}");
    assert_eq!(cam1.session, cam1_id);
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(bob.session, bob_id);
    let gap = cam1.expect("candidate").await;
    assert_eq!(gap["candidate"], "candidate:gap", "{gap}");
    exchange(&mut cam1, &mut alice).await;
    exchange(&mut cam2, &mut bob).await;

    // Past the dead replica's TTL (2 s), several heartbeats and liveness checks: nobody heard
    // a peer leave or a camera go offline (the exchanges would read it), and a new viewer
    // finds the resumed camera.
    tokio::time::sleep(Duration::from_secs(7)).await;
    exchange(&mut cam1, &mut alice).await;
    exchange(&mut cam2, &mut bob).await;
    let mut carol = Client::connect(&b.ws_url, &viewer_token("carol", &["cam1"])).await;
    carol.send(json!({"type":"watch","camera":"cam1"})).await;
    assert_eq!(
        carol.expect("camera-online").await["session"],
        cam1_id.as_str()
    );
    assert_eq!(
        cam1.expect("viewer-joined").await["viewer"],
        carol.session.as_str()
    );
    alice.ping_pong().await;
    cam2.ping_pong().await;
}
