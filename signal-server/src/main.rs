use std::path::PathBuf;

use clap::Parser;
use iceway_service::{CommonArgs, Shutdown, init_tracing, new_registry, serve_admin};
use iceway_signal::{Overrides, SignalConfig, SignalServer};

/// Iceway signaling: WebSocket rendezvous for cameras and viewers.
#[derive(Debug, Parser)]
#[command(name = "iceway-signal", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// WebSocket and HTTP listener [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// HS256 app-token secret file (kid "default").
    #[arg(long, value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// App-token key KID=ALG:PEMFILE (ALG: HS256, RS256, ES256, EdDSA); repeatable.
    #[arg(long = "jwt-key", value_name = "KID=ALG:PEMFILE")]
    jwt_keys: Vec<String>,
    /// TURN shared secrets, one per line.
    #[arg(long, value_name = "FILE")]
    turn_secret_file: Option<PathBuf>,
    /// stun:, turn: or turns: URL for welcome.iceServers; repeatable.
    #[arg(long = "turn-url", value_name = "URL")]
    turn_urls: Vec<String>,
    /// Redis for scale-out (redis://host:6379/0).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SignalConfig::load(
        args.common.config.as_deref(),
        Overrides {
            listen: args.listen,
            admin: args.common.admin,
            log_format: args.common.log_format,
            jwt_secret_file: args.jwt_secret_file,
            jwt_keys: args.jwt_keys,
            turn_secret_file: args.turn_secret_file,
            turn_urls: args.turn_urls,
            redis_url: args.redis_url,
        },
        None,
    )?;
    init_tracing(config.log_format);
    let registry = new_registry("signal", env!("CARGO_PKG_VERSION"));
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let admin = config.admin;
    let server = SignalServer::bind(config, &registry).await?;
    // The admin listener outlives the drain so probes see /readyz turn false.
    serve_admin(admin, registry, shutdown.clone(), std::future::pending()).await?;
    server.run(shutdown).await?;
    tracing::info!("drained; exiting");
    Ok(())
}
