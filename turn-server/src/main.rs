use std::process::ExitCode;

use clap::Parser;
use iceway_service::{AdminServer, Shutdown, settle};
use iceway_turn::config::{Cli, Config};
use iceway_turn::server::TurnServer;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match settle(
        "iceway-turn",
        cli.common.check_config,
        Config::load(&cli),
        Config::redacted,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    iceway_service::init_tracing(cfg.log.format);
    let workers = match cfg.turn.stream_threads {
        0 => iceway_turn::config::auto_threads(),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "iceway-turn failed: cannot start its runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "iceway-turn failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let registry = iceway_service::new_registry("turn", env!("CARGO_PKG_VERSION"));
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let server = TurnServer::bind(&cfg, &registry).await?;
    let admin = AdminServer::bind(cfg.admin.listen, registry, shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", cfg.admin.listen))?;
    let addr = admin.spawn()?;
    tracing::info!(%addr, "admin endpoints /metrics /healthz /readyz");
    Ok(server.run(shutdown).await?)
}
