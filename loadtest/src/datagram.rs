//! The `turn` and `stun` modes: build the flows, run the driver, assemble the report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

use crate::credentials::CredentialSource;
use crate::driver::{self, DriverConfig, DriverError, FlowSpec, Outcome};
use crate::echo::EchoPeer;
use crate::engine::Pace;
use crate::proto::{AllocationHandshake, Binding, Framing, Handshake};
use crate::stats::{
    ControlReport, LoadShape, Percentiles, Report, ServerReport, TrafficReport, latency_curve,
};
use crate::transport::{StdTransport, TransportKind};

/// Per-socket kernel buffer request; the kernel caps it at net.core.{r,w}mem_max.
const SOCKET_BUFFER: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnProtocol {
    /// ChannelBind, then ChannelData.
    Channel,
    /// CreatePermission, then Send/Data indications.
    Indication,
    /// The bare ceiling relay (bench/): no TURN at all.
    Ceiling,
}

impl TurnProtocol {
    pub fn name(&self) -> &'static str {
        match self {
            TurnProtocol::Channel => "turn-channel",
            TurnProtocol::Indication => "turn-indication",
            TurnProtocol::Ceiling => "ceiling",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnOptions {
    pub server: SocketAddr,
    pub protocol: TurnProtocol,
    pub allocations: usize,
    pub transport: TransportKind,
    pub credentials: CredentialSource,
    /// An external echo peer; None starts the built-in one on `echo_bind`.
    pub peer: Option<SocketAddr>,
    pub echo_bind: SocketAddr,
    /// Client source addresses, used round-robin.
    pub bind: Vec<IpAddr>,
    pub driver: DriverConfig,
}

#[derive(Debug, Clone)]
pub struct StunOptions {
    pub server: SocketAddr,
    pub sockets: usize,
    pub transport: TransportKind,
    pub bind: Vec<IpAddr>,
    pub driver: DriverConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open a client socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the echo peer: {0}")]
    EchoPeer(std::io::Error),
    #[error("the ceiling relay needs an IPv4 peer address")]
    CeilingNeedsIpv4,
    #[error("the ceiling relay speaks UDP only")]
    CeilingIsUdpOnly,
    #[error("cannot mint TURN credentials: {0}")]
    Credentials(#[from] iceway_auth::turn_credential::CredentialError),
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// Loopback source addresses the load spreads over by default (127.0.0.1–127.0.0.64).
pub const LOOPBACK_SOURCES: u8 = 64;

/// The source addresses to use when the user names none. For a loopback IPv4 server, many
/// loopback addresses: real clients come from many IPs, and servers rightly rate-limit
/// unauthenticated requests per source IP (iceway-turn: 20/s, burst 50), which would otherwise
/// throttle the allocation phase, not measure it.
pub fn default_bind(server: SocketAddr) -> Vec<IpAddr> {
    match server.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (1..=LOOPBACK_SOURCES)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect(),
        IpAddr::V6(ip) if ip.is_loopback() => vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
        IpAddr::V4(_) => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        IpAddr::V6(_) => vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
    }
}

fn client_sockets(
    n: usize,
    bind: &[IpAddr],
    server: SocketAddr,
    kind: &TransportKind,
) -> Result<Vec<StdTransport>, LoadError> {
    let fallback = default_bind(server);
    let bind = if bind.is_empty() { &fallback } else { bind };
    (0..n)
        .map(|i| {
            let ip = bind[i % bind.len()];
            StdTransport::connect(kind, ip, server, SOCKET_BUFFER).map_err(|source| {
                LoadError::Socket {
                    addr: SocketAddr::new(ip, 0),
                    source,
                }
            })
        })
        .collect()
}

fn shape(flows: usize, cfg: &DriverConfig) -> LoadShape {
    LoadShape {
        flows: flows as u64,
        pps_per_flow: match cfg.plan.pace {
            Pace::Paced { pps } => Some(pps),
            Pace::Flood { .. } => None,
        },
        window: match cfg.plan.pace {
            Pace::Flood { window } => Some(window),
            Pace::Paced { .. } => None,
        },
        payload_bytes: cfg.plan.payload,
        planned_seconds: cfg.plan.duration.as_secs_f64(),
        packets_per_flow: cfg.plan.packets_per_flow,
        threads: cfg.threads,
        refresh_seconds: cfg.plan.refresh.map(|r| r.as_secs_f64()),
        churn_per_second: cfg.plan.churn_per_flow * flows as f64,
    }
}

pub fn run_turn(opts: &TurnOptions) -> Result<Report, LoadError> {
    let echo = match opts.peer {
        Some(_) => None,
        None => Some(EchoPeer::start(opts.echo_bind).map_err(LoadError::EchoPeer)?),
    };
    let peer = opts
        .peer
        .or(echo.as_ref().map(|e| e.addr()))
        .unwrap_or(opts.echo_bind);
    if opts.protocol == TurnProtocol::Ceiling && !matches!(opts.transport, TransportKind::Udp) {
        return Err(LoadError::CeilingIsUdpOnly);
    }
    let sockets = client_sockets(opts.allocations, &opts.bind, opts.server, &opts.transport)?;
    let now = SystemTime::now();
    let mut flows = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let (handshake, framing) = match opts.protocol {
            TurnProtocol::Channel => (
                Handshake::Turn(Box::new(AllocationHandshake::new(
                    opts.credentials.for_allocation(i, now)?,
                    peer,
                    Binding::Channel(0x4000),
                ))),
                Framing::Channel(0x4000),
            ),
            TurnProtocol::Indication => (
                Handshake::Turn(Box::new(AllocationHandshake::new(
                    opts.credentials.for_allocation(i, now)?,
                    peer,
                    Binding::Permission,
                ))),
                Framing::send_indication(peer),
            ),
            TurnProtocol::Ceiling => (
                Handshake::ceiling(peer).map_err(|_| LoadError::CeilingNeedsIpv4)?,
                Framing::Ceiling,
            ),
        };
        flows.push(FlowSpec {
            socket,
            handshake: Some(handshake),
            framing,
        });
    }
    let outcome = driver::run(flows, &opts.driver)?;
    let to_peer = match echo {
        Some(e) => Some(e.stop().map_err(LoadError::EchoPeer)?),
        None => None,
    };
    Ok(report(
        "turn",
        &protocol_name(opts.protocol.name(), &opts.transport),
        opts.server,
        shape(opts.allocations, &opts.driver),
        outcome,
        Some(to_peer),
        opts.driver.server_pid,
    ))
}

pub fn run_stun(opts: &StunOptions) -> Result<Report, LoadError> {
    let sockets = client_sockets(opts.sockets, &opts.bind, opts.server, &opts.transport)?;
    let flows = sockets
        .into_iter()
        .map(|socket| FlowSpec {
            socket,
            handshake: None,
            framing: Framing::Binding,
        })
        .collect();
    let outcome = driver::run(flows, &opts.driver)?;
    Ok(report(
        "stun",
        &protocol_name("stun-binding", &opts.transport),
        opts.server,
        shape(opts.sockets, &opts.driver),
        outcome,
        None,
        opts.driver.server_pid,
    ))
}

/// "turn-channel", "turn-channel/tcp", "stun-binding/tls", …
fn protocol_name(base: &str, transport: &TransportKind) -> String {
    match transport {
        TransportKind::Udp => base.to_string(),
        other => format!("{base}/{}", other.label()),
    }
}

/// `relayed`: None for STUN; Some(to_peer count if known) for TURN.
fn report(
    mode: &str,
    protocol: &str,
    target: SocketAddr,
    load: LoadShape,
    o: Outcome,
    relayed: Option<Option<u64>>,
    server_pid: Option<u32>,
) -> Report {
    let t = &o.traffic;
    let secs = o.window_seconds.max(1e-9);
    let lost = t.sent.saturating_sub(t.received);
    let (to_peer, to_client, total) = match relayed {
        Some(Some(p)) => (Some(p), Some(t.received), Some(p + t.received)),
        Some(None) => (None, Some(t.received), None),
        None => (None, None, None),
    };
    let traffic = TrafficReport {
        sent: t.sent,
        received: t.received,
        lost,
        loss_ratio: if t.sent > 0 {
            lost as f64 / t.sent as f64
        } else {
            0.0
        },
        send_errors: t.send_errors,
        seconds: o.window_seconds,
        sent_per_second: t.sent as f64 / secs,
        received_per_second: t.received as f64 / secs,
        relayed_to_peer: to_peer,
        relayed_to_client: to_client,
        relayed_total: total,
        relayed_per_second: total.map(|x| x as f64 / secs),
        latency_us: Percentiles::from_ns(&t.latency),
        control: (load.refresh_seconds.is_some() || load.churn_per_second > 0.0)
            .then(|| ControlReport::from(&t.control)),
    };
    let server = match (o.server_before, o.server_after) {
        (Some(b), Some(a)) => {
            let cpu = match (b.cpu_seconds, a.cpu_seconds) {
                (Some(b), Some(a)) => a - b,
                _ => 0.0,
            };
            let per_cpu = |x: u64| (cpu > 0.0).then(|| x as f64 / cpu);
            Some(ServerReport {
                pid: server_pid.unwrap_or(0),
                cpu_seconds: cpu,
                cores_busy: cpu / secs,
                relayed_per_cpu_second: total.and_then(per_cpu),
                responses_per_cpu_second: relayed.is_none().then(|| per_cpu(t.received)).flatten(),
                rss_kb_before: o.server_rss_setup.map(|r| r.0).or(b.rss_kb),
                rss_kb_after: a.rss_kb,
                rss_bytes_per_flow: o.server_rss_setup.and_then(|(before, after)| {
                    (o.flows_ready > 0 && relayed.is_some())
                        .then(|| (after as f64 - before as f64) * 1024.0 / o.flows_ready as f64)
                }),
            })
        }
        _ => None,
    };
    Report {
        mode: mode.into(),
        protocol: protocol.into(),
        target: target.to_string(),
        load,
        setup: o.setup,
        traffic,
        server,
        kernel_udp: o.kernel_udp,
        load_cpu_seconds: o.load_cpu_seconds,
        series: t.series(),
        latency_curve: latency_curve(&t.latency),
        signal: None,
    }
}
