//! What camera and viewer apps see from one signal server (in-memory routing).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use iceway_auth::Role;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn camera_publishes_viewer_watches_and_offer_answer_candidates_relay_both_ways() {
    let server = TestServer::start().await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    let ack = camera.expect("camera-online").await;
    assert_eq!(ack["camera"], "cam1");

    // A browser viewer: no header, an auth frame first.
    let mut viewer =
        Client::connect_with_auth_frame(&server.url(), &viewer_token("alice", &["cam1"])).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["camera"], "cam1");
    assert_eq!(online["session"], camera.session.as_str());

    let joined = camera.expect("viewer-joined").await;
    assert_eq!(joined["viewer"], viewer.session.as_str());
    assert_eq!(joined["user"], "alice");

    let v = viewer.session.clone();
    let c = camera.session.clone();
    camera
        .send(json!({"type":"offer","to":v,"sdp":"v=0 offer"}))
        .await;
    let offer = viewer.expect("offer").await;
    assert_eq!(offer, json!({"type":"offer","from":c,"sdp":"v=0 offer"}));

    viewer
        .send(json!({"type":"answer","to":c,"sdp":"v=0 answer"}))
        .await;
    let answer = camera.expect("answer").await;
    assert_eq!(answer, json!({"type":"answer","from":v,"sdp":"v=0 answer"}));

    let cand = json!({"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0});
    let mut out = cand.clone();
    out["type"] = "candidate".into();
    out["to"] = v.clone().into();
    camera.send(out).await;
    let got = viewer.expect("candidate").await;
    assert_eq!(got["from"], c.as_str());
    assert_eq!(got["candidate"], cand["candidate"]);
    assert_eq!(got["sdpMid"], "0");
    assert_eq!(got["sdpMLineIndex"], 0);

    viewer
        .send(json!({"type":"candidate","to":c,"candidate":"","sdpMid":null,"sdpMLineIndex":null}))
        .await;
    let end = camera.expect("candidate").await;
    assert_eq!(end["from"], v.as_str());
    assert_eq!(end["candidate"], "");

    let text = server.metrics();
    assert!(text.contains("iceway_signal_connections 2"), "{text}");
    assert!(text.contains("iceway_signal_cameras_online 1"), "{text}");
    assert!(text.contains("iceway_signal_viewers 1"), "{text}");
    assert!(
        text.contains("iceway_signal_relay_latency_seconds_count 4"),
        "{text}"
    );
    assert!(
        text.contains(r#"iceway_signal_messages_total{result="ok",type="offer"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn several_viewers_watch_one_camera_and_camera_hears_each_leave() {
    let server = TestServer::start().await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut viewers = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut v = Client::connect(&server.url(), &viewer_token(user, &["cam1"])).await;
        v.send(json!({"type":"watch","camera":"cam1"})).await;
        v.expect("camera-online").await;
        let joined = camera.expect("viewer-joined").await;
        assert_eq!(joined["viewer"], v.session.as_str());
        assert_eq!(joined["user"], user);
        viewers.push(v);
    }
    // Each viewer gets only its own offer.
    for v in &viewers {
        camera
            .send(json!({"type":"offer","to":v.session,"sdp":format!("for {}", v.session)}))
            .await;
    }
    for v in &mut viewers {
        let offer = v.expect("offer").await;
        assert_eq!(offer["sdp"], format!("for {}", v.session));
    }
    let bob = viewers.remove(1);
    let bob_session = bob.session.clone();
    drop(bob);
    let left = camera.expect("peer-left").await;
    assert_eq!(left["peer"], bob_session.as_str());

    let mut carol = viewers.pop().unwrap();
    carol.send(json!({"type":"leave"})).await;
    let left = camera.expect("peer-left").await;
    assert_eq!(left["peer"], carol.session.as_str());
    carol.ping_pong().await;
}

#[tokio::test]
async fn watching_a_camera_outside_cams_is_forbidden() {
    let server = TestServer::start().await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    viewer
        .send(json!({"type":"watch","camera":"cam2","ref":"w1"}))
        .await;
    let e = viewer.expect_error("forbidden").await;
    assert_eq!(e["ref"], "w1");
    viewer.send(json!({"type":"publish"})).await;
    let e = viewer.expect_error("forbidden").await;
    assert_eq!(e["ref"], "publish");

    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish","camera":"cam2"})).await;
    camera.expect_error("forbidden").await;
    camera.send(json!({"type":"watch","camera":"cam1"})).await;
    camera.expect_error("forbidden").await;
    camera.ping_pong().await;
}

#[tokio::test]
async fn expired_or_missing_token_is_closed_with_4001() {
    let server = TestServer::start_with(|c| c.signal.auth_timeout = Duration::from_secs(1)).await;
    let url = server.url();

    let ws = connect_raw(&url, Some(&expired_token(Role::Viewer, "alice")))
        .await
        .unwrap();
    assert_eq!(closed(ws).await, Closed::Code(4001), "expired bearer");

    let ws = connect_raw(&url, Some("not.a.jwt")).await.unwrap();
    assert_eq!(closed(ws).await, Closed::Code(4001), "garbage bearer");

    let mut ws = connect_raw(&url, None).await.unwrap();
    let expired = expired_token(Role::Camera, "cam1");
    ws.send(Message::text(
        json!({"type":"auth","token":expired}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(closed(ws).await, Closed::Code(4001), "expired auth frame");

    let mut ws = connect_raw(&url, None).await.unwrap();
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(closed(ws).await, Closed::Code(4001), "first frame not auth");

    let ws = connect_raw(&url, None).await.unwrap();
    assert_eq!(
        closed(ws).await,
        Closed::Code(4001),
        "no auth frame in time"
    );

    let text = server.metrics();
    assert!(
        text.contains(r#"iceway_signal_auth_failures_total{reason="expired"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"iceway_signal_auth_failures_total{reason="timeout"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn viewer_of_an_offline_camera_sees_camera_offline_then_camera_online() {
    let server = TestServer::start().await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    let offline = viewer.expect("camera-offline").await;
    assert_eq!(offline["camera"], "cam1");

    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], camera.session.as_str());
    camera.expect("camera-online").await;
    let joined = camera.expect("viewer-joined").await;
    assert_eq!(joined["viewer"], viewer.session.as_str());
}

#[tokio::test]
async fn camera_that_reconnects_publishes_again_and_viewers_are_told() {
    let server = TestServer::start().await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    viewer.expect("camera-online").await;
    camera.expect("viewer-joined").await;

    // The phone drops off the network, then comes back.
    let old = camera.session.clone();
    drop(camera);
    let left = viewer.expect("peer-left").await;
    assert_eq!(left["peer"], old.as_str());
    viewer.expect("camera-offline").await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], camera.session.as_str());
    camera.expect("viewer-joined").await;

    // Reconnecting while the old socket still looks alive: the new one takes over.
    let mut newer = Client::connect(&server.url(), &camera_token("cam1")).await;
    newer.send(json!({"type":"publish"})).await;
    newer.expect("camera-online").await;
    let e = camera.expect_error("forbidden").await;
    assert_eq!(e["ref"], "publish");
    assert_eq!(
        viewer.expect("peer-left").await["peer"],
        camera.session.as_str()
    );
    viewer.expect("camera-offline").await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], newer.session.as_str());
    newer.expect("viewer-joined").await;
    // The replaced connection is closed with a code clients do not reconnect on, and its end
    // does not take the camera offline.
    assert_eq!(camera.closed().await, Closed::Code(4010));
    newer.ping_pong().await;
    viewer.ping_pong().await;
}

#[tokio::test]
async fn frame_to_a_departed_peer_gets_peer_gone() {
    let server = TestServer::start().await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    viewer.expect("camera-online").await;
    camera.expect("viewer-joined").await;
    let gone = viewer.session.clone();
    drop(viewer);
    camera.expect("peer-left").await;
    camera
        .send(json!({"type":"offer","to":gone,"sdp":"v=0","ref":9}))
        .await;
    let e = camera.expect_error("peer-gone").await;
    assert_eq!(e["ref"], 9);
    assert_eq!(e["peer"], gone.as_str(), "peer-gone names the peer: {e}");
    camera
        .send(json!({"type":"candidate","to":"never-a-session","candidate":""}))
        .await;
    let e = camera.expect_error("peer-gone").await;
    assert_eq!(e["peer"], "never-a-session");
    camera.ping_pong().await;
}

#[tokio::test]
async fn a_repeated_watch_gives_the_camera_a_fresh_viewer_joined() {
    let server = TestServer::start().await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    viewer.expect("camera-online").await;
    let first = camera.expect("viewer-joined").await;
    assert_eq!(first["viewer"], viewer.session.as_str());

    // After an ICE failure the viewer watches again to get a new offer.
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], camera.session.as_str());
    let again = camera.expect("viewer-joined").await;
    assert_eq!(again, first, "the same viewer session joins again");

    // It is still one viewer: the camera's offer reaches it, nothing else changed.
    let v = viewer.session.clone();
    camera
        .send(json!({"type":"offer","to":v,"sdp":"v=0 again"}))
        .await;
    let offer = viewer.expect("offer").await;
    assert_eq!(offer["sdp"], "v=0 again");
    assert!(server.metrics().contains("iceway_signal_viewers 1"));
}

