//! The listener: `/v1/ws` upgrades, `/v1/ice-servers`, the browser pages, and the drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use iceway_auth::api::{ApiMetrics, ApiState, IpLimiter, RateLimit};
use iceway_service::{Problem, Reloader, Shutdown};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Credentials, SignalConfig};
use crate::connection::{Detached, Hello};
use crate::limits::{IpConnections, IpSlot, UserConnections, ip_key};
use crate::metrics::Metrics;
use crate::resume::ResumeKey;
use crate::router::SessionId;
use crate::router::{MemoryRouter, RedisRouter, RedisRouterConfig, Router};
use crate::session::Rules;

/// The WebSocket read buffer. tungstenite's default (128 KiB) per connection would dwarf
/// everything else an idle connection holds; signaling frames are small, and a larger frame
/// just takes a few more reads.
const READ_BUFFER: usize = 512;
/// Frames fed to a socket are written once this much is queued, or at the connection loop's
/// flush after each wake-up: a burst of deliveries goes out in one write, not one per frame.
/// The buffer only grows to what is actually queued.
const WRITE_BUFFER: usize = 16 * 1024;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error(transparent)]
    Config(#[from] iceway_service::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: SignalConfig,
    pub creds: Credentials,
    pub router: Arc<dyn Router>,
    pub metrics: Metrics,
    pub users: UserConnections,
    /// Sockets per client address.
    pub per_ip: IpConnections,
    /// WebSocket upgrades per client address.
    pub upgrades: IpLimiter,
    /// The session rules' limits and counters.
    pub rules: Arc<Rules>,
    /// The credential API's series, as `iceway-auth` has them.
    api_metrics: ApiMetrics,
    /// Cancelled when the drain's grace period is over: every socket closes with 1001.
    pub close_all: CancellationToken,
    /// Open WebSockets, authenticated or not, against `max_connections`.
    open: AtomicUsize,
    /// Sessions whose socket dropped, waiting for their client to resume them.
    pub detached: parking_lot::Mutex<HashMap<SessionId, Detached>>,
    generation: AtomicU64,
    pub resume_key: ResumeKey,
}

struct OpenSlot(Arc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    fn try_open(self: &Arc<Self>) -> Option<OpenSlot> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenSlot(self.clone()))
    }
}

/// A bound signal server, not yet serving. Binding first lets callers learn the address
/// (`listen` port 0 in tests) before anything connects.
pub struct SignalServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// After SIGTERM, how long clients get before their sockets are closed with 1001.
    drain: std::time::Duration,
    /// The key files behind `Shared::creds` (none for `iceway dev`'s in-memory keys).
    reloader: Reloader,
}

impl std::fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl SignalServer {
    /// Reads the key files named by `config`, connects to Redis if configured, registers the
    /// metrics and binds the listener.
    pub async fn bind(config: &Config, registry: &Registry) -> Result<Self, SignalError> {
        config.validate()?;
        let mut reloader = Reloader::new();
        let creds = config.load_credentials(&mut reloader)?;
        let mut server = Self::bind_with_credentials(
            config.signal.clone(),
            config.drain.timeout,
            creds,
            registry,
        )
        .await?;
        reloader.register_metrics(registry)?;
        server.reloader = reloader;
        Ok(server)
    }

