//! `iceway dev`: signaling (with the credential API and the browser pages) and STUN/TURN in one
//! process, on loopback or a given address, keyed with the dev secrets. Prints the URLs and a
//! camera and a viewer token; `--json` prints the same as one JSON line for scripts and tests.
//!
//! `--lan` serves the same on the machine's LAN address over HTTPS (a certificate from the dev CA,
//! see `devca`), because phones only allow the camera on a secure origin, and prints the URLs as
//! QR codes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use iceway_auth::Role;
use iceway_service::{AdminServer, Shutdown};
use iceway_signal::{Config as SignalServerConfig, SignalConfig, SignalServer};
use iceway_turn::config::{Config as TurnServerConfig, TurnConfig};
use iceway_turn::server::TurnServer;
use serde::Serialize;

use crate::devca::DevCa;
use crate::devstate::DevState;
use crate::tls_front::TlsFront;
use crate::url_host;
use crate::{lan, qr, token};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address every listener binds and the URLs name [default: 127.0.0.1; with --lan the
    /// detected LAN address]. Browsers only allow the camera on http://localhost or https: use
    /// --lan for phones.
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Serve on this machine's LAN address over HTTPS/WSS with a certificate from the local dev
    /// CA (kept in the state directory; install it on the phone once), and print the URLs as QR
    /// codes. Development only.
    #[arg(long)]
    pub lan: bool,
    /// With --lan: also write the camera and viewer URLs' QR codes as `camera.pgm` and
    /// `viewer.pgm` into DIR.
    #[arg(long, value_name = "DIR", requires = "lan")]
    pub qr_dir: Option<PathBuf>,
    /// HTTP/WebSocket port of signaling and the browser pages (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// STUN/TURN port, UDP and TCP (0: any free port).
    #[arg(long, default_value_t = 3478)]
    pub turn_port: u16,
    /// Relay ports TURN allocates from, LO-HI.
    #[arg(long, default_value = "49152-65535")]
    pub relay_range: String,
    /// Camera id of the printed tokens.
    #[arg(long, default_value = "cam1")]
    pub camera: String,
    /// Viewer id of the printed viewer token.
    #[arg(long, default_value = "viewer1")]
    pub viewer: String,
    /// Lifetime of the printed tokens.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// Lifetime of the TURN credentials handed out with each welcome.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub turn_ttl: Duration,
    /// Viewers one camera may have at once (signal.max_viewers_per_camera; benchmarks raise it).
    #[arg(long)]
    pub max_viewers_per_camera: Option<usize>,
    /// Directory of the browser pages (default: client/web of this source tree).
    #[arg(long)]
    pub web_root: Option<PathBuf>,
    /// Print one JSON line with the URLs and tokens (for scripts) instead of the text banner.
    #[arg(long)]
    pub json: bool,
}

/// What `iceway dev` prints.
#[derive(Debug, Serialize)]
pub struct DevInfo {
    pub http: String,
    pub signal_url: String,
    pub camera_url: String,
    pub viewer_url: String,
    pub camera_id: String,
    pub viewer_id: String,
    pub camera_token: String,
    pub viewer_token: String,
    pub turn_urls: Vec<String>,
    pub turn_admin: Option<String>,
    pub signal_admin: String,
    pub state_dir: String,
    /// With --lan: the dev CA certificate (PEM) the phone must trust, the same as DER, and its
    /// SHA-256 fingerprint as the phone shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_der: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint_sha256: Option<String>,
    /// With --qr-dir: the PGM images of the camera and viewer URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera_qr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewer_qr: Option<String>,
}

const DEFAULT_BIND: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const DRAIN: Duration = Duration::from_secs(1);