#[tokio::test]
async fn oversized_frame_is_closed_with_4009() {
    let server = TestServer::start_with(|c| c.signal.max_frame_bytes = 4096).await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.ping_pong().await;
    let big = json!({"type":"offer","to":"x","sdp":"a".repeat(10_000)}).to_string();
    // The server may close before the whole frame is written; only the close code matters.
    let _ = camera.ws.send(Message::text(big)).await;
    assert_eq!(camera.closed().await, Closed::Code(4009));
}

#[tokio::test]
async fn flood_gets_rate_limited_then_closed_with_4008() {
    let server = TestServer::start_with(|c| {
        c.signal.rate_per_second = 5;
        c.signal.rate_burst = 10;
        c.signal.rate_strikes = 20;
    })
    .await;
    let mut client = Client::connect(&server.url(), &viewer_token("alice", &[])).await;
    for _ in 0..200 {
        if client
            .ws
            .feed(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = client.ws.flush().await;
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut client.ws))
            .await
            .expect("timed out")
        {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(v["code"], "rate-limited");
                        limited += 1;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("ended without close frame: {other:?}"),
        }
    };
    assert_eq!(code, 4008);
    assert!(pongs >= 10, "the burst is served: {pongs}");
    assert!(limited >= 1, "rate-limited errors come before the close");
}