    /// As [`bind`](Self::bind), with keys already in memory (`iceway dev`).
    pub async fn bind_with_credentials(
        config: SignalConfig,
        drain: std::time::Duration,
        creds: Credentials,
        registry: &Registry,
    ) -> Result<Self, SignalError> {
        let metrics = Metrics::register(registry)?;
        metrics
            .connections_max
            .set(i64::try_from(config.max_connections).unwrap_or(i64::MAX));
        // One descriptor per socket, plus Redis, listeners and headroom.
        iceway_service::fd_limit::ensure_nofile(
            "iceway-signal",
            (config.max_connections as u64).saturating_add(256),
            "signal.max_connections",
        );
        let redis_url = config.resolved_redis_url()?;
        let router: Arc<dyn Router> = match &redis_url {
            Some(url) => Arc::new(
                RedisRouter::connect(RedisRouterConfig {
                    url: url.clone(),
                    prefix: config.redis_prefix.clone(),
                    presence_ttl: config.presence_ttl,
                    replica_ttl: config.replica_ttl,
                    call_timeout: config.backplane_timeout,
                    resume_grace: config.resume_grace,
                    backplane_errors: metrics.backplane_errors_total.clone(),
                })
                .await
                .map_err(|e| SignalError::Redis(e.0))?,
            ),
            None => Arc::new(MemoryRouter::new()),
        };
        let listener = iceway_service::net::tcp_listener(config.listen).map_err(|source| {
            SignalError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let per_minute = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let upgrades = IpLimiter::new(RateLimit {
            per_minute: per_minute(config.upgrades_per_minute),
            burst: per_minute(config.upgrade_burst),
            trust_forwarded_for: config.trust_forwarded_for,
        });
        let api_metrics = ApiMetrics::register(registry)?;
        let shared = Arc::new(Shared {
            users: UserConnections::new(config.max_connections_per_user),
            per_ip: IpConnections::new(config.max_connections_per_ip),
            upgrades,
            api_metrics,
            rules: Arc::new(Rules::new(
                config.clone(),
                metrics.clone(),
                creds.verifier.get().leeway(),
            )),
            close_all: CancellationToken::new(),
            open: AtomicUsize::new(0),
            detached: parking_lot::Mutex::default(),
            generation: AtomicU64::new(0),
            resume_key: ResumeKey::new(router.resume_key().unwrap_or_else(rand::random)),
            router,
            metrics,
            creds,
            config,
        });
        // Weak: the router must not keep the server alive, nor the server itself.
        let claimer: std::sync::Weak<dyn crate::router::Claimer> = Arc::downgrade(&shared) as _;
        shared.router.set_claimer(claimer);
        Ok(Self {
            listener,
            shared,
            drain,
            reloader: Reloader::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    /// Serves until the drain: when `shutdown` starts draining, new upgrades get 503; after
    /// `drain.timeout` every socket is closed with 1001 and this returns once they are gone.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), SignalError> {
        let _reload = self.reloader.spawn();
        let shared = self.shared;
        let tracker = TaskTracker::new();
        let state = AppState {
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        // The credential API as iceway-auth serves it: the same rate limit, CORS and metrics.
        let mut api = ApiState::new(shared.creds.verifier.clone(), shared.creds.ice.clone())
            .with_metrics(shared.api_metrics.clone())
            .with_cors_origins(shared.config.cors_origins.clone());
        if let Some(per_minute) = NonZeroU32::new(shared.config.api_per_minute) {
            api = api.with_rate_limit(RateLimit {
                per_minute,
                burst: NonZeroU32::new(shared.config.api_burst).unwrap_or(NonZeroU32::MIN),
                trust_forwarded_for: shared.config.trust_forwarded_for,
            });
        }
        let app = axum::Router::new()
            .route("/v1/ws", get(upgrade))
            .with_state(state)
            .merge(iceway_auth::api::routes(api))
            .merge(crate::web::routes(&shared.config.web_root));

        let addr = self.listener.local_addr().map_err(SignalError::Serve)?;
        tracing::info!(
            %addr,
            redis = shared.config.redis_url.is_some() || shared.config.redis_url_file.is_some(),
            "signal listening"
        );
        shutdown.set_ready();
        // Readiness follows the backplane: while Redis is unreachable new sockets are better
        // sent to a replica that can route them; this one keeps serving the ones it holds.
        {
            let (router, shutdown) = (shared.router.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                while !shutdown.is_draining() {
                    tick.tick().await;
                    shutdown.set_dependency_down(!router.healthy());
                }
            });
        }

        let grace = self.drain;
        let close_all = shared.close_all.clone();
        let deadline = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.draining().await;
                tracing::info!(grace = ?grace, "draining: refusing new connections");
                tokio::time::sleep(grace).await;
                close_all.cancel();
            })
        };
        let stop = shared.close_all.clone();
        // Signaling frames are small and latency-bound: with Nagle on, a frame written right
        // after another waits for the peer's delayed ACK (~40 ms on Linux).
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        deadline.abort();
        tracker.close();
        let closing = shared.config.write_timeout + Duration::from_secs(1);
        if tokio::time::timeout(closing, tracker.wait()).await.is_err() {
            tracing::warn!(left = tracker.len(), "connections still closing at exit");
        }
        served.map_err(SignalError::Serve)
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    tracker: TaskTracker,
}

async fn upgrade(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let shared = &app.shared;
    if let Err(problem) = origin_allowed(&headers, &shared.config.allowed_origins) {
        shared.metrics.connection("origin");
        return problem.into_response();
    }
    let ip = ip_key(shared.upgrades.client(&headers, Some(peer)));
    if let Err(secs) = shared.upgrades.check(ip) {
        shared.metrics.connection("rate_limited");
        return IpLimiter::refusal(secs).into_response();
    }
    let Some(ip_slot) = shared.per_ip.acquire(&ip) else {
        shared.metrics.connection("ip_limit");
        return Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ip_limit",
            "too many connections from this address",
        )
        .with_retry_after(5)
        .into_response();
    };
    if app.shutdown.is_draining() {
        shared.metrics.connection("draining");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this server is shutting down; connect again",
        )
        .into_response();
    }
    let Some(slot) = shared.try_open() else {
        shared.metrics.connection("process_limit");
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            "this server has its maximum number of connections",
        )
        .into_response();
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    // Native clients resuming a session: `Iceway-Resume: <session> <secret>`.
    let resume = headers
        .get("iceway-resume")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .map(|(session, token)| crate::protocol::Resume {
            session: session.to_owned(),
            token: token.trim().to_owned(),
        });
    let hello = Hello { bearer, resume };
    let max = shared.config.max_frame_bytes;
    let shared = shared.clone();
    let tracker = app.tracker.clone();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // tungstenite panics unless the cap exceeds the write buffer.
        .max_write_buffer_size(max.saturating_mul(4).max(2 * WRITE_BUFFER))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let connection = crate::connection::serve(socket, hello, shared);
            // A task of its own, so the upgrade's task ends here: axum sizes that one for the
            // handshake (the socket being built, this closure's captures), 768 bytes that
            // every idle connection would otherwise keep for its whole life.
            tokio::spawn(tracker.track_future(async move {
                let _slots: (OpenSlot, IpSlot) = (slot, ip_slot);
                connection.await;
            }));
            std::future::ready(())
        })
}

