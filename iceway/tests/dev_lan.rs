//! `iceway dev --lan` as a phone on the home network sees it, inside a network namespace this
//! test creates whose only route out is a veth link with 10.213.7.1: the stack must find that
//! address itself, serve the pages and signaling over HTTPS/WSS with a certificate only its dev
//! CA vouches for, hand out TURN servers on that address, print the CA's fingerprint and write
//! QR codes that decode to the URLs. A second run keeps the same CA. Needs root, `ip`, `curl`
//! and `zbarimg` (CI has them); traffic stays inside the namespace, which is deleted on drop.

use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use iceway_testkit::netns::Netns;
use iceway_testkit::{Proc, read_first_line, require, which};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

const LAN_IP: &str = "10.213.7.1";
const INSTALL: &str = "scripts/install-test-deps.sh";

/// A namespace whose default route leaves through `v0` (10.213.7.1/24).
struct Lan {
    ns: Netns,
}

impl Lan {
    fn new() -> Self {
        let ns = Netns::new("iwlan");
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["addr", "add", &format!("{LAN_IP}/24"), "dev", "v0"]);
        for link in ["v0", "v1"] {
            ns.ip(&["link", "set", link, "up"]);
        }
        // The route a phone's packets would come back on; its source address is what
        // `--lan` must pick.
        ns.ip(&["route", "add", "default", "dev", "v0"]);
        Self { ns }
    }

    /// `program args…` run inside the namespace.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.ns.run(program, args)
    }

    /// A TCP connection to `addr` from inside the namespace.
    fn connect(&self, addr: String) -> TcpStream {
        self.ns
            .enter(move || TcpStream::connect(addr.as_str()).expect("connect in namespace"))
    }
}

/// `iceway dev --lan --json` in the namespace and the JSON line it printed.
fn start_dev(lan: &Lan, state: &Path, qr: &Path) -> (Proc, serde_json::Value) {
    // `ip netns exec` execs iceway, so the pid Proc kills is iceway's.
    let mut proc = Proc::spawn(
        lan.ns
            .command(env!("CARGO_BIN_EXE_iceway"))
            .arg("--state-dir")
            .arg(state)
            .args([
                "dev",
                "--lan",
                "--json",
                "--http-port",
                "0",
                "--turn-port",
                "0",
                "--qr-dir",
            ])
            .arg(qr)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
        "iceway dev --lan",
    );
    let stdout = proc.child_mut().stdout.take().expect("stdout");
    let line = read_first_line(stdout, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("iceway dev --lan did not print its URLs within 30 s"));
    let info = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    (proc, info)
}