#[tokio::test]
async fn malformed_frames_get_bad_message_and_the_connection_lives_on() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    for bad in [
        "{not json",
        "[]",
        r#"{"no":"type"}"#,
        r#"{"type":"dance"}"#,
        r#"{"type":"watch"}"#,
        r#"{"type":"offer","to":5,"sdp":"x"}"#,
        "null",
        "",
    ] {
        c.ws.send(Message::text(bad)).await.unwrap();
        let e = c.expect_error("bad-message").await;
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{bad}: {e}"
        );
    }
    c.ws.send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]))
        .await
        .unwrap();
    c.expect_error("bad-message").await;
    // On an open socket `auth` is a token refresh: a bad token is refused, the socket stays.
    c.send(json!({"type":"auth","token":"again"})).await;
    c.expect_error("unauthorized").await;
    c.ping_pong().await;
}

#[tokio::test]
async fn viewers_beyond_the_camera_limit_are_refused() {
    let server = TestServer::start_with(|c| c.signal.max_viewers_per_camera = 1).await;
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut first = Client::connect(&server.url(), &viewer_token("alice", &["cam1"])).await;
    first.send(json!({"type":"watch","camera":"cam1"})).await;
    first.expect("camera-online").await;
    camera.expect("viewer-joined").await;
    let mut second = Client::connect(&server.url(), &viewer_token("bob", &["cam1"])).await;
    second.send(json!({"type":"watch","camera":"cam1"})).await;
    second.expect("camera-online").await;
    let e = second.expect_error("forbidden").await;
    assert!(e["message"].as_str().unwrap().contains("viewers"), "{e}");
    camera.ping_pong().await;
}

