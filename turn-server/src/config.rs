//! The typed configuration of `iceway-turn` and its validation (`docs/configuration.md`): its own
//! `[turn]` section (env `ICEWAY_TURN__<KEY>`), the shared `[admin]`, `[log]`, `[drain]` and
//! `[turn_credentials]` (of which the relay reads `secret_file`). Loading order: defaults → TOML
//! (`--config`) → environment → flags.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use iceway_auth::config::TurnCredentialsConfig;
use iceway_service::{AdminConfig, CommonArgs, ConfigError, ConfigLoader, DrainConfig, LogConfig};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::limits::StreamLimits;
use crate::policy::DEFAULT_DENY_PEERS;
use crate::proto::CoreConfig;
use crate::proto::server as defaults;

/// Reservations are held 30 s each; 1,000 covers a burst of EVEN-PORT(R) clients without
/// letting one credential park a sizeable share of the relay range.
pub const DEFAULT_MAX_RESERVATIONS: usize = 1_000;

fn default_software() -> String {
    concat!("iceway-turn/", env!("CARGO_PKG_VERSION")).into()
}

#[derive(Debug, Parser)]
#[command(
    name = "iceway-turn",
    version,
    about = "Iceway TURN relay and STUN Binding responder"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Client listener (UDP and TCP on the same address); repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// TURN shared secrets, one per line, all accepted (SECRET or `kid:KID SECRET`).
    #[arg(long, value_name = "FILE", alias = "secret-file")]
    pub turn_secret_file: Option<PathBuf>,
    /// Advertised relay address (behind NAT / in Kubernetes); one per family.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    pub external_ip: Vec<IpAddr>,
    /// STUN servers to learn the advertised address from at start (instead of --external-ip).
    #[arg(long, value_name = "HOST:PORT,...", value_delimiter = ',')]
    pub external_ip_stun: Vec<String>,
    #[arg(long, value_name = "LO-HI")]
    pub relay_range: Option<String>,
    /// Peers allowed even when in the deny list.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub allow_peers: Vec<IpNet>,
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Static user for development; repeatable.
    #[arg(long, value_name = "NAME:PASSWORD")]
    pub user: Vec<String>,
    /// Only the STUN Binding responder (no TURN).
    #[arg(long)]
    pub stun_only: bool,
}

/// The whole `iceway-turn` configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub turn: TurnConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub drain: DrainConfig,
    pub turn_credentials: TurnCredentialsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            turn: TurnConfig::default(),
            admin: AdminConfig::on_port(9478),
            log: LogConfig::default(),
            // Allocations are relayed until clients move to another server (ALTERNATE-SERVER or
            // their own retry); a longer drain than the HTTP services' lets calls finish.
            drain: DrainConfig {
                timeout: Duration::from_secs(30),
            },
            turn_credentials: TurnCredentialsConfig::default(),
        }
    }
}

