//! The reconnect storm: a replica drains and every client comes back at once.
//!
//! All pairs connect to `url` (replica A; cameras publish), then the load sends SIGTERM to A's
//! process. iceway-signal drains: after its `drain.timeout` it closes every socket 1001 (going
//! away); a server without a drain exits and the kernel ends its sockets. Each client whose
//! socket ends connects once to `reconnect_url` (replica B), at most `connect_concurrency` at a
//! time, and waits for its greeting (`welcome`, `OPEN`, `bound`). Measured: first lost socket
//! → last greeting, B's CPU over the storm per connect, and every client that did not make it.
//! Nothing is retried: a failed reconnect is counted and that client is done. A server that
//! ignores SIGTERM is sent SIGKILL after `kill_after`, as an orchestrator would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use super::{
    Names, SignalError, SignalOptions, Ws, connect, connect_all, frames, protocol_name,
    source_addresses, target_addr,
};
use crate::progress::Progress;
use crate::stats::{
    LoadShape, Percentiles, Report, ServerReport, SetupReport, SignalReport, StormReport,
    TrafficReport, new_histogram,
};
use crate::sysstat::ProcessSample;

#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Where every client reconnects (replica B).
    pub reconnect_url: String,
    /// The process told to drain with SIGTERM (replica A).
    pub drain_pid: u32,
    /// Bound from the signal to the last greeting: clients not back by then have failed.
    pub timeout: Duration,
    /// SIGKILL the drained process this long after SIGTERM, as an orchestrator does once a
    /// pod's grace period is over (peerjs-server stops listening on SIGTERM but keeps its
    /// sockets open until it is killed).
    pub kill_after: Option<Duration>,
}

/// What the client tasks report, and the storm's numbers from it. No I/O, no clock: times are
/// nanoseconds after the run's epoch, handed in.
#[derive(Debug)]
pub struct Tally {
    signalled_ns: Option<u64>,
    first_loss_ns: Option<u64>,
    last_greeting_ns: Option<u64>,
    lost: u64,
    lost_by: BTreeMap<String, u64>,
    lost_before_drain: u64,
    reconnected: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    reconnect: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            signalled_ns: None,
            first_loss_ns: None,
            last_greeting_ns: None,
            lost: 0,
            lost_by: BTreeMap::new(),
            lost_before_drain: 0,
            reconnected: 0,
            failed: 0,
            errors: BTreeMap::new(),
            reconnect: new_histogram(),
        }
    }
}

impl Tally {
    pub fn signalled(&mut self, at_ns: u64) {
        self.signalled_ns = Some(at_ns);
    }

    /// A socket to the drained server ended (`how`). Before the signal it is a failure: that
    /// client does not reconnect. Returns whether the client goes on to reconnect.
    pub fn lost(&mut self, how: &str, at_ns: u64) -> bool {
        self.lost += 1;
        *self.lost_by.entry(how.to_string()).or_insert(0) += 1;
        if self.signalled_ns.is_none_or(|s| at_ns < s) {
            self.lost_before_drain += 1;
            self.fail(format!("lost before the drain: {how}"));
            return false;
        }
        self.first_loss_ns = Some(self.first_loss_ns.map_or(at_ns, |f| f.min(at_ns)));
        true
    }

    /// Greeted again at `at_ns`, its old socket lost at `lost_ns`.
    pub fn greeted(&mut self, lost_ns: u64, at_ns: u64) {
        self.reconnected += 1;
        self.last_greeting_ns = Some(self.last_greeting_ns.map_or(at_ns, |l| l.max(at_ns)));
        let took = at_ns.saturating_sub(lost_ns).max(1);
        let _ = self.reconnect.record(took.min(self.reconnect.high()));
    }

    pub fn fail(&mut self, why: String) {
        self.failed += 1;
        self.note(why);
    }

    /// An error that is not a client's outcome (a socket B dropped after greeting it).
    pub fn note(&mut self, why: String) {
        *self.errors.entry(why).or_insert(0) += 1;
    }

    /// Clients done, one way or the other.
    pub fn settled(&self) -> u64 {
        self.reconnected + self.failed
    }

