use std::process::ExitCode;

use clap::Parser;
use iceway_turn::config::{Cli, TurnConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match TurnConfig::load(&cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("iceway-turn: {e}");
            return ExitCode::from(2);
        }
    };
    iceway_service::init_tracing(cfg.log_format);
    match iceway_turn::io::run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "iceway-turn failed");
            ExitCode::FAILURE
        }
    }
}