/// `[turn]`: the relay's own settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    pub listen: Vec<SocketAddr>,
    /// TLS listeners, used when `tls_cert` and `tls_key` are set.
    pub tls_listen: Vec<SocketAddr>,
    pub realm: String,
    /// Static `NAME:PASSWORD` users, for development.
    pub users: Vec<String>,
    pub external_ip: Vec<IpAddr>,
    /// STUN servers (`HOST:PORT`) asked at start, from the relay address, for the mapped
    /// address to advertise (cloud nodes whose public address is on no interface). Exclusive
    /// with `external_ip`; when none answers in time the start fails.
    pub external_ip_stun: Vec<String>,
    /// Overall deadline of that discovery.
    #[serde(with = "iceway_service::duration")]
    pub external_ip_stun_timeout: Duration,
    /// First retransmission timeout of its Binding requests (doubled after each send).
    #[serde(with = "iceway_service::duration")]
    pub external_ip_stun_rto: Duration,
    /// Address relay sockets bind to; default: the first listen address's IP.
    pub relay_ip: Option<IpAddr>,
    pub relay_range: String,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    /// Allocations per user (the REST username's user part, or the JWT subject); a grant's own
    /// limit wins.
    pub user_quota: Option<u32>,
    /// Allocations per client address (IPv6: per /64), across all shards.
    pub client_ip_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub max_kbps: Option<u32>,
    /// Permissions one allocation holds (and peers one CreatePermission carries).
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Ports held for EVEN-PORT(R) reservations at once, server-wide.
    pub max_reservations: usize,
    /// Sources the 401 limiter tracks per shard; past it newcomers share one bucket.
    pub unauthorized_max_sources: usize,
    /// SOFTWARE attribute of every response; empty = none.
    pub software: String,
    #[serde(with = "iceway_service::duration")]
    pub default_lifetime: Duration,
    #[serde(with = "iceway_service::duration")]
    pub max_lifetime: Duration,
    #[serde(with = "iceway_service::duration")]
    pub nonce_lifetime: Duration,
    pub strict_expiry: bool,
    /// Also accept RFC 5766's channel numbers 0x5000-0x7FFF. Off by default (RFC 8656 §12 allows
    /// 0x4000-0x4FFF only, as newer coturn does); coturn's older turnutils_uclient picks
    /// numbers up to 0x7FFF and needs it.
    pub rfc5766_channel_numbers: bool,
    pub alternate_server: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub stun_only: bool,
    /// UDP shards (threads with their own SO_REUSEPORT socket); 0 = half the CPUs, at least
    /// one ([`auto_threads`]).
    pub threads: usize,
    /// Runtime threads serving TCP and TLS clients (and the admin endpoints); 0 = half the
    /// CPUs, at least one. Read by the `iceway-turn` binary, which builds its runtime.
    pub stream_threads: usize,
    /// SO_RCVBUF / SO_SNDBUF asked for on the client listeners' UDP sockets (all clients).
    pub socket_buffer_bytes: usize,
    /// SO_RCVBUF / SO_SNDBUF of each allocation's relay socket (one client's peers): what a
    /// stranger's allocation can make the kernel queue for us; `0` keeps the system default.
    pub relay_socket_buffer_bytes: usize,
    pub unauthorized_per_sec: u32,
    pub unauthorized_burst: u32,
    /// Open TCP and TLS connections, all listeners together.
    pub stream_max_connections: u32,
    /// Open TCP and TLS connections per source (IPv4 address or IPv6 /64). Generous because a
    /// carrier-grade or corporate NAT puts many clients behind one address.
    pub stream_max_connections_per_ip: u32,
    /// From accept to the first STUN message, TLS handshake included.
    #[serde(with = "iceway_service::duration")]
    pub stream_first_message_timeout: Duration,
    /// Longest silence on a connection that holds no allocation.
    #[serde(with = "iceway_service::duration")]
    pub stream_idle_timeout: Duration,
    /// Longest one write to a TCP/TLS client may take before the connection is closed.
    #[serde(with = "iceway_service::duration")]
    pub stream_write_timeout: Duration,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets and passwords never reach a log line.
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("tls_listen", &self.tls_listen)
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("external_ip", &self.external_ip)
            .field("external_ip_stun", &self.external_ip_stun)
            .field("relay_range", &self.relay_range)
            .field("allow_peers", &self.allow_peers)
            .field("strict_expiry", &self.strict_expiry)
            .field("stun_only", &self.stun_only)
            .finish_non_exhaustive()
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
            tls_listen: vec![SocketAddr::from(([0, 0, 0, 0], 5349))],
            realm: "iceway".into(),
            users: Vec::new(),
            external_ip: Vec::new(),
            external_ip_stun: Vec::new(),
            external_ip_stun_timeout: Duration::from_secs(5),
            external_ip_stun_rto: Duration::from_millis(500),
            relay_ip: None,
            relay_range: "49152-65535".into(),
            allow_peers: Vec::new(),
            deny_peers: DEFAULT_DENY_PEERS
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            user_quota: Some(defaults::DEFAULT_USER_QUOTA),
            client_ip_quota: Some(defaults::DEFAULT_SOURCE_QUOTA),
            total_quota: Some(defaults::DEFAULT_TOTAL_QUOTA),
            max_kbps: None,
            max_permissions: defaults::DEFAULT_MAX_PERMISSIONS,
            max_channels: defaults::DEFAULT_MAX_CHANNELS,
            max_reservations: DEFAULT_MAX_RESERVATIONS,
            unauthorized_max_sources: defaults::DEFAULT_UNAUTHORIZED_MAX_SOURCES,
            software: default_software(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            strict_expiry: false,
            rfc5766_channel_numbers: false,
            alternate_server: None,
            tls_cert: None,
            tls_key: None,
            stun_only: false,
            threads: 0,
            stream_threads: 0,
            socket_buffer_bytes: 4 << 20,
            relay_socket_buffer_bytes: 512 << 10,
            unauthorized_per_sec: defaults::DEFAULT_UNAUTHORIZED_PER_SEC,
            unauthorized_burst: defaults::DEFAULT_UNAUTHORIZED_BURST,
            stream_max_connections: 10_000,
            stream_max_connections_per_ip: 256,
            stream_first_message_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(60),
            stream_write_timeout: Duration::from_secs(10),
        }
    }
}

