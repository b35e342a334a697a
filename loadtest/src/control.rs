//! The TURN control plane while data flows (`turn --refresh`, `turn --churn`): each flow refreshes
//! its allocation and binding before they expire, and churned flows release their allocation
//! (Refresh with LIFETIME 0), open a new socket (a new 5-tuple) and allocate again.
//!
//! One [`Control`] per flow, driven by the data-phase loop of [`crate::engine`]: it is fed the
//! datagrams that are not data, and ticked every few milliseconds for its timers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

use crate::driver::error_key;
use crate::proto::{AllocationHandshake, Step};
use crate::transport::Transport;

const INITIAL_RTO: Duration = Duration::from_millis(500);
const MAX_TRIES: u32 = 5;
/// A churned flow stops sending, then waits this long at most for its packets in flight.
const DRAIN: Duration = Duration::from_millis(250);
/// After a failed re-allocation, wait this long before the next try.
const BACKOFF: Duration = Duration::from_secs(1);
/// After a failed refresh, try again this soon (the allocation still has most of its lifetime).
const REFRESH_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum State {
    /// Allocation ready, data flowing.
    Live { next_refresh: Option<Instant> },
    /// Refresh (then binding) outstanding; data keeps flowing.
    Refreshing { sent_at: Instant, tries: u32 },
    /// Churn picked this flow: no new packets, waiting for those in flight.
    Draining { since: Instant },
    /// Refresh(0) outstanding.
    Releasing { sent_at: Instant, tries: u32 },
    /// A new allocation on a new socket is being made.
    Opening { sent_at: Instant, tries: u32 },
    /// Re-allocation failed; try again at `until`.
    Backoff { until: Instant },
}

/// What the control plane did over a run (summed over flows and workers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub refreshes: u64,
    pub refresh_failures: u64,
    /// Churned allocations released by the server (success or 437).
    pub released: u64,
    pub release_failures: u64,
    /// Replacement allocations made ready (Allocate + binding) during the data phase.
    pub reopened: u64,
    pub reopen_failures: u64,
    pub errors: BTreeMap<String, u64>,
}

impl ControlStats {
    pub fn merge(&mut self, o: ControlStats) {
        self.refreshes += o.refreshes;
        self.refresh_failures += o.refresh_failures;
        self.released += o.released;
        self.release_failures += o.release_failures;
        self.reopened += o.reopened;
        self.reopen_failures += o.reopen_failures;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }

    fn error(&mut self, key: String) {
        *self.errors.entry(key).or_insert(0) += 1;
    }
}

/// The parts of a flow the control plane acts on.
pub struct FlowIo<'a> {
    pub transport: &'a mut Transport,
    pub in_flight: &'a mut u32,
    pub registry: &'a Registry,
    pub token: Token,
    pub buffer: usize,
}

pub struct Control {
    handshake: Box<AllocationHandshake>,
    state: State,
    refresh: Option<Duration>,
}

impl Control {
    /// For a flow whose handshake is done; the first refresh is due at `first_refresh`.
    pub fn new(
        handshake: Box<AllocationHandshake>,
        refresh: Option<Duration>,
        first_refresh: Option<Instant>,
    ) -> Self {
        Self {
            handshake,
            state: State::Live {
                next_refresh: refresh.and(first_refresh),
            },
            refresh,
        }
    }

    /// Whether the flow may send data now.
    pub fn sending(&self) -> bool {
        matches!(self.state, State::Live { .. } | State::Refreshing { .. })
    }

    /// Whether churn may pick this flow (ready and idle on the control plane).
    pub fn churnable(&self) -> bool {
        matches!(self.state, State::Live { .. })
    }

    /// Churn: stop sending, then release and re-allocate.
    pub fn churn(&mut self, now: Instant) {
        if self.churnable() {
            self.state = State::Draining { since: now };
        }
    }

    /// The best-effort release at the end of the run, when an allocation may exist.
    pub fn teardown(&mut self) -> Option<Vec<u8>> {
        match self.state {
            State::Backoff { .. } => None,
            _ => Some(self.handshake.deallocate()),
        }
    }

    fn send(io: &mut FlowIo<'_>, req: &[u8], stats: &mut ControlStats) {
        if let Err(e) = io.transport.send(&[req]) {
            stats.error(format!("send: {}", e.kind()));
        }
    }

