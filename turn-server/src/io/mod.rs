//! Sockets and event loops: UDP shards (mio, batched I/O with quinn-udp), TCP/TLS connection
//! tasks (tokio), and what they are built from. `crate::server` assembles them.

pub mod discover;
pub mod socket;
pub mod stream;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use iceway_service::ConfigError;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TurnConfig};
use crate::proto::credentials::{Chain, CredentialStore, StaticUsers};
use socket::RelaySettings;

/// The credential stores of `cfg`: static users, then the TURN secrets (read by the one reader
/// every service uses).
pub(crate) fn credentials(cfg: &Config) -> Result<Box<dyn CredentialStore>, ConfigError> {
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

/// A certificate or key that cannot be used is a configuration error: it names the key.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let cert_err = |e: &dyn std::fmt::Display| {
        ConfigError::invalid("turn.tls_cert", format!("{}: {e}", cert.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(&e))?;
    if certs.is_empty() {
        return Err(cert_err(&"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no private key".to_owned(),
            e => e.to_string(),
        };
        ConfigError::invalid("turn.tls_key", format!("{}: {why}", key.display()))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| ConfigError::invalid("turn.tls_cert", format!("with turn.tls_key: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub(crate) fn relay_settings(cfg: &TurnConfig) -> Result<RelaySettings, ConfigError> {
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
        reservations: Arc::new(socket::Reservations::new(cfg.max_reservations)),
    })
}
