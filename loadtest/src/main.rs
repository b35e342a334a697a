//! CLI: parse flags, run one mode, print the summary / JSON, write the HTML report.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use iceway_auth::turn_credential::CredentialFormat;
use iceway_loadtest::credentials::CredentialSource;
use iceway_loadtest::datagram::{self, StunOptions, TurnOptions, TurnProtocol};
use iceway_loadtest::driver::DriverConfig;
use iceway_loadtest::engine::{LoadPlan, Pace};
use iceway_loadtest::render;
use iceway_loadtest::signal::storm::StormOptions;
use iceway_loadtest::signal::{SignalOptions, SignalProtocol, run_signal};
use iceway_loadtest::stats::Report;
use iceway_loadtest::tls::{TlsClient, Trust};
use iceway_loadtest::transport::TransportKind;

#[derive(Parser)]
#[command(
    name = "iceway-loadtest",
    version,
    about = "TURN, STUN and signaling load generator"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N TURN allocations relaying to an echo peer (or the ceiling relay with --protocol ceiling).
    Turn(Box<TurnArgs>),
    /// A STUN Binding flood with a bounded in-flight window.
    Stun(StunArgs),
    /// N camera/viewer pairs against a signaling server (Iceway's or peerjs-server).
    Signal(SignalArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SignalProtocolArg {
    Iceway,
    Peerjs,
    /// The bare WebSocket relay `ceiling-ws` (first frame `bind <me> <partner>`).
    Ceiling,
}

#[derive(Args)]
struct SignalArgs {
    /// ws://IP:PORT/v1/ws (Iceway), ws://IP:PORT/peerjs (peerjs-server) or ws://IP:PORT/
    /// (ceiling-ws).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "iceway")]
    protocol: SignalProtocolArg,
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// HS256 app-token key (Iceway protocol).
    #[arg(long, env = "ICEWAY_LOADTEST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the HS256 app-token key (as signal-server's --jwt-secret-file).
    #[arg(long, conflicts_with = "jwt_secret")]
    jwt_secret_file: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    jwt_kid: String,
    /// Relayed messages per second over all pairs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Bytes per relayed message (approximate).
    #[arg(long, default_value_t = 500)]
    message_size: usize,
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    drain: Duration,
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
    /// Client source addresses (default for a loopback server: 127.0.0.1–127.0.0.8).
    #[arg(long, value_delimiter = ',')]
    bind: Vec<IpAddr>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Reconnect storm: once every client is connected to --url, SIGTERM --storm-drain-pid
    /// (the server at --url) and reconnect each client, once, to this URL as its socket ends.
    /// No traffic is sent (--rate is not used); --server-pid should be this URL's server.
    #[arg(long, requires = "storm_drain_pid")]
    storm_url: Option<String>,
    /// The process to SIGTERM to start the storm.
    #[arg(long, requires = "storm_url")]
    storm_drain_pid: Option<u32>,
    /// Bound from the SIGTERM to the last client greeted again; later ones count as failed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    storm_timeout: Duration,
    /// SIGKILL --storm-drain-pid this long after the SIGTERM (a server with no drain of its
    /// own, as an orchestrator would at the end of the grace period).
    #[arg(long, requires = "storm_url", value_parser = humantime::parse_duration)]
    storm_kill_after: Option<Duration>,
}

#[derive(Args, Clone)]
struct Common {
    /// How long to send (after setup), e.g. 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop each flow after this many packets (whichever comes first with --duration).
    #[arg(long)]
    packets: Option<u64>,
    /// Packets per second per flow; 0 floods with --window packets in flight per flow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Flood: packets in flight per flow.
    #[arg(long, default_value_t = 8)]
    window: u32,
    /// After sending stops, wait this long for packets still in flight.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Flood: refill a flow's window after this long without a reply.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    loss_timeout: Duration,
    /// Worker threads on the load side.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The server's PID, for CPU seconds, work per CPU-second and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Client source addresses, comma-separated, used round-robin (default for a loopback
    /// server: 127.0.0.1–127.0.0.64).
    #[arg(long, value_delimiter = ',')]
    bind: Vec<IpAddr>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Time-series interval for the plots.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    interval: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Channel,
    Indication,
    Ceiling,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    Udp,
    Tcp,
    /// TURN over TLS (RFC 8656 §3.1), e.g. to port 5349; see --tls-ca / --tls-insecure.
    Tls,
}

/// Client ↔ server transport and, for TLS, which certificate to trust.
#[derive(Args)]
struct TransportArgs {
    /// Client ↔ server transport (the relay towards the peer is UDP either way).
    #[arg(long, value_enum, default_value = "udp")]
    transport: TransportArg,
    /// TLS: trust server certificates issued by the PEM certificate(s) in this file (a bench
    /// CA, or the server's self-signed certificate).
    #[arg(long, value_name = "FILE", conflicts_with = "tls_insecure")]
    tls_ca: Option<PathBuf>,
    /// TLS: accept any server certificate. For benchmarks against your own server only: it
    /// gives no protection against an impostor.
    #[arg(long)]
    tls_insecure: bool,
    /// TLS: the server name sent as SNI, and that the certificate must carry.
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    tls_name: String,
}

impl TransportArgs {
    fn kind(&self) -> anyhow::Result<TransportKind> {
        let tls_flags = self.tls_ca.is_some() || self.tls_insecure;
        Ok(match self.transport {
            TransportArg::Udp | TransportArg::Tcp if tls_flags => {
                bail!("--tls-ca and --tls-insecure go with --transport tls")
            }
            TransportArg::Udp => TransportKind::Udp,
            TransportArg::Tcp => TransportKind::Tcp,
            TransportArg::Tls => {
                let trust = match (&self.tls_ca, self.tls_insecure) {
                    (Some(ca), _) => Trust::CaFile(ca.clone()),
                    (None, true) => Trust::Insecure,
                    (None, false) => {
                        bail!("--transport tls needs --tls-ca FILE (or --tls-insecure)")
                    }
                };
                TransportKind::Tls(TlsClient::new(&trust, &self.tls_name)?)
            }
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CredentialFormatArg {
    Rest,
    Jwt,
}

#[derive(Args)]
struct TurnArgs {
    /// TURN server (or ceiling relay) address.
    #[arg(long)]
    server: SocketAddr,
    #[arg(long, short = 'n', default_value_t = 100)]
    allocations: usize,
    #[arg(long, value_enum, default_value = "channel")]
    protocol: ProtocolArg,
    #[command(flatten)]
    transport: TransportArgs,
    /// Payload bytes per packet (at least 12: sequence number and send time).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Static long-term credentials NAME:PASSWORD.
    #[arg(long, conflicts_with_all = ["secret", "secret_file"])]
    user: Option<String>,
    /// Shared secret for minted credentials (REST or JWT).
    #[arg(long, env = "ICEWAY_LOADTEST_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Secret file as the server reads it: one secret per line or KID=SECRET; the first signs.
    #[arg(long, conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "rest")]
    credential: CredentialFormatArg,
    /// Lifetime of minted credentials.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// An external UDP echo peer instead of the built-in one.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Where the built-in echo peer listens (the server must be allowed to reach it).
    #[arg(long, default_value = "127.0.0.1:0")]
    echo_bind: SocketAddr,
    /// Allocation handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    setup_timeout: Duration,
    /// While data flows, refresh each allocation (Refresh, then its ChannelBind or
    /// CreatePermission again) this often, e.g. 60s; keep it under the 5-minute permission life.
    #[arg(long, value_parser = humantime::parse_duration)]
    refresh: Option<Duration>,
    /// While data flows, release this many allocations per second (picked at random; Refresh
    /// with LIFETIME 0) and replace each with a new allocation on a new socket.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct StunArgs {
    #[arg(long)]
    server: SocketAddr,
    /// Client sockets.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    common: Common,
}

fn driver_config(c: &Common, payload: usize, setup: (usize, Duration)) -> DriverConfig {
    DriverConfig {
        threads: c.threads.max(1),
        setup_concurrency: setup.0.max(1),
        setup_timeout: setup.1,
        plan: LoadPlan {
            pace: if c.rate > 0.0 {
                Pace::Paced { pps: c.rate }
            } else {
                Pace::Flood {
                    window: c.window.max(1),
                }
            },
            payload,
            duration: c.duration,
            packets_per_flow: c.packets,
            drain: c.drain,
            loss_timeout: c.loss_timeout,
            interval: c.interval.max(Duration::from_millis(10)),
            refresh: None,
            churn_per_flow: 0.0,
        },
        server_pid: c.server_pid,
        progress: !c.no_progress && !c.json,
    }
}

fn credentials(args: &TurnArgs) -> anyhow::Result<CredentialSource> {
    if let Some(user) = &args.user {
        let (username, password) = user
            .split_once(':')
            .context("--user must be NAME:PASSWORD")?;
        return Ok(CredentialSource::Static {
            username: username.into(),
            password: password.into(),
        });
    }
    let lines = match (&args.secret, &args.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --secret-file {}", path.display()))?,
        (None, None) => return Ok(CredentialSource::None),
    };
    let format = match args.credential {
        CredentialFormatArg::Rest => CredentialFormat::Rest,
        CredentialFormatArg::Jwt => CredentialFormat::Jwt,
    };
    CredentialSource::minted(&lines, format, args.ttl).context("the TURN secret")
}

fn output(report: &Report, common: &Common) -> anyhow::Result<()> {
    write_output(report, common.json, common.report.as_deref())
}

fn write_output(report: &Report, json: bool, html: Option<&std::path::Path>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render::human(report));
    }
    if let Some(path) = html {
        std::fs::write(path, render::html(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().mode {
        Mode::Turn(args) => {
            if args.size < iceway_loadtest::proto::STAMP_LEN
                || args.size > iceway_loadtest::batch::MAX_DATAGRAM - 64
            {
                bail!(
                    "--size must be between {} and {}",
                    iceway_loadtest::proto::STAMP_LEN,
                    iceway_loadtest::batch::MAX_DATAGRAM - 64
                );
            }
            if args.protocol == ProtocolArg::Ceiling && (args.refresh.is_some() || args.churn > 0.0)
            {
                bail!("--refresh and --churn need a TURN server, not the ceiling relay");
            }
            if !(args.churn >= 0.0 && args.churn.is_finite()) {
                bail!("--churn must be a rate of 0 or more per second");
            }
            if args.refresh.is_some_and(|r| r < Duration::from_secs(1)) {
                bail!("--refresh must be at least 1s");
            }
            let mut driver = driver_config(
                &args.common,
                args.size,
                (args.setup_concurrency, args.setup_timeout),
            );
            driver.plan.refresh = args.refresh;
            driver.plan.churn_per_flow = args.churn / args.allocations.max(1) as f64;
            let opts = TurnOptions {
                server: args.server,
                protocol: match args.protocol {
                    ProtocolArg::Channel => TurnProtocol::Channel,
                    ProtocolArg::Indication => TurnProtocol::Indication,
                    ProtocolArg::Ceiling => TurnProtocol::Ceiling,
                },
                allocations: args.allocations,
                transport: args.transport.kind()?,
                credentials: credentials(&args)?,
                peer: args.peer,
                echo_bind: args.echo_bind,
                bind: args.common.bind.clone(),
                driver,
            };
            let report = datagram::run_turn(&opts)?;
            output(&report, &args.common)
        }
        Mode::Stun(args) => {
            let opts = StunOptions {
                server: args.server,
                sockets: args.sockets,
                transport: args.transport.kind()?,
                bind: args.common.bind.clone(),
                driver: driver_config(&args.common, 0, (1, Duration::from_secs(1))),
            };
            let report = datagram::run_stun(&opts)?;
            output(&report, &args.common)
        }
        Mode::Signal(args) => {
            let jwt_secret = match (&args.jwt_secret, &args.jwt_secret_file) {
                (Some(s), _) => s.as_bytes().to_vec(),
                (None, Some(p)) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading --jwt-secret-file {}", p.display()))?
                    .trim()
                    .as_bytes()
                    .to_vec(),
                (None, None) => Vec::new(),
            };
            let protocol = match args.protocol {
                SignalProtocolArg::Iceway => SignalProtocol::Iceway,
                SignalProtocolArg::Peerjs => SignalProtocol::PeerJs,
                SignalProtocolArg::Ceiling => SignalProtocol::Ceiling,
            };
            if protocol == SignalProtocol::Iceway && jwt_secret.is_empty() {
                bail!("the Iceway protocol needs --jwt-secret or --jwt-secret-file");
            }
            let opts = SignalOptions {
                url: args.url.clone(),
                protocol,
                pairs: args.pairs,
                jwt_secret,
                jwt_kid: args.jwt_kid.clone(),
                rate: args.rate,
                message_size: args.message_size,
                duration: args.duration,
                drain: args.drain,
                bind: args.bind.clone(),
                connect_concurrency: args.connect_concurrency,
                setup_timeout: args.setup_timeout,
                server_pid: args.server_pid,
                threads: args.threads,
                progress: !args.no_progress && !args.json,
                interval: args.interval.max(Duration::from_millis(10)),
                storm: args.storm_url.clone().zip(args.storm_drain_pid).map(
                    |(reconnect_url, drain_pid)| StormOptions {
                        reconnect_url,
                        drain_pid,
                        timeout: args.storm_timeout,
                        kill_after: args.storm_kill_after,
                    },
                ),
            };
            let report = run_signal(&opts)?;
            write_output(&report, args.json, args.report.as_deref())
        }
    }
}
