//! Measures the server's resident memory per idle connection (a separate process, so the
//! clients' memory is not counted). Ignored by default; run with
//! `cargo test -p iceway-signal --test idle_memory -- --ignored --nocapture`
//! (`ICEWAY_IDLE_CONNECTIONS` sets the count, default 2000; `ICEWAY_SIGNAL_BIN` the binary).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn idle_connection_memory() {
    let n: usize = std::env::var("ICEWAY_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let secret = secret_file();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // ICEWAY_SIGNAL_BIN: measure another build, e.g. target/release/iceway-signal.
    let bin = std::env::var("ICEWAY_SIGNAL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_iceway-signal").to_owned());
    let mut child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--jwt-secret-file", secret.path().to_str().unwrap()])
        .env("ICEWAY_SIGNAL__MAX_CONNECTIONS_PER_USER", "100000")
        // Every socket comes from 127.0.0.1.
        .env("ICEWAY_SIGNAL__MAX_CONNECTIONS_PER_IP", "0")
        .env("ICEWAY_SIGNAL__UPGRADES_PER_MINUTE", "6000000")
        .env("ICEWAY_SIGNAL__UPGRADE_BURST", "100000")
        .envs(
            std::env::var("MALLOC_ARENA_MAX")
                .ok()
                .map(|v| ("MALLOC_ARENA_MAX", v)),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let start = Instant::now();
    let mut ready = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "server did not come up in {:?}", start.elapsed());

    // Warm up allocator arenas and lazy statics with a few connections first.
    let cam = camera_token("cam");
    let view = viewer_token("v", &["cam"]);
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(Client::connect(&url, &view).await);
    }
    drop(warm);
    let mut probe = Client::connect(&url, &cam).await;
    probe.ping_pong().await;
    let before = rss_kib(pid);

    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let token = if i % 2 == 0 { &cam } else { &view };
        let mut c = Client::connect(&url, token).await;
        if i % 2 == 1 {
            c.send(json!({"type":"watch","camera":"cam"})).await;
        }
        clients.push(c);
    }
    // Every connection has been welcomed; let the watches land.
    probe.ping_pong().await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) * 1024) / n as u64;
    println!(
        "idle connections: {n}; server RSS before {before} KiB, after {after} KiB; \
         {per} bytes per idle connection"
    );
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
}
