//! Sockets and event loops: UDP shards (mio, batched I/O with quinn-udp), TCP/TLS connection
//! tasks (tokio), and what they are built from. `crate::server` assembles them.

pub mod socket;
pub mod stream;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TurnConfig};
use crate::proto::credentials::{Chain, CredentialStore, StaticUsers};
use socket::RelaySettings;

/// The credential stores of `cfg`: static users, then the TURN secrets (read by the one reader
/// every service uses).
pub(crate) fn credentials(cfg: &Config) -> anyhow::Result<Box<dyn CredentialStore>> {
    let mut stores: Vec<Box<dyn CredentialStore>> = Vec::new();
    let users = StaticUsers::new(&cfg.turn.static_users()?, &cfg.turn.realm);
    if !users.is_empty() {
        stores.push(Box::new(users));
    }
    if let Some(path) = &cfg.turn_credentials.secret_file {
        stores.push(Box::new(iceway_auth::config::read_secret_file(path)?));
    }
    Ok(Box::new(Chain(stores)))
}

pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
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

pub(crate) fn relay_settings(cfg: &TurnConfig) -> anyhow::Result<RelaySettings> {
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
