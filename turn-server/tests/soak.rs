//! The soak: `iceway-turn` holding 1,000 UDP allocations for 30 minutes, each relaying 50
//! packets/s through a channel to an echo peer on loopback, refreshing its allocation and
//! channel every minute, while 3 allocations a second (picked at random) are released and
//! replaced by new ones on new sockets: the set turns over about five times.
//!
//! Ignored by default (it takes 30 minutes). Build the load generator in the same profile first,
//! then run it explicitly (docs/turn-server.md, "Soak"):
//!
//! ```text
//! cargo build --release -p iceway-turn -p iceway-loadtest
//! cargo test --release -p iceway-turn --test soak -- --ignored --nocapture
//! ```
//!
//! `ICEWAY_SOAK_SECS` (default 1800) sets the data phase; `ICEWAY_SOAK_SECS=60` is the smoke run.
//! `ICEWAY_SOAK_ALLOCATIONS`, `ICEWAY_SOAK_RATE`, `ICEWAY_SOAK_CHURN` and
//! `ICEWAY_SOAK_REFRESH_SECS` change the load.
//!
//! What is compared: the server's RSS, open file descriptors and relay ports (UDP sockets other
//! than the listeners, from /proc) after warm-up, with all allocations up, against the same at
//! the end of the load, again with all allocations up. Steady state against steady state is the
//! meaningful comparison: a leak per allocation made, refresh or packet grows between the two
//! while the live set stays the same size, whereas "after closing everything" against "before
//! the first allocation" would mostly measure the allocator keeping its freed pages. After the
//! load closes its allocations, relay ports must equal the allocations gauge (no socket outlives
//! its allocation) and the descriptors must come back to the count before the load.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// Largest drift allowed between the start and the end samples.
const TOLERANCE: f64 = 0.05;
/// Largest share of relayed packets allowed to go missing.
const MAX_LOSS: f64 = 0.01;

fn env_or<T: FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `iceway-loadtest` from the same target directory and profile as this test
/// (target/PROFILE/deps/soak-HASH → target/PROFILE/iceway-loadtest).
fn loadtest_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("iceway-loadtest"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it in this profile first, e.g. \
         `cargo build --release -p iceway-loadtest`",
        bin.display()
    );
    bin
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kb: u64,
    fds: usize,
    relay_ports: usize,
    allocations: f64,
    permissions: f64,
    channels: f64,
    cpu_s: f64,
}

fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn sample(server: &TurnServer, t0: Instant) -> Sample {
    let pid = server.proc.pid();
    let (_, body) = server.http_get("/metrics");
    let relay_ports = udp_ports(pid)
        .into_iter()
        .filter(|p| *p != server.port)
        .count();
    Sample {
        at_s: t0.elapsed().as_secs_f64(),
        rss_kb: rss_kb(pid),
        fds: open_fds(pid),
        relay_ports,
        allocations: metric(&body, "iceway_turn_allocations "),
        permissions: metric(&body, "iceway_turn_permissions "),
        channels: metric(&body, "iceway_turn_channels "),
        cpu_s: cpu_seconds(pid),
    }
}

fn show(label: &str, s: &Sample) {
    eprintln!(
        "soak {label:>8} t={:7.1}s  rss {:7} kB  fds {:5}  relay ports {:5}  allocations {:5}  \
         permissions {:5}  channels {:5}  cpu {:8.2} s",
        s.at_s, s.rss_kb, s.fds, s.relay_ports, s.allocations, s.permissions, s.channels, s.cpu_s
    );
}

fn drift(start: f64, end: f64) -> f64 {
    (end - start) / start.max(1.0)
}

fn assert_within(what: &str, start: f64, end: f64) {
    let d = drift(start, end);
    assert!(
        d.abs() <= TOLERANCE,
        "{what}: {start} at the start, {end} at the end ({:+.2} %, allowed ±{:.0} %)",
        d * 100.0,
        TOLERANCE * 100.0
    );
}

/// Every relay socket belongs to a live allocation and the other way round, give or take the
/// few churned allocations between the two reads.
fn assert_ports_match(label: &str, s: &Sample, slack: f64) {
    assert!(
        (s.relay_ports as f64 - s.allocations).abs() <= slack,
        "{label}: {} relay ports but {} allocations",
        s.relay_ports,
        s.allocations
    );
}

