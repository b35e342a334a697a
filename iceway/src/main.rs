//! `iceway`: `iceway dev` runs the whole stack in one process for trying Iceway out and for
//! tests; `iceway token` mints app tokens with the dev key. See docs/clients.md.

mod dev;
mod devca;
mod devstate;
mod lan;
mod qr;
mod tls_front;
mod token;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use iceway_auth::Role;
use iceway_service::{LogFormat, init_tracing};

#[derive(Debug, Parser)]
#[command(
    name = "iceway",
    version,
    about = "Iceway: self-hosted WebRTC infrastructure"
)]
struct Cli {
    /// Where the dev secrets live (default: $ICEWAY_DEV_DIR, else $XDG_DATA_HOME/iceway/dev,
    /// else ~/.local/share/iceway/dev).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run signaling (with the credential API and the browser pages) and STUN/TURN in one
    /// process, print the URLs and ready-made tokens.
    Dev(dev::DevArgs),
    /// Mint an app token with the dev key.
    Token {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// User or device id; a camera's id is its sub.
        #[arg(long)]
        sub: String,
        /// Viewer: camera ids it may watch, comma-separated.
        #[arg(long, value_delimiter = ',')]
        cams: Vec<String>,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Camera,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Camera => Role::Camera,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state_dir = cli.state_dir.clone().unwrap_or_else(devstate::default_dir);
    match cli.command {
        Command::Token {
            role,
            sub,
            cams,
            ttl,
        } => {
            let state = match devstate::DevState::load_or_create(&state_dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{}", token::mint(&state, role.into(), &sub, &cams, ttl));
            ExitCode::SUCCESS
        }
        Command::Dev(args) => {
            init_tracing(cli.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(dev::run(args, state_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Used by `iceway dev --bind` docs and tests: an address is printable in a URL.
pub fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}
