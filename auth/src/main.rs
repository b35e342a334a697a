//! `iceway-auth`: the credential HTTP service. CLI → configuration → run; the API itself lives in
//! `iceway_auth::api`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use iceway_auth::api::{ApiMetrics, ApiState, router};
use iceway_auth::config::{AuthConfig, LIST_KEYS};
use iceway_service::{CommonArgs, ConfigError, ConfigLoader, LogFormat, Shutdown, serve_admin};
use tokio::net::TcpListener;

/// Iceway credential API: ICE-server lists and TURN credentials for app clients holding an app
/// JWT. Every flag can also be set in the --config file or as ICEWAY_<SECTION>__<KEY>.
#[derive(Debug, Parser)]
#[command(name = "iceway-auth", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Address of the credential API listener [default: 0.0.0.0:8081].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// File holding the HS256 app-token key (kid "default", at least 32 bytes).
    #[arg(long, value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,

    /// An app-token key: KID=ALG:FILE, ALG one of HS256, RS256, ES256, EdDSA (PEM public key).
    /// Repeatable.
    #[arg(long = "jwt-key", value_name = "KID=ALG:PEMFILE")]
    jwt_keys: Vec<String>,

    /// Required `aud` of app tokens [default: iceway].
    #[arg(long, value_name = "AUD")]
    jwt_audience: Option<String>,

    /// Required `iss` of app tokens [default: not checked].
    #[arg(long, value_name = "ISS")]
    jwt_issuer: Option<String>,

    /// Clock skew allowed on exp/nbf, e.g. 30s [default: 30s].
    #[arg(long, value_name = "DURATION")]
    jwt_leeway: Option<String>,

    /// TURN shared secrets, one per line (KID=SECRET or SECRET); the first mints.
    #[arg(long, value_name = "FILE")]
    turn_secret_file: Option<PathBuf>,

    /// A stun:, turn: or turns: URL handed to clients. Repeatable.
    #[arg(long = "turn-url", value_name = "URL")]
    turn_urls: Vec<String>,

    /// TURN username format [default: rest].
    #[arg(long, value_name = "FORMAT", value_parser = ["rest", "jwt"])]
    credential_format: Option<String>,

    /// Lifetime of TURN credentials, e.g. 1h [default: 1h].
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,

    /// Max concurrent allocations per user, written into jwt-format credentials.
    #[arg(long, value_name = "N")]
    turn_alloc: Option<u32>,

    /// Relay bandwidth cap in kbit/s, written into jwt-format credentials.
    #[arg(long, value_name = "KBPS")]
    turn_kbps: Option<u32>,

    /// A browser origin allowed by CORS (https://app.example, or *). Repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,

    /// Requests per minute per client IP; 0 turns the limit off [default: 120].
    #[arg(long, value_name = "N")]
    rate_limit: Option<u32>,

    /// Requests a client may make in a burst [default: 30].
    #[arg(long, value_name = "N")]
    rate_limit_burst: Option<u32>,

    /// Key the rate limit by the last X-Forwarded-For entry (behind a trusted ingress only).
    #[arg(long)]
    trust_forwarded_for: bool,

    /// How long in-flight requests may finish after SIGTERM, e.g. 10s [default: 10s].
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.to_string_lossy().into_owned())
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn load_config(cli: &Cli) -> Result<AuthConfig, ConfigError> {
    let log_format = cli.common.log_format.map(|f| match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    });
    ConfigLoader::new(&AuthConfig::default())?
        .list_keys(LIST_KEYS)
        .file(cli.common.config.as_deref())
        .set("listen", cli.listen.map(|a| a.to_string()))?
        .set("admin", cli.common.admin.map(|a| a.to_string()))?
        .set("log_format", log_format)?
        .set("drain_timeout", cli.drain_timeout.clone())?
        .set("jwt.secret_file", path(&cli.jwt_secret_file))?
        .set("jwt.keys", non_empty(&cli.jwt_keys))?
        .set("jwt.audience", cli.jwt_audience.clone())?
        .set("jwt.issuer", cli.jwt_issuer.clone())?
        .set("jwt.leeway", cli.jwt_leeway.clone())?
        .set("turn.secret_file", path(&cli.turn_secret_file))?
        .set("turn.urls", non_empty(&cli.turn_urls))?
        .set("turn.credential_format", cli.credential_format.clone())?
        .set("turn.ttl", cli.ttl.clone())?
        .set("turn.alloc", cli.turn_alloc)?
        .set("turn.kbps", cli.turn_kbps)?
        .set("cors.origins", non_empty(&cli.cors_origins))?
        .set("rate_limit.per_minute", cli.rate_limit)?
        .set("rate_limit.burst", cli.rate_limit_burst)?
        .set(
            "rate_limit.trust_forwarded_for",
            cli.trust_forwarded_for.then_some(true),
        )?
        .build()
}

/// Everything that can fail on configuration is checked here, before any listener starts.
fn api_state(cfg: &AuthConfig) -> Result<ApiState, ConfigError> {
    let verifier = cfg.jwt.verifier()?;
    let creds = Arc::new(cfg.turn.credentials()?);
    let ice = cfg.turn.ice_servers(creds)?;
    cfg.cors.validate()?;
    let mut state = ApiState::new(Arc::new(verifier), Arc::new(ice))
        .with_cors_origins(cfg.cors.origins.clone());
    if let Some(limit) = cfg.rate_limit.rate_limit()? {
        state = state.with_rate_limit(limit);
    }
    Ok(state)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, state) = match load_config(&cli).and_then(|cfg| Ok((api_state(&cfg)?, cfg))) {
        Ok((state, cfg)) => (cfg, state),
        Err(e) => {
            eprintln!("iceway-auth: {e}");
            return ExitCode::from(2);
        }
    };
    iceway_service::init_tracing(cfg.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("iceway-auth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg, state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "iceway-auth failed");
            eprintln!("iceway-auth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: AuthConfig, state: ApiState) -> anyhow::Result<()> {
    let registry = iceway_service::new_registry("auth", env!("CARGO_PKG_VERSION"));
    let state = state.with_metrics(ApiMetrics::register(&registry)?);
    let shutdown = Shutdown::new();
    shutdown.listen_for_signals();

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind listen address {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = serve_admin(cfg.admin, registry, shutdown.clone(), async move {
        let _ = admin_stopped.await;
    })
    .await
    .with_context(|| format!("cannot bind admin address {}", cfg.admin))?;
    tracing::info!(
        %addr,
        %admin,
        format = %cfg.turn.credential_format,
        urls = cfg.turn.urls.len(),
        "credential API listening"
    );
    shutdown.set_ready();

    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let drain = shutdown.clone();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(async move { drain.draining().await });
    tokio::select! {
        served = async { server.await } => served.context("credential API listener failed")?,
        () = shutdown.deadline(cfg.drain_timeout) => {
            tracing::warn!(timeout = ?cfg.drain_timeout, "drain deadline passed with requests in flight");
        }
    }
    tracing::info!("drained; exiting");
    let _ = stop_admin.send(());
    Ok(())
}