    /// The storm of `clients`, with the second server's CPU seconds over it. Clients that were
    /// never settled (their socket outlived the time bound) count as failed.
    pub fn report(&self, clients: u64, server_cpu_seconds: Option<f64>) -> StormReport {
        let unsettled = clients.saturating_sub(self.settled());
        let mut errors = self.errors.clone();
        if unsettled > 0 {
            *errors
                .entry("not back within the storm's time bound".into())
                .or_insert(0) += unsettled;
        }
        let secs = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        };
        StormReport {
            clients,
            lost: self.lost,
            lost_by: self.lost_by.clone(),
            lost_before_drain: self.lost_before_drain,
            reconnected: self.reconnected,
            failed: self.failed + unsettled,
            errors,
            first_loss_seconds: secs(self.signalled_ns, self.first_loss_ns),
            storm_seconds: secs(self.first_loss_ns, self.last_greeting_ns),
            seconds_from_signal: secs(self.signalled_ns, self.last_greeting_ns),
            reconnect_us: Percentiles::from_ns(&self.reconnect),
            server_cpu_seconds,
            server_cpu_us_per_connect: server_cpu_seconds
                .filter(|_| self.reconnected > 0)
                .map(|c| c * 1e6 / self.reconnected as f64),
        }
    }
}

/// How a socket ended, as the report counts it.
fn ending(msg: Option<Result<Message, tungstenite::Error>>) -> Option<String> {
    match msg {
        Some(Ok(Message::Close(Some(f)))) => Some(format!("close {}", u16::from(f.code))),
        Some(Ok(Message::Close(None))) => Some("close without code".into()),
        Some(Ok(_)) => None,
        Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )))
        | None => Some("eof without close".into()),
        Some(Err(tungstenite::Error::Io(e))) => Some(format!("io {:?}", e.kind())),
        Some(Err(e)) => Some(format!("error {e}")),
    }
}

/// Reads (and drops) frames until the socket ends; returns how.
async fn until_end(ws: &mut Ws) -> String {
    loop {
        if let Some(how) = ending(ws.next().await) {
            return how;
        }
    }
}

/// What every client task shares.
struct Ctx {
    opts: SignalOptions,
    storm: StormOptions,
    names: Names,
    epoch: Instant,
    signalled: OnceLock<tokio::time::Instant>,
    tally: Mutex<Tally>,
    settled_now: Notify,
    /// Reconnects in flight.
    slots: Semaphore,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn tally(&self, f: impl FnOnce(&mut Tally)) {
        if let Ok(mut t) = self.tally.lock() {
            f(&mut t);
        }
    }

    fn settle(&self, f: impl FnOnce(&mut Tally)) {
        self.tally(f);
        self.settled_now.notify_one();
    }
}

/// One client: holds its socket to A until A ends it, reconnects once to B, holds that until
/// released.
async fn client(
    mut ws: Ws,
    i: usize,
    is_camera: bool,
    src: std::net::IpAddr,
    ctx: Arc<Ctx>,
    mut release: watch::Receiver<bool>,
) {
    if is_camera && let Some(p) = frames::publish(ctx.opts.protocol) {
        let _ = ws.send(Message::text(p)).await;
    }
    let how = tokio::select! {
        how = until_end(&mut ws) => how,
        // Never ended by the drain: the report counts it as not back.
        _ = release.wait_for(|r| *r) => return,
    };
    let lost_ns = ctx.now_ns();
    let mut goes_on = false;
    ctx.tally(|t| goes_on = t.lost(&how, lost_ns));
    // A close frame's reply, if one is queued, so the drained server does not wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
    drop(ws);
    let Some(signalled) = ctx.signalled.get().copied().filter(|_| goes_on) else {
        ctx.settled_now.notify_one();
        return;
    };
    let peer = ctx.names.peer(i, is_camera);
    let deadline = signalled + ctx.storm.timeout;
    let attempt = async {
        let _slot = ctx
            .slots
            .acquire()
            .await
            .map_err(|_| "no reconnect slot".to_string())?;
        connect(&ctx.opts, &ctx.storm.reconnect_url, src, &peer).await
    };
    let mut ws = match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok((ws, _))) => {
            let at = ctx.now_ns();
            ctx.settle(|t| t.greeted(lost_ns, at));
            ws
        }
        Ok(Err(e)) => return ctx.settle(|t| t.fail(format!("reconnect: {e}"))),
        Err(_) => return ctx.settle(|t| t.fail("reconnect: timeout".into())),
    };
    let dropped = tokio::select! {
        how = until_end(&mut ws) => Some(how),
        _ = release.wait_for(|r| *r) => None,
    };
    match dropped {
        Some(how) if !*release.borrow() => {
            ctx.tally(|t| t.note(format!("dropped after reconnecting: {how}")));
        }
        Some(_) => {}
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = ws.close(None).await;
                until_end(&mut ws).await
            })
            .await;
        }
    }
}