/// The thread count `0` stands for: half the CPUs, at least one. A relay's CPU is mostly the
/// kernel's (sending, delivering, waking up) and every thread wakes on its own: at the loads of
/// real calls, a second thread per core adds wake-ups, not capacity (docs/benchmarks.md, issue
/// 15: one shard instead of two on 2 CPUs relays 1.3x as much paced media per CPU-second), and
/// the UDP shards and the stream runtime together still get every CPU.
pub fn auto_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The port of a `HOST:PORT` STUN server (`[V6]:PORT` for an IPv6 literal), if well formed.
pub fn stun_server_port(s: &str) -> Option<u16> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && !host.contains([':', '[', ']']),
    };
    ok.then_some(port)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayRange {
    pub lo: u16,
    pub hi: u16,
}

impl Config {
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        Self::load_with_env(cli, None)
    }

    pub fn load_with_env(
        cli: &Cli,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let strings = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
        let display = |v: Vec<String>| (!v.is_empty()).then_some(v);
        let cfg: Config = ConfigLoader::new(&Config::default())?
            .list_keys(&[
                "turn.listen",
                "turn.tls_listen",
                "turn.users",
                "turn.external_ip",
                "turn.external_ip_stun",
                "turn.allow_peers",
                "turn.deny_peers",
            ])
            .file(cli.common.config.as_deref())
            .set(
                "turn.listen",
                display(cli.listen.iter().map(ToString::to_string).collect()),
            )?
            .common_flags(&cli.common)?
            .set("turn.realm", cli.realm.clone())?
            .set(
                "turn_credentials.secret_file",
                cli.turn_secret_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            )?
            .set(
                "turn.external_ip",
                display(cli.external_ip.iter().map(ToString::to_string).collect()),
            )?
            .set(
                "turn.external_ip_stun",
                display(cli.external_ip_stun.clone()),
            )?
            .set("turn.relay_range", cli.relay_range.clone())?
            .set(
                "turn.allow_peers",
                display(cli.allow_peers.iter().map(ToString::to_string).collect()),
            )?
            .set(
                "turn.tls_cert",
                cli.tls_cert.as_ref().map(|p| p.display().to_string()),
            )?
            .set(
                "turn.tls_key",
                cli.tls_key.as_ref().map(|p| p.display().to_string()),
            )?
            .set("turn.users", strings(&cli.user))?
            .set("turn.stun_only", cli.stun_only.then_some(true))?
            .build_with_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.turn.validate()?;
        let t = &self.turn;
        if !t.stun_only && self.turn_credentials.secret_file.is_none() && t.users.is_empty() {
            return Err(ConfigError::invalid(
                "turn_credentials.secret_file",
                "no credentials: set turn_credentials.secret_file (--turn-secret-file) or turn.users (or turn.stun_only)",
            ));
        }
        if let Some(path) = &self.turn_credentials.secret_file {
            iceway_auth::config::read_secret_file(path)?;
        }
        if let (Some(cert), Some(key)) = (&t.tls_cert, &t.tls_key) {
            crate::io::certified_key(cert, key)?;
        }
        Ok(())
    }

    /// What `--check-config` prints: static users' passwords hidden.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for user in &mut shown.turn.users {
            if let Some((name, _)) = user.split_once(':') {
                *user = format!("{name}:{}", iceway_service::REDACTED);
            }
        }
        shown
    }
}

