//! The relay as a server, in the entry shape of every Iceway server (DESIGN §1): `bind` opens
//! every socket (port 0 works; `local_addr*` read them back), `run` serves until the drain ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iceway_service::{ConfigError, Reloader, Shutdown};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::io::socket::{self, RelaySettings};
use crate::io::{credentials, relay_settings, stream, tls_acceptor, udp};
use crate::limits::{StreamConnections, StreamLimits};
use crate::metrics::Metrics;
use crate::policy::PeerPolicy;
use crate::proto::Shared;

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key} {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ExternalIp(#[from] crate::io::discover::DiscoverError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A bound relay: sockets open, UDP shards not yet started.
pub struct TurnServer {
    shared: Arc<Shared>,
    /// The secret and certificate files, re-read while the relay runs.
    reloader: Reloader,
    settings: RelaySettings,
    threads: usize,
    stun_only: bool,
    drain: Duration,
    stream_limits: StreamLimits,
    listen: Vec<SocketAddr>,
    tcp: Vec<TcpListener>,
    udp: Vec<Vec<std::net::UdpSocket>>,
    tls: Vec<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// The addresses a peer must not be: where the server listens, relays and is advertised (all
/// interface addresses when it listens on a wildcard).
fn own_addresses(t: &crate::config::TurnConfig) -> Vec<std::net::IpAddr> {
    let mut own: Vec<_> = t
        .listen
        .iter()
        .chain(t.tls_listen.iter().filter(|_| t.tls_cert.is_some()))
        .map(SocketAddr::ip)
        .chain(t.relay_ip)
        .chain(t.external_ip.iter().copied())
        .collect();
    if own.iter().any(|ip| ip.is_unspecified()) {
        own.extend(crate::io::socket::interface_addresses());
    }
    own
}

impl TurnServer {
    /// Validates `cfg`, registers the metrics in `registry` and opens every listener.
    pub async fn bind(cfg: &Config, registry: &Registry) -> Result<Self, ServeError> {
        cfg.validate()?;
        let t = &cfg.turn;
        tracing::info!(config = ?t, "starting iceway-turn");
        let discovered = crate::io::discover::with_external_ips(t).await?;
        let t = &discovered;
        let metrics = Metrics::new()?;
        metrics.register(registry)?;
        let range = t.relay_range()?;
        metrics
            .relay_ports
            .set(i64::from(range.hi) - i64::from(range.lo) + 1);
        // Each allocation holds up to two relay sockets (ADDITIONAL-ADDRESS-FAMILY), each stream
        // client one, each reservation one; the rest is listeners, admin and headroom.
        let relay_fds = u64::from(t.total_quota.unwrap_or(u32::MAX)).saturating_mul(2);
        let wanted = relay_fds
            .saturating_add(u64::from(t.stream_max_connections))
            .saturating_add(t.max_reservations as u64)
            .saturating_add(256);
        iceway_service::fd_limit::ensure_nofile(
            "iceway-turn",
            wanted,
            "turn.total_quota or turn.stream_max_connections",
        );
        let policy = PeerPolicy::new(t.allow_peers.clone(), t.deny_peers.clone())
            .with_own_addresses(own_addresses(t));
        let mut reloader = Reloader::new();
        let credentials = credentials(cfg, &mut reloader)?;
        let shared = Arc::new(Shared::new(t.core(), credentials, policy, metrics));
        let settings = relay_settings(t)?;
        let threads = match t.threads {
            0 => crate::config::auto_threads(),
            n => n,
        };
        // TCP binds first and exclusively: SO_REUSEPORT would let a second process on the same
        // port silently take a share of the UDP clients, so a taken port must fail here. Its
        // port (also when 0 was asked) is then shared by every UDP shard.
        let mut listen = Vec::new();
        let mut tcp = Vec::new();
        let mut udp: Vec<Vec<std::net::UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
        for addr in &t.listen {
            let listener =
                iceway_service::net::tcp_listener(*addr).map_err(|source| ServeError::Bind {
                    key: "turn.listen (tcp)",
                    addr: *addr,
                    source,
                })?;
            let bound = listener.local_addr()?;
            for (i, sockets) in udp.iter_mut().enumerate() {
                let sock = socket::reuseport_udp(bound, t.socket_buffer_bytes, i == 0).map_err(
                    |source| ServeError::Bind {
                        key: "turn.listen (udp)",
                        addr: bound,
                        source,
                    },
                )?;
                sockets.push(sock);
            }
            listen.push(bound);
            tcp.push(listener);
        }
        let mut tls = Vec::new();
        if let (Some(cert), Some(key)) = (&t.tls_cert, &t.tls_key) {
            let acceptor = tls_acceptor(cert, key, &mut reloader)?;
            for addr in &t.tls_listen {
                let listener = iceway_service::net::tcp_listener(*addr).map_err(|source| {
                    ServeError::Bind {
                        key: "turn.tls_listen",
                        addr: *addr,
                        source,
                    }
                })?;
                tls.push((listener, acceptor.clone()));
            }
        }
        reloader.register_metrics(registry)?;
        Ok(Self {
            shared,
            reloader,
            settings,
            threads,
            stun_only: t.stun_only,
            drain: cfg.drain.timeout,
            stream_limits: t.stream_limits(),
            listen,
            tcp,
            udp,
            tls,
        })
    }

    /// The client listeners (UDP and TCP share each address).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The TLS listeners, empty without a certificate.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Relays until `shutdown` drains: new allocations are then refused, and the process waits
    /// for the live ones to end or for `drain.timeout`.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let _reload = self.reloader.spawn();
        let stop_token = CancellationToken::new();
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        for (index, listeners) in self.udp.into_iter().enumerate() {
            shards.push(udp::spawn(udp::ShardSpec {
                index,
                listeners,
                relays: self.settings.clone(),
                shared: Arc::clone(&self.shared),
                stop: Arc::clone(&stop),
            })?);
        }
        // One table for every TCP and TLS listener: the caps are on the process's connections.
        let connections = StreamConnections::new(
            self.stream_limits,
            self.shared.metrics.stream_connections.clone(),
        );
        for (addr, tcp) in self.listen.iter().zip(self.tcp) {
            tracing::info!(%addr, shards = self.threads, stun_only = self.stun_only, "listening udp");
            tracing::info!(%addr, "listening tcp");
            tokio::spawn(stream::accept_loop(
                tcp,
                None,
                Arc::clone(&self.shared),
                self.settings.clone(),
                Arc::clone(&connections),
                stop_token.clone(),
            ));
        }
        for (tls, acceptor) in self.tls {
            tracing::info!(addr = %tls.local_addr()?, "listening tls");
            tokio::spawn(stream::accept_loop(
                tls,
                Some(acceptor),
                Arc::clone(&self.shared),
                self.settings.clone(),
                Arc::clone(&connections),
                stop_token.clone(),
            ));
        }
        shutdown.set_ready();
        tracing::info!("ready");

        shutdown.draining().await;
        let shared = self.shared;
        shared.start_drain();
        let deadline = tokio::time::Instant::now() + self.drain;
        tracing::info!(
            allocations = shared.quotas.total(),
            deadline = ?self.drain,
            "draining"
        );
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while shared.quotas.total() > 0 && tokio::time::Instant::now() < deadline {
            tick.tick().await;
        }
        tracing::info!(
            allocations = shared.quotas.total(),
            "drain finished; stopping"
        );
        stop.store(true, Ordering::Relaxed);
        stop_token.cancel();
        for shard in shards {
            let _ = shard.waker.wake();
            let _ = tokio::task::spawn_blocking(move || shard.thread.join()).await;
        }
        Ok(())
    }
}