pub async fn run(opts: &SignalOptions, storm: &StormOptions) -> Result<Report, SignalError> {
    let server = target_addr(&opts.url)?;
    let bind = source_addresses(opts, server);
    let n = opts.pairs;
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        storm: storm.clone(),
        names: Names::new(),
        epoch: Instant::now(),
        signalled: OnceLock::new(),
        tally: Mutex::new(Tally::default()),
        settled_now: Notify::new(),
        slots: Semaphore::new(opts.connect_concurrency.max(1)),
    });
    let (release_tx, release_rx) = watch::channel(false);
    let progress = Progress::new(opts.progress, (n * 2) as u64, opts.duration);

    // Everyone connects to A: cameras first, then viewers, as in the other shapes.
    let connect_started = Instant::now();
    let connect_deadline = tokio::time::Instant::now() + opts.setup_timeout;
    let attempted = std::sync::atomic::AtomicU64::new(0);
    let mut setup_latency = new_histogram();
    let mut setup_errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut tasks = Vec::with_capacity(2 * n);
    for is_camera in [true, false] {
        let mut results = connect_all(
            opts,
            &opts.url,
            &bind,
            &ctx.names,
            is_camera,
            connect_deadline,
            &attempted,
            &progress,
        );
        while let Some((i, took, r)) = results.next().await {
            match r {
                Ok((ws, _)) => {
                    let _ = setup_latency.record((took.as_nanos() as u64).max(1));
                    let src = bind[(2 * i + usize::from(!is_camera)) % bind.len()];
                    let (ctx, release) = (ctx.clone(), release_rx.clone());
                    tasks.push(tokio::spawn(client(ws, i, is_camera, src, ctx, release)));
                }
                Err(e) => *setup_errors.entry(format!("connect: {e}")).or_insert(0) += 1,
            }
        }
    }
    progress.finish();
    let setup_seconds = connect_started.elapsed().as_secs_f64();
    let clients = tasks.len() as u64;
    if clients == 0 {
        return Err(SignalError::NothingConnected(format!("{setup_errors:?}")));
    }

    // The drain, and the storm it starts.
    let before = opts.server_pid.map(ProcessSample::take);
    let load_before = crate::sysstat::cpu_seconds(std::process::id());
    let started = tokio::time::Instant::now();
    let _ = ctx.signalled.set(started);
    let signalled_ns = ctx.now_ns();
    ctx.tally(|t| t.signalled(signalled_ns));
    send_signal(storm.drain_pid, libc::SIGTERM)?;
    if let Some(after) = storm.kill_after {
        let pid = storm.drain_pid;
        // Gone by then (ESRCH) is fine: it drained by itself.
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = send_signal(pid, libc::SIGKILL);
        });
    }
    let deadline = started + storm.timeout;
    loop {
        let settled = ctx.tally.lock().map(|t| t.settled()).unwrap_or(clients);
        if settled >= clients {
            break;
        }
        if tokio::time::timeout_at(deadline, ctx.settled_now.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let after = opts.server_pid.map(ProcessSample::take);
    let load_after = crate::sysstat::cpu_seconds(std::process::id());
    let window = started.elapsed().as_secs_f64().max(1e-9);

    let _ = release_tx.send(true);
    let closing = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;

    let cpu = before
        .zip(after)
        .and_then(|(b, a)| a.cpu_seconds.zip(b.cpu_seconds))
        .map(|(a, b)| a - b);
    let report = ctx
        .tally
        .lock()
        .map(|t| t.report(clients, cpu))
        .unwrap_or_default();
    let rss_before = before.and_then(|s| s.rss_kb);
    let rss_after = after.and_then(|s| s.rss_kb);
    let server = opts.server_pid.map(|pid| ServerReport {
        pid,
        cpu_seconds: cpu.unwrap_or(0.0),
        cores_busy: cpu.unwrap_or(0.0) / window,
        relayed_per_cpu_second: None,
        responses_per_cpu_second: None,
        rss_kb_before: rss_before,
        rss_kb_after: rss_after,
        rss_bytes_per_flow: rss_before
            .zip(rss_after)
            .filter(|_| report.reconnected > 0)
            .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / report.reconnected as f64),
    });
    let mut errors = setup_errors.clone();
    for (k, v) in &report.errors {
        *errors.entry(format!("storm: {k}")).or_insert(0) += v;
    }
    Ok(Report {
        mode: "signal".into(),
        protocol: protocol_name(opts.protocol).into(),
        target: format!("{} → {}", opts.url, storm.reconnect_url),
        load: LoadShape {
            flows: n as u64,
            pps_per_flow: Some(0.0),
            window: None,
            payload_bytes: 0,
            planned_seconds: storm.timeout.as_secs_f64(),
            packets_per_flow: None,
            threads: opts.threads,
            refresh_seconds: None,
            churn_per_second: 0.0,
        },
        setup: Some(SetupReport {
            requested: 2 * n as u64,
            succeeded: clients,
            failed: 2 * n as u64 - clients,
            seconds: setup_seconds,
            per_second: clients as f64 / setup_seconds.max(1e-9),
            latency_us: Percentiles::from_ns(&setup_latency),
            errors: setup_errors,
        }),
        traffic: TrafficReport {
            seconds: window,
            ..TrafficReport::default()
        },
        server,
        kernel_udp: None,
        load_cpu_seconds: load_before.zip(load_after).map(|(b, a)| a - b),
        series: Vec::new(),
        latency_curve: Vec::new(),
        signal: Some(SignalReport {
            pairs: n as u64,
            negotiated: 0,
            watch_to_answer_us: Percentiles::default(),
            connections_held: report.reconnected,
            errors,
            storm: Some(report),
        }),
    })
}