#[tokio::test]
async fn connections_beyond_the_per_user_limit_are_closed_with_4008() {
    let server = TestServer::start_with(|c| c.signal.max_connections_per_user = 2).await;
    let token = viewer_token("alice", &[]);
    let _a = Client::connect(&server.url(), &token).await;
    let _b = Client::connect(&server.url(), &token).await;
    let ws = connect_raw(&server.url(), Some(&token)).await.unwrap();
    assert_eq!(closed(ws).await, Closed::Code(4008));
    let _other_user = Client::connect(&server.url(), &viewer_token("bob", &[])).await;
}

#[tokio::test]
async fn connections_beyond_the_process_limit_are_refused_with_503() {
    let server = TestServer::start_with(|c| c.signal.max_connections = 1).await;
    let _a = Client::connect(&server.url(), &viewer_token("alice", &[])).await;
    let err = connect_raw(&server.url(), Some(&viewer_token("bob", &[])))
        .await
        .expect_err("full");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_client_is_pinged_then_closed_with_4008() {
    let server = TestServer::start_with(|c| {
        c.signal.heartbeat = Duration::from_secs(1);
        c.signal.idle_timeout = Duration::from_secs(2);
    })
    .await;
    // A raw socket that never answers pings (a real WebSocket client would).
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        server.addr,
        viewer_token("alice", &[])
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("server never closed the silent connection");
    let ping = [0x89u8, 0x00];
    assert!(seen.windows(2).any(|w| w == ping), "a ping was sent first");
    // Close frame: FIN+opcode 8, then the 4008 status code (0x0FA8) big-endian.
    let close_code = seen
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == [0x0f, 0xa8]);
    assert!(close_code.is_some(), "closed with 4008");
}

#[tokio::test]
async fn drain_refuses_new_upgrades_and_closes_sockets_with_1001_after_grace() {
    let server = TestServer::start_with(|c| c.drain.timeout = Duration::from_secs(1)).await;
    let mut viewer = Client::connect(&server.url(), &viewer_token("alice", &[])).await;
    viewer.ping_pong().await;
    server.shutdown.begin_drain();
    assert!(!server.shutdown.is_ready());
    match connect_raw(&server.url(), Some(&viewer_token("bob", &[]))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        Err(_) => {} // the listener may already be gone
        Ok(_) => panic!("upgrade accepted while draining"),
    }
    viewer.ping_pong().await;
    assert_eq!(viewer.closed().await, Closed::Code(1001));
    let mut server = server;
    let task = server.task.take().unwrap();
    let joined = tokio::time::timeout(WAIT, task).await;
    assert!(
        matches!(joined, Ok(Ok(Ok(())))),
        "run() returns after the drain"
    );
}

