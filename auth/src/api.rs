//! The credential HTTP API (DESIGN §2), served by `iceway-auth` and mounted by `iceway-signal`:
//!
//! - `GET /v1/ice-servers` → `{"iceServers":[...],"ttl":S,"expiresAt":RFC3339}`
//! - `GET /v1/turn-credentials?service=turn[&username=X]` → `{"username","password","ttl","uris"}`
//!
//! Both need `Authorization: Bearer <app JWT>`. Every error, including unknown paths and wrong
//! methods, is RFC 9457 problem JSON with a machine-readable `reason` member.
//!
//! Layers, outermost first: CORS (answers preflights itself, adds headers to every response, 429s
//! included, so browsers can read them), metrics, the per-client rate limit, then the handlers.
//! The rate limit runs before token verification so that guessing tokens is rate limited too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tower_http::cors::{AllowOrigin, CorsLayer};

use iceway_service::{Live, Problem};

use crate::app_token::{AppClaims, AppTokenError, AppTokenVerifier};
use crate::ice_servers::IceServers;
use crate::turn_credential::{CredentialError, CredentialFormat};

pub const ICE_SERVERS_PATH: &str = "/v1/ice-servers";
pub const TURN_CREDENTIALS_PATH: &str = "/v1/turn-credentials";

/// The Prometheus series of the credential API (DESIGN §4).
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    credentials_issued: IntCounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl ApiMetrics {
    /// Creates the series and registers them on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.credentials_issued.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }

    fn unregistered() -> prometheus::Result<Self> {
        let m = Self::uninitialised()?;
        // Series for every known label value from the start: dashboards and rate() alerts
        // see zeros, not nothing, before the first request.
        for format in [CredentialFormat::Rest, CredentialFormat::Jwt] {
            m.credentials_issued.with_label_values(&[format.as_str()]);
        }
        for route in [ICE_SERVERS_PATH, TURN_CREDENTIALS_PATH] {
            m.duration.with_label_values(&[route]);
            m.requests.with_label_values(&[route, "200"]);
        }
        Ok(m)
    }

    fn uninitialised() -> prometheus::Result<Self> {
        Ok(Self {
            credentials_issued: IntCounterVec::new(
                Opts::new(
                    "iceway_auth_credentials_issued_total",
                    "TURN credentials minted, by username format.",
                ),
                &["format"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "iceway_auth_requests_total",
                    "Credential API requests, by route and HTTP status code.",
                ),
                &["route", "code"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "iceway_auth_request_duration_seconds",
                    "Credential API request duration, by route.",
                ),
                &["route"],
            )?,
        })
    }
}

/// Per-client request limit, a token bucket keyed by client IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per minute per client.
    pub per_minute: NonZeroU32,
    /// Requests a client may make at once before the sustained rate applies.
    pub burst: NonZeroU32,
    /// Take the client IP from the last `X-Forwarded-For` entry (set by a trusted ingress)
    /// instead of the TCP peer. Off by default: a client could otherwise pick its own bucket.
    pub trust_forwarded_for: bool,
}

/// A token bucket per client IP, pruned now and then so a scan of many source addresses
/// cannot grow it without bound. Shared by the credential API and `iceway-signal`'s upgrades.
pub struct IpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    trust_forwarded_for: bool,
    checks: AtomicU64,
}

impl std::fmt::Debug for IpLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpLimiter")
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish_non_exhaustive()
    }
}

impl IpLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_minute(limit.per_minute).allow_burst(limit.burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            trust_forwarded_for: limit.trust_forwarded_for,
            checks: AtomicU64::new(0),
        }
    }

    /// The client of a request: see [`client_ip`].
    pub fn client(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> IpAddr {
        client_ip(headers, peer, self.trust_forwarded_for)
    }

    /// `Err(seconds)`: over the limit, retry after that long (at least 1).
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }

    /// The 429 for [`check`](Self::check)'s `Err`.
    pub fn refusal(secs: u64) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {secs} s"),
        )
        .with_retry_after(secs)
    }
}

