//! Secrets and certificates replaced under a running relay (issue 14): the rotation of
//! docs/auth.md done on the files themselves, as a Kubernetes Secret update or an operator
//! does it, with live allocations and connections watched throughout. No restart.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stun::attributes::*;
use stun::message::*;

const NEW_SECRET: &str = "rotated-secret-0123456789abcdef";
/// Ten times what a reload takes here: a bound on the wait, not a measure of speed.
const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// A REST credential (`expiry:user`) minted with `secret`, as iceway-auth mints it.
fn rest(secret: &str, user: &str) -> (String, String) {
    let username = format!("{}:{user}", unix_now() + 3600);
    let password = iceway_auth::turn_credential::password(secret.as_bytes(), &username);
    (username, password)
}

fn allocate_with(server: SocketAddr, cred: &(String, String)) -> (Client, String, Message) {
    let client = Client::new(server);
    let nonce = client.nonce();
    let mut m = request(METHOD_ALLOCATE);
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = client.ask(&sign(m, &cred.0, &cred.1, &nonce));
    (client, nonce, r)
}

fn refresh(client: &Client, nonce: &str, cred: &(String, String)) -> Message {
    let mut m = request(METHOD_REFRESH);
    m.add(ATTR_LIFETIME, &600u32.to_be_bytes());
    client.ask(&sign(m, &cred.0, &cred.1, nonce))
}