#[tokio::test]
async fn ice_servers_endpoint_and_browser_pages_are_served() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("camera.html"), "<h1>camera</h1>").unwrap();
    std::fs::write(web.path().join("app.js"), "// js").unwrap();
    let root = web.path().to_owned();
    let server = TestServer::start_with(move |c| c.signal.web_root = root).await;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();

    let r = http
        .get(format!("{base}/v1/ice-servers"))
        .bearer_auth(viewer_token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["iceServers"][0]["urls"][0], "stun:stun.test:3478");
    let r = http
        .get(format!("{base}/v1/ice-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = http.get(format!("{base}/camera")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<h1>camera</h1>");
    let r = http.get(format!("{base}/app.js")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for missing in ["/viewer", "/nope.css"] {
        let r = http.get(format!("{base}{missing}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{missing}"
        );
    }

    // The welcome carries the same list.
    let c = connect_raw(&server.url(), Some(&camera_token("cam1")))
        .await
        .unwrap();
    let mut c = Client {
        ws: c,
        session: String::new(),
    };
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["role"], "camera");
    assert_eq!(welcome["heartbeat"], 25);
    assert_eq!(welcome["iceServers"][0]["urls"][0], "stun:stun.test:3478");
}

#[tokio::test]
async fn a_token_is_refreshed_on_the_open_socket_and_a_socket_without_one_closes_4001() {
    let server = TestServer::start_with(|c| {
        c.jwt.leeway = Duration::from_secs(1);
        c.signal.token_refresh_lead = Duration::from_secs(2);
    })
    .await;
    let life = Duration::from_secs(4);
    let mut camera =
        Client::connect(&server.url(), &short_token(Role::Camera, "cam1", &[], life)).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut viewer = Client::connect(
        &server.url(),
        &short_token(Role::Viewer, "alice", &["cam1"], life),
    )
    .await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    viewer.expect("camera-online").await;
    camera.expect("viewer-joined").await;

    let asked = camera.expect("token-expiring").await;
    assert!(asked["exp"].as_u64().is_some(), "{asked}");
    // Another identity's token is no refresh.
    camera
        .send(json!({"type":"auth","token":camera_token("cam2"),"ref":1}))
        .await;
    assert_eq!(camera.expect_error("unauthorized").await["ref"], 1);
    camera
        .send(json!({"type":"auth","token":camera_token("cam1")}))
        .await;
    let refreshed = camera.expect("token-refreshed").await;
    assert!(
        refreshed["exp"].as_u64() > asked["exp"].as_u64(),
        "{refreshed}"
    );
    assert!(refreshed["iceServers"].is_array());

    // The viewer is asked too, does not answer, and is closed when its token runs out
    // (exp + leeway); the camera hears it left and lives on.
    viewer.expect("token-expiring").await;
    assert_eq!(viewer.closed().await, Closed::Code(4001));
    camera.expect("peer-left").await;
    camera.ping_pong().await;
}

/// Upgrades with an `Origin` header (or none); the HTTP status of a refused one.
async fn upgrade_with(url: &str, origin: Option<&str>) -> Result<Client, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", viewer_token("alice", &[]))
            .parse()
            .unwrap(),
    );
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            let mut c = Client {
                ws,
                session: String::new(),
            };
            c.expect("welcome").await;
            Ok(c)
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade: {e}"),
    }
}

