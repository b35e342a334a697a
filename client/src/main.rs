//! `iceway-client camera|viewer`: see docs/clients.md.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iceway_client::camera::{self, CameraOptions};
use iceway_client::media::Clip;
use iceway_client::protocol::{IceServer, ice_servers_of};
use iceway_client::signaling::SignalError;
use iceway_client::viewer::{self, ViewerError, ViewerOptions};
use iceway_service::{LogFormat, init_tracing};
use tokio_util::sync::CancellationToken;

/// Exit codes the tests and scripts rely on.
const EXIT_NOT_ENOUGH_FRAMES: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_ERROR: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "iceway-client",
    version,
    about = "Iceway reference camera and viewer (real WebRTC)"
)]
struct Cli {
    /// Signaling WebSocket URL.
    #[arg(
        long,
        global = true,
        env = "ICEWAY_SIGNAL_URL",
        default_value = "ws://127.0.0.1:8080/v1/ws"
    )]
    signal: String,
    /// App token (JWT) with role camera or viewer.
    #[arg(long, global = true, env = "ICEWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the app token, read again at each reconnect and when the server asks for
    /// a fresh token before `exp`: keep it current and the client outlives any one token.
    #[arg(long, global = true, env = "ICEWAY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Use only TURN relay candidates (iceTransportPolicy "relay").
    #[arg(long, global = true)]
    relay_only: bool,
    /// Local IP address to gather candidates on (default: the route towards the ICE servers).
    #[arg(long, global = true)]
    bind: Option<IpAddr>,
    /// JSON file with ICE servers (RTCConfiguration.iceServers shape) to use instead of the
    /// ones signaling hands out.
    #[arg(long, global = true, value_name = "FILE")]
    ice_servers: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish as a camera and stream a looping VP8 clip to every viewer.
    Camera {
        /// VP8 IVF file to loop (default: the built-in test pattern).
        #[arg(long)]
        sample: Option<PathBuf>,
        /// Stop after this long (e.g. 30s); runs until Ctrl-C by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Watch a camera and report what arrives; exit 0 when --frames frames arrived.
    Viewer {
        /// Camera id to watch (must be in the token's `cams`).
        #[arg(long)]
        camera: String,
        /// Frames that must arrive for success.
        #[arg(long, default_value_t = 60)]
        frames: u64,
        /// Give up after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// webrtc-rs logs every state change at info; a CLI user wants Iceway's lines and real problems.
const DEFAULT_LOG_FILTER: &str = "info,rtc=error,rtc_ice=warn,rtc_dtls=warn,webrtc=warn";

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: nothing else runs yet (no runtime, no threads), so nobody reads the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_LOG", DEFAULT_LOG_FILTER) };
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // wss:// goes through rustls; name its provider so a second one elsewhere in the build
    // cannot make the choice ambiguous at run time.
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
    let token = cli
        .token
        .clone()
        .unwrap_or_else(|| iceway_client::signaling::current_token(cli.token_file.as_deref(), ""));
    if token.is_empty() {
        eprintln!("error: --token or --token-file (ICEWAY_TOKEN, ICEWAY_TOKEN_FILE) is required");
        return ExitCode::from(EXIT_ERROR);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let ice_servers = match cli.ice_servers.as_deref().map(load_ice_servers).transpose() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    runtime.block_on(run(cli, token, ice_servers))
}

async fn run(cli: Cli, token: String, ice_servers: Option<Vec<IceServer>>) -> ExitCode {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    #[cfg(unix)]
    {
        let on_term = stop.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
                on_term.cancel();
            }
        });
    }
    match cli.command {
        Command::Camera { sample, duration } => {
            let clip = match sample {
                Some(path) => match Clip::from_file(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_ERROR);
                    }
                },
                None => Clip::builtin(),
            };
            let opts = CameraOptions {
                signal_url: cli.signal,
                token,
                token_file: cli.token_file,
                clip: Arc::new(clip),
                relay_only: cli.relay_only,
                bind: cli.bind,
                ice_servers,
                duration,
            };
            match camera::run(opts, stop).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(camera::CameraError::Signal(e)) => refused_or_error(&e),
            }
        }
        Command::Viewer {
            camera,
            frames,
            timeout,
        } => {
            let opts = ViewerOptions {
                signal_url: cli.signal,
                token,
                token_file: cli.token_file,
                camera,
                relay_only: cli.relay_only,
                bind: cli.bind,
                ice_servers,
                frames,
                timeout,
                progress: None,
            };
            match viewer::run(opts, stop).await {
                Ok(report) => {
                    match serde_json::to_string(&report) {
                        Ok(json) => println!("{json}"),
                        Err(e) => eprintln!("error: cannot encode the report: {e}"),
                    }
                    eprintln!(
                        "viewer: {} frames ({} wanted), first frame after {}, {:.1} fps, {:.0} kbit/s, path {}",
                        report.frames,
                        report.frames_wanted,
                        report
                            .time_to_first_frame_ms
                            .map(|ms| format!("{ms} ms"))
                            .unwrap_or_else(|| "-".into()),
                        report.fps,
                        report.bitrate_kbps,
                        report
                            .selected_pair
                            .as_ref()
                            .map(|p| format!("{} -> {}", p.local, p.remote))
                            .unwrap_or_else(|| "-".into()),
                    );
                    if let Some(reason) = &report.reason {
                        eprintln!("viewer: {reason}");
                    }
                    if report.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(EXIT_NOT_ENOUGH_FRAMES)
                    }
                }
                Err(ViewerError::Signal(e)) => refused_or_error(&e),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_ERROR)
                }
            }
        }
    }
}

fn refused_or_error(e: &SignalError) -> ExitCode {
    eprintln!("error: {e}");
    if matches!(e, SignalError::Unauthorized(_) | SignalError::Forbidden(_)) {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::from(EXIT_ERROR)
    }
}

fn load_ice_servers(path: &std::path::Path) -> Result<Vec<IceServer>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    ice_servers_of(&value).map_err(|e| format!("{}: {e}", path.display()))
}
