//! The data phase shared by every datagram mode: one thread drives many flows (a flow is one
//! client socket with its framing), flooding with a bounded window or pacing at a fixed rate, and
//! measures round-trip times from the stamp each packet carries.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::batch::{BATCH, MAX_DATAGRAM, RecvBatch};
use crate::control::{Control, FlowIo, Picker};
use crate::proto::{Framing, Stamp};
use crate::stats::TrafficStats;
use crate::transport::Transport;

/// How packets are offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Keep `window` packets in flight per flow; each reply releases the next packet.
    Flood { window: u32 },
    /// A fixed rate per flow, spread evenly over the flows.
    Paced { pps: f64 },
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub pace: Pace,
    pub payload: usize,
    pub duration: Duration,
    pub packets_per_flow: Option<u64>,
    /// After sending stops, how long to wait for packets still in flight.
    pub drain: Duration,
    /// Flood: a flow with no reply for this long is presumed to have lost its window, which is
    /// refilled so one loss does not stall it for the rest of the run.
    pub loss_timeout: Duration,
    pub interval: Duration,
    /// TURN: refresh each allocation (and its binding) this often while data flows.
    pub refresh: Option<Duration>,
    /// TURN: allocations released and replaced per second, per flow (the CLI's `--churn`
    /// divided by the number of allocations); 0 for none.
    pub churn_per_flow: f64,
}

/// Kernel buffer request for sockets opened during the data phase (churn).
const SOCKET_BUFFER: usize = 1 << 20;
/// How often the control plane's timers are looked at.
const CONTROL_TICK: Duration = Duration::from_millis(10);