/// Reads the load generator's stderr until `until`, echoing it; false if it exited.
fn follow(log: &mpsc::Receiver<String>, until: Instant) -> bool {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match log.recv_timeout(left) {
            Ok(line) => eprintln!("loadtest: {line}"),
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

#[test]
#[ignore = "30-minute soak: cargo test --release -p iceway-turn --test soak -- --ignored --nocapture"]
fn soak_allocations_refreshing_relaying_and_churning() {
    let secs: u64 = env_or("ICEWAY_SOAK_SECS", 1800).max(30);
    let allocations: usize = env_or("ICEWAY_SOAK_ALLOCATIONS", 1000).max(10);
    let rate: f64 = env_or("ICEWAY_SOAK_RATE", 50.0);
    let churn: f64 = env_or("ICEWAY_SOAK_CHURN", 3.0);
    let refresh: u64 = env_or("ICEWAY_SOAK_REFRESH_SECS", 60).max(1);
    // First sample once the first round of refreshes is under way and churn is steady; last
    // sample shortly before the load stops.
    let warm_up = Duration::from_secs((secs / 6).clamp(10, 120));
    let before_end = Duration::from_secs((secs / 10).clamp(3, 15));
    let loadtest = loadtest_bin();

    // REST credentials mint one user per allocation (load0, load1, …), and the load spreads over
    // 127.0.0.1–127.0.0.64, so the default quotas (512 per user, 1024 per address, 10000 in
    // all) hold 1,000 allocations plus the churn; everything else is the server's default.
    let server = TurnServer::start(ServerOptions {
        args: vec!["--allow-peers", "127.0.0.0/8"],
        user: false,
        ..Default::default()
    });
    let pid = server.proc.pid();
    let t0 = Instant::now();
    let baseline = sample(&server, t0);
    show("baseline", &baseline);

    let mut cmd = Command::new(&loadtest);
    cmd.args(["turn", "--server", &server.addr.to_string()])
        .args(["-n", &allocations.to_string(), "--protocol", "channel"])
        .args(["--rate", &rate.to_string(), "--size", "120"])
        .args(["--duration", &format!("{secs}s"), "--drain", "2s"])
        .args(["--refresh", &format!("{refresh}s")])
        .args(["--churn", &churn.to_string()])
        .arg("--secret-file")
        .arg(server.secret_file.path())
        // Credentials outlive the run (minted once; replacements reuse them).
        .args(["--ttl", &format!("{}s", secs + 3600)])
        .args(["--setup-timeout", "120s", "--interval", "10s"])
        .args(["--server-pid", &pid.to_string(), "--json"])
        .env("RUST_LOG", "iceway_loadtest=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let keep = std::env::temp_dir().join(format!("iceway-soak-loadtest-{}.log", server.port));
    let (mut load, log) = Proc::spawn_with_stderr_lines(&mut cmd, "iceway-loadtest", Some(&keep));
    let mut stdout = load.child_mut().stdout.take().expect("stdout piped");
    let (report_tx, report_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = report_tx.send(text);
    });

    // Setup: all allocations made, then the data phase starts.
    let setup_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = setup_deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) => {
                eprintln!("loadtest: {line}");
                if line.contains("data phase started") {
                    break;
                }
            }
            Err(_) => panic!("the load did not reach its data phase within 180 s"),
        }
    }
    let data_start = Instant::now();
    let setup = sample(&server, t0);
    show("setup", &setup);

    assert!(
        follow(&log, data_start + warm_up),
        "the load exited during warm-up"
    );
    let start = sample(&server, t0);
    show("start", &start);

    // A sample a minute (or ten per run) in between, to show a trend if there is one.
    let end_at = data_start + Duration::from_secs(secs) - before_end;
    let step = Duration::from_secs((secs / 10).clamp(5, 60));
    let mut next = Instant::now() + step;
    let mut series = vec![start];
    while next < end_at {
        assert!(follow(&log, next), "the load exited early");
        let s = sample(&server, t0);
        show("during", &s);
        series.push(s);
        next += step;
    }
    assert!(follow(&log, end_at), "the load exited early");
    let end = sample(&server, t0);
    show("end", &end);
    series.push(end);

    // The load stops, drains and releases its allocations (best-effort, one Refresh(0) each).
    let exit_by = data_start + Duration::from_secs(secs) + Duration::from_secs(60);
    while follow(&log, exit_by.min(Instant::now() + Duration::from_secs(1))) {
        if Instant::now() >= exit_by {
            panic!("iceway-loadtest still running 60 s after its data phase");
        }
        if load.try_wait().is_some() {
            break;
        }
    }
    let status = load.wait();
    let report = report_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the load's report");
    assert!(status.success(), "iceway-loadtest failed: {status:?}");
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON report");

    // Bounded wait for the releases to land (a lost one would linger until its lifetime).
    let closed_by = Instant::now() + Duration::from_secs(30);
    let mut closed = sample(&server, t0);
    while (closed.allocations > 0.0 || closed.relay_ports > 0) && Instant::now() < closed_by {
        std::thread::sleep(Duration::from_millis(200));
        closed = sample(&server, t0);
    }
    show("closed", &closed);

    let t = &report["traffic"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (sent, received, lost) = (n(&t["sent"]), n(&t["received"]), n(&t["lost"]));
    let c = &t["control"];
    let srv = &report["server"];
    eprintln!(
        "soak setup: {}/{} allocations in {:.1} s",
        n(&report["setup"]["succeeded"]),
        n(&report["setup"]["requested"]),
        report["setup"]["seconds"].as_f64().unwrap_or(0.0)
    );
    eprintln!(
        "soak traffic: sent {sent}  received {received}  lost {lost} ({:.4} %)  send errors {}  \
         over {:.1} s; to peer {}, latency p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
        t["loss_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        n(&t["send_errors"]),
        t["seconds"].as_f64().unwrap_or(0.0),
        n(&t["relayed_to_peer"]),
        t["latency_us"]["p50"].as_f64().unwrap_or(0.0),
        t["latency_us"]["p99"].as_f64().unwrap_or(0.0),
        t["latency_us"]["max"].as_f64().unwrap_or(0.0),
    );
    eprintln!(
        "soak control: refreshes {} (failed {}), released {} (failed {}), re-allocated {} \
         (failed {}) = {:.2} turnovers; errors {}",
        n(&c["refreshes"]),
        n(&c["refresh_failures"]),
        n(&c["released"]),
        n(&c["release_failures"]),
        n(&c["reopened"]),
        n(&c["reopen_failures"]),
        n(&c["reopened"]) as f64 / allocations as f64,
        c["errors"]
    );
    let peak = series.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let low = series.iter().map(|s| s.rss_kb).min().unwrap_or(0);
    eprintln!("soak RSS between start and end: {low}–{peak} kB");
    eprintln!(
        "soak server: {:.1} CPU-s over the data phase ({:.2} cores), {:.1} CPU-s in all; \
         RSS {} → {} kB ({:+.2} %), fds {} → {} ({:+.2} %), relay ports {} → {} ({:+.2} %)",
        srv["cpu_seconds"].as_f64().unwrap_or(0.0),
        srv["cores_busy"].as_f64().unwrap_or(0.0),
        closed.cpu_s,
        start.rss_kb,
        end.rss_kb,
        drift(start.rss_kb as f64, end.rss_kb as f64) * 100.0,
        start.fds,
        end.fds,
        drift(start.fds as f64, end.fds as f64) * 100.0,
        start.relay_ports,
        end.relay_ports,
        drift(start.relay_ports as f64, end.relay_ports as f64) * 100.0,
    );

    // All allocations up at both samples (a few are between release and re-allocation).
    let full = allocations as f64 * (1.0 - TOLERANCE);
    assert!(start.allocations >= full, "start: {start:?}");
    assert!(end.allocations >= full, "end: {end:?}");
    let slack = (allocations as f64 * 0.01).max(5.0);
    assert_ports_match("start", &start, slack);
    assert_ports_match("end", &end, slack);

    assert_within("RSS (kB)", start.rss_kb as f64, end.rss_kb as f64);
    assert_within("open file descriptors", start.fds as f64, end.fds as f64);
    assert_within(
        "relay ports",
        start.relay_ports as f64,
        end.relay_ports as f64,
    );

    // Delivery: the echo round trips kept flowing.
    assert!(received > 0 && sent > 0, "{t}");
    assert!(
        (lost as f64) <= sent as f64 * MAX_LOSS,
        "lost {lost} of {sent} packets"
    );
    // Refresh and churn happened and (almost) never failed.
    if secs > refresh {
        assert!(n(&c["refreshes"]) > 0, "no refresh: {c}");
    }
    assert!(
        n(&c["refresh_failures"]) as f64 <= (n(&c["refreshes"]) as f64 * 0.01).max(1.0),
        "refreshes failed: {c}"
    );
    if churn > 0.0 {
        assert!(n(&c["reopened"]) > 0, "no churn: {c}");
        assert!(
            (n(&c["reopen_failures"]) + n(&c["release_failures"])) as f64
                <= (n(&c["reopened"]) as f64 * 0.01).max(1.0),
            "churn failed: {c}"
        );
    }

    // After the load: nothing but what never got released, no socket without its allocation,
    // descriptors back to where they were before the load.
    assert_eq!(
        closed.relay_ports as f64, closed.allocations,
        "after the load: {closed:?}"
    );
    assert!(
        closed.allocations <= allocations as f64 * 0.01,
        "{} allocations left 30 s after the load released them",
        closed.allocations
    );
    assert!(
        closed.fds <= baseline.fds + closed.relay_ports + 2,
        "descriptors after the load {} vs {} before it (+{} relay ports still open)",
        closed.fds,
        baseline.fds,
        closed.relay_ports
    );
}