/// Browsers send `Origin` on a WebSocket upgrade, and a page of any site may open one: without
/// this check a page elsewhere could act with a token it got hold of. Allowed: no `Origin`
/// (native clients), this server's own origin (its `Host`), or one of `allowed` (`*`: any).
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), Problem> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host)
        });
    if own
        || allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/') == origin)
    {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("pages from {origin} may not open a socket here (signal.allowed_origins)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().expect("host"));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().expect("origin"));
        }
        h
    }

    #[test]
    fn only_native_clients_this_origin_and_configured_origins_may_upgrade() {
        let none: [String; 0] = [];
        assert!(origin_allowed(&headers(None, "sig.example"), &none).is_ok());
        assert!(
            origin_allowed(&headers(Some("https://sig.example"), "sig.example"), &none).is_ok()
        );
        assert!(
            origin_allowed(
                &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
                &none
            )
            .is_ok()
        );
        assert!(
            origin_allowed(&headers(Some("https://evil.example"), "sig.example"), &none).is_err()
        );
        assert!(
            origin_allowed(
                &headers(Some("https://sig.example.evil"), "sig.example"),
                &none
            )
            .is_err()
        );
        assert!(origin_allowed(&headers(Some("null"), "sig.example"), &none).is_err());
        let app = ["https://app.example".to_owned()];
        assert!(origin_allowed(&headers(Some("https://app.example"), "sig.example"), &app).is_ok());
        let any = ["*".to_owned()];
        assert!(
            origin_allowed(&headers(Some("https://evil.example"), "sig.example"), &any).is_ok()
        );
    }
}
