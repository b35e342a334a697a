//! The signal series of DESIGN §4. Labels stay low-cardinality: frame types, results, reasons.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

const RELAY_KINDS: [&str; 3] = ["offer", "answer", "candidate"];

#[derive(Clone, Debug)]
pub struct Metrics {
    /// Open, authenticated WebSocket sessions.
    pub connections: IntGauge,
    /// `signal.max_connections`, so capacity alerts divide by what this process was given.
    pub connections_max: IntGauge,
    /// Upgrade and authentication outcomes: [`CONNECTION_RESULTS`].
    pub connections_total: IntCounterVec,
    /// Cameras published on this process.
    pub cameras_online: IntGauge,
    /// Viewer sessions on this process.
    pub viewers: IntGauge,
    /// Client frames by `type` and `result` (`ok` or an error code).
    pub messages_total: IntCounterVec,
    /// From a relayed frame's arrival at the sender's server to its hand-off to the receiver's
    /// socket (across replicas when Redis routes it).
    pub relay_latency: Histogram,
    pub auth_failures_total: IntCounterVec,
    pub backplane_errors_total: IntCounter,
    /// `messages_total{type, result="ok"}` of offer, answer and candidate, resolved once: the
    /// relay path counts every frame, and a label lookup hashes and locks each time.
    relayed_ok: [IntCounter; 3],
}

/// `iceway_signal_connections_total{result}`: every outcome, each a series from the start.
pub const CONNECTION_RESULTS: [&str; 13] = [
    "accepted",
    "resumed",
    "moved_in",
    "moved_away",
    "resume_expired",
    "unauthorized",
    "user_limit",
    "ip_limit",
    "process_limit",
    "rate_limited",
    "origin",
    "draining",
    "backplane_error",
];

/// `iceway_signal_auth_failures_total{reason}` besides a token's own
/// (`AppTokenError::REASONS`): no auth frame in time, another frame first, a refreshed token
/// for another identity.
pub const AUTH_FAILURES: [&str; 3] = ["timeout", "missing", "identity"];

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let messages_total = IntCounterVec::new(
            Opts::new(
                "iceway_signal_messages_total",
                "Client frames by type and result.",
            ),
            &["type", "result"],
        )?;
        let relayed_ok = RELAY_KINDS.map(|k| messages_total.with_label_values(&[k, "ok"]));
        let m = Self {
            relayed_ok,
            connections: IntGauge::new(
                "iceway_signal_connections",
                "Open authenticated WebSocket sessions.",
            )?,
            connections_max: IntGauge::new(
                "iceway_signal_connections_max",
                "The connections this process accepts at most (signal.max_connections).",
            )?,
            connections_total: IntCounterVec::new(
                Opts::new(
                    "iceway_signal_connections_total",
                    "WebSocket connections by outcome.",
                ),
                &["result"],
            )?,
            cameras_online: IntGauge::new(
                "iceway_signal_cameras_online",
                "Cameras published on this process.",
            )?,
            viewers: IntGauge::new("iceway_signal_viewers", "Viewer sessions on this process.")?,
            messages_total,
            relay_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "iceway_signal_relay_latency_seconds",
                    "Time to relay an offer, answer or candidate to its peer's socket.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ]),
            )?,
            auth_failures_total: IntCounterVec::new(
                Opts::new(
                    "iceway_signal_auth_failures_total",
                    "Refused authentications by reason.",
                ),
                &["reason"],
            )?,
            backplane_errors_total: IntCounter::new(
                "iceway_signal_backplane_errors_total",
                "Failed Redis operations and lost pub/sub connections.",
            )?,
        };
        // Series for every known label value before the first event, so dashboards and rate()
        // alerts see zeros rather than nothing.
        for result in CONNECTION_RESULTS {
            m.connections_total.with_label_values(&[result]);
        }
        for reason in AUTH_FAILURES
            .iter()
            .chain(iceway_auth::AppTokenError::REASONS.iter())
        {
            m.auth_failures_total.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connections_max.clone()))?;
        registry.register(Box::new(m.connections_total.clone()))?;
        registry.register(Box::new(m.cameras_online.clone()))?;
        registry.register(Box::new(m.viewers.clone()))?;
        registry.register(Box::new(m.messages_total.clone()))?;
        registry.register(Box::new(m.relay_latency.clone()))?;
        registry.register(Box::new(m.auth_failures_total.clone()))?;
        registry.register(Box::new(m.backplane_errors_total.clone()))?;
        Ok(m)
    }

    pub fn message(&self, kind: &str, result: &str) {
        if result == "ok"
            && let Some(i) = RELAY_KINDS.iter().position(|k| *k == kind)
        {
            self.relayed_ok[i].inc();
            return;
        }
        self.messages_total.with_label_values(&[kind, result]).inc();
    }

    pub fn connection(&self, result: &str) {
        debug_assert!(
            CONNECTION_RESULTS.contains(&result),
            "{result} is not in CONNECTION_RESULTS"
        );
        self.connections_total.with_label_values(&[result]).inc();
    }

    pub fn auth_failure(&self, reason: &str) {
        debug_assert!(
            AUTH_FAILURES.contains(&reason)
                || iceway_auth::AppTokenError::REASONS.contains(&reason),
            "{reason} is not a known auth-failure reason"
        );
        self.auth_failures_total.with_label_values(&[reason]).inc();
    }
}
