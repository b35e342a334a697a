//! A real `redis-server` and `iceway-signal` replica processes sharing it, with the faults the
//! backplane must survive: Redis paused, killed and restarted empty; a replica killed.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y --no-install-recommends
//! redis-server`).

use std::process::{Command, Stdio};
use std::time::Duration;

use iceway_testkit::{Proc, free_port, wait_until};

use serde_json::json;

use super::{Client, WAIT, camera_token, viewer_token};

pub use iceway_testkit::RedisServer as Redis;

pub struct Replica {
    pub ws_url: String,
    pub readyz: String,
    proc: Option<Proc>,
}

impl Replica {
    /// A replica with short TTLs (presence 3 s, replica 2 s, backplane deadline 2 s) so the
    /// faults play out within a test, plus `env`.
    pub async fn start(
        redis: &Redis,
        secret: &tempfile::NamedTempFile,
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_with_url(&redis.url(), secret, env).await
    }

    /// As [`start`](Self::start), reaching Redis at `redis_url` (through a proxy, say).
    pub async fn start_with_url(
        redis_url: &str,
        secret: &tempfile::NamedTempFile,
        env: &[(&str, &str)],
    ) -> Self {
        let (port, admin) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iceway-signal"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--jwt-secret-file", secret.path().to_str().unwrap()])
            .args(["--redis-url", redis_url])
            .args(["--turn-url", "stun:stun.test:3478"])
            .env("ICEWAY_SIGNAL__PRESENCE_TTL", "3s")
            .env("ICEWAY_SIGNAL__REPLICA_TTL", "2s")
            .env("ICEWAY_SIGNAL__BACKPLANE_TIMEOUT", "2s")
            .env("ICEWAY_SIGNAL__HEARTBEAT", "2s")
            // A killed client's session ends at once: these tests are about the backplane.
            .env("ICEWAY_SIGNAL__RESUME_GRACE", "0s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(&mut cmd, "iceway-signal");
        let replica = Self {
            ws_url: format!("ws://127.0.0.1:{port}/v1/ws"),
            readyz: format!("http://127.0.0.1:{admin}/readyz"),
            proc: Some(proc),
        };
        replica.wait_ready(true).await;
        replica
    }

    pub async fn ready(&self) -> bool {
        let r = reqwest::Client::new()
            .get(&self.readyz)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    }

    /// Waits until `/readyz` says `ready`.
    pub async fn wait_ready(&self, ready: bool) {
        let what = if ready { "ready" } else { "not ready" };
        wait_until(&format!("replica {what}"), WAIT, || async {
            self.ready().await == ready
        })
        .await;
    }

    pub fn kill(&mut self) {
        drop(self.proc.take());
    }
}

/// Camera on `a`, viewer on `b`, joined.
pub async fn joined_across(a: &Replica, b: &Replica) -> (Client, Client) {
    let mut camera = Client::connect(&a.ws_url, &camera_token("cam1")).await;
    camera.send(json!({"type":"publish"})).await;
    camera.expect("camera-online").await;
    let mut viewer = Client::connect(&b.ws_url, &viewer_token("alice", &["cam1"])).await;
    viewer.send(json!({"type":"watch","camera":"cam1"})).await;
    let online = viewer.expect("camera-online").await;
    assert_eq!(online["session"], camera.session.as_str());
    let joined = camera.expect("viewer-joined").await;
    assert_eq!(joined["viewer"], viewer.session.as_str());
    (camera, viewer)
}

pub async fn exchange(camera: &mut Client, viewer: &mut Client) {
    let (c, v) = (camera.session.clone(), viewer.session.clone());
    camera
        .send(json!({"type":"offer","to":v,"sdp":"v=0 offer"}))
        .await;
    assert_eq!(
        viewer.expect("offer").await,
        json!({"type":"offer","from":c,"sdp":"v=0 offer"})
    );
    viewer
        .send(json!({"type":"answer","to":c,"sdp":"v=0 answer"}))
        .await;
    assert_eq!(
        camera.expect("answer").await,
        json!({"type":"answer","from":v,"sdp":"v=0 answer"})
    );
    camera
        .send(json!({"type":"candidate","to":v,"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0}))
        .await;
    assert_eq!(viewer.expect("candidate").await["from"], c.as_str());
    viewer
        .send(json!({"type":"candidate","to":c,"candidate":"candidate:2","sdpMid":"0","sdpMLineIndex":0}))
        .await;
    assert_eq!(camera.expect("candidate").await["from"], v.as_str());
}
