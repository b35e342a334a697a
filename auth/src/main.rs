//! `iceway-auth`: the credential HTTP service. Configuration, telemetry, bind, run; the API
//! itself lives in `iceway_auth::api`, its assembly in `iceway_auth::server`.

use std::process::ExitCode;

use clap::Parser;
use iceway_auth::config::{AuthConfig, Cli};
use iceway_auth::server::{AuthServer, api_state};
use iceway_service::{AdminServer, Shutdown, settle};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = AuthConfig::load(&cli, None)
        .and_then(|cfg| api_state(&cfg, &mut iceway_service::Reloader::new()).map(|_| cfg));
    let cfg = match settle(
        "iceway-auth",
        cli.common.check_config,
        loaded,
        AuthConfig::redacted,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    iceway_service::init_tracing(cfg.log.format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iceway-auth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "iceway-auth failed");
            eprintln!("iceway-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: AuthConfig) -> anyhow::Result<()> {
    let registry = iceway_service::new_registry("auth", env!("CARGO_PKG_VERSION"));
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();
    let server = AuthServer::bind(&cfg, &registry).await?;
    let admin = AdminServer::bind(cfg.admin.listen, registry, shutdown.clone()).await?;
    let admin_addr = admin.spawn()?;
    tracing::info!(
        addr = %server.local_addr(),
        admin = %admin_addr,
        format = %cfg.turn_credentials.format,
        urls = cfg.turn_credentials.urls.len(),
        "credential API listening"
    );
    server.run(shutdown).await?;
    tracing::info!("drained; exiting");
    Ok(())
}