/// Counters the progress display reads while workers run.
#[derive(Debug)]
pub struct Shared {
    pub epoch: Instant,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Flow {
    pub transport: Transport,
    pub framing: Framing,
    /// TURN with refresh or churn: the allocation's control plane.
    pub control: Option<Control>,
    seq: u32,
    in_flight: u32,
    last_progress: Instant,
    sent: u64,
    received: u64,
}

impl Flow {
    pub fn new(transport: Transport, framing: Framing) -> Self {
        Self {
            transport,
            framing,
            control: None,
            seq: 0,
            in_flight: 0,
            last_progress: Instant::now(),
            sent: 0,
            received: 0,
        }
    }
}

/// Scratch space for building one batch of outgoing packets.
struct SendScratch {
    buf: Vec<u8>,
    lens: Vec<usize>,
}

impl SendScratch {
    fn new() -> Self {
        Self {
            buf: vec![0; BATCH * MAX_DATAGRAM],
            lens: Vec::with_capacity(BATCH),
        }
    }
}

/// Sends up to `n` packets on one flow; returns how many left.
fn send_on(
    flow: &mut Flow,
    n: u32,
    plan: &LoadPlan,
    shared: &Shared,
    scratch: &mut SendScratch,
    budget_left: &mut Option<u64>,
) -> io::Result<u32> {
    let mut n = n.min(BATCH as u32);
    if flow.control.as_ref().is_some_and(|c| !c.sending()) {
        return Ok(0);
    }
    if let Some(b) = budget_left {
        n = n.min((*b).min(u32::MAX as u64) as u32);
    }
    if n == 0 {
        return Ok(0);
    }
    let now_ns = shared.now_ns();
    scratch.lens.clear();
    for i in 0..n as usize {
        let stamp = Stamp {
            seq: flow.seq.wrapping_add(i as u32),
            sent_ns: now_ns,
        };
        let len = flow.framing.encode(
            stamp,
            plan.payload,
            &mut scratch.buf[i * MAX_DATAGRAM..(i + 1) * MAX_DATAGRAM],
        );
        scratch.lens.push(len);
    }
    let packets: Vec<&[u8]> = scratch
        .lens
        .iter()
        .enumerate()
        .map(|(i, len)| &scratch.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len])
        .collect();
    let sent = match flow.transport.send(&packets) {
        Ok(s) => s as u32,
        // A full socket buffer under flood is the same as loss on the wire: the packet is
        // counted as not sent and the window refills on the next reply or timeout.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    flow.seq = flow.seq.wrapping_add(sent);
    flow.sent += sent as u64;
    flow.in_flight += sent;
    if let Some(b) = budget_left {
        *b -= sent as u64;
    }
    Ok(sent)
}

/// Runs the data phase on `flows` until the plan's duration or packet budget is spent, then
/// drains. Returns this worker's tallies; sent = received + lost holds per flow.
pub fn run(flows: &mut [Flow], plan: &LoadPlan, shared: &Shared) -> io::Result<TrafficStats> {
    let mut stats = TrafficStats::new(plan.interval);
    if flows.is_empty() {
        return Ok(stats);
    }
    let mut poll = Poll::new()?;
    for (i, f) in flows.iter_mut().enumerate() {
        f.transport.register(poll.registry(), Token(i))?;
    }
    let mut budgets: Vec<Option<u64>> = vec![plan.packets_per_flow; flows.len()];
    let mut events = Events::with_capacity(1024);
    let mut rb = RecvBatch::new();
    let mut scratch = SendScratch::new();
    let start = Instant::now();
    let send_end = start + plan.duration;
    let mut drain_deadline: Option<Instant> = None;
    let n_flows = flows.len() as u64;
    // Paced: the g-th packet of the whole worker goes to flow g % n at start + g / total_rate.
    let mut paced_next: u64 = 0;
    let mut last_loss_scan = start;
    let mut reported_sent = 0;
    let mut reported_received = 0;
    let has_control = flows.iter().any(|f| f.control.is_some());
    let mut last_control_tick = start;
    let mut churn_started: u64 = 0;
    let mut picker =
        Picker::new(0x9E37_79B9_7F4A_7C15 ^ (n_flows << 32) ^ start.elapsed().as_nanos() as u64);
    let mut control_packets: Vec<Vec<u8>> = Vec::new();

    if let Pace::Flood { window } = plan.pace {
        for (i, f) in flows.iter_mut().enumerate() {
            let before = f.sent;
            send_on(f, window, plan, shared, &mut scratch, &mut budgets[i])?;
            stats.record_sent(start.elapsed(), f.sent - before);
        }
    }

    loop {
        let now = Instant::now();
        let exhausted = budgets.iter().all(|b| *b == Some(0));
        let sending = now < send_end && !exhausted && !shared.stop.load(Ordering::Relaxed);
        if !sending {
            let deadline = *drain_deadline.get_or_insert(now + plan.drain);
            let in_flight: u64 = flows.iter().map(|f| f.in_flight as u64).sum();
            if in_flight == 0 || now >= deadline {
                break;
            }
        }

        if has_control && now.duration_since(last_control_tick) >= CONTROL_TICK {
            last_control_tick = now;
            if sending && plan.churn_per_flow > 0.0 {
                // Churn picks flows at random; a flow already busy is passed over for the next.
                let due = (now.duration_since(start).as_secs_f64()
                    * plan.churn_per_flow
                    * n_flows as f64) as u64;
                let mut round = 0;
                while churn_started < due && round < 64 {
                    round += 1;
                    churn_started += 1;
                    let first = picker.below(flows.len());
                    if let Some(k) = (0..flows.len())
                        .map(|d| (first + d) % flows.len())
                        .find(|&k| flows[k].control.as_ref().is_some_and(|c| c.churnable()))
                    {
                        if let Some(c) = flows[k].control.as_mut() {
                            c.churn(now);
                        }
                    }
                }
            }
            // After the sending window only what is under way finishes; nothing new starts.
            for (i, f) in flows.iter_mut().enumerate() {
                let Some(c) = f.control.as_mut() else {
                    continue;
                };
                if !sending && c.sending() {
                    continue;
                }
                let mut io = FlowIo {
                    transport: &mut f.transport,
                    in_flight: &mut f.in_flight,
                    registry: poll.registry(),
                    token: Token(i),
                    buffer: SOCKET_BUFFER,
                };
                c.tick(now, &mut io, &mut stats.control);
            }
        }

        let mut timeout = Duration::from_millis(20);
        if has_control {
            timeout = timeout.min(CONTROL_TICK);
        }
        if sending {
            match plan.pace {
                Pace::Paced { pps } => {
                    let total_rate = pps * n_flows as f64;
                    let due = (now.duration_since(start).as_secs_f64() * total_rate) as u64;
                    // Cap one round so receiving is not starved when the worker falls behind.
                    let until = due.min(paced_next + 4 * BATCH as u64);
                    while paced_next < until {
                        let i = (paced_next % n_flows) as usize;
                        let before = flows[i].sent;
                        match send_on(
                            &mut flows[i],
                            1,
                            plan,
                            shared,
                            &mut scratch,
                            &mut budgets[i],
                        ) {
                            Ok(_) => {}
                            Err(_) => stats.send_errors += 1,
                        }
                        stats.record_sent(now.duration_since(start), flows[i].sent - before);
                        paced_next += 1;
                    }
                    // Packet g is due once floor(t * rate) reaches g + 1.
                    let next_at =
                        start + Duration::from_secs_f64((paced_next + 1) as f64 / total_rate);
                    timeout = next_at.saturating_duration_since(Instant::now());
                }
                Pace::Flood { window } => {
                    if now.duration_since(last_loss_scan) >= plan.loss_timeout / 4 {
                        last_loss_scan = now;
                        for (i, f) in flows.iter_mut().enumerate() {
                            if now.duration_since(f.last_progress) >= plan.loss_timeout {
                                // Presume the window lost and refill it; late replies still
                                // count as received.
                                f.in_flight = 0;
                                f.last_progress = now;
                                let before = f.sent;
                                if send_on(f, window, plan, shared, &mut scratch, &mut budgets[i])
                                    .is_err()
                                {
                                    stats.send_errors += 1;
                                }
                                stats.record_sent(now.duration_since(start), f.sent - before);
                            }
                        }
                    }
                    timeout = plan.loss_timeout / 4;
                }
            }
        } else if let Some(d) = drain_deadline {
            timeout = d.saturating_duration_since(now).min(timeout);
        }

        poll.poll(&mut events, Some(timeout))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(f) = flows.get_mut(i) else { continue };
            if ev.is_writable() {
                f.transport.flush()?;
            }
            if !ev.is_readable() {
                continue;
            }
            // Edge-triggered: drain everything waiting.
            let since = start.elapsed();
            let mut replies = 0_u32;
            let (framing, sent, received) = (&f.framing, f.sent, &mut f.received);
            let controlled = f.control.is_some();
            f.transport.drain(&mut rb, |p| {
                if let Some(stamp) = framing.decode(p) {
                    if *received < sent {
                        *received += 1;
                        replies += 1;
                        let now_ns = shared.now_ns();
                        stats.record_received(since, now_ns.saturating_sub(stamp.sent_ns));
                    }
                } else if controlled {
                    control_packets.push(p.to_vec());
                }
            })?;
            if let Some(c) = f.control.as_mut() {
                let now = Instant::now();
                for p in control_packets.drain(..) {
                    let mut io = FlowIo {
                        transport: &mut f.transport,
                        in_flight: &mut f.in_flight,
                        registry: poll.registry(),
                        token: Token(i),
                        buffer: SOCKET_BUFFER,
                    };
                    c.on_packet(now, &p, &mut io, &mut stats.control);
                }
            }
            if replies > 0 {
                f.in_flight = f.in_flight.saturating_sub(replies);
                f.last_progress = Instant::now();
                let still_sending = Instant::now() < send_end
                    && !shared.stop.load(Ordering::Relaxed)
                    && budgets[i] != Some(0);
                if let (Pace::Flood { window }, true) = (plan.pace, still_sending) {
                    let want = window.saturating_sub(f.in_flight);
                    let before = f.sent;
                    if send_on(f, want, plan, shared, &mut scratch, &mut budgets[i]).is_err() {
                        stats.send_errors += 1;
                    }
                    stats.record_sent(since, f.sent - before);
                }
            }
        }
        shared
            .sent
            .fetch_add(stats.sent - reported_sent, Ordering::Relaxed);
        shared
            .received
            .fetch_add(stats.received - reported_received, Ordering::Relaxed);
        reported_sent = stats.sent;
        reported_received = stats.received;
    }
    for f in flows.iter_mut() {
        f.transport.deregister(poll.registry());
    }
    Ok(stats)
}
