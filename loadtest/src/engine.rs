//! The data phase shared by every datagram mode: one thread drives many flows (a flow is one
//! client socket with its framing), flooding with a bounded window or pacing at a fixed rate, and
//! measures round-trip times from the stamp each packet carries.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::batch::{BATCH, MAX_DATAGRAM, RecvBatch};
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
}

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

        let mut timeout = Duration::from_millis(20);
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
            f.transport.drain(&mut rb, |p| {
                if let Some(stamp) = framing.decode(p) {
                    if *received < sent {
                        *received += 1;
                        replies += 1;
                        let now_ns = shared.now_ns();
                        stats.record_received(since, now_ns.saturating_sub(stamp.sent_ns));
                    }
                }
            })?;
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
