//! Drives the real `iceway-auth` binary over TCP the way an app does: fetch an ICE-server list
//! with an app token, get refused without one, hit the rate limit, pass a browser's CORS
//! preflight, and watch the admin endpoints and SIGTERM.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use iceway_auth::app_token::{AppClaims, Role, mint_hs256};
use iceway_auth::ice_servers::{IceServersResponse, TurnRestResponse};
use iceway_auth::turn_credential::{TurnCredentials, password};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

const JWT_SECRET: &str = "integration-test-app-secret-0123456789";
const TURN_SECRETS: &str = "kid:current turn-secret-new-0123\nkid:previous turn-secret-old-0123\n";
const RSA_PUBLIC: &[u8] = include_bytes!("keys/rsa_public.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("keys/rsa_private.pem");
const WAIT: Duration = Duration::from_secs(30);

struct Service {
    child: Child,
    base: String,
    admin: String,
    logs: mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write fixture");
    path.display().to_string()
}

impl Service {
    /// Starts the binary on ephemeral ports and waits for its "listening" log line, which
    /// carries the bound addresses.
    async fn start(extra: &[&str]) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let jwt = write(
            dir.path(),
            "jwt.secret",
            format!("{JWT_SECRET}\n").as_bytes(),
        );
        let turn = write(dir.path(), "turn.secrets", TURN_SECRETS.as_bytes());
        let rsa = write(dir.path(), "rsa.pem", RSA_PUBLIC);
        let mut child = Command::new(env!("CARGO_BIN_EXE_iceway-auth"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args([
                "--jwt-secret-file",
                &jwt,
                "--jwt-key",
                &format!("app-rsa=RS256:{rsa}"),
            ])
            .args(["--turn-secret-file", &turn])
            .args(["--turn-url", "stun:stun.example:3478"])
            .args(["--turn-url", "turn:turn.example:3478?transport=udp"])
            .args(["--turn-url", "turns:turn.example:5349?transport=tcp"])
            .args(["--ttl", "10m"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start iceway-auth");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, mut logs) = mpsc::unbounded_channel();
        // Keep draining stderr for the whole run so the child never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listening = timeout(WAIT, async {
            while let Some(line) = logs.recv().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] == "credential API listening" {
                    return Some(v);
                }
            }
            None
        })
        .await
        .expect("iceway-auth did not report listening within 30 s")
        .expect("iceway-auth exited before listening");
        let addr = listening["addr"].as_str().expect("addr field").to_owned();
        let admin = listening["admin"].as_str().expect("admin field").to_owned();
        Service {
            child,
            base: format!("http://{addr}"),
            admin: format!("http://{admin}"),
            logs,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = client().get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("child still running");
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped); no memory is
        // shared with the call.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        timeout(WAIT, self.child.wait())
            .await
            .expect("iceway-auth did not exit within 30 s of SIGTERM")
            .expect("wait")
    }
}

fn client() -> reqwest::Client {
    // No proxy: traffic must stay on loopback whatever the environment says.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
}

fn app_token(sub: &str) -> String {
    let claims = AppClaims::new(
        sub,
        Role::Viewer,
        vec!["cam-1".into()],
        SystemTime::now(),
        Duration::from_secs(300),
    );
    mint_hs256("default", JWT_SECRET.as_bytes(), &claims)
}

async fn problem(resp: reqwest::Response, status: StatusCode) -> (HeaderMap, serde_json::Value) {
    assert_eq!(resp.status(), status);
    let headers = resp.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let body: serde_json::Value = resp.json().await.expect("problem json body");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
    (headers, body)
}