fn send_signal(pid: u32, signal: libc::c_int) -> Result<(), SignalError> {
    let drain = |source| SignalError::Drain { pid, source };
    let pid_t = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| drain(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: kill(2) with a positive pid signals that one process; no memory is involved.
    if unsafe { libc::kill(pid_t, signal) } != 0 {
        return Err(drain(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    #[test]
    fn storm_time_runs_from_the_first_loss_to_the_last_greeting() {
        let mut t = Tally::default();
        t.signalled(1_000_000_000);
        assert!(t.lost("close 1001", 1_500_000_000));
        assert!(t.lost("close 1001", 1_400_000_000));
        t.greeted(1_400_000_000, 1_600_000_000);
        t.greeted(1_500_000_000, 2_400_000_000);
        let r = t.report(2, Some(0.002));
        assert_eq!((r.clients, r.lost, r.reconnected, r.failed), (2, 2, 2, 0));
        assert_eq!(r.lost_by.get("close 1001"), Some(&2));
        assert!((r.first_loss_seconds - 0.4).abs() < 1e-9, "{r:?}");
        assert!((r.storm_seconds - 1.0).abs() < 1e-9, "{r:?}");
        assert!((r.seconds_from_signal - 1.4).abs() < 1e-9, "{r:?}");
        assert_eq!(r.server_cpu_us_per_connect.map(|c| c.round()), Some(1000.0));
        assert_eq!(r.reconnect_us.count, 2);
        assert!(r.errors.is_empty());
    }

    #[test]
    fn every_client_not_greeted_again_is_a_failure() {
        let mut t = Tally::default();
        // Dropped before the drain: counted, and that client does not reconnect.
        assert!(!t.lost("eof without close", 5));
        t.signalled(10);
        assert!(t.lost("eof without close", 20));
        t.fail("reconnect: http 503 Service Unavailable".into());
        assert!(t.lost("close 1001", 30));
        t.greeted(30, 40);
        // Four clients: one lost early, one refused, one back, one never dropped by the drain.
        let r = t.report(4, None);
        assert_eq!((r.reconnected, r.failed, r.lost_before_drain), (1, 3, 1));
        assert_eq!(
            r.errors.get("not back within the storm's time bound"),
            Some(&1)
        );
        assert_eq!(r.server_cpu_us_per_connect, None);
        assert_eq!(t.settled(), 3);
    }

    #[test]
    fn endings_are_named_by_close_code_or_transport() {
        let close = |code: u16| {
            Some(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }))))
        };
        assert_eq!(ending(close(1001)).as_deref(), Some("close 1001"));
        assert_eq!(ending(None).as_deref(), Some("eof without close"));
        assert_eq!(ending(Some(Ok(Message::text("welcome")))), None);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            ending(Some(Err(tungstenite::Error::Io(reset)))).as_deref(),
            Some("io ConnectionReset")
        );
    }
}