pub async fn run(args: DevArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let state = DevState::load_or_create(&state_dir)?;
    let bind = if args.lan {
        lan::choose(args.bind, lan::detect)?
    } else {
        args.bind.unwrap_or(DEFAULT_BIND)
    };
    let ca = if args.lan {
        Some(DevCa::load_or_create(&state.dir).context("the dev CA")?)
    } else {
        None
    };
    let host = url_host(bind);
    // Metrics are for this machine; phones on the LAN need only the pages, signaling and TURN.
    let admin_ip = if args.lan { DEFAULT_BIND } else { bind };

    // TURN refuses relaying to private and loopback addresses unless allowed; here every peer
    // (a relayed address of this very server, or a host on the same machine) is on `bind`.
    let peer_net = if bind.is_loopback() {
        match bind {
            IpAddr::V4(_) => "127.0.0.0/8".parse()?,
            IpAddr::V6(_) => "::1/128".parse()?,
        }
    } else {
        ipnet::IpNet::from(bind)
    };
    let mut turn_cfg = TurnServerConfig {
        turn: TurnConfig {
            listen: vec![SocketAddr::new(bind, args.turn_port)],
            tls_listen: Vec::new(),
            realm: "iceway".into(),
            relay_range: args.relay_range.clone(),
            allow_peers: vec![peer_net],
            threads: 1,
            ..TurnConfig::default()
        },
        ..TurnServerConfig::default()
    };
    turn_cfg.turn_credentials.secret_file = Some(state.turn_secret_path());
    turn_cfg.drain.timeout = DRAIN;
    // Every socket is bound before any URL is printed: port 0 means the kernel's pick, read back
    // from the bound server, with no window for another process to take it.
    let turn_registry = iceway_service::new_registry("turn", env!("CARGO_PKG_VERSION"));
    let turn_server = TurnServer::bind(&turn_cfg, &turn_registry)
        .await
        .context("starting STUN/TURN")?;
    let turn_port = turn_server.local_addrs()[0].port();
    let turn_shutdown = Shutdown::new();
    let turn_admin = AdminServer::bind(
        SocketAddr::new(admin_ip, 0),
        turn_registry,
        turn_shutdown.clone(),
    )
    .await
    .context("TURN admin listener")?
    .spawn()?;
    let turn_urls = vec![
        format!("stun:{host}:{turn_port}"),
        format!("turn:{host}:{turn_port}?transport=udp"),
        format!("turn:{host}:{turn_port}?transport=tcp"),
    ];

    let web_root = args.web_root.clone().unwrap_or_else(default_web_root);
    // With --lan signaling listens on loopback only and the HTTPS front takes the public port.
    let signal_listen = if args.lan {
        SocketAddr::new(DEFAULT_BIND, 0)
    } else {
        SocketAddr::new(bind, args.http_port)
    };
    let mut signal_cfg = SignalServerConfig {
        signal: SignalConfig {
            listen: signal_listen,
            web_root: web_root.clone(),
            ..SignalConfig::default()
        },
        ..SignalServerConfig::default()
    };
    if let Some(n) = args.max_viewers_per_camera {
        signal_cfg.signal.max_viewers_per_camera = n;
    }
    signal_cfg.jwt.secret_file = Some(state.jwt_secret_path());
    signal_cfg.turn_credentials.secret_file = Some(state.turn_secret_path());
    signal_cfg.turn_credentials.urls = turn_urls.clone();
    signal_cfg.turn_credentials.ttl = args.turn_ttl;
    signal_cfg.drain.timeout = DRAIN;

    let mut turn_task = tokio::spawn(turn_server.run(turn_shutdown.clone()));

    let registry = iceway_service::new_registry("signal", env!("CARGO_PKG_VERSION"));
    let server = SignalServer::bind(&signal_cfg, &registry)
        .await
        .context("starting signaling")?;
    let signal_shutdown = Shutdown::new();
    let (http_addr, secure) = match &ca {
        Some(ca) => {
            let cert = ca
                .issue_server_cert(bind)
                .context("the dev server certificate")?;
            let front = TlsFront::bind(
                SocketAddr::new(bind, args.http_port),
                cert,
                server.local_addr(),
            )
            .await?;
            let addr = front.local_addr()?;
            tokio::spawn(front.run(signal_shutdown.clone()));
            (addr, true)
        }
        None => (server.local_addr(), false),
    };
    let signal_admin = AdminServer::bind(
        SocketAddr::new(admin_ip, 0),
        registry,
        signal_shutdown.clone(),
    )
    .await
    .context("signal admin listener")?
    .spawn()?;
    let signal_task = tokio::spawn(server.run(signal_shutdown.clone()));

    wait_ready(&turn_shutdown, &turn_task).await?;
    if !web_root.join("camera.html").is_file() {
        tracing::warn!(web_root = %web_root.display(), "no camera.html there: pass --web-root");
    }

    let (http_scheme, ws_scheme) = if secure {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let http = format!("{http_scheme}://{}", url_host_port(http_addr));
    let signal_url = format!("{ws_scheme}://{}/v1/ws", url_host_port(http_addr));
    let camera_token = token::mint(&state, Role::Camera, &args.camera, &[], args.token_ttl);
    let viewer_token = token::mint(
        &state,
        Role::Viewer,
        &args.viewer,
        std::slice::from_ref(&args.camera),
        args.token_ttl,
    );
    let mut info = DevInfo {
        camera_url: format!("{http}/camera?token={camera_token}"),
        viewer_url: format!("{http}/viewer?token={viewer_token}&camera={}", args.camera),
        http,
        signal_url,
        camera_id: args.camera.clone(),
        viewer_id: args.viewer.clone(),
        camera_token,
        viewer_token,
        turn_urls,
        turn_admin: Some(format!("http://{}", url_host_port(turn_admin))),
        signal_admin: format!("http://{}", url_host_port(signal_admin)),
        state_dir: state.dir.display().to_string(),
        ca_cert: ca.as_ref().map(|ca| ca.cert_pem_path.display().to_string()),
        ca_cert_der: ca.as_ref().map(|ca| ca.cert_der_path.display().to_string()),
        ca_fingerprint_sha256: ca.as_ref().map(DevCa::fingerprint_sha256),
        camera_qr: None,
        viewer_qr: None,
    };
    if let Some(dir) = &args.qr_dir {
        write_qr_files(&mut info, dir)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print_banner(&info);
        if args.lan {
            print_lan_banner(&info)?;
        }
    }

    let stop = Shutdown::new();
    stop.listen_for_signals();
    let turn_ended = tokio::select! {
        _ = stop.draining() => None,
        r = &mut turn_task => Some(r),
    };
    signal_shutdown.begin_drain();
    turn_shutdown.begin_drain();
    if let Some(r) = turn_ended {
        // TURN only stops on its own after an error; the rest of the stack is useless without it.
        let _ = tokio::time::timeout(DRAIN * 5, signal_task).await;
        return match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("the TURN server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the TURN server stopped")),
            Err(e) => Err(anyhow::anyhow!("the TURN server task failed: {e}")),
        };
    }
    let _ = tokio::time::timeout(DRAIN * 5, async {
        let _ = signal_task.await;
        let _ = turn_task.await;
    })
    .await;
    Ok(())
}

