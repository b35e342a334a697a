//! The HTTPS/WSS front of `iceway dev --lan`: signaling serves plain HTTP on loopback and this
//! listener on the LAN address terminates TLS and passes the bytes through unchanged.
//!
//! Signaling therefore sees every LAN client as coming from 127.0.0.1: its per-address limits
//! (`max_connections_per_ip`, upgrades and credential-API requests per minute) apply to all phones
//! together. Their defaults are far above what a few test devices use, which is all this is for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iceway_service::Shutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::devca::ServerCert;

/// A client that has not finished its handshake by then (a port scan, a stalled peer) is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open connections at most, so that a stranger on the LAN cannot exhaust file descriptors.
const MAX_CONNECTIONS: usize = 256;

pub struct TlsFront {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
}

impl TlsFront {
    pub async fn bind(
        addr: SocketAddr,
        cert: ServerCert,
        backend: SocketAddr,
    ) -> anyhow::Result<Self> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .context("the dev server certificate")?;
        // Bytes pass through to an HTTP/1.1 server: HTTP/2 would not reach it as such.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = iceway_service::net::tcp_listener(addr)
            .with_context(|| format!("cannot listen on {addr} (HTTPS)"))?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            backend,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("the HTTPS listener's address")
    }

    /// Accepts until `shutdown` drains; connections already open go on until either side closes.
    pub async fn run(self, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.draining() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "HTTPS front full ({MAX_CONNECTIONS} connections): refused");
                continue;
            };
            let acceptor = self.acceptor.clone();
            let backend = self.backend;
            tokio::spawn(async move {
                if let Err(e) = serve(tcp, acceptor, backend).await {
                    tracing::debug!(%peer, error = %format!("{e:#}"), "HTTPS connection ended");
                }
                drop(slot);
            });
        }
    }
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, backend: SocketAddr) -> anyhow::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let mut upstream = TcpStream::connect(backend)
        .await
        .with_context(|| format!("connecting to signaling on {backend}"))?;
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut tls, &mut upstream)
        .await
        .context("relaying")?;
    Ok(())
}