fn field(info: &serde_json::Value, key: &str) -> String {
    info[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {info}"))
        .to_owned()
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

/// The `welcome` frame signaling sends over WSS, trusting only the dev CA.
async fn welcome_over_wss(lan: &Lan, signal_url: &str, ca_pem: &Path, token: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(ca_pem).expect("CA pem");
    roots.add(ca).expect("CA into root store");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let authority = signal_url
        .strip_prefix("wss://")
        .and_then(|rest| rest.split('/').next())
        .expect("wss URL");
    let tcp = lan.connect(authority.to_owned());
    tcp.set_nonblocking(true).expect("nonblocking");
    let tcp = tokio::net::TcpStream::from_std(tcp).expect("tokio stream");
    let ip: IpAddr = LAN_IP.parse().expect("ip");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .expect("TLS to the dev stack, trusting only its CA");
    let (mut ws, _) = tokio_tungstenite::client_async(signal_url, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
    ws.send(Message::text(auth)).await.expect("send auth");
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a frame within 10 s")
        .expect("socket open")
        .expect("frame");
    frame.into_text().expect("text frame").to_string()
}

fn zbar(image: &str) -> String {
    let out = Command::new("zbarimg")
        .args(["--raw", "-q", image])
        .output()
        .expect("zbarimg");
    stdout_of(&out, "zbarimg").trim_end().to_owned()
}

fn openssl_fingerprint(file: &str, form: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-inform", form])
        .args(["-in", file])
        .output()
        .expect("openssl");
    let text = stdout_of(&out, "openssl x509");
    text.trim()
        .split_once('=')
        .map(|(_, fp)| fp.to_owned())
        .unwrap_or_else(|| panic!("openssl printed {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_on_the_lan_gets_https_pages_wss_signaling_and_scannable_urls() {
    require("curl", INSTALL);
    require("zbarimg", INSTALL);
    let lan = Lan::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let qr = dir.path().join("qr");
    let (mut dev, info) = start_dev(&lan, &state, &qr);

    let camera_url = field(&info, "camera_url");
    let viewer_url = field(&info, "viewer_url");
    let signal_url = field(&info, "signal_url");
    let host = format!("https://{LAN_IP}:");
    assert!(camera_url.starts_with(&host), "{camera_url}");
    assert!(viewer_url.starts_with(&host), "{viewer_url}");
    assert!(
        signal_url.starts_with(&format!("wss://{LAN_IP}:")),
        "{signal_url}"
    );
    assert!(field(&info, "http").starts_with(&host), "{}", info["http"]);

    // The camera page, with the dev CA as the only trust anchor.
    let ca_pem = field(&info, "ca_cert");
    let page = lan.run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "--cacert",
            &ca_pem,
            &camera_url,
        ],
    );
    let page = stdout_of(&page, "curl --cacert the dev CA");
    assert!(page.contains("<title>Iceway camera</title>"), "{page}");

    // Without the CA the certificate is refused (curl exit 60: peer certificate not verified).
    let untrusted = lan.run("curl", &["-sS", "--max-time", "10", &camera_url]);
    assert_eq!(
        untrusted.status.code(),
        Some(60),
        "expected a certificate error, got {:?}: {}",
        untrusted.status,
        String::from_utf8_lossy(&untrusted.stderr)
    );

    // The fingerprint a phone shows is the one printed, for the PEM and the DER file alike.
    let fingerprint = field(&info, "ca_fingerprint_sha256");
    if which("openssl").is_some() {
        assert_eq!(openssl_fingerprint(&ca_pem, "PEM"), fingerprint);
        assert_eq!(
            openssl_fingerprint(&field(&info, "ca_cert_der"), "DER"),
            fingerprint
        );
    }

    // Signaling over WSS: welcome, with TURN on the LAN address.
    let welcome = welcome_over_wss(
        &lan,
        &signal_url,
        Path::new(&ca_pem),
        &field(&info, "camera_token"),
    )
    .await;
    let welcome: serde_json::Value =
        serde_json::from_str(&welcome).unwrap_or_else(|e| panic!("{e}: {welcome}"));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let ice_urls: Vec<String> = welcome["iceServers"]
        .as_array()
        .expect("iceServers")
        .iter()
        .flat_map(|s| s["urls"].as_array().cloned().unwrap_or_default())
        .map(|u| u.as_str().expect("url string").to_owned())
        .collect();
    assert!(!ice_urls.is_empty(), "{welcome}");
    for url in &ice_urls {
        assert!(url.contains(&format!(":{LAN_IP}:")), "{url} in {welcome}");
    }

    // The QR codes a phone scans decode to exactly the printed URLs.
    assert_eq!(zbar(&field(&info, "camera_qr")), camera_url);
    assert_eq!(zbar(&field(&info, "viewer_qr")), viewer_url);

    // A second run keeps the CA the phone already trusts.
    dev.child_mut().kill().expect("kill iceway dev");
    dev.wait();
    let (_again, info) = start_dev(&lan, &state, &qr);
    assert_eq!(field(&info, "ca_fingerprint_sha256"), fingerprint);
    assert_eq!(field(&info, "ca_cert"), ca_pem);
}
