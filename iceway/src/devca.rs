//! The local certificate authority of `iceway dev --lan`: phones only allow the camera on a
//! secure origin, so the dev stack serves HTTPS with a certificate this CA issues, and the phone
//! trusts the CA once.
//!
//! The CA lives in the dev state directory: `iceway-dev-ca-key.pem` (mode 0600),
//! `iceway-dev-ca.pem` and the same certificate as DER in `iceway-dev-ca.crt` (what phones
//! install most easily). It is created on first use and reused afterwards, so the phone keeps
//! trusting later runs. Each run issues a fresh short-lived server certificate for the LAN
//! address; its key stays in memory.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub const CA_KEY_FILE: &str = "iceway-dev-ca-key.pem";
pub const CA_CERT_FILE: &str = "iceway-dev-ca.pem";
pub const CA_DER_FILE: &str = "iceway-dev-ca.crt";

/// What the CA may sign for (its name constraints): private, link-local, shared (CGNAT, e.g. a
/// tailnet) and loopback addresses, and `localhost`. A phone that trusts the CA then trusts it
/// for nothing on the internet, even if its key leaked from this machine.
const PERMITTED_NETS: [&str; 9] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Phones with a slightly wrong clock still accept a certificate issued just now.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// The dev CA, loaded or created.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    pub cert_pem_path: PathBuf,
    pub cert_der_path: PathBuf,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cert", &self.cert_pem_path)
            .finish_non_exhaustive()
    }
}

/// A server certificate chain (leaf, CA) and its key, for rustls.
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl DevCa {
    /// Loads the CA from `dir`, creating it when neither its key nor its certificate is there.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem_path = dir.join(CA_CERT_FILE);
        let cert_der_path = dir.join(CA_DER_FILE);
        let (issuer, cert_der) = match (read_optional(&key_path)?, read_optional(&cert_pem_path)?) {
            (Some(key_pem), Some(cert_pem)) => {
                let key = KeyPair::from_pem(&key_pem)
                    .with_context(|| format!("reading the CA key {}", key_path.display()))?;
                let der = der_from_pem(&cert_pem).with_context(|| {
                    format!("reading the CA certificate {}", cert_pem_path.display())
                })?;
                let issuer = Issuer::from_ca_cert_der(&der, key).with_context(|| {
                    format!("reading the CA certificate {}", cert_pem_path.display())
                })?;
                (issuer, der)
            }
            (None, None) => {
                let (key, params, cert) = generate_ca()?;
                // The key first: a key without a certificate is an error below, never a CA
                // silently replaced after the phone trusted it.
                write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_new(&cert_pem_path, cert.pem().as_bytes(), 0o644)?;
                (Issuer::new(params, key), cert.der().clone())
            }
            (Some(_), None) | (None, Some(_)) => anyhow::bail!(
                "the dev CA in {} is incomplete (it needs {CA_KEY_FILE} and {CA_CERT_FILE}); \
                 delete both to have a new CA generated, then install it on the phone again",
                dir.display()
            ),
        };
        if !cert_der_path.exists() {
            write_new(&cert_der_path, &cert_der, 0o644)?;
        }
        Ok(Self {
            issuer,
            cert_der,
            cert_pem_path,
            cert_der_path,
        })
    }

    /// SHA-256 of the CA certificate as phones and `openssl x509 -fingerprint` show it.
    pub fn fingerprint_sha256(&self) -> String {
        colon_hex(&Sha256::digest(&self.cert_der))
    }

    /// A server certificate for `ip` (and `localhost`), valid for 30 days from now.
    pub fn issue_server_cert(&self, ip: IpAddr) -> anyhow::Result<ServerCert> {
        if !permitted(ip) {
            anyhow::bail!(
                "{ip} is not a private address: the dev CA signs only for private, link-local and \
                 loopback addresses (phones trust it for nothing else); pass a LAN address with \
                 --bind"
            );
        }
        let mut params = CertificateParams::new(vec![ip.to_string(), "localhost".to_owned()])
            .context("server certificate names")?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("iceway dev {ip}"));
        params.distinguished_name = name;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + SERVER_VALIDITY;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the server certificate")?;
        Ok(ServerCert {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn generate_ca() -> anyhow::Result<(KeyPair, CertificateParams, rcgen::Certificate)> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    // A random suffix keeps the CAs of two machines apart on a phone that trusts both.
    let id: u32 = rand::random();
    name.push(DnType::CommonName, format!("Iceway dev CA {id:08x}"));
    name.push(DnType::OrganizationName, "Iceway development (local only)");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut permitted_subtrees: Vec<GeneralSubtree> = PERMITTED_NETS
        .iter()
        .map(|net| {
            net.parse::<CidrSubnet>()
                .map(GeneralSubtree::IpAddress)
                .map_err(|()| anyhow::anyhow!("bad permitted net {net}"))
        })
        .collect::<anyhow::Result<_>>()?;
    permitted_subtrees.push(GeneralSubtree::DnsName("localhost".into()));
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees,
        excluded_subtrees: Vec::new(),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    Ok((key, params, cert))
}

fn permitted(ip: IpAddr) -> bool {
    PERMITTED_NETS.iter().any(|net| {
        net.parse::<ipnet::IpNet>()
            .is_ok_and(|net| net.contains(&ip))
    })
}

/// 16 random bytes, positive as DER integers must be.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn der_from_pem(pem: &str) -> anyhow::Result<CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    Ok(CertificateDer::from_pem_slice(pem.as_bytes())?)
}

pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_new(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DevCa::load_or_create(dir.path()).expect("create");
        let again = DevCa::load_or_create(dir.path()).expect("load");
        assert_eq!(first.fingerprint_sha256(), again.fingerprint_sha256());
        assert_eq!(
            std::fs::read(&first.cert_der_path).expect("der"),
            first.cert_der.as_ref()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A reused CA still signs: the leaf names it as issuer and the chain ends with it.
        let leaf = again
            .issue_server_cert("192.168.1.20".parse().expect("ip"))
            .expect("leaf");
        assert_eq!(leaf.chain.len(), 2);
        assert_eq!(leaf.chain[1], first.cert_der);
    }

    #[test]
    fn a_half_present_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        DevCa::load_or_create(dir.path()).expect("create");
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("rm");
        let err = DevCa::load_or_create(dir.path()).expect_err("incomplete");
        assert!(err.to_string().contains("incomplete"), "{err}");
        assert!(dir.path().join(CA_KEY_FILE).exists());
    }

    #[test]
    fn the_ca_signs_only_for_private_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::load_or_create(dir.path()).expect("create");
        for ok in [
            "192.168.1.20",
            "10.1.2.3",
            "172.20.0.9",
            "100.100.1.1",
            "fd00::5",
        ] {
            ca.issue_server_cert(ok.parse().expect("ip")).expect(ok);
        }
        for public in ["8.8.8.8", "203.0.113.7", "2001:db8::1", "172.32.0.1"] {
            let Err(err) = ca.issue_server_cert(public.parse().expect("ip")) else {
                panic!("{public} signed");
            };
            assert!(err.to_string().contains("not a private address"), "{err}");
        }
        // The constraint is in the certificate, for the phone to enforce: the nameConstraints
        // extension (OID 2.5.29.30), marked critical.
        let der = ca.cert_der.as_ref();
        let oid = [0x06, 0x03, 0x55, 0x1d, 0x1e, 0x01, 0x01, 0xff];
        assert!(
            der.windows(oid.len()).any(|w| w == oid),
            "no critical nameConstraints"
        );
    }

    #[test]
    fn fingerprint_is_upper_colon_hex() {
        assert_eq!(colon_hex(&[0x0a, 0xff, 0x00]), "0A:FF:00");
    }
}
