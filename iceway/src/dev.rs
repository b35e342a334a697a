//! `iceway dev`: signaling (with the credential API and the browser pages) and STUN/TURN in one
//! process, on loopback or a given address, keyed with the dev secrets. Prints the URLs and a
//! camera and a viewer token; `--json` prints the same as one JSON line for scripts and tests.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use iceway_auth::Role;
use iceway_service::{AdminServer, Shutdown};
use iceway_signal::{Config as SignalServerConfig, SignalConfig, SignalServer};
use iceway_turn::config::{Config as TurnServerConfig, TurnConfig};
use iceway_turn::server::TurnServer;
use serde::Serialize;

use crate::devstate::DevState;
use crate::token;
use crate::url_host;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address every listener binds and the URLs name (e.g. a LAN address to try it from a phone;
    /// browsers only allow the camera on http://localhost or https).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
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
}

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const DRAIN: Duration = Duration::from_secs(1);

pub async fn run(args: DevArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let state = DevState::load_or_create(&state_dir)?;
    let host = url_host(args.bind);

    // TURN refuses relaying to private and loopback addresses unless allowed; here every peer
    // (a relayed address of this very server, or a host on the same machine) is on `bind`.
    let peer_net = if args.bind.is_loopback() {
        match args.bind {
            IpAddr::V4(_) => "127.0.0.0/8".parse()?,
            IpAddr::V6(_) => "::1/128".parse()?,
        }
    } else {
        ipnet::IpNet::from(args.bind)
    };
    let mut turn_cfg = TurnServerConfig {
        turn: TurnConfig {
            listen: vec![SocketAddr::new(args.bind, args.turn_port)],
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
        SocketAddr::new(args.bind, 0),
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
    let mut signal_cfg = SignalServerConfig {
        signal: SignalConfig {
            listen: SocketAddr::new(args.bind, args.http_port),
            web_root: web_root.clone(),
            ..SignalConfig::default()
        },
        ..SignalServerConfig::default()
    };
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
    let http_addr = server.local_addr();
    let signal_shutdown = Shutdown::new();
    let signal_admin = AdminServer::bind(
        SocketAddr::new(args.bind, 0),
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

    let http = format!("http://{}", url_host_port(http_addr));
    let signal_url = format!("ws://{}/v1/ws", url_host_port(http_addr));
    let camera_token = token::mint(&state, Role::Camera, &args.camera, &[], args.token_ttl);
    let viewer_token = token::mint(
        &state,
        Role::Viewer,
        &args.viewer,
        std::slice::from_ref(&args.camera),
        args.token_ttl,
    );
    let info = DevInfo {
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
    };
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        print_banner(&info);
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
}