    /// Timers: refresh due, drain over, retransmissions, back-off over.
    pub fn tick(&mut self, now: Instant, io: &mut FlowIo<'_>, stats: &mut ControlStats) {
        match self.state {
            State::Live {
                next_refresh: Some(at),
            } if now >= at => {
                let req = self.handshake.refresh();
                Self::send(io, &req, stats);
                self.state = State::Refreshing {
                    sent_at: now,
                    tries: 1,
                };
            }
            State::Live { .. } => {}
            State::Draining { since } => {
                if *io.in_flight == 0 || now.duration_since(since) >= DRAIN {
                    let req = self.handshake.release();
                    Self::send(io, &req, stats);
                    self.state = State::Releasing {
                        sent_at: now,
                        tries: 1,
                    };
                }
            }
            State::Refreshing { sent_at, tries }
            | State::Releasing { sent_at, tries }
            | State::Opening { sent_at, tries } => {
                if now.duration_since(sent_at) < INITIAL_RTO * 2_u32.pow(tries - 1) {
                    return;
                }
                if tries < MAX_TRIES {
                    let req = self.handshake.last_request().to_vec();
                    Self::send(io, &req, stats);
                    let (sent_at, tries) = (now, tries + 1);
                    self.state = match self.state {
                        State::Refreshing { .. } => State::Refreshing { sent_at, tries },
                        State::Releasing { .. } => State::Releasing { sent_at, tries },
                        _ => State::Opening { sent_at, tries },
                    };
                    return;
                }
                match self.state {
                    State::Refreshing { .. } => {
                        stats.refresh_failures += 1;
                        stats.error("Refresh timeout".into());
                        self.state = State::Live {
                            next_refresh: Some(now + REFRESH_RETRY),
                        };
                    }
                    State::Releasing { .. } => {
                        // The server frees it at its lifetime; the flow moves on.
                        stats.release_failures += 1;
                        stats.error("Refresh(0) timeout".into());
                        self.reopen(now, io, stats);
                    }
                    _ => {
                        stats.reopen_failures += 1;
                        stats.error("Allocate timeout".into());
                        self.state = State::Backoff {
                            until: now + BACKOFF,
                        };
                    }
                }
            }
            State::Backoff { until } => {
                if now >= until {
                    self.reopen(now, io, stats);
                }
            }
        }
    }

    /// A datagram on this flow that was not data.
    pub fn on_packet(
        &mut self,
        now: Instant,
        packet: &[u8],
        io: &mut FlowIo<'_>,
        stats: &mut ControlStats,
    ) {
        if !matches!(
            self.state,
            State::Refreshing { .. } | State::Releasing { .. } | State::Opening { .. }
        ) {
            return;
        }
        match self.handshake.on_response(packet) {
            Ok(Step::Ignore) => {}
            Ok(Step::Send(req)) => {
                Self::send(io, &req, stats);
                self.state = match self.state {
                    State::Refreshing { .. } => State::Refreshing {
                        sent_at: now,
                        tries: 1,
                    },
                    State::Releasing { .. } => State::Releasing {
                        sent_at: now,
                        tries: 1,
                    },
                    _ => State::Opening {
                        sent_at: now,
                        tries: 1,
                    },
                };
            }
            Ok(Step::Ready { .. }) => {
                match self.state {
                    State::Refreshing { .. } => stats.refreshes += 1,
                    _ => stats.reopened += 1,
                }
                self.state = State::Live {
                    next_refresh: self.refresh.map(|r| now + r),
                };
            }
            Ok(Step::Released) => {
                stats.released += 1;
                self.reopen(now, io, stats);
            }
            Err(e) => {
                stats.error(error_key(&e));
                match self.state {
                    State::Refreshing { .. } => {
                        stats.refresh_failures += 1;
                        self.state = State::Live {
                            next_refresh: Some(now + REFRESH_RETRY),
                        };
                    }
                    State::Releasing { .. } => {
                        stats.release_failures += 1;
                        self.reopen(now, io, stats);
                    }
                    _ => {
                        stats.reopen_failures += 1;
                        self.state = State::Backoff {
                            until: now + BACKOFF,
                        };
                    }
                }
            }
        }
    }

    /// A new socket from the same source address, and a new allocation on it.
    fn reopen(&mut self, now: Instant, io: &mut FlowIo<'_>, stats: &mut ControlStats) {
        let fresh = match io.transport.reopen(io.buffer) {
            Ok(t) => t,
            Err(e) => {
                stats.reopen_failures += 1;
                stats.error(format!("socket: {}", e.kind()));
                self.state = State::Backoff {
                    until: now + BACKOFF,
                };
                return;
            }
        };
        io.transport.deregister(io.registry);
        *io.transport = fresh;
        if let Err(e) = io.transport.register(io.registry, io.token) {
            stats.reopen_failures += 1;
            stats.error(format!("register: {}", e.kind()));
            self.state = State::Backoff {
                until: now + BACKOFF,
            };
            return;
        }
        // What was in flight on the old socket is gone with it (counted as lost).
        *io.in_flight = 0;
        *self.handshake = self.handshake.renew();
        let req = self.handshake.start();
        Self::send(io, &req, stats);
        self.state = State::Opening {
            sent_at: now,
            tries: 1,
        };
    }
}

/// A small xorshift generator: which flow churn picks next (no cryptographic use).
#[derive(Debug, Clone)]
pub struct Picker(u64);

impl Picker {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n.max(1) as u64) as usize
    }
}
