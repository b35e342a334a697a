//! Plumbing shared by every Iceway service: configuration loading, logging, the Prometheus
//! registry, the admin listener, graceful shutdown and the RFC 9457 problem body of every HTTP error. Each deployable builds on these so that
//! ops see the same flags, endpoints and behaviour everywhere.

pub mod admin;
pub mod bucket;
pub mod cli;
pub mod config;
pub mod duration;
pub mod fd_limit;
pub mod metrics;
pub mod net;
pub mod problem;
pub mod reload;
pub mod secret;
pub mod shutdown;
pub mod telemetry;

pub use admin::{AdminServer, serve_admin};
pub use bucket::TokenBucket;
pub use cli::CommonArgs;
pub use config::{
    AdminConfig, ConfigError, ConfigLoader, DrainConfig, EXIT_BAD_CONFIG, LogConfig, REDACTED,
    render_effective, settle,
};
pub use metrics::new_registry;
pub use problem::Problem;
pub use reload::{Live, Reloader};
pub use secret::{SecretError, read_secret, read_secret_lines};
pub use shutdown::Shutdown;
pub use telemetry::{LogFormat, init_tracing};
