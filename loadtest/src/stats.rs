//! Latency histograms, per-interval time series and the report every mode produces.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::control::ControlStats;
use crate::sysstat::UdpCounters;

/// Latencies are recorded in nanoseconds, up to a minute, to three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// Per-interval histograms are coarser: they only feed the plots.
fn new_interval_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("static histogram bounds are valid")
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The latency distribution as (percentile, µs) points for the HTML plot.
pub fn latency_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Log-spaced towards the tail: 0, 50, 75, 87.5, ... up to 99.999.
    let mut out = Vec::new();
    let mut q = 0.0_f64;
    for _ in 0..40 {
        out.push((q * 100.0, h.value_at_quantile(q) as f64 / 1000.0));
        if q >= 0.99999 {
            break;
        }
        q = 1.0 - (1.0 - q) * 0.75;
    }
    out.push((100.0, h.max() as f64 / 1000.0));
    out
}

/// Counters for one time interval of the run.
pub struct Interval {
    pub sent: u64,
    pub received: u64,
    pub latency: Histogram<u64>,
}

/// A worker's traffic tallies, merged across workers at the end.
pub struct TrafficStats {
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    pub latency: Histogram<u64>,
    pub interval: Duration,
    pub intervals: Vec<Interval>,
    /// TURN refresh and churn during the data phase.
    pub control: ControlStats,
}

impl TrafficStats {
    pub fn new(interval: Duration) -> Self {
        Self {
            sent: 0,
            received: 0,
            send_errors: 0,
            latency: new_histogram(),
            interval,
            intervals: Vec::new(),
            control: ControlStats::default(),
        }
    }

    fn slot(&mut self, since_start: Duration) -> &mut Interval {
        let i = (since_start.as_nanos() / self.interval.as_nanos().max(1)) as usize;
        // The run is bounded in time, so this grows to a bounded length.
        while self.intervals.len() <= i {
            self.intervals.push(Interval {
                sent: 0,
                received: 0,
                latency: new_interval_histogram(),
            });
        }
        &mut self.intervals[i]
    }

    pub fn record_sent(&mut self, since_start: Duration, n: u64) {
        self.sent += n;
        self.slot(since_start).sent += n;
    }

    pub fn record_received(&mut self, since_start: Duration, rtt_ns: u64) {
        self.received += 1;
        let v = rtt_ns.max(1);
        let _ = self.latency.record(v.min(self.latency.high()));
        let slot = self.slot(since_start);
        slot.received += 1;
        let _ = slot.latency.record(v.min(slot.latency.high()));
    }

    pub fn merge(&mut self, other: TrafficStats) {
        self.sent += other.sent;
        self.received += other.received;
        self.send_errors += other.send_errors;
        self.control.merge(other.control);
        let _ = self.latency.add(&other.latency);
        for (i, iv) in other.intervals.into_iter().enumerate() {
            if self.intervals.len() <= i {
                self.intervals.push(iv);
            } else {
                self.intervals[i].sent += iv.sent;
                self.intervals[i].received += iv.received;
                let _ = self.intervals[i].latency.add(&iv.latency);
            }
        }
    }

