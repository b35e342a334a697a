//! The admin listener every service runs: `/metrics` (Prometheus text), `/healthz` (the process
//! is alive) and `/readyz` (accepting work; 503 while starting or draining).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::Registry;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    shutdown: Shutdown,
}

/// A bound admin listener; `local_addr` is known before serving, so port 0 works in tests.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl AdminServer {
    pub async fn bind(
        addr: SocketAddr,
        registry: Registry,
        shutdown: Shutdown,
    ) -> std::io::Result<Self> {
        let listener = crate::net::tcp_listener(addr)?;
        tracing::info!(addr = %listener.local_addr()?, "admin listening");
        Ok(Self {
            listener,
            state: AdminState { registry, shutdown },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves. The admin listener outlives the drain on purpose: probes
    /// and scrapes must keep working while the service drains.
    pub async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(stop)
            .await
    }
}

impl AdminServer {
    /// Serves in a background task for the rest of the process, which is how every service runs
    /// it: the admin listener outlives the drain on purpose, so probes see `/readyz` turn false
    /// and scrapes go on until exit. Returns the bound address.
    pub fn spawn(self) -> std::io::Result<SocketAddr> {
        let bound = self.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(std::future::pending()).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        Ok(bound)
    }
}

/// Binds and serves in a background task; returns the bound address.
pub async fn serve_admin(
    addr: SocketAddr,
    registry: Registry,
    shutdown: Shutdown,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let server = AdminServer::bind(addr, registry, shutdown).await?;
    let bound = server.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = server.serve(stop).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok(bound)
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.shutdown.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if state.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.shutdown.is_dependency_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let shutdown = Shutdown::new();
        let registry = crate::metrics::new_registry("test", "0.0.0");
        let addr = serve_admin(
            "127.0.0.1:0".parse().expect("addr"),
            registry,
            shutdown.clone(),
            std::future::pending(),
        )
        .await
        .expect("bind");
        let base = format!("http://{addr}");
        let client = reqwest::Client::new();
        let get = |path: &'static str| {
            let client = client.clone();
            let base = base.clone();
            async move {
                client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .expect("request")
            }
        };
        assert_eq!(get("/healthz").await.status(), 200);
        assert_eq!(get("/readyz").await.status(), 503);
        shutdown.set_ready();
        assert_eq!(get("/readyz").await.status(), 200);
        let body = get("/metrics").await.text().await.expect("body");
        assert!(body.contains("iceway_build_info"), "{body}");
        shutdown.begin_drain();
        let r = get("/readyz").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.text().await.expect("body"), "draining\n");
    }
}