/// TURN's readiness flag is set once its sockets are bound; a start-up error ends its task.
async fn wait_ready(
    turn: &Shutdown,
    task: &tokio::task::JoinHandle<Result<(), iceway_turn::server::ServeError>>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        if turn.is_ready() {
            return Ok(());
        }
        if task.is_finished() {
            anyhow::bail!("the TURN server stopped while starting (see the log above)");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the TURN server did not become ready within {READY_TIMEOUT:?}");
        }
        tick.tick().await;
    }
}

fn print_banner(info: &DevInfo) {
    println!(
        "\nIceway dev stack is running (Ctrl-C to stop).\n\n\
         Open the camera on one device (or tab):\n  {}\n\n\
         and watch it from another:\n  {}\n\n\
         Signaling:  {}\n\
         STUN/TURN:  {}\n\
         Metrics:    {}/metrics\n\
         Dev keys:   {}\n\n\
         Camera token ({}):\n  {}\n\
         Viewer token ({} -> {}):\n  {}\n\n\
         More tokens: iceway token --role viewer --sub ID --cams {} --ttl 1h\n\
         Rust clients:\n  iceway-client --signal {} --token <camera token> camera\n  \
         iceway-client --signal {} --token <viewer token> viewer --camera {}\n",
        info.camera_url,
        info.viewer_url,
        info.signal_url,
        info.turn_urls.join(" "),
        info.signal_admin,
        info.state_dir,
        info.camera_id,
        info.camera_token,
        info.viewer_id,
        info.camera_id,
        info.viewer_token,
        info.camera_id,
        info.signal_url,
        info.signal_url,
        info.camera_id,
    );
}

fn write_qr_files(info: &mut DevInfo, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let camera = dir.join("camera.pgm");
    let viewer = dir.join("viewer.pgm");
    qr::write_pgm(&info.camera_url, &camera)?;
    qr::write_pgm(&info.viewer_url, &viewer)?;
    info.camera_qr = Some(camera.display().to_string());
    info.viewer_qr = Some(viewer.display().to_string());
    Ok(())
}

fn print_lan_banner(info: &DevInfo) -> anyhow::Result<()> {
    let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
    println!(
        "Phones: install the dev CA once and trust it (docs/clients.md, \"From a phone\"):\n  \
         {}\n  {} (DER, for phones)\n\
         and check that the phone shows this SHA-256 fingerprint:\n  {}\n\n\
         Scan with the camera phone:\n{}\n\
         Scan with the viewer phone:\n{}",
        or_empty(&info.ca_cert),
        or_empty(&info.ca_cert_der),
        or_empty(&info.ca_fingerprint_sha256),
        qr::terminal(&info.camera_url)?,
        qr::terminal(&info.viewer_url)?,
    );
    Ok(())
}

fn url_host_port(addr: SocketAddr) -> String {
    format!("{}:{}", url_host(addr.ip()), addr.port())
}

/// The pages of this source tree when it is there (`cargo run` from anywhere), else
/// `client/web` under the working directory.
fn default_web_root() -> PathBuf {
    let source = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../client/web"));
    if source.join("camera.html").is_file() {
        source
    } else {
        PathBuf::from("client/web")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(
            url_host_port("[::1]:8080".parse().expect("addr")),
            "[::1]:8080"
        );
        assert_eq!(
            url_host_port("127.0.0.1:8080".parse().expect("addr")),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn json_without_lan_has_no_ca_or_qr_keys() {
        let info = DevInfo {
            http: String::new(),
            signal_url: String::new(),
            camera_url: String::new(),
            viewer_url: String::new(),
            camera_id: String::new(),
            viewer_id: String::new(),
            camera_token: String::new(),
            viewer_token: String::new(),
            turn_urls: Vec::new(),
            turn_admin: None,
            signal_admin: String::new(),
            state_dir: String::new(),
            ca_cert: None,
            ca_cert_der: None,
            ca_fingerprint_sha256: None,
            camera_qr: None,
            viewer_qr: None,
        };
        let json = serde_json::to_value(&info).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for lan_only in [
            "ca_cert",
            "ca_cert_der",
            "ca_fingerprint_sha256",
            "camera_qr",
        ] {
            assert!(!keys.contains(&lan_only), "{keys:?}");
        }
        // What scripts already read stays, turn_admin included even when null.
        assert!(keys.contains(&"turn_admin") && keys.contains(&"state_dir"));
    }
}
