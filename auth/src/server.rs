//! The credential API as a server: `bind` opens its socket (port 0 works; `local_addr` reads it
//! back), `run` serves until the drain ends. The same entry shape as every Iceway server
//! (DESIGN §1), so `iceway dev` and tests embed it as `main.rs` does.

use std::net::SocketAddr;
use std::sync::Arc;

use iceway_service::{ConfigError, Reloader, Shutdown};
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::api::{ApiMetrics, ApiState, router};
use crate::config::AuthConfig;

/// Why the credential API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("credential API listener failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Everything that can fail on configuration is checked here, before any socket opens. The
/// key and secret files are registered with `reloader`, which swaps them while the API serves.
pub fn api_state(cfg: &AuthConfig, reloader: &mut Reloader) -> Result<ApiState, ConfigError> {
    let verifier = cfg.jwt.live_verifier(reloader)?;
    let creds = cfg.turn_credentials.live_credentials(reloader)?;
    let ice = cfg.turn_credentials.ice_servers(creds)?;
    cfg.auth.cors.validate()?;
    let mut state =
        ApiState::new(verifier, Arc::new(ice)).with_cors_origins(cfg.auth.cors.origins.clone());
    if let Some(limit) = cfg.auth.rate_limit.rate_limit()? {
        state = state.with_rate_limit(limit);
    }
    Ok(state)
}

/// A bound credential API, not yet serving.
pub struct AuthServer {
    listener: TcpListener,
    state: ApiState,
    reloader: Reloader,
    drain: std::time::Duration,
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AuthServer {
    /// Validates `cfg`, registers the metrics in `registry` and binds `auth.listen`.
    pub async fn bind(cfg: &AuthConfig, registry: &Registry) -> Result<Self, ServeError> {
        let mut reloader = Reloader::new();
        let state = api_state(cfg, &mut reloader)?.with_metrics(ApiMetrics::register(registry)?);
        reloader.register_metrics(registry)?;
        let addr = cfg.auth.listen;
        let listener = iceway_service::net::tcp_listener(addr)
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state,
            reloader,
            drain: cfg.drain.timeout,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` drains; requests still in flight after `drain.timeout` are cut.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let _reload = self.reloader.spawn();
        shutdown.set_ready();
        let app = router(self.state).into_make_service_with_connect_info::<SocketAddr>();
        let drain = shutdown.clone();
        let server = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { drain.draining().await });
        tokio::select! {
            served = async { server.await } => served.map_err(ServeError::Serve)?,
            () = shutdown.deadline(self.drain) => {
                tracing::warn!(timeout = ?self.drain, "drain deadline passed with requests in flight");
            }
        }
        Ok(())
    }
}
