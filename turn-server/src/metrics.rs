//! The Prometheus series of DESIGN §4 for turn. No label carries a user, address or session.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    exponential_buckets,
};

use crate::policy::QuotaError;
use crate::proto::server::StunError;

#[derive(Clone)]
pub struct Metrics {
    pub allocations: IntGauge,
    pub allocations_total: IntCounterVec,
    pub allocation_lifetime: Histogram,
    pub permissions: IntGauge,
    pub channels: IntGauge,
    pub relayed_bytes: IntCounterVec,
    pub relayed_packets: IntCounterVec,
    pub requests: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub peer_denied: IntCounter,
    pub quota_rejections: IntCounterVec,
    pub binding_requests: IntCounter,
    pub stream_connections: IntGauge,
    pub stream_rejected: IntCounterVec,
    /// Ports in the relay range: allocations over it is the relay-port utilisation.
    pub relay_ports: IntGauge,
    /// Handles resolved once, so the data path's periodic flush does no label lookup.
    pub to_peer_bytes: IntCounter,
    pub to_peer_packets: IntCounter,
    pub to_client_bytes: IntCounter,
    pub to_client_packets: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// `iceway_turn_allocations_total{result}`.
pub const ALLOCATION_RESULTS: [&str; 3] = ["ok", "quota", "error"];
/// `iceway_turn_requests_total{method}`.
pub const TURN_METHODS: [&str; 5] = [
    "allocate",
    "refresh",
    "create_permission",
    "channel_bind",
    "other",
];
/// `iceway_turn_auth_failures_total{reason}` found by the server itself; a credential that
/// does not verify adds its own reason (`CredentialError::VERIFY_REASONS`).
pub const AUTH_FAILURES: [&str; 4] = [
    "stale_nonce",
    "bad_integrity",
    "wrong_credentials",
    "unknown_user",
];

/// Whether `reason` is one the auth-failure series was initialised with.
pub fn known_auth_failure(reason: &str) -> bool {
    AUTH_FAILURES.contains(&reason)
        || iceway_auth::CredentialError::VERIFY_REASONS.contains(&reason)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let m = Self::uninitialised()?;
        // Every known label value has its series from the start, so dashboards and rate()
        // alerts see zeros rather than nothing before the first event.
        for result in ALLOCATION_RESULTS {
            m.allocations_total.with_label_values(&[result]);
        }
        for kind in [QuotaError::User, QuotaError::Source, QuotaError::Total] {
            m.quota_rejections.with_label_values(&[kind.kind()]);
        }
        for reason in AUTH_FAILURES
            .iter()
            .chain(iceway_auth::CredentialError::VERIFY_REASONS.iter())
        {
            m.auth_failures.with_label_values(&[reason]);
        }
        let results = ["ok", "dropped"]
            .into_iter()
            .chain(StunError::ALL.iter().map(|e| e.label()));
        for result in results {
            for method in TURN_METHODS {
                m.requests.with_label_values(&[method, result]);
            }
        }
        Ok(m)
    }

    fn uninitialised() -> prometheus::Result<Self> {
        let relayed_bytes = IntCounterVec::new(
            Opts::new(
                "iceway_turn_relayed_bytes_total",
                "Bytes relayed, by direction",
            ),
            &["direction"],
        )?;
        let relayed_packets = IntCounterVec::new(
            Opts::new(
                "iceway_turn_relayed_packets_total",
                "Packets relayed, by direction",
            ),
            &["direction"],
        )?;
        let stream_rejected = IntCounterVec::new(
            Opts::new(
                "iceway_turn_stream_rejected_total",
                "TCP/TLS connections refused or closed by a limit, by reason",
            ),
            &["reason"],
        )?;
        for reason in crate::limits::REJECT_REASONS {
            stream_rejected.with_label_values(&[reason]);
        }
        Ok(Self {
            allocations: IntGauge::new("iceway_turn_allocations", "Live allocations")?,
            allocations_total: IntCounterVec::new(
                Opts::new(
                    "iceway_turn_allocations_total",
                    "Allocate requests by result",
                ),
                &["result"],
            )?,
            allocation_lifetime: Histogram::with_opts(
                HistogramOpts::new(
                    "iceway_turn_allocation_lifetime_seconds",
                    "How long allocations lived",
                )
                .buckets(exponential_buckets(1.0, 4.0, 9)?),
            )?,
            permissions: IntGauge::new("iceway_turn_permissions", "Live permissions")?,
            channels: IntGauge::new("iceway_turn_channels", "Live channel bindings")?,
            to_peer_bytes: relayed_bytes.with_label_values(&["to_peer"]),
            to_client_bytes: relayed_bytes.with_label_values(&["to_client"]),
            to_peer_packets: relayed_packets.with_label_values(&["to_peer"]),
            to_client_packets: relayed_packets.with_label_values(&["to_client"]),
            relayed_bytes,
            relayed_packets,
            requests: IntCounterVec::new(
                Opts::new(
                    "iceway_turn_requests_total",
                    "STUN/TURN requests by method and result",
                ),
                &["method", "result"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "iceway_turn_auth_failures_total",
                    "Authentication failures by reason",
                ),
                &["reason"],
            )?,
            peer_denied: IntCounter::new(
                "iceway_turn_peer_denied_total",
                "Peers refused by the peer policy",
            )?,
            quota_rejections: IntCounterVec::new(
                Opts::new(
                    "iceway_turn_quota_rejections_total",
                    "Allocations refused by quota, by kind",
                ),
                &["kind"],
            )?,
            binding_requests: IntCounter::new(
                "iceway_stun_binding_requests_total",
                "STUN Binding requests",
            )?,
            stream_connections: IntGauge::new(
                "iceway_turn_stream_connections",
                "Open TCP/TLS client connections",
            )?,
            stream_rejected,
            relay_ports: IntGauge::new(
                "iceway_turn_relay_ports",
                "Ports in the relay range (turn.relay_range)",
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.allocations.clone()))?;
        registry.register(Box::new(self.allocations_total.clone()))?;
        registry.register(Box::new(self.allocation_lifetime.clone()))?;
        registry.register(Box::new(self.permissions.clone()))?;
        registry.register(Box::new(self.channels.clone()))?;
        registry.register(Box::new(self.relayed_bytes.clone()))?;
        registry.register(Box::new(self.relayed_packets.clone()))?;
        registry.register(Box::new(self.requests.clone()))?;
        registry.register(Box::new(self.auth_failures.clone()))?;
        registry.register(Box::new(self.peer_denied.clone()))?;
        registry.register(Box::new(self.quota_rejections.clone()))?;
        registry.register(Box::new(self.binding_requests.clone()))?;
        registry.register(Box::new(self.stream_connections.clone()))?;
        registry.register(Box::new(self.stream_rejected.clone()))?;
        registry.register(Box::new(self.relay_ports.clone()))?;
        Ok(())
    }
}

/// Relay counters kept per shard and flushed to Prometheus from the sweep, so the per-packet
/// path touches no shared cache line.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    pub to_peer_bytes: u64,
    pub to_peer_packets: u64,
    pub to_client_bytes: u64,
    pub to_client_packets: u64,
}

impl RelayStats {
    pub fn flush(&mut self, m: &Metrics) {
        if self.to_peer_packets == 0 && self.to_client_packets == 0 {
            return;
        }
        m.to_peer_bytes.inc_by(self.to_peer_bytes);
        m.to_peer_packets.inc_by(self.to_peer_packets);
        m.to_client_bytes.inc_by(self.to_client_bytes);
        m.to_client_packets.inc_by(self.to_client_packets);
        *self = Self::default();
    }
}
