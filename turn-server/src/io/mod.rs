//! Sockets and event loops: UDP shards (mio, batched I/O with quinn-udp), TCP/TLS connection
//! tasks (tokio), and what they are built from. `crate::server` assembles them.

pub mod discover;
pub mod socket;
pub mod stream;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use iceway_service::{ConfigError, Live, Reloader};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TurnConfig};
use crate::proto::credentials::{Chain, CredentialStore, StaticUsers};
use socket::RelaySettings;

/// The credential stores of `cfg`: static users, then the TURN secrets (read by the one reader
/// every service uses, and re-read by `reloader` when the file changes).
pub(crate) fn credentials(
    cfg: &Config,
    reloader: &mut Reloader,
) -> Result<Box<dyn CredentialStore>, ConfigError> {
    let mut stores: Vec<Box<dyn CredentialStore>> = Vec::new();
    let users = StaticUsers::new(&cfg.turn.static_users()?, &cfg.turn.realm);
    if !users.is_empty() {
        stores.push(Box::new(users));
    }
    if cfg.turn_credentials.secret_file.is_some() {
        stores.push(Box::new(cfg.turn_credentials.live_credentials(reloader)?));
    }
    Ok(Box::new(Chain(stores)))
}

/// Hands every new handshake the certificate loaded last; connections already up keep theirs.
#[derive(Debug)]
struct LiveCertificate(Live<CertifiedKey>);

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get_full())
    }
}

/// The TLS listeners' acceptor: the certificate and key of `cert`/`key`, swapped by `reloader`
/// when either file changes (a renewal by cert-manager rewrites both).
pub(crate) fn tls_acceptor(
    cert: &Path,
    key: &Path,
    reloader: &mut Reloader,
) -> Result<TlsAcceptor, ConfigError> {
    let live = Live::new(certified_key(cert, key)?);
    let (c, k) = (cert.to_owned(), key.to_owned());
    reloader.watch(
        "tls_certificate",
        vec![cert.to_owned(), key.to_owned()],
        &live,
        move || certified_key(&c, &k),
    );
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConfigError::invalid("turn.tls_cert", e))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(LiveCertificate(live)));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A certificate chain and the private key that matches it. What cannot be used is a
/// configuration error naming the key: at start it stops the relay, on reload the old pair stays.
pub(crate) fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, ConfigError> {
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
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| ConfigError::invalid("turn.tls_cert", format!("with turn.tls_key: {e}")))
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
        buffer: cfg.relay_socket_buffer_bytes,
        reservations: Arc::new(socket::Reservations::new(cfg.max_reservations)),
    })
}
