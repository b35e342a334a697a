use std::net::SocketAddr;
use std::path::PathBuf;

use crate::telemetry::LogFormat;

/// Flags every service accepts (DESIGN §5). Flatten into a service's own clap struct.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file; values from ICEWAY_<SECTION>__<KEY> and flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Log output format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// After SIGTERM, how long work in flight may finish, e.g. 10s.
    #[arg(long, value_name = "DURATION", alias = "drain-deadline")]
    pub drain_timeout: Option<String>,

    /// Load the configuration (file, environment, flags), print it with secrets redacted, and
    /// exit: 0 if it is valid, 2 with the error if not.
    #[arg(long)]
    pub check_config: bool,
}