#[tokio::test]
async fn app_with_a_valid_token_gets_rtc_ice_servers() {
    let svc = Service::start(&[]).await;
    let resp = svc
        .get("/v1/ice-servers", Some(&app_token("viewer-7")))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
    let body: serde_json::Value = resp.json().await.expect("json");
    // The RTCConfiguration.iceServers shape, which a browser passes straight through.
    let servers = body["iceServers"].as_array().expect("iceServers array");
    assert_eq!(servers.len(), 2, "{body}");
    assert_eq!(
        servers[0],
        serde_json::json!({"urls": ["stun:stun.example:3478"]})
    );
    assert_eq!(
        servers[1]["urls"],
        serde_json::json!([
            "turn:turn.example:3478?transport=udp",
            "turns:turn.example:5349?transport=tcp"
        ])
    );
    assert_eq!(body["ttl"], 600);
    let list: IceServersResponse = serde_json::from_value(body.clone()).expect("typed");
    assert!(
        time::OffsetDateTime::parse(
            &list.expires_at,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
    let username = list.ice_servers[1].username.clone().expect("username");
    let credential = list.ice_servers[1].credential.clone().expect("credential");
    let (expiry, user) = username.split_once(':').expect("REST username");
    assert_eq!(user, "viewer-7");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expiry: u64 = expiry.parse().expect("timestamp");
    assert!(
        (now + 500..=now + 700).contains(&expiry),
        "{expiry} vs {now}"
    );
    // Minted with the first secret, and the TURN server's check accepts it.
    assert_eq!(credential, password(b"turn-secret-new-0123", &username));
    let grant = TurnCredentials::from_secret_lines(TURN_SECRETS)
        .expect("secrets")
        .check(&username, "iceway", SystemTime::now())
        .expect("TURN server accepts the credential");
    assert_eq!(grant.user, "viewer-7");

    // An RS256 token from the second configured key works as well.
    let claims = AppClaims::new(
        "cam-9",
        Role::Camera,
        vec![],
        SystemTime::now(),
        Duration::from_secs(300),
    );
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("app-rsa".into());
    let rs = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("key"),
    )
    .expect("sign");
    let resp = svc
        .get(
            "/v1/turn-credentials?service=turn&username=cam-9",
            Some(&rs),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rest: TurnRestResponse = resp.json().await.expect("draft-uberti json");
    assert!(rest.username.ends_with(":cam-9"));
    assert_eq!(rest.ttl, 600);
    assert_eq!(rest.uris.len(), 2);
    assert_eq!(
        rest.password,
        password(b"turn-secret-new-0123", &rest.username)
    );
}

#[tokio::test]
async fn missing_or_bad_tokens_get_401_problem_json() {
    let svc = Service::start(&[]).await;
    let (headers, body) = problem(
        svc.get("/v1/ice-servers", None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "missing_token");
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );

    let (_, body) = problem(
        svc.get("/v1/ice-servers", Some("garbage")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "malformed");

    let forged = mint_hs256(
        "default",
        b"not-the-configured-secret-at-all!!",
        &AppClaims::new(
            "x",
            Role::Camera,
            vec![],
            SystemTime::now(),
            Duration::from_secs(60),
        ),
    );
    let (headers, body) = problem(
        svc.get("/v1/turn-credentials?service=turn", Some(&forged))
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "bad_signature");
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ascii")
            .contains("invalid_token")
    );

    let old = SystemTime::now() - Duration::from_secs(3600);
    let expired = mint_hs256(
        "default",
        JWT_SECRET.as_bytes(),
        &AppClaims::new("x", Role::Camera, vec![], old, Duration::from_secs(60)),
    );
    let (_, body) = problem(
        svc.get("/v1/ice-servers", Some(&expired)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "expired");

    // Algorithm confusion over HTTP: HS256 signed with the RSA key's public PEM.
    let claims = AppClaims::new(
        "x",
        Role::Camera,
        vec![],
        SystemTime::now(),
        Duration::from_secs(60),
    );
    let confused = mint_hs256("app-rsa", RSA_PUBLIC, &claims);
    let (_, body) = problem(
        svc.get("/v1/ice-servers", Some(&confused)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "algorithm_not_allowed");
}

#[tokio::test]
async fn wrong_username_is_403_and_bad_requests_are_400_404_405() {
    let svc = Service::start(&[]).await;
    let token = app_token("alice");
    let (_, body) = problem(
        svc.get(
            "/v1/turn-credentials?service=turn&username=bob",
            Some(&token),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["reason"], "username_mismatch");
    let (_, body) = problem(
        svc.get("/v1/turn-credentials", Some(&token)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["reason"], "missing_service");
    let (_, body) = problem(
        svc.get("/v1/nothing-here", Some(&token)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["reason"], "not_found");
    let resp = client()
        .post(svc.url("/v1/ice-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("post");
    let (headers, body) = problem(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(body["reason"], "method_not_allowed");
    assert_eq!(headers[header::ALLOW], "GET, HEAD");
}

#[tokio::test]
async fn client_over_the_rate_limit_gets_429_with_retry_after() {
    let svc = Service::start(&["--rate-limit", "1", "--rate-limit-burst", "3"]).await;
    let token = app_token("alice");
    for i in 0..3 {
        assert_eq!(
            svc.get("/v1/ice-servers", Some(&token)).await.status(),
            StatusCode::OK,
            "request {i}"
        );
    }
    let (headers, body) = problem(
        svc.get("/v1/ice-servers", Some(&token)).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["reason"], "rate_limited");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Unauthenticated guessing is limited as well.
    assert_eq!(
        svc.get("/v1/ice-servers", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn cors_preflight_is_allowed_for_configured_origins_only() {
    let svc = Service::start(&["--cors-origin", "https://app.example"]).await;
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, svc.url("/v1/ice-servers"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .send()
    };
    let ok = preflight("https://app.example").await.expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_METHODS]
            .to_str()
            .expect("ascii")
            .contains("GET")
    );
    assert!(
        h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .expect("ascii")
            .to_ascii_lowercase()
            .contains("authorization")
    );

    let denied = preflight("https://evil.example").await.expect("preflight");
    assert!(
        denied
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none(),
        "{:?}",
        denied.headers()
    );

    // The actual request carries the header too, errors included, so the page can read them.
    let resp = client()
        .get(svc.url("/v1/ice-servers"))
        .header(header::ORIGIN, "https://app.example")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_and_the_api_metrics() {
    let svc = Service::start(&["--credential-format", "jwt", "--turn-alloc", "2"]).await;
    assert_eq!(
        svc.get("/v1/ice-servers", Some(&app_token("a")))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        svc.get("/v1/ice-servers", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let admin = |path: &'static str| client().get(format!("{}{path}", svc.admin)).send();
    assert_eq!(
        admin("/healthz").await.expect("healthz").status(),
        StatusCode::OK
    );
    assert_eq!(
        admin("/readyz").await.expect("readyz").status(),
        StatusCode::OK
    );
    let text = admin("/metrics")
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    for needle in [
        r#"iceway_auth_credentials_issued_total{format="jwt"} 1"#,
        r#"iceway_auth_requests_total{code="200",route="/v1/ice-servers"} 1"#,
        r#"iceway_auth_requests_total{code="401",route="/v1/ice-servers"} 1"#,
        "iceway_auth_request_duration_seconds_count",
        r#"iceway_build_info{service="auth""#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut svc = Service::start(&[]).await;
    assert_eq!(
        svc.get("/v1/ice-servers", Some(&app_token("a")))
            .await
            .status(),
        StatusCode::OK
    );
    svc.sigterm();
    let status = svc.wait_exit().await;
    assert!(status.success(), "exit status {status:?}");
    // The stderr reader may lag the exit; read until it reaches EOF.
    let mut saw_drained = false;
    timeout(WAIT, async {
        while let Some(line) = svc.logs.recv().await {
            saw_drained |= line.contains("drained; exiting");
        }
    })
    .await
    .expect("stderr closes after exit");
    assert!(saw_drained, "no 'drained; exiting' log line");
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_iceway-auth"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--turn-url",
            "http://not-ice",
        ])
        .env("ICEWAY_TURN_CREDENTIALS__SECRET_FILE", "/nonexistent")
        .output();
    let out = timeout(WAIT, out)
        .await
        .expect("exits promptly")
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jwt.secret_file"), "{stderr}");
}

#[tokio::test]
async fn misspelt_keys_are_refused_with_their_path_and_check_config_prints_the_effective_config() {
    let dir = tempfile::tempdir().expect("dir");
    let jwt = write(dir.path(), "jwt.key", JWT_SECRET.as_bytes());
    let turn = write(dir.path(), "turn.secrets", TURN_SECRETS.as_bytes());
    let run = |args: Vec<String>, env: Vec<(&'static str, &'static str)>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_iceway-auth"));
        cmd.args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        async move {
            timeout(WAIT, cmd.output())
                .await
                .expect("exits promptly")
                .expect("run")
        }
    };
    let base = vec![
        "--jwt-secret-file".to_owned(),
        jwt.clone(),
        "--turn-secret-file".to_owned(),
        turn.clone(),
    ];
    for (file, key) in [
        (
            "[auth]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n",
            "auth.listne",
        ),
        (
            "[auth.rate_limit]\nper_minut = 5\n",
            "auth.rate_limit.per_minut",
        ),
        ("[turn_credential]\nttl = \"1h\"\n", "turn_credential"),
        ("drain_timeout = \"5s\"\n", "drain_timeout"),
    ] {
        let path = write(dir.path(), "bad.toml", file.as_bytes());
        let mut args = base.clone();
        args.extend(["--config".to_owned(), path]);
        let out = run(args, vec![]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    let out = run(base.clone(), vec![("ICEWAY_JWT__AUDIENSE", "x")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("jwt.audiense"), "{stderr}");

    let mut args = base.clone();
    args.extend([
        "--check-config".to_owned(),
        "--ttl".to_owned(),
        "5m".to_owned(),
    ]);
    let out = run(args, vec![("ICEWAY_DRAIN__TIMEOUT", "7s")]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("[turn_credentials]") && stdout.contains("ttl = \"5m\""),
        "{stdout}"
    );
    assert!(stdout.contains("timeout = \"7s\""), "{stdout}");
    assert!(!stdout.contains("turn-secret-new"), "{stdout}");
    // A secret file that does not parse fails the check, naming the key and the line.
    let weak = write(dir.path(), "weak.secrets", b"# old syntax\nmain=short\n");
    let out = run(
        vec![
            "--check-config".to_owned(),
            "--jwt-secret-file".to_owned(),
            jwt,
            "--turn-secret-file".to_owned(),
            weak,
        ],
        vec![],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("turn_credentials.secret_file") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert!(!stderr.contains("short"), "{stderr}");
}

/// The rotation of docs/auth.md done on the files under a running service: the app key file
/// rewritten (as a Kubernetes Secret update does) is used for the next request, and a TURN
/// secret moved to the first line mints from then on. No restart: the same process throughout.
#[tokio::test]
async fn rotated_app_keys_and_turn_secrets_are_used_without_a_restart() {
    const NEW_JWT: &str = "rotated-app-secret-abcdefghijklmnopqrstuvwxyz";
    let svc = Service::start(&[]).await;
    let dir = svc._dir.path().to_owned();
    let pid = svc.child.id();
    let old = app_token("viewer-1");
    assert_eq!(
        svc.get("/v1/ice-servers", Some(&old)).await.status(),
        StatusCode::OK
    );

    let claims = AppClaims::new(
        "viewer-2",
        Role::Viewer,
        vec![],
        SystemTime::now(),
        Duration::from_secs(300),
    );
    let new = mint_hs256("default", NEW_JWT.as_bytes(), &claims);
    write(&dir, "jwt.secret", format!("{NEW_JWT}\n").as_bytes());
    write(
        &dir,
        "turn.secrets",
        b"kid:next turn-secret-next-0123\nkid:current turn-secret-new-0123\n",
    );
    // Ten times what a reload takes here: a bound, not a measure of speed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let list: IceServersResponse = loop {
        let resp = svc.get("/v1/ice-servers", Some(&new)).await;
        if resp.status() == StatusCode::OK {
            let list: IceServersResponse = resp.json().await.expect("json");
            let username = list.ice_servers[1].username.clone().expect("username");
            let credential = list.ice_servers[1].credential.clone().expect("credential");
            if credential == password(b"turn-secret-next-0123", &username) {
                break list;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated files were not used within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(list.ice_servers[1].username.is_some());
    let (_, body) = problem(
        svc.get("/v1/ice-servers", Some(&old)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(body["reason"], "bad_signature", "{body}");
    assert_eq!(svc.child.id(), pid, "the same process");
    let metrics = client()
        .get(format!("{}/metrics", svc.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for what in ["app_token_keys", "turn_secrets"] {
        assert!(
            metrics.contains(&format!("iceway_reload_successful{{what=\"{what}\"}} 1")),
            "{what}: {metrics}"
        );
    }
}