    pub fn series(&self) -> Vec<SeriesPoint> {
        let secs = self.interval.as_secs_f64();
        self.intervals
            .iter()
            .enumerate()
            .map(|(i, iv)| SeriesPoint {
                t_s: (i as f64 + 1.0) * secs,
                sent_pps: iv.sent as f64 / secs,
                received_pps: iv.received as f64 / secs,
                p50_us: (!iv.latency.is_empty())
                    .then(|| iv.latency.value_at_quantile(0.5) as f64 / 1000.0),
                p99_us: (!iv.latency.is_empty())
                    .then(|| iv.latency.value_at_quantile(0.99) as f64 / 1000.0),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeriesPoint {
    pub t_s: f64,
    pub sent_pps: f64,
    pub received_pps: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Allocation (or connection) setup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupReport {
    pub requested: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// TURN: first Allocate sent → Allocate success (includes the 401 round trip).
    pub latency_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub send_errors: u64,
    pub seconds: f64,
    pub sent_per_second: f64,
    pub received_per_second: f64,
    /// TURN only: datagrams the server relayed towards the peer (as counted by the echo peer) and
    /// back to the clients; their sum is the server's work.
    pub relayed_to_peer: Option<u64>,
    pub relayed_to_client: Option<u64>,
    pub relayed_total: Option<u64>,
    pub relayed_per_second: Option<f64>,
    /// Round-trip time, client → server → peer → server → client (TURN) or request → response
    /// (STUN).
    pub latency_us: Percentiles,
    /// TURN with `--refresh` or `--churn`: what the control plane did while data flowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlReport>,
}

/// Refreshes and churn during the data phase (TURN).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ControlReport {
    pub refreshes: u64,
    pub refresh_failures: u64,
    /// Churned allocations the server released.
    pub released: u64,
    pub release_failures: u64,
    /// Replacement allocations made ready.
    pub reopened: u64,
    pub reopen_failures: u64,
    pub errors: BTreeMap<String, u64>,
}

impl From<&ControlStats> for ControlReport {
    fn from(c: &ControlStats) -> Self {
        Self {
            refreshes: c.refreshes,
            refresh_failures: c.refresh_failures,
            released: c.released,
            release_failures: c.release_failures,
            reopened: c.reopened,
            reopen_failures: c.reopen_failures,
            errors: c.errors.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    pub cpu_seconds: f64,
    /// CPU seconds per wall second over the measured window (1.0 = one core busy).
    pub cores_busy: f64,
    pub relayed_per_cpu_second: Option<f64>,
    pub responses_per_cpu_second: Option<f64>,
    pub rss_kb_before: Option<u64>,
    pub rss_kb_after: Option<u64>,
    /// RSS growth divided by the allocations (or connections) held, in bytes.
    pub rss_bytes_per_flow: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadShape {
    pub flows: u64,
    /// None: flood with a bounded window per flow.
    pub pps_per_flow: Option<f64>,
    pub window: Option<u32>,
    pub payload_bytes: usize,
    pub planned_seconds: f64,
    pub packets_per_flow: Option<u64>,
    pub threads: usize,
    /// TURN `--refresh`: seconds between refreshes of each allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_seconds: Option<f64>,
    /// TURN `--churn`: allocations replaced per second over all flows.
    #[serde(default)]
    pub churn_per_second: f64,
}

/// The signaling-specific part of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SignalReport {
    pub pairs: u64,
    pub negotiated: u64,
    /// Viewer's `watch` sent → camera received the relayed `answer` (PeerJS: OFFER → ANSWER).
    pub watch_to_answer_us: Percentiles,
    pub connections_held: u64,
    pub errors: BTreeMap<String, u64>,
    /// A reconnect storm's outcome (`--storm-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormReport>,
}

/// Every client dropped by one server at once and reconnecting to another.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StormReport {
    /// Clients connected (and greeted) before the drain.
    pub clients: u64,
    /// Sockets the drained server ended, by how ("close 1001", "reset", "eof", ...).
    pub lost: u64,
    pub lost_by: BTreeMap<String, u64>,
    /// Sockets that ended before the drain was signalled (each also counts as a failure).
    pub lost_before_drain: u64,
    /// Clients greeted again (`welcome` / `OPEN` / `bound`) by the second server.
    pub reconnected: u64,
    /// Clients not greeted again: a failed reconnect, or a socket never ended by the drain
    /// within the storm's time bound. Each client tries once; nothing is retried.
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Drain signalled → first socket lost.
    pub first_loss_seconds: f64,
    /// First socket lost → last client greeted again: how long the storm took.
    pub storm_seconds: f64,
    /// Drain signalled → last client greeted again.
    pub seconds_from_signal: f64,
    /// Per client: its socket lost → greeted again.
    pub reconnect_us: Percentiles,
    /// The second server's CPU from the drain signal to the last greeting.
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_us_per_connect: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub protocol: String,
    pub target: String,
    pub load: LoadShape,
    pub setup: Option<SetupReport>,
    pub traffic: TrafficReport,
    pub server: Option<ServerReport>,
    /// Delta of /proc/net/snmp Udp counters over the measured window (all sockets of this
    /// network namespace, the load tool's included).
    pub kernel_udp: Option<UdpCounters>,
    /// The load tool's own CPU seconds over the window: when it nears threads × seconds, the
    /// tool, not the server, was the bottleneck.
    pub load_cpu_seconds: Option<f64>,
    pub series: Vec<SeriesPoint>,
    pub latency_curve: Vec<(f64, f64)>,
    /// Signal mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_intervals() {
        let mut a = TrafficStats::new(Duration::from_millis(100));
        a.record_sent(Duration::from_millis(10), 3);
        a.record_received(Duration::from_millis(20), 50_000);
        let mut b = TrafficStats::new(Duration::from_millis(100));
        b.record_sent(Duration::from_millis(250), 2);
        b.record_received(Duration::from_millis(260), 70_000);
        a.merge(b);
        assert_eq!((a.sent, a.received), (5, 2));
        assert_eq!(a.intervals.len(), 3);
        let p = Percentiles::from_ns(&a.latency);
        assert_eq!(p.count, 2);
        assert!((p.max - 70.0).abs() < 0.1, "{p:?}");
        let series = a.series();
        assert_eq!(series[2].sent_pps, 20.0);
    }

    #[test]
    fn latency_curve_ends_at_max() {
        let mut h = new_histogram();
        for v in 1..=1000_u64 {
            h.record(v * 1000).expect("in range");
        }
        let c = latency_curve(&h);
        assert_eq!(c.last().map(|p| p.0), Some(100.0));
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
