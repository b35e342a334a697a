use std::process::ExitCode;

use clap::Parser;
use iceway_bridge::{Bridge, Cli, Config};
use iceway_service::{AdminServer, Shutdown, init_tracing, new_registry, settle};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = Config::load(&cli, None);
    let config = match settle(
        "iceway-bridge",
        cli.common.check_config,
        loaded,
        Config::redacted,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    init_tracing(config.log.format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "iceway-bridge failed");
            eprintln!("iceway-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let registry = new_registry("bridge", env!("CARGO_PKG_VERSION"));
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let bridge = Bridge::bind(&config, &registry).await?;
    let admin = AdminServer::bind(config.admin.listen, registry, shutdown.clone()).await?;
    admin.spawn()?;
    bridge.run(shutdown).await?;
    tracing::info!("drained; exiting");
    Ok(())
}