#[tokio::test]
async fn pages_of_other_origins_and_addresses_past_their_cap_cannot_open_sockets() {
    let server = TestServer::start_with(|c| {
        c.signal.max_connections_per_ip = 3;
        c.signal.allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let url = server.url();
    assert_eq!(
        upgrade_with(&url, Some("https://evil.example")).await.err(),
        Some(403)
    );
    let own = format!("http://{}", server.addr);
    let mut open = vec![
        upgrade_with(&url, Some(&own))
            .await
            .expect("its own origin"),
        upgrade_with(&url, Some("https://app.example"))
            .await
            .expect("a configured origin"),
        upgrade_with(&url, None).await.expect("a native client"),
    ];
    assert_eq!(
        upgrade_with(&url, None).await.err(),
        Some(429),
        "past the cap"
    );
    // A socket that ends gives its place back.
    open.pop().unwrap().ws.close(None).await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = upgrade_with(&url, None).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the place came back");
    let m = server.metrics();
    assert!(
        m.contains(r#"iceway_signal_connections_total{result="origin"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"iceway_signal_connections_total{result="ip_limit"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn upgrades_and_credential_requests_are_rate_limited_per_address() {
    let server = TestServer::start_with(|c| {
        c.signal.upgrades_per_minute = 1;
        c.signal.upgrade_burst = 3;
        c.signal.api_per_minute = 1;
        c.signal.api_burst = 2;
        c.signal.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let url = server.url();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(upgrade_with(&url, None).await.expect("within the burst"));
    }
    assert_eq!(upgrade_with(&url, None).await.err(), Some(429));

    // The credential API mounted here is limited, counted and CORS-enabled as in iceway-auth.
    let http = reqwest::Client::new();
    let get = || {
        http.get(format!("http://{}/v1/ice-servers", server.addr))
            .bearer_auth(viewer_token("alice", &[]))
            .header("origin", "https://app.example")
            .send()
    };
    for _ in 0..2 {
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let m = server.metrics();
    assert!(m.contains("iceway_auth_requests_total"), "{m}");
}

/// Connects with a bearer token and `Iceway-Resume: <session> <secret>`.
async fn resume_with_header(url: &str, token: &str, session: &str, secret: &str) -> Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut().insert(
        "iceway-resume",
        format!("{session} {secret}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    Client {
        ws,
        session: String::new(),
    }
}

/// A camera and a viewer joined, the viewer's welcome kept.
async fn joined_with_resume(server: &TestServer) -> (Client, Client, serde_json::Value) {
    let mut camera = Client::connect(&server.url(), &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let ws = connect_raw(&server.url(), Some(&viewer_token("alice", &["cam1"])))
        .await
        .unwrap();
    let mut viewer = Client {
        ws,
        session: String::new(),
    };
    let welcome = viewer.expect("welcome").await;
    viewer.session = welcome["session"].as_str().unwrap().to_owned();
    assert!(welcome["resume"].is_string(), "{welcome}");
    assert_eq!(welcome["resumeGrace"], 5);
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    viewer.expect("camera-online").await;
    camera.expect("viewer-joined").await;
    (camera, viewer, welcome)
}

#[tokio::test]
async fn a_viewer_whose_socket_drops_resumes_its_session_and_gets_what_was_sent_meanwhile() {
    let server = TestServer::start_with(|c| c.signal.resume_grace = Duration::from_secs(5)).await;
    let (mut camera, viewer, welcome) = joined_with_resume(&server).await;
    let (session, secret) = (viewer.session.clone(), welcome["resume"].as_str().unwrap());
    // The phone leaves the Wi-Fi: the socket just ends, no close frame.
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The camera goes on talking to it; nothing tells it the viewer left.
    camera
        .send(json!({"type":"offer","to":session,"sdp":"v=0 in the gap"}))
        .await;
    quiet_camera(&mut camera).await;

    // Back on the mobile network: same token, the resume secret.
    let mut viewer = resume_with_header(
        &server.url(),
        &viewer_token("alice", &["cam1"]),
        &session,
        secret,
    )
    .await;
    let w = viewer.expect("welcome").await;
    assert_eq!(w["session"], session.as_str(), "the same session");
    assert_eq!(w["resumed"], true);
    let offer = viewer.expect("offer").await;
    assert_eq!(offer["sdp"], "v=0 in the gap");
    // And the call goes on both ways, with no peer-left anywhere.
    viewer
        .send(json!({"type":"answer","to":camera.session,"sdp":"v=0 answer"}))
        .await;
    assert_eq!(camera.expect("answer").await["from"], session.as_str());
    let m = server.metrics();
    assert!(
        m.contains(r#"iceway_signal_connections_total{result="resumed"} 1"#),
        "{m}"
    );

    // A wrong secret, or another user's token, gets a new session instead.
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = resume_with_header(
        &server.url(),
        &viewer_token("mallory", &["cam1"]),
        &session,
        secret,
    )
    .await;
    assert_ne!(other.expect("welcome").await["session"], session.as_str());
    let mut forged = resume_with_header(
        &server.url(),
        &viewer_token("alice", &["cam1"]),
        &session,
        "AAAA",
    )
    .await;
    assert_ne!(forged.expect("welcome").await["session"], session.as_str());
}

/// A client that gave up on a socket (its probe after a network change went unanswered) closes
/// it with 4000 and reconnects; that close frame may reach the server once the network is back,
/// before the resume. The session stays resumable. Any other close ends it at once.
#[tokio::test]
async fn a_socket_closed_to_reconnect_keeps_its_session_and_a_normal_close_ends_it() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = TestServer::start_with(|c| c.signal.resume_grace = Duration::from_secs(5)).await;
    let (mut camera, mut viewer, welcome) = joined_with_resume(&server).await;
    let (session, secret) = (
        viewer.session.clone(),
        welcome["resume"].as_str().expect("resume"),
    );
    viewer
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4000),
            reason: "probe timeout".into(),
        }))
        .await
        .expect("close");
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    quiet_camera(&mut camera).await;
    let mut viewer = resume_with_header(
        &server.url(),
        &viewer_token("alice", &["cam1"]),
        &session,
        secret,
    )
    .await;
    let w = viewer.expect("welcome").await;
    assert_eq!(w["session"], session.as_str(), "the same session");
    assert_eq!(w["resumed"], true);
    quiet_camera(&mut camera).await;

    // Closing normally is leaving: the camera hears it now, not after the grace.
    viewer
        .ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    assert_eq!(camera.expect("peer-left").await["peer"], session.as_str());
}

/// The camera has nothing waiting: the next frame answers its ping.
async fn quiet_camera(camera: &mut Client) {
    camera.send(json!({"type":"ping"})).await;
    let f = camera.recv().await;
    assert_eq!(f["type"], "pong", "unexpected {f}");
}

#[tokio::test]
async fn when_the_grace_runs_out_the_peers_hear_it_left_and_waiting_frames_are_peer_gone() {
    let server = TestServer::start_with(|c| c.signal.resume_grace = Duration::from_secs(5)).await;
    let (mut camera, viewer, _welcome) = joined_with_resume(&server).await;
    let session = viewer.session.clone();
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    camera
        .send(json!({"type":"candidate","to":session,"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0}))
        .await;
    // After the grace (5 s, within the wait of 15 s): the frame is answered, then the leave.
    let e = camera.expect_error("peer-gone").await;
    assert_eq!(e["peer"], session.as_str());
    assert_eq!(camera.expect("peer-left").await["peer"], session.as_str());
}

#[tokio::test]
async fn a_browser_resumes_through_its_auth_frame() {
    let server = TestServer::start_with(|c| c.signal.resume_grace = Duration::from_secs(5)).await;
    let (mut camera, viewer, welcome) = joined_with_resume(&server).await;
    let session = viewer.session.clone();
    drop(viewer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = connect_raw(&server.url(), None).await.unwrap();
    ws.send(Message::text(
        json!({"type":"auth","token":viewer_token("alice", &["cam1"]),
               "resume":{"session":session,"token":welcome["resume"]}})
        .to_string(),
    ))
    .await
    .unwrap();
    let mut viewer = Client {
        ws,
        session: String::new(),
    };
    let w = viewer.expect("welcome").await;
    assert_eq!(w["session"], session.as_str());
    assert_eq!(w["resumed"], true);
    quiet_camera(&mut camera).await;
}

/// A client silent past the idle timeout (its network went away without the socket closing)
/// is closed with 4008, but its session waits for a resume as after a dropped socket: its
/// camera is not told it left, and what the camera sent meanwhile follows the resume.
#[tokio::test]
async fn a_client_closed_for_silence_can_still_resume_its_session() {
    let server = TestServer::start_with(|c| {
        c.signal.resume_grace = Duration::from_secs(5);
        c.signal.heartbeat = Duration::from_secs(1);
        c.signal.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let (mut camera, viewer, welcome) = joined_with_resume(&server).await;
    let (session, secret) = (viewer.session.clone(), welcome["resume"].as_str().unwrap());
    // The viewer's socket is not read, so its pings go unanswered; the camera keeps talking.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        camera.ping_pong().await;
    }
    assert_eq!(viewer.closed().await, Closed::Code(4008));
    camera
        .send(json!({"type":"candidate","to":session,"candidate":"candidate:late","sdpMid":"0","sdpMLineIndex":0}))
        .await;
    camera.ping_pong().await;
    let (mut viewer, w) = Client::resume(
        &server.url(),
        &viewer_token("alice", &["cam1"]),
        &session,
        secret,
    )
    .await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(viewer.session, session);
    assert_eq!(
        viewer.expect("candidate").await["candidate"],
        "candidate:late"
    );
    // No peer-left reached the camera: its next frame is the pong.
    camera.ping_pong().await;
}

#[tokio::test]
async fn a_burst_of_reconnects_beyond_128_handshakes_waits_in_the_listen_queue() {
    // Bound but not serving yet: every handshake the kernel completes waits to be accepted. A
    // listen queue of 128 (std's and tokio's `bind`) would drop the SYNs past it, and each of
    // those clients would wait a second for its retransmit.
    let secret = secret_file();
    let config = test_config(&secret);
    let server = iceway_signal::SignalServer::bind(&config, &prometheus::Registry::new())
        .await
        .expect("bind");
    let addr = server.local_addr();
    let connects = (0..600).map(|_| {
        tokio::time::timeout(
            Duration::from_millis(700),
            tokio::net::TcpStream::connect(addr),
        )
    });
    let streams = futures_util::future::join_all(connects).await;
    let queued = streams.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(
        queued, 600,
        "handshakes completed before the server accepts any"
    );
    drop(server);
}
