//! The client side of TURN over TLS (RFC 8656 §3.1): which server certificates to trust and the
//! name to ask for. The connection itself is driven in `transport.rs`, inside the worker's poll
//! loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Which server certificates a TLS client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates that chain to one of the PEM certificates in this file (a bench CA, or the
    /// server's self-signed certificate itself).
    CaFile(PathBuf),
    /// Any certificate: for benchmarks on your own machine only.
    Insecure,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read the CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in the CA file {0}")]
    NoCertificate(PathBuf),
    #[error("unusable certificate in the CA file {path}: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0:?} is not a DNS name or IP address for SNI")]
    ServerName(String),
    #[error("TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS client configuration shared by every connection of a run (and by the ones churn
/// reopens).
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// `server_name` is sent as SNI (a DNS name) and is what the certificate must name.
    pub fn new(trust: &Trust, server_name: &str) -> Result<Self, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match trust {
            Trust::CaFile(path) => builder
                .with_root_certificates(roots(path)?)
                .with_no_client_auth(),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        // Every allocation is a new client, as in the field: a full handshake each, no tickets.
        config.resumption = Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsConfigError::ServerName(server_name.to_owned()))?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A client connection with its ClientHello queued.
    pub fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

fn roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let read_err = |source| TlsConfigError::ReadCa {
        path: path.to_owned(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(read_err)? {
        roots
            .add(cert.map_err(read_err)?)
            .map_err(|source| TlsConfigError::BadCa {
                path: path.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCertificate(path.to_owned()));
    }
    Ok(roots)
}

/// `--tls-insecure`: accepts any certificate for any name, but still checks that the server
/// holds the key of the certificate it sent (the handshake costs the server the same).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for "localhost" and a server configuration that presents it.
    pub(crate) struct TestServer {
        pub cert_pem: String,
        pub config: Arc<rustls::ServerConfig>,
    }

    pub(crate) fn test_server() -> TestServer {
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("self-signed");
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .expect("a PKCS#8 key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        TestServer {
            cert_pem: cert.cert.pem(),
            config: Arc::new(config),
        }
    }

    /// Runs a handshake in memory; the client's error if it refuses the server.
    fn handshake(client: &TlsClient, server: &TestServer) -> Result<(), rustls::Error> {
        let mut c = client.connection().expect("client connection");
        let mut s = rustls::ServerConnection::new(server.config.clone()).expect("server");
        for _ in 0..10 {
            let mut wire = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut wire).expect("to memory");
            }
            if !wire.is_empty() {
                s.read_tls(&mut wire.as_slice()).expect("from memory");
                // The server's own error is the alert it sends; the client reports it below.
                let _ = s.process_new_packets();
            }
            let mut wire = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut wire).expect("to memory");
            }
            if !wire.is_empty() {
                c.read_tls(&mut wire.as_slice()).expect("from memory");
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish in 10 rounds");
    }

    fn ca_file(pem: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, pem).expect("write CA");
        (dir, path)
    }

    #[test]
    fn trusts_the_certificate_in_the_ca_file() {
        let server = test_server();
        let (_dir, path) = ca_file(&server.cert_pem);
        let client = TlsClient::new(&Trust::CaFile(path), "localhost").expect("client");
        handshake(&client, &server).expect("trusted");
    }

    #[test]
    fn refuses_a_certificate_from_another_ca_or_for_another_name() {
        let server = test_server();
        let other = test_server();
        let (_dir, path) = ca_file(&other.cert_pem);
        let client = TlsClient::new(&Trust::CaFile(path), "localhost").expect("client");
        let err = handshake(&client, &server).expect_err("unknown issuer");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");

        let (_dir, path) = ca_file(&server.cert_pem);
        let client = TlsClient::new(&Trust::CaFile(path), "turn.example.com").expect("client");
        let err = handshake(&client, &server).expect_err("wrong name");
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn insecure_accepts_any_certificate() {
        let server = test_server();
        let client = TlsClient::new(&Trust::Insecure, "not-the-name.invalid").expect("client");
        handshake(&client, &server).expect("accepted");
    }

    #[test]
    fn a_ca_file_without_certificates_or_a_bad_name_is_refused() {
        let (_dir, path) = ca_file("not a certificate\n");
        assert!(matches!(
            TlsClient::new(&Trust::CaFile(path), "localhost"),
            Err(TlsConfigError::NoCertificate(_))
        ));
        assert!(matches!(
            TlsClient::new(&Trust::CaFile("/nonexistent/ca.pem".into()), "localhost"),
            Err(TlsConfigError::ReadCa { .. })
        ));
        assert!(matches!(
            TlsClient::new(&Trust::Insecure, "not a name"),
            Err(TlsConfigError::ServerName(_))
        ));
    }
}
