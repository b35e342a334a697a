//! Runs a datagram load on several threads: optional control-plane setup per flow (TURN
//! allocations), a synchronised data phase measured against the server's CPU, then best-effort
//! teardown. Both `turn` and `stun` modes go through here.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Poll, Token};

use crate::batch::RecvBatch;
use crate::control::Control;
use crate::engine::{self, Flow, LoadPlan, Shared};
use crate::progress::Progress;
use crate::proto::{Framing, Handshake, HandshakeError, Step};
use crate::stats::{Percentiles, SetupReport, TrafficStats, new_histogram};
use crate::sysstat::{ProcessSample, UdpCounters};
use crate::transport::{StdTransport, Transport};

pub struct FlowSpec {
    pub socket: StdTransport,
    pub handshake: Option<Handshake>,
    pub framing: Framing,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub threads: usize,
    /// Handshakes in progress at once, over all threads.
    pub setup_concurrency: usize,
    pub setup_timeout: Duration,
    pub plan: LoadPlan,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

pub struct Outcome {
    pub setup: Option<SetupReport>,
    pub traffic: TrafficStats,
    pub window_seconds: f64,
    pub flows_ready: u64,
    pub server_before: Option<ProcessSample>,
    pub server_after: Option<ProcessSample>,
    /// Server RSS before any allocation was made and once all were.
    pub server_rss_setup: Option<(u64, u64)>,
    pub kernel_udp: Option<UdpCounters>,
    pub load_cpu_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("socket I/O: {0}")]
    Io(#[from] io::Error),
    #[error("a worker thread panicked")]
    WorkerPanicked,
    #[error("no flow could be set up: {0}")]
    NothingReady(String),
}

enum Phase {
    SetupDone,
    DataDone,
}

struct SetupResult {
    ready: Vec<bool>,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    seconds: f64,
}

pub fn run(flows: Vec<FlowSpec>, cfg: &DriverConfig) -> Result<Outcome, DriverError> {
    let threads = cfg.threads.clamp(1, flows.len().max(1));
    let total = flows.len();
    let has_setup = flows.iter().any(|f| f.handshake.is_some());
    let shared = Arc::new(Shared::new());
    let setup_done = Arc::new(AtomicU64::new(0));
    let start_data = Arc::new(Barrier::new(threads + 1));
    let start_teardown = Arc::new(Barrier::new(threads + 1));
    let (tx, rx) = mpsc::channel::<Phase>();

    let mut groups: Vec<Vec<FlowSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, f) in flows.into_iter().enumerate() {
        groups[i % threads].push(f);
    }
    let rss_before_setup = cfg.server_pid.and_then(crate::sysstat::rss_kb);
    let per_thread_concurrency = (cfg.setup_concurrency / threads).max(1);
    let mut handles = Vec::new();
    for (t, group) in groups.into_iter().enumerate() {
        let (shared, setup_done, b1, b2, tx) = (
            shared.clone(),
            setup_done.clone(),
            start_data.clone(),
            start_teardown.clone(),
            tx.clone(),
        );
        let cfg = cfg.clone();
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                worker(
                    group,
                    &cfg,
                    per_thread_concurrency,
                    &shared,
                    &setup_done,
                    &b1,
                    &b2,
                    &tx,
                )
            })?;
        handles.push(h);
    }
    drop(tx);

    let progress = Progress::new(cfg.progress, total as u64, cfg.plan.duration);
    let setup_started = Instant::now();
    // Every worker reaches both barriers whatever happens, so these waits end.
    wait_for(&rx, threads, &Phase::SetupDone, || {
        progress.setup(setup_done.load(Ordering::Relaxed))
    });
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    let rss_after_setup = cfg.server_pid.and_then(crate::sysstat::rss_kb);
    let server_before = cfg.server_pid.map(ProcessSample::take);
    let kernel_before = UdpCounters::read();
    let load_before = crate::sysstat::cpu_seconds(std::process::id());
    let window_start = Instant::now();
    progress.start_traffic();
    tracing::info!(
        ready = setup_done.load(Ordering::Relaxed),
        flows = total,
        "data phase started"
    );
    start_data.wait();
    wait_for(&rx, threads, &Phase::DataDone, || {
        progress.traffic(
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        )
    });
    let window_seconds = window_start.elapsed().as_secs_f64();
    tracing::info!(seconds = window_seconds, "data phase done");
    let server_after = cfg.server_pid.map(ProcessSample::take);
    let kernel_after = UdpCounters::read();
    let load_after = crate::sysstat::cpu_seconds(std::process::id());
    progress.finish();
    start_teardown.wait();

    let mut traffic = TrafficStats::new(cfg.plan.interval);
    let mut setup_latency = new_histogram();
    let mut errors = BTreeMap::new();
    let mut ready = 0_u64;
    let mut first_error = None;
    let mut setup_phase_seconds: f64 = 0.0;
    for h in handles {
        let (setup, data) = h.join().map_err(|_| DriverError::WorkerPanicked)?;
        match setup {
            Ok(s) => {
                ready += s.ready.iter().filter(|r| **r).count() as u64;
                let _ = setup_latency.add(&s.latency);
                for (k, v) in s.errors {
                    *errors.entry(k).or_insert(0) += v;
                }
                setup_phase_seconds = setup_phase_seconds.max(s.seconds);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        match data {
            Ok(t) => traffic.merge(t),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(DriverError::Io(io::Error::other(e)));
    }
    if ready == 0 && total > 0 {
        let why = errors
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DriverError::NothingReady(why));
    }
    let setup = has_setup.then(|| {
        let seconds = if setup_phase_seconds > 0.0 {
            setup_phase_seconds
        } else {
            setup_seconds
        };
        SetupReport {
            requested: total as u64,
            succeeded: ready,
            failed: total as u64 - ready,
            seconds,
            per_second: ready as f64 / seconds.max(1e-9),
            latency_us: Percentiles::from_ns(&setup_latency),
            errors,
        }
    });
    Ok(Outcome {
        setup,
        traffic,
        window_seconds,
        flows_ready: ready,
        server_before,
        server_after,
        server_rss_setup: rss_before_setup.zip(rss_after_setup),
        kernel_udp: kernel_before
            .zip(kernel_after)
            .map(|(before, after)| after.delta(&before)),
        load_cpu_seconds: load_before.zip(load_after).map(|(b, a)| a - b),
    })
}

fn wait_for(rx: &mpsc::Receiver<Phase>, threads: usize, phase: &Phase, mut tick: impl FnMut()) {
    let mut seen = 0;
    while seen < threads {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(p) if std::mem::discriminant(&p) == std::mem::discriminant(phase) => seen += 1,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => tick(),
            // All workers gone: nothing more will arrive.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

type WorkerResult = (
    Result<SetupResult, io::Error>,
    Result<TrafficStats, io::Error>,
);

#[allow(clippy::too_many_arguments)]
fn worker(
    group: Vec<FlowSpec>,
    cfg: &DriverConfig,
    concurrency: usize,
    shared: &Shared,
    setup_done: &AtomicU64,
    start_data: &Barrier,
    start_teardown: &Barrier,
    tx: &mpsc::Sender<Phase>,
) -> WorkerResult {
    let mut sockets = Vec::with_capacity(group.len());
    let mut handshakes = Vec::with_capacity(group.len());
    let mut framings = Vec::with_capacity(group.len());
    for f in group {
        sockets.push(Transport::from_std(f.socket));
        handshakes.push(f.handshake);
        framings.push(f.framing);
    }
    let setup = setup_phase(
        &mut sockets,
        &mut handshakes,
        concurrency,
        cfg.setup_timeout,
        setup_done,
    );
    let _ = tx.send(Phase::SetupDone);
    start_data.wait();

    let data = match &setup {
        Ok(s) => {
            let mut flows = Vec::new();
            let mut owners = Vec::new();
            let controlled = cfg.plan.refresh.is_some() || cfg.plan.churn_per_flow > 0.0;
            let ready = s.ready.iter().filter(|r| **r).count().max(1);
            let data_start = Instant::now();
            for (i, (socket, framing)) in sockets.into_iter().zip(framings).enumerate() {
                if s.ready[i] {
                    let mut flow = Flow::new(socket, framing);
                    if controlled {
                        if let Some(Handshake::Turn(h)) = handshakes[i].take() {
                            // First refreshes spread evenly over one refresh interval.
                            let first = cfg.plan.refresh.map(|r| {
                                data_start + r.mul_f64((flows.len() as f64 + 0.5) / ready as f64)
                            });
                            flow.control = Some(Control::new(h, cfg.plan.refresh, first));
                        }
                    }
                    flows.push(flow);
                    owners.push(i);
                }
            }
            let r = engine::run(&mut flows, &cfg.plan, shared);
            let _ = tx.send(Phase::DataDone);
            start_teardown.wait();
            for (f, i) in flows.iter_mut().zip(owners) {
                let req = match f.control.as_mut() {
                    Some(c) => c.teardown(),
                    None => handshakes[i].as_mut().and_then(|h| h.deallocate()),
                };
                if let Some(req) = req {
                    // Best-effort: the server frees the allocation at its lifetime anyway.
                    let _ = f.transport.send(&[&req]);
                }
            }
            r
        }
        Err(_) => {
            let _ = tx.send(Phase::DataDone);
            start_teardown.wait();
            Ok(TrafficStats::new(cfg.plan.interval))
        }
    };
    (setup, data)
}

#[derive(Clone, Copy)]
enum SetupState {
    Waiting,
    Active {
        started: Instant,
        sent_at: Instant,
        tries: u32,
        allocated: bool,
    },
    Ready,
    Failed,
}

const INITIAL_RTO: Duration = Duration::from_millis(500);
const MAX_TRIES: u32 = 5;

fn setup_phase(
    sockets: &mut [Transport],
    handshakes: &mut [Option<Handshake>],
    concurrency: usize,
    timeout: Duration,
    setup_done: &AtomicU64,
) -> io::Result<SetupResult> {
    let n = sockets.len();
    let mut result = SetupResult {
        ready: vec![false; n],
        latency: new_histogram(),
        errors: BTreeMap::new(),
        seconds: 0.0,
    };
    let mut state: Vec<SetupState> = handshakes
        .iter()
        .map(|h| {
            if h.is_some() {
                SetupState::Waiting
            } else {
                SetupState::Ready
            }
        })
        .collect();
    for (i, s) in state.iter().enumerate() {
        if matches!(s, SetupState::Ready) {
            result.ready[i] = true;
        }
    }
    if handshakes.iter().all(|h| h.is_none()) {
        establish(sockets, timeout, &mut result)?;
        return Ok(result);
    }
    let mut poll = Poll::new()?;
    for (i, s) in sockets.iter_mut().enumerate() {
        s.register(poll.registry(), Token(i))?;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut next_to_start = 0;
    let mut active = 0;
    let mut finished = state
        .iter()
        .filter(|s| matches!(s, SetupState::Ready))
        .count();
    let mut events = Events::with_capacity(1024);
    let mut rb = RecvBatch::new();
    let fail = |result: &mut SetupResult, why: String| {
        *result.errors.entry(why).or_insert(0) += 1;
    };

    while finished < n && Instant::now() < deadline {
        while active < concurrency && next_to_start < n {
            let i = next_to_start;
            next_to_start += 1;
            // A flow whose TLS handshake already failed is not started.
            if !matches!(state[i], SetupState::Waiting) {
                continue;
            }
            let Some(h) = handshakes[i].as_mut() else {
                continue;
            };
            let req = h.start();
            let now = Instant::now();
            if let Err(e) = sockets[i].send(&[&req]) {
                fail(&mut result, format!("send: {}", e.kind()));
                state[i] = SetupState::Failed;
                finished += 1;
                continue;
            }
            state[i] = SetupState::Active {
                started: now,
                sent_at: now,
                tries: 1,
                allocated: false,
            };
            active += 1;
        }
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if ev.is_writable() {
                let _ = sockets[i].flush();
            }
            let mut packets: Vec<Vec<u8>> = Vec::new();
            let drained = match sockets[i].drain(&mut rb, |p| packets.push(p.to_vec())) {
                Ok(d) => d,
                Err(e) => {
                    // Waiting flows' TLS handshakes run too (all sockets are polled).
                    let was_active = matches!(state[i], SetupState::Active { .. });
                    if was_active || matches!(state[i], SetupState::Waiting) {
                        fail(&mut result, transport_key(&e));
                        state[i] = SetupState::Failed;
                        active -= usize::from(was_active);
                        finished += 1;
                    }
                    continue;
                }
            };
            if drained.refused && packets.is_empty() {
                if matches!(state[i], SetupState::Active { .. }) {
                    fail(&mut result, "connection refused".into());
                    state[i] = SetupState::Failed;
                    active -= 1;
                    finished += 1;
                }
                continue;
            }
            for packet in &packets {
                let SetupState::Active {
                    started,
                    tries,
                    allocated,
                    ..
                } = state[i]
                else {
                    break;
                };
                let Some(h) = handshakes[i].as_mut() else {
                    break;
                };
                let step = h.on_response(packet);
                let now = Instant::now();
                let mut record_alloc = |h: &Handshake| {
                    if !allocated && h.allocated() {
                        let _ = result
                            .latency
                            .record((now.duration_since(started).as_nanos() as u64).max(1));
                        true
                    } else {
                        allocated
                    }
                };
                match step {
                    Ok(Step::Ignore | Step::Released) => {}
                    Ok(Step::Send(req)) => {
                        let allocated = record_alloc(h);
                        let _ = sockets[i].send(&[&req]);
                        state[i] = SetupState::Active {
                            started,
                            sent_at: now,
                            tries,
                            allocated,
                        };
                    }
                    Ok(Step::Ready { .. }) => {
                        record_alloc(h);
                        state[i] = SetupState::Ready;
                        result.ready[i] = true;
                        active -= 1;
                        finished += 1;
                        setup_done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        fail(&mut result, error_key(&e));
                        state[i] = SetupState::Failed;
                        active -= 1;
                        finished += 1;
                    }
                }
            }
        }
        let now = Instant::now();
        for i in 0..n {
            if let SetupState::Active {
                started,
                sent_at,
                tries,
                allocated,
            } = state[i]
            {
                if now.duration_since(sent_at) < INITIAL_RTO * 2_u32.pow(tries - 1) {
                    continue;
                }
                if tries >= MAX_TRIES {
                    fail(&mut result, "timeout".into());
                    state[i] = SetupState::Failed;
                    active -= 1;
                    finished += 1;
                    continue;
                }
                if let Some(h) = handshakes[i].as_ref() {
                    // A full buffer is a lost retransmission; anything else (a TLS handshake
                    // past its deadline) ends the attempt.
                    match sockets[i].send(&[h.last_request()]) {
                        Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                            fail(&mut result, transport_key(&e));
                            state[i] = SetupState::Failed;
                            active -= 1;
                            finished += 1;
                            continue;
                        }
                        _ => {}
                    }
                }
                state[i] = SetupState::Active {
                    started,
                    sent_at: now,
                    tries: tries + 1,
                    allocated,
                };
            }
        }
    }
    for s in state.iter_mut() {
        if matches!(s, SetupState::Waiting | SetupState::Active { .. }) {
            fail(&mut result, "setup timeout".into());
            *s = SetupState::Failed;
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    for s in sockets.iter_mut() {
        s.deregister(poll.registry());
    }
    Ok(result)
}

/// Flows without a control-plane handshake (STUN): their TLS handshakes finish here, so the
/// data window measures traffic, not handshakes. UDP and TCP have nothing to wait for.
fn establish(
    sockets: &mut [Transport],
    timeout: Duration,
    result: &mut SetupResult,
) -> io::Result<()> {
    let mut pending: Vec<usize> = (0..sockets.len())
        .filter(|&i| !sockets[i].established())
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let mut poll = Poll::new()?;
    for (i, s) in sockets.iter_mut().enumerate() {
        s.register(poll.registry(), Token(i))?;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let mut events = Events::with_capacity(1024);
    let mut rb = RecvBatch::new();
    let fail = |result: &mut SetupResult, i: usize, why: String| {
        result.ready[i] = false;
        *result.errors.entry(why).or_insert(0) += 1;
    };
    while !pending.is_empty() && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            // Nothing was sent yet, so nothing but the handshake comes back.
            if let Err(e) = sockets[i].drain(&mut rb, |_| {}) {
                if result.ready[i] {
                    fail(result, i, transport_key(&e));
                }
            }
        }
        // Flushing also fails handshakes past their deadline.
        pending.retain(|&i| {
            if !result.ready[i] {
                return false;
            }
            match sockets[i].flush() {
                Ok(()) => !sockets[i].established(),
                Err(e) => {
                    fail(result, i, transport_key(&e));
                    false
                }
            }
        });
    }
    for i in pending {
        fail(result, i, "setup timeout".into());
    }
    result.seconds = started.elapsed().as_secs_f64();
    for s in sockets.iter_mut() {
        s.deregister(poll.registry());
    }
    Ok(())
}

/// OS errors by kind ("transport: connection reset"); the transport's own (TLS alerts,
/// deadlines, a closed stream) by what they say.
fn transport_key(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => format!("transport: {inner}"),
        None => format!("transport: {}", e.kind()),
    }
}

pub(crate) fn error_key(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Refused { method, code, .. } => format!("{method} {code}"),
        HandshakeError::NoCredentials => "credentials required".into(),
        HandshakeError::Malformed(_) => "malformed response".into(),
        HandshakeError::NoRelayedAddress => "no relayed address".into(),
        HandshakeError::TooManyRounds => "too many auth rounds".into(),
    }
}