/// Everything the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Swapped when a key file changes (`Reloader`).
    pub verifier: Live<AppTokenVerifier>,
    pub ice: Arc<IceServers>,
    metrics: Option<ApiMetrics>,
    limiter: Option<Arc<IpLimiter>>,
    cors_origins: Vec<String>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("verifier", &self.verifier)
            .field("ice", &self.ice)
            .field("rate_limited", &self.limiter.is_some())
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// No metrics, no rate limit, no CORS; add them with the `with_*` methods.
    pub fn new(verifier: impl Into<Live<AppTokenVerifier>>, ice: Arc<IceServers>) -> Self {
        Self {
            verifier: verifier.into(),
            ice,
            metrics: None,
            limiter: None,
            cors_origins: Vec::new(),
        }
    }

    pub fn with_metrics(mut self, metrics: ApiMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The client IP comes from axum's `ConnectInfo<SocketAddr>`: serve the router with
    /// `into_make_service_with_connect_info::<SocketAddr>()`. Without it, all clients share
    /// one bucket.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter = Some(Arc::new(IpLimiter::new(limit)));
        self
    }

    /// Browser origins allowed to call the API (`https://app.example`); `*` allows any.
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = origins;
        self
    }
}

/// Why a CORS origin is unusable.
#[derive(Debug, thiserror::Error)]
#[error("CORS origin {0:?} is not a valid origin header value")]
pub struct BadOrigin(pub String);

/// Checks configured CORS origins up front so a typo fails at start, not silently at run time.
pub fn validate_cors_origins(origins: &[String]) -> Result<(), BadOrigin> {
    for o in origins {
        if o != "*" && (HeaderValue::from_str(o).is_err() || !o.contains("://") || o.ends_with('/'))
        {
            return Err(BadOrigin(o.clone()));
        }
    }
    Ok(())
}

/// The API router for a service of its own (`iceway-auth`): the two routes plus a problem-JSON
/// 404 for every other path.
pub fn router(state: ApiState) -> Router {
    build(state, true)
}

/// The API routes without a 404 fallback, for a service that merges them into its own router
/// (`iceway-signal`): axum refuses to merge two routers that both have a fallback. Wrong methods
/// on the API paths still get a problem-JSON 405.
pub fn routes(state: ApiState) -> Router {
    build(state, false)
}

fn build(state: ApiState, with_fallback: bool) -> Router {
    let cors = cors_layer(&state.cors_origins);
    let mut app = Router::new()
        .route(
            ICE_SERVERS_PATH,
            get(ice_servers).fallback(method_not_allowed),
        )
        .route(
            TURN_CREDENTIALS_PATH,
            get(turn_credentials).fallback(method_not_allowed),
        );
    if with_fallback {
        app = app.fallback(not_found);
    }
    let mut app = app
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION])
            .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// A 401 with a Bearer challenge.
fn unauthorized(reason: &'static str, detail: impl Into<String>) -> Problem {
    // RFC 6750 §3: a missing token gets a bare challenge, a refused one says it was invalid.
    Problem::new(StatusCode::UNAUTHORIZED, reason, detail).with_www_authenticate(
        if reason == "missing_token" {
            r#"Bearer realm="iceway""#
        } else {
            r#"Bearer realm="iceway", error="invalid_token""#
        },
    )
}

impl From<AppTokenError> for Problem {
    fn from(e: AppTokenError) -> Self {
        unauthorized(e.reason(), format!("app token refused: {e}"))
    }
}

impl From<CredentialError> for Problem {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::TooLong | CredentialError::InvalidUser => Problem::new(
                StatusCode::BAD_REQUEST,
                e.reason(),
                format!("cannot mint: {e}"),
            ),
            _ => {
                tracing::error!(error = %e, "minting a TURN credential failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// The verified caller of a request.
#[derive(Clone, Debug)]
pub struct Caller(pub AppClaims);

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let token = bearer_token(&parts.headers)?;
        Ok(Caller(state.verifier.get().verify(token)?))
    }
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, Problem> {
    let missing = || unauthorized("missing_token", "Authorization: Bearer <token> required");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| missing())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

fn credentials_json(value: impl Serialize) -> Response {
    let mut resp = Json(value).into_response();
    // The body is a credential: no shared cache may keep it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn ice_servers(
    State(state): State<ApiState>,
    Caller(claims): Caller,
) -> Result<Response, Problem> {
    let list = state.ice.for_user(&claims.sub, SystemTime::now())?;
    if state.ice.has_turn() {
        count_issued(&state);
    }
    Ok(credentials_json(list))
}

#[derive(Deserialize)]
struct TurnCredentialsQuery {
    service: Option<String>,
    username: Option<String>,
}

async fn turn_credentials(
    State(state): State<ApiState>,
    Caller(claims): Caller,
    query: Result<Query<TurnCredentialsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("invalid query: {e}"),
        )
    })?;
    match q.service.as_deref() {
        Some("turn") => {}
        Some(other) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "unsupported_service",
                format!("service {other:?} is not supported; use service=turn"),
            ));
        }
        None => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "missing_service",
                "query parameter service=turn is required",
            ));
        }
    }
    // A caller gets credentials for itself only: the TURN user id drives per-user quotas, so
    // minting for someone else would let one app user spend another's allowance.
    let user = match q.username.as_deref() {
        None | Some("") => claims.sub.as_str(),
        Some(u) if u == claims.sub => u,
        Some(_) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "username_mismatch",
                "username must be the token's sub (or be left out)",
            ));
        }
    };
    let resp = state.ice.turn_rest(user, SystemTime::now())?;
    count_issued(&state);
    Ok(credentials_json(resp))
}

