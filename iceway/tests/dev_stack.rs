//! `iceway dev` as a user starts it, with the Rust reference camera and viewer (in-process, on
//! real WebRTC) calling through its TURN relay on loopback. The namespace/NAT and browser
//! variants are in e2e/ (scripts/test-e2e.sh).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use iceway_client::camera::{self, CameraOptions};
use iceway_client::media::Clip;
use iceway_client::signaling::SignalError;
use iceway_client::viewer::{self, ViewerError, ViewerOptions};
use iceway_testkit::{Proc, read_first_line};
use tokio_util::sync::CancellationToken;

struct Dev {
    _proc: Proc,
    info: serde_json::Value,
    _state: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        // A relay range per stack keeps parallel tests' (and processes') allocations apart.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lo = 20_000 + ((std::process::id() * 7 + n * 401) % 30_000) as u16;
        // Killed by its pid when dropped, also when a wait below fails the test.
        let mut proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_iceway"))
                .args(["--state-dir"])
                .arg(state.path())
                .args([
                    "dev",
                    "--json",
                    "--http-port",
                    "0",
                    "--turn-port",
                    "0",
                    "--relay-range",
                ])
                .arg(format!("{lo}-{}", lo + 300))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "iceway dev",
        );
        let stdout = proc.child_mut().stdout.take().expect("stdout");
        let line = read_first_line(stdout, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("iceway dev did not print its URLs within 30 s"));
        let info: serde_json::Value = serde_json::from_str(&line).expect("dev json");
        Self {
            _proc: proc,
            info,
            _state: state,
        }
    }

    fn get(&self, key: &str) -> String {
        self.info[key].as_str().expect(key).to_owned()
    }

    fn token(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_iceway"))
            .arg("--state-dir")
            .arg(self.get("state_dir"))
            .arg("token")
            .args(args)
            .output()
            .expect("iceway token");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }
}

fn camera_opts(dev: &Dev) -> CameraOptions {
    CameraOptions {
        signal_url: dev.get("signal_url"),
        token: dev.get("camera_token"),
        token_file: None,
        clip: Arc::new(Clip::builtin()),
        relay_only: true,
        bind: None,
        ice_servers: None,
        duration: Some(Duration::from_secs(60)),
    }
}

fn viewer_opts(dev: &Dev, frames: u64) -> ViewerOptions {
    ViewerOptions {
        signal_url: dev.get("signal_url"),
        token: dev.get("viewer_token"),
        token_file: None,
        camera: dev.get("camera_id"),
        relay_only: true,
        bind: None,
        ice_servers: None,
        frames,
        timeout: Duration::from_secs(45),
        progress: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_viewer_sees_rust_camera_through_the_turn_relay() {
    let dev = Dev::start();
    let stop = CancellationToken::new();
    let cam = tokio::spawn(camera::run(camera_opts(&dev), stop.clone()));
    let report = viewer::run(viewer_opts(&dev, 60), CancellationToken::new())
        .await
        .expect("viewer");
    stop.cancel();
    let _ = cam.await;
    println!(
        "time to first frame (rust camera -> rust viewer, relay, loopback): {:?} ms",
        report.time_to_first_frame_ms
    );
    assert!(report.ok, "{report:?}");
    assert!(report.frames >= 60);
    let pair = report.selected_pair.expect("selected pair");
    assert_eq!(pair.local, "relay");
    assert_eq!(pair.remote, "relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_camera_serves_two_viewers_at_once() {
    let dev = Dev::start();
    let stop = CancellationToken::new();
    let cam = tokio::spawn(camera::run(camera_opts(&dev), stop.clone()));
    let second = ViewerOptions {
        token: dev.token(&[
            "--role", "viewer", "--sub", "bob", "--cams", "cam1", "--ttl", "10m",
        ]),
        ..viewer_opts(&dev, 45)
    };
    let (a, b) = tokio::join!(
        viewer::run(viewer_opts(&dev, 45), CancellationToken::new()),
        viewer::run(second, CancellationToken::new()),
    );
    stop.cancel();
    let _ = cam.await;
    let (a, b) = (a.expect("viewer 1"), b.expect("viewer 2"));
    assert!(a.ok, "{a:?}");
    assert!(b.ok, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_viewer_without_the_camera_in_cams_is_forbidden() {
    let dev = Dev::start();
    let token = dev.token(&[
        "--role", "viewer", "--sub", "mallory", "--cams", "other", "--ttl", "10m",
    ]);
    let opts = ViewerOptions {
        token,
        frames: 1,
        timeout: Duration::from_secs(20),
        ..viewer_opts(&dev, 1)
    };
    let err = viewer::run(opts, CancellationToken::new())
        .await
        .expect_err("must be refused");
    assert!(
        matches!(err, ViewerError::Signal(SignalError::Forbidden(_))),
        "{err:?}"
    );
}