impl TurnConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "turn.listen",
                "at least one listen address is needed",
            ));
        }
        self.relay_range()?;
        self.static_users()?;
        if self.realm.is_empty() {
            return Err(ConfigError::invalid("turn.realm", "must not be empty"));
        }
        if self.default_lifetime.as_secs() == 0 || self.max_lifetime < self.default_lifetime {
            return Err(ConfigError::invalid(
                "turn.max_lifetime",
                "must be >= default_lifetime >= 1s",
            ));
        }
        for (key, zero) in [
            ("turn.max_permissions", self.max_permissions == 0),
            ("turn.max_channels", self.max_channels == 0),
            (
                "turn.unauthorized_max_sources",
                self.unauthorized_max_sources == 0,
            ),
            (
                "turn.stream_max_connections",
                self.stream_max_connections == 0,
            ),
            (
                "turn.stream_max_connections_per_ip",
                self.stream_max_connections_per_ip == 0,
            ),
            (
                "turn.stream_first_message_timeout",
                self.stream_first_message_timeout.is_zero(),
            ),
            (
                "turn.stream_idle_timeout",
                self.stream_idle_timeout.is_zero(),
            ),
            (
                "turn.stream_write_timeout",
                self.stream_write_timeout.is_zero(),
            ),
            (
                "turn.external_ip_stun_timeout",
                self.external_ip_stun_timeout.is_zero(),
            ),
            (
                "turn.external_ip_stun_rto",
                self.external_ip_stun_rto.is_zero(),
            ),
        ] {
            if zero {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        if !self.external_ip_stun.is_empty() && !self.external_ip.is_empty() {
            return Err(ConfigError::invalid(
                "turn.external_ip_stun",
                "set either turn.external_ip or turn.external_ip_stun, not both",
            ));
        }
        if let Some(bad) = self
            .external_ip_stun
            .iter()
            .find(|s| stun_server_port(s).is_none())
        {
            return Err(ConfigError::invalid(
                "turn.external_ip_stun",
                format!("expected HOST:PORT (an IPv6 address in brackets), got {bad:?}"),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::invalid(
                "turn.tls_key",
                "tls_cert and tls_key go together",
            ));
        }
        Ok(())
    }

    pub fn relay_range(&self) -> Result<RelayRange, ConfigError> {
        let bad = || {
            ConfigError::invalid(
                "turn.relay_range",
                format!("expected LO-HI, got {:?}", self.relay_range),
            )
        };
        let (lo, hi) = self.relay_range.split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(RelayRange { lo, hi })
    }

    pub fn static_users(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.users
            .iter()
            .map(|u| {
                u.split_once(':')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .map(|(n, p)| (n.to_owned(), p.to_owned()))
                    .ok_or_else(|| ConfigError::invalid("turn.users", "expected NAME:PASSWORD"))
            })
            .collect()
    }

    pub fn relay_bind_ip(&self) -> IpAddr {
        self.relay_ip.unwrap_or_else(|| self.listen[0].ip())
    }

    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_connections: self.stream_max_connections,
            max_connections_per_ip: self.stream_max_connections_per_ip,
            first_message_timeout: self.stream_first_message_timeout,
            idle_timeout: self.stream_idle_timeout,
            write_timeout: self.stream_write_timeout,
        }
    }

    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            realm: self.realm.clone(),
            default_lifetime: self.default_lifetime,
            max_lifetime: self.max_lifetime,
            nonce_lifetime: self.nonce_lifetime.max(Duration::from_secs(1)),
            strict_expiry: self.strict_expiry,
            external_ips: self.external_ip.clone(),
            software: (!self.software.is_empty()).then(|| self.software.clone()),
            user_quota: self.user_quota,
            source_quota: self.client_ip_quota,
            total_quota: self.total_quota,
            max_kbps: self.max_kbps,
            max_permissions: self.max_permissions,
            max_channels: self.max_channels,
            unauthorized_max_sources: self.unauthorized_max_sources,
            alternate_server: self.alternate_server,
            unauthorized_per_sec: self.unauthorized_per_sec,
            unauthorized_burst: self.unauthorized_burst,
            stun_only: self.stun_only,
            channel_max: if self.rfc5766_channel_numbers {
                crate::proto::channel_data::CHANNEL_MAX_RFC5766
            } else {
                crate::proto::channel_data::CHANNEL_MAX
            },
            ..CoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("iceway-turn").chain(args.iter().copied()))
    }

    #[test]
    fn flags_env_and_defaults() {
        let c = cli(&[
            "--listen",
            "127.0.0.1:3478",
            "--listen",
            "[::1]:3478",
            "--user",
            "a:b",
            "--allow-peers",
            "127.0.0.0/8,::1/128",
        ]);
        let env = HashMap::from([
            ("ICEWAY_TURN__MAX_LIFETIME".to_owned(), "2h".to_owned()),
            ("ICEWAY_TURN__REALM".to_owned(), "env.realm".to_owned()),
        ]);
        let all = Config::load_with_env(&c, Some(env)).expect("config");
        assert_eq!(all.admin.listen, "0.0.0.0:9478".parse().expect("addr"));
        assert_eq!(all.drain.timeout, Duration::from_secs(30));
        assert!(!iceway_service::render_effective(&all.redacted()).contains("a:b"));
        let cfg = all.turn;
        assert_eq!(cfg.listen.len(), 2);
        assert_eq!(cfg.max_lifetime, Duration::from_secs(7200));
        assert_eq!(cfg.realm, "env.realm");
        assert_eq!(cfg.allow_peers.len(), 2);
        assert_eq!(
            cfg.relay_range().expect("range"),
            RelayRange {
                lo: 49152,
                hi: 65535
            }
        );
        assert_eq!(cfg.deny_peers.len(), DEFAULT_DENY_PEERS.len());
        assert_eq!(
            cfg.stream_limits(),
            StreamLimits {
                max_connections: 10_000,
                max_connections_per_ip: 256,
                first_message_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                write_timeout: Duration::from_secs(10),
            }
        );
        assert!(
            !format!("{cfg:?}").contains("a:b"),
            "passwords never logged"
        );
    }

    #[test]
    fn external_ip_stun_from_flag_env_and_its_checks() {
        let all = Config::load_with_env(
            &cli(&[
                "--stun-only",
                "--external-ip-stun",
                "stun.example.net:3478,[2001:db8::1]:19302",
            ]),
            Some(HashMap::new()),
        )
        .expect("config");
        assert_eq!(
            all.turn.external_ip_stun,
            ["stun.example.net:3478", "[2001:db8::1]:19302"]
        );
        assert_eq!(all.turn.external_ip_stun_timeout, Duration::from_secs(5));
        let env = HashMap::from([(
            "ICEWAY_TURN__EXTERNAL_IP_STUN".to_owned(),
            "192.0.2.1:3478".to_owned(),
        )]);
        let all = Config::load_with_env(&cli(&["--stun-only"]), Some(env)).expect("env");
        assert_eq!(all.turn.external_ip_stun, ["192.0.2.1:3478"]);
        for bad in [
            "stun.example.net",
            "2001:db8::1:3478",
            ":3478",
            "h:0",
            "[]:1",
        ] {
            let err = Config::load_with_env(
                &cli(&["--stun-only", "--external-ip-stun", bad]),
                Some(HashMap::new()),
            )
            .expect_err(bad);
            assert!(
                err.to_string().contains("turn.external_ip_stun"),
                "{bad}: {err}"
            );
        }
        let err = Config::load_with_env(
            &cli(&[
                "--stun-only",
                "--external-ip-stun",
                "192.0.2.1:3478",
                "--external-ip",
                "203.0.113.1",
            ]),
            Some(HashMap::new()),
        )
        .expect_err("both");
        assert!(err.to_string().contains("turn.external_ip_stun"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load_with_env(
            &cli(&["--user", "a:b", "--relay-range", "9-1"]),
            Some(HashMap::new()),
        )
        .expect_err("bad range");
        assert!(err.to_string().contains("turn.relay_range"), "{err}");
        let err =
            Config::load_with_env(&cli(&[]), Some(HashMap::new())).expect_err("no credentials");
        assert!(
            err.to_string().contains("turn_credentials.secret_file"),
            "{err}"
        );
        let env = HashMap::from([("ICEWAY_TURN__TOTAL_QUOTA".to_owned(), "lots".to_owned())]);
        let err = Config::load_with_env(&cli(&["--stun-only"]), Some(env)).expect_err("bad quota");
        assert!(err.to_string().contains("turn.total_quota"), "{err}");
        // A certificate that cannot be used is a configuration error, found by --check-config.
        let empty = tempfile::NamedTempFile::new().expect("temp");
        let p = empty.path().display().to_string();
        let err = Config::load_with_env(
            &cli(&["--stun-only", "--tls-cert", &p, "--tls-key", &p]),
            Some(HashMap::new()),
        )
        .expect_err("empty certificate");
        assert!(err.to_string().contains("turn.tls_cert"), "{err}");
        for var in [
            "ICEWAY_TURN__STREAM_MAX_CONNECTIONS",
            "ICEWAY_TURN__STREAM_MAX_CONNECTIONS_PER_IP",
            "ICEWAY_TURN__STREAM_FIRST_MESSAGE_TIMEOUT",
            "ICEWAY_TURN__STREAM_IDLE_TIMEOUT",
            "ICEWAY_TURN__STREAM_WRITE_TIMEOUT",
        ] {
            let env = HashMap::from([(var.to_owned(), "0".to_owned())]);
            let err = Config::load_with_env(&cli(&["--stun-only"]), Some(env)).expect_err(var);
            let key = format!("turn.{}", var["ICEWAY_TURN__".len()..].to_lowercase());
            assert!(err.to_string().contains(&key), "{var}: {err}");
        }
        // Misspelt keys at any level, and keys of another section, are refused with their path.
        for (var, key) in [
            ("ICEWAY_TURN__RELAY_RNAGE", "turn.relay_rnage"),
            ("ICEWAY_TURN__MAX_LIFETIME_SECS", "turn.max_lifetime_secs"),
            ("ICEWAY_ADMIN__LISTNE", "admin.listne"),
            (
                "ICEWAY_TURN_CREDENTIALS__SECRETFILE",
                "turn_credentials.secretfile",
            ),
            ("ICEWAY_SIGNAL__REDIS_URL", "signal"),
        ] {
            let env = HashMap::from([(var.to_owned(), "1".to_owned())]);
            let err = Config::load_with_env(&cli(&["--stun-only"]), Some(env)).expect_err(var);
            assert!(err.to_string().contains(key), "{var}: {err}");
        }
    }
}
