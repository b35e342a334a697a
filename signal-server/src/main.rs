use std::process::ExitCode;

use clap::Parser;
use iceway_service::{AdminServer, Shutdown, init_tracing, new_registry, settle};
use iceway_signal::{Cli, Config, SignalServer};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = Config::load(&cli, None).and_then(|cfg| {
        cfg.load_credentials(&mut iceway_service::Reloader::new())
            .map(|_| cfg)
    });
    let config = match settle(
        "iceway-signal",
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
            tracing::error!(error = format!("{e:#}"), "iceway-signal failed");
            eprintln!("iceway-signal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let registry = new_registry("signal", env!("CARGO_PKG_VERSION"));
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let server = SignalServer::bind(&config, &registry).await?;
    let admin = AdminServer::bind(config.admin.listen, registry, shutdown.clone()).await?;
    admin.spawn()?;
    server.run(shutdown).await?;
    tracing::info!("drained; exiting");
    Ok(())
}
