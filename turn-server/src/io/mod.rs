//! Sockets and event loops: UDP shards (mio, batched I/O with quinn-udp), TCP/TLS connection
//! tasks (tokio), the admin listener and the SIGTERM drain.

pub mod socket;
pub mod stream;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use iceway_auth::turn_credential::TurnCredentials;
use iceway_service::{Shutdown, read_secret_lines, serve_admin};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TurnConfig;
use crate::metrics::Metrics;
use crate::policy::PeerPolicy;
use crate::proto::Shared;
use crate::proto::credentials::{Chain, CredentialStore, StaticUsers};
use socket::RelaySettings;

fn credentials(cfg: &TurnConfig) -> anyhow::Result<Box<dyn CredentialStore>> {
    let mut stores: Vec<Box<dyn CredentialStore>> = Vec::new();
    let users = StaticUsers::new(&cfg.static_users()?, &cfg.realm);
    if !users.is_empty() {
        stores.push(Box::new(users));
    }
    let mut lines = cfg.secrets.clone();
    if let Some(path) = &cfg.secret_file {
        lines.extend(read_secret_lines(path)?);
    }
    if !lines.is_empty() {
        let creds =
            TurnCredentials::from_secret_lines(&lines.join("\n")).context("turn.secret_file")?;
        stores.push(Box::new(creds));
    }
    Ok(Box::new(Chain(stores)))
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("turn.tls_cert {}", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "turn.tls_cert {}: no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            anyhow::anyhow!("turn.tls_key {}: no private key", key.display())
        }
        e => anyhow::Error::new(e).context(format!("turn.tls_key {}", key.display())),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("turn.tls_cert / turn.tls_key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn relay_settings(cfg: &TurnConfig) -> anyhow::Result<RelaySettings> {
    let pick = |v4: bool| -> Option<IpAddr> {
        cfg.relay_ip
            .into_iter()
            .chain(cfg.listen.iter().map(SocketAddr::ip))
            .find(|ip| ip.is_ipv4() == v4)
    };
    Ok(RelaySettings {
        v4: pick(true),
        v6: pick(false),
        range: cfg.relay_range()?,
        buffer: cfg.socket_buffer_bytes,
        reservations: Default::default(),
    })
}

/// Runs the server until SIGTERM/SIGINT and the drain that follows. Returns after a clean drain.
pub async fn run(cfg: TurnConfig) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    run_until(cfg, shutdown).await
}

pub async fn run_until(cfg: TurnConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    tracing::info!(config = ?cfg, "starting iceway-turn");
    let registry = iceway_service::new_registry("turn", env!("CARGO_PKG_VERSION"));
    let metrics = Metrics::new()?;
    metrics.register(&registry)?;
    let policy = PeerPolicy::new(cfg.allow_peers.clone(), cfg.deny_peers.clone());
    let shared = Arc::new(Shared::new(cfg.core(), credentials(&cfg)?, policy, metrics));
    let settings = relay_settings(&cfg)?;
    let stop_token = CancellationToken::new();

    let admin = serve_admin(cfg.admin, registry, shutdown.clone(), {
        let t = stop_token.clone();
        async move { t.cancelled().await }
    })
    .await
    .with_context(|| format!("turn.admin {}", cfg.admin))?;
    tracing::info!(addr = %admin, "admin endpoints /metrics /healthz /readyz");

    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // TCP binds first and exclusively: SO_REUSEPORT would let a second process on the same
    // port silently take a share of the UDP clients, so a taken port must fail here. Its port
    // (also when 0 was asked) is then shared by every UDP shard.
    let mut listen: Vec<SocketAddr> = Vec::new();
    let mut tcp_listeners = Vec::new();
    let mut per_shard: Vec<Vec<std::net::UdpSocket>> = (0..threads).map(|_| Vec::new()).collect();
    for addr in &cfg.listen {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("turn.listen {addr} (tcp)"))?;
        let bound = tcp.local_addr()?;
        for (i, sockets) in per_shard.iter_mut().enumerate() {
            let udp = socket::reuseport_udp(bound, cfg.socket_buffer_bytes, i == 0)
                .with_context(|| format!("turn.listen {bound} (udp)"))?;
            sockets.push(udp);
        }
        listen.push(bound);
        tcp_listeners.push(tcp);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut shards = Vec::new();
    for (index, listeners) in per_shard.into_iter().enumerate() {
        shards.push(udp::spawn(udp::ShardSpec {
            index,
            listeners,
            relays: settings.clone(),
            shared: Arc::clone(&shared),
            stop: Arc::clone(&stop),
        })?);
    }
    for (addr, tcp) in listen.iter().zip(tcp_listeners) {
        tracing::info!(%addr, shards = threads, stun_only = cfg.stun_only, "listening udp");
        tracing::info!(%addr, "listening tcp");
        tokio::spawn(stream::accept_loop(
            tcp,
            None,
            Arc::clone(&shared),
            settings.clone(),
            stop_token.clone(),
        ));
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let acceptor = tls_acceptor(cert, key)?;
        for addr in &cfg.tls_listen {
            let tls = TcpListener::bind(addr)
                .await
                .with_context(|| format!("turn.tls_listen {addr}"))?;
            tracing::info!(addr = %tls.local_addr()?, "listening tls");
            tokio::spawn(stream::accept_loop(
                tls,
                Some(acceptor.clone()),
                Arc::clone(&shared),
                settings.clone(),
                stop_token.clone(),
            ));
        }
    }
    shutdown.set_ready();
    tracing::info!("ready");

    shutdown.draining().await;
    shared.start_drain();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.drain_deadline_secs);
    tracing::info!(
        allocations = shared.quotas.total(),
        deadline_secs = cfg.drain_deadline_secs,
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