fn count_issued(state: &ApiState) {
    if let Some(m) = &state.metrics {
        m.credentials_issued
            .with_label_values(&[state.ice.format().as_str()])
            .inc();
    }
}

async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
}

async fn method_not_allowed() -> Response {
    let mut resp = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "use GET",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// The client's IP: the TCP peer, or with `trust_forwarded_for` (only behind an ingress that
/// sets it) the last `X-Forwarded-For` entry. Without either, all clients share one key.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> IpAddr {
    if trust_forwarded_for {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back();
        if let Some(ip) = last {
            return ip;
        }
    }
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| addr.ip())
}

async fn rate_limit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(l) = &state.limiter else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    match l.check(l.client(req.headers(), peer)) {
        Ok(()) => next.run(req).await,
        Err(secs) => IpLimiter::refusal(secs).into_response(),
    }
}

async fn record_metrics(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(m) = state.metrics.clone() else {
        return next.run(req).await;
    };
    // The matched route template, never the raw path: labels must stay low-cardinality.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "other".to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    m.duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_token::{Role, VerificationKey, mint_hs256};
    use crate::ice_servers::{IceServersConfig, IceServersResponse, TurnRestResponse};
    use crate::turn_credential::{CredentialFormat, TurnCredentials};
    use axum::body::Body;
    use std::time::Duration;
    use tower::ServiceExt;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn state() -> ApiState {
        let verifier = AppTokenVerifier::new(
            vec![VerificationKey::hs256("default", SECRET)],
            "iceway",
            None,
            Duration::from_secs(30),
        );
        let creds =
            Arc::new(TurnCredentials::from_secret_lines("turn-secret-0123456789").expect("secret"));
        let ice = IceServers::new(
            IceServersConfig {
                urls: vec!["stun:h:3478".into(), "turn:h:3478?transport=udp".into()],
                ttl: Duration::from_secs(600),
                format: CredentialFormat::Rest,
            },
            creds,
        );
        ApiState::new(Arc::new(verifier), Arc::new(ice))
    }

    fn token(sub: &str) -> String {
        let claims = AppClaims::new(
            sub,
            Role::Viewer,
            vec![],
            SystemTime::now(),
            Duration::from_secs(60),
        );
        mint_hs256("default", SECRET, &claims)
    }

    async fn call(app: Router, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let resp = app.oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        (parts.status, parts.headers, bytes.to_vec())
    }

    fn get(uri: &str, token: Option<&str>) -> axum::http::Request<Body> {
        let mut b = axum::http::Request::get(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(Body::empty()).expect("request")
    }

    fn problem(headers: &HeaderMap, body: &[u8]) -> serde_json::Value {
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        serde_json::from_slice(body).expect("problem json")
    }

    #[tokio::test]
    async fn ice_servers_returns_the_list_for_the_token_sub() {
        let (status, headers, body) = call(
            router(state()),
            get(ICE_SERVERS_PATH, Some(&token("alice"))),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        let list: IceServersResponse = serde_json::from_slice(&body).expect("json");
        assert_eq!(list.ttl, 600);
        let turn = &list.ice_servers[1];
        assert!(
            turn.username
                .as_deref()
                .is_some_and(|u| u.ends_with(":alice"))
        );
    }

    #[tokio::test]
    async fn turn_credentials_checks_service_and_username() {
        let t = token("bob");
        let app = router(state());
        let (status, _, body) = call(
            app.clone(),
            get("/v1/turn-credentials?service=turn&username=bob", Some(&t)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let r: TurnRestResponse = serde_json::from_slice(&body).expect("json");
        assert!(r.username.ends_with(":bob"));
        assert_eq!(r.uris, vec!["turn:h:3478?transport=udp"]);

        let (status, h, body) = call(
            app.clone(),
            get("/v1/turn-credentials?service=turn&username=eve", Some(&t)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(problem(&h, &body)["reason"], "username_mismatch");
        let (status, h, body) = call(
            app.clone(),
            get("/v1/turn-credentials?service=stun", Some(&t)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem(&h, &body)["reason"], "unsupported_service");
        let (status, _, _) = call(app, get("/v1/turn-credentials", Some(&t))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn errors_are_problem_json() {
        let app = router(state());
        let (status, h, body) = call(app.clone(), get(ICE_SERVERS_PATH, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(h[header::WWW_AUTHENTICATE], r#"Bearer realm="iceway""#);
        let p = problem(&h, &body);
        assert_eq!(
            (p["status"].as_u64(), p["reason"].as_str()),
            (Some(401), Some("missing_token"))
        );
        assert_eq!(p["title"], "Unauthorized");

        let (status, h, body) = call(app.clone(), get(ICE_SERVERS_PATH, Some("not.a.token"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(problem(&h, &body)["reason"], "malformed");

        let (status, h, body) = call(app.clone(), get("/nope", None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem(&h, &body)["reason"], "not_found");

        let req = axum::http::Request::post(ICE_SERVERS_PATH)
            .body(Body::empty())
            .expect("req");
        let (status, h, body) = call(app, req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(h[header::ALLOW], "GET, HEAD");
        assert_eq!(problem(&h, &body)["reason"], "method_not_allowed");
    }

    #[tokio::test]
    async fn too_long_sub_is_a_bad_request() {
        let (status, h, body) = call(
            router(state()),
            get(ICE_SERVERS_PATH, Some(&token(&"x".repeat(600)))),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(problem(&h, &body)["reason"], "too_long");
    }

    #[tokio::test]
    async fn rate_limit_answers_429_with_retry_after() {
        let limit = RateLimit {
            per_minute: NonZeroU32::new(1).expect("nonzero"),
            burst: NonZeroU32::new(2).expect("nonzero"),
            trust_forwarded_for: true,
        };
        let app = router(state().with_rate_limit(limit));
        let from = |ip: &str| {
            axum::http::Request::get(ICE_SERVERS_PATH)
                .header("x-forwarded-for", format!("198.51.100.1, {ip}"))
                .body(Body::empty())
                .expect("req")
        };
        for _ in 0..2 {
            assert_eq!(
                call(app.clone(), from("192.0.2.1")).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        let (status, h, body) = call(app.clone(), from("192.0.2.1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = h[header::RETRY_AFTER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("secs");
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(problem(&h, &body)["reason"], "rate_limited");
        // Another client has its own bucket.
        assert_eq!(
            call(app, from("192.0.2.2")).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn metrics_count_requests_and_credentials() {
        let registry = Registry::new();
        let metrics = ApiMetrics::register(&registry).expect("register");
        let app = router(state().with_metrics(metrics));
        call(app.clone(), get(ICE_SERVERS_PATH, Some(&token("a")))).await;
        call(app.clone(), get(ICE_SERVERS_PATH, None)).await;
        call(app, get("/x/y/z", None)).await;
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(
            text.contains(r#"iceway_auth_credentials_issued_total{format="rest"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iceway_auth_requests_total{code="200",route="/v1/ice-servers"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iceway_auth_requests_total{code="401",route="/v1/ice-servers"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iceway_auth_requests_total{code="404",route="other"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("iceway_auth_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn routes_merge_into_a_router_with_its_own_fallback() {
        let api = routes(state().with_cors_origins(vec!["https://app.example".into()]));
        let app = Router::new()
            .route("/v1/ws", axum::routing::get(|| async { "ws" }))
            .fallback(|| async { (StatusCode::IM_A_TEAPOT, "static files") })
            .merge(api);
        let (status, _, body) = call(app.clone(), get("/index.html", None)).await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::IM_A_TEAPOT, &b"static files"[..])
        );
        assert_eq!(
            call(app.clone(), get("/v1/ws", None)).await.0,
            StatusCode::OK
        );
        assert_eq!(
            call(app.clone(), get(ICE_SERVERS_PATH, Some(&token("a"))))
                .await
                .0,
            StatusCode::OK
        );
        let req = axum::http::Request::delete(ICE_SERVERS_PATH)
            .body(Body::empty())
            .expect("req");
        let (status, h, body) = call(app.clone(), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(problem(&h, &body)["reason"], "method_not_allowed");
        let preflight = axum::http::Request::options(ICE_SERVERS_PATH)
            .header(header::ORIGIN, "https://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .body(Body::empty())
            .expect("req");
        let (status, h, _) = call(app, preflight).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
    }

    #[test]
    fn cors_origins_are_validated() {
        assert!(validate_cors_origins(&["https://app.example".into(), "*".into()]).is_ok());
        assert!(validate_cors_origins(&["app.example".into()]).is_err());
        assert!(validate_cors_origins(&["https://app.example/".into()]).is_err());
    }
}