/// Repeats `attempt` until it holds, within [`RELOAD_BOUND`].
fn eventually(what: &str, mut attempt: impl FnMut() -> bool) {
    let deadline = Instant::now() + RELOAD_BOUND;
    while !attempt() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RELOAD_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reload_metric(server: &TurnServer, what: &str, series: &str) -> f64 {
    server.metric(&format!("{series}{{what=\"{what}\"}}"))
}

fn reloads(server: &TurnServer, what: &str, result: &str) -> f64 {
    server.metric(&format!(
        "iceway_reloads_total{{result=\"{result}\",what=\"{what}\"}}"
    ))
}

#[test]
fn a_rotated_turn_secret_is_taken_while_an_allocation_lives_and_the_removed_one_is_refused() {
    let server = TurnServer::start(ServerOptions::default());
    let path = server.secret_file.path().to_owned();
    // Present from the start, before any reload.
    assert_eq!(reloads(&server, "turn_secrets", "ok"), 0.0);
    assert_eq!(
        reload_metric(&server, "turn_secrets", "iceway_reload_successful"),
        1.0
    );
    let started = reload_metric(
        &server,
        "turn_secrets",
        "iceway_reload_last_success_timestamp_seconds",
    );
    assert!(started > 0.0);

    let old = rest(SECRET, "carol");
    let (live, nonce, r) = allocate_with(server.addr, &old);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "allocate: {r}");

    // Step 2 of the rotation: the new secret first (it mints), the old one kept.
    std::fs::write(&path, format!("{NEW_SECRET}\n{SECRET}\n")).expect("rewrite");
    eventually("a credential of the new secret accepted", || {
        let (_c, _n, r) = allocate_with(server.addr, &rest(NEW_SECRET, "dave"));
        r.typ.class == CLASS_SUCCESS_RESPONSE
    });
    assert_eq!(reloads(&server, "turn_secrets", "ok"), 1.0);
    let r = refresh(&live, &nonce, &old);
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "refresh after step 2: {r}"
    );
    let (_c, _n, r) = allocate_with(server.addr, &rest(SECRET, "erin"));
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "the old secret still verifies"
    );

    // Step 3: the old secret removed. New allocations with it are refused; the allocation made
    // with it keeps the key it was created with and goes on refreshing.
    std::fs::write(&path, format!("{NEW_SECRET}\n")).expect("rewrite");
    eventually("a credential of the removed secret refused", || {
        let (_c, _n, r) = allocate_with(server.addr, &rest(SECRET, "frank"));
        error_code(&r) == Some(401)
    });
    let r = refresh(&live, &nonce, &old);
    assert_eq!(
        r.typ.class, CLASS_SUCCESS_RESPONSE,
        "refresh after step 3: {r}"
    );

    // A file that does not parse (a secret too short) keeps the previous set and says so.
    std::fs::write(&path, "tooShortXyz\n").expect("rewrite");
    eventually("the failed reload counted", || {
        reloads(&server, "turn_secrets", "error") == 1.0
    });
    assert_eq!(
        reload_metric(&server, "turn_secrets", "iceway_reload_successful"),
        0.0
    );
    let (_c, _n, r) = allocate_with(server.addr, &rest(NEW_SECRET, "grace"));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "the previous set kept");
    let log = server.wait_log("reload failed; keeping the previous set", RELOAD_BOUND);
    let text = log.to_string();
    assert!(text.contains("line 1"), "the reason names the line: {text}");
    assert!(
        !text.contains("tooShortXyz"),
        "never the secret itself: {text}"
    );

    // SIGHUP re-reads even what did not change; with the file fixed, the set is good again.
    std::fs::write(&path, format!("{NEW_SECRET}\n")).expect("rewrite");
    eventually("the fixed file read", || {
        reload_metric(&server, "turn_secrets", "iceway_reload_successful") == 1.0
    });
    let before = reloads(&server, "turn_secrets", "ok");
    // SAFETY: kill(2) on the pid of a child this test started and still holds.
    let rc = unsafe { libc::kill(server.proc.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
    server.wait_log("SIGHUP: re-reading secrets and certificates", RELOAD_BOUND);
    eventually("SIGHUP counted as a reload", || {
        reloads(&server, "turn_secrets", "ok") == before + 1.0
    });
    assert!(
        reload_metric(
            &server,
            "turn_secrets",
            "iceway_reload_last_success_timestamp_seconds"
        ) >= started
    );
    // The relay is still the same process, serving.
    live.binding_ok();
}

fn tls_client(cert: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection trusting only `cert`, or the handshake error.
fn connect(
    server: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> Result<Tls, String> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(tls_client(cert), name).expect("client");
    let tcp = TcpStream::connect(server).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

fn binding_over(tls: &mut Tls) {
    let m = request(METHOD_BINDING);
    tls.write_all(&m.raw).expect("send over TLS");
    let mut raw = vec![0u8; 20];
    tls.read_exact(&mut raw).expect("the response header");
    let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
    raw.resize(20 + len, 0);
    tls.read_exact(&mut raw[20..]).expect("the response body");
    let mut r = Message::new();
    r.unmarshal_binary(&raw).expect("decodes");
    assert_eq!(r.typ, BINDING_SUCCESS, "Binding over TLS: {r}");
}

#[test]
fn a_swapped_certificate_is_served_to_new_handshakes_and_open_connections_keep_theirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(&cert_path, first.cert.pem()).expect("write cert");
    std::fs::write(&key_path, first.signing_key.serialize_pem()).expect("write key");
    let server = TurnServer::start(ServerOptions {
        args: vec![
            "--tls-cert",
            cert_path.to_str().expect("utf8 path"),
            "--tls-key",
            key_path.to_str().expect("utf8 path"),
        ],
        env: vec![("ICEWAY_TURN__TLS_LISTEN", "127.0.0.1:0".into())],
        ..Default::default()
    });
    let addr = server.tls_addr.expect("TLS listener");
    let mut open = connect(addr, first.cert.der()).expect("handshake with the first certificate");
    binding_over(&mut open);

    // A renewal writes a new pair; the key first would briefly mismatch the old certificate,
    // which the reload refuses and then takes once both are in place.
    let second = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    std::fs::write(&key_path, second.signing_key.serialize_pem()).expect("write key");
    std::fs::write(&cert_path, second.cert.pem()).expect("write cert");
    eventually("new handshakes get the second certificate", || {
        connect(addr, second.cert.der()).is_ok()
    });
    let refused = connect(addr, first.cert.der()).err();
    assert!(
        refused.is_some(),
        "the first certificate is no longer served"
    );
    // The connection made before the swap is untouched.
    binding_over(&mut open);
    assert_eq!(
        reload_metric(&server, "tls_certificate", "iceway_reload_successful"),
        1.0
    );
    assert!(reloads(&server, "tls_certificate", "ok") >= 1.0);
}
