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
