//! The typed configuration of `iceway-signal` (DESIGN §5, `docs/configuration.md`): its own
//! `[signal]` table (environment `ICEWAY_SIGNAL__<KEY>`, e.g. `ICEWAY_SIGNAL__REDIS_URL`), and the
//! shared `[admin]`, `[log]`, `[drain]`, `[jwt]` and `[turn_credentials]`, built by the same code
//! as in `iceway-auth`. Durations are written like `30s`, `500ms`, `2m`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iceway_auth::config::{JwtArgs, JwtConfig, TurnCredentialArgs, TurnCredentialsConfig};
use iceway_auth::{AppTokenVerifier, IceServers, TurnCredentials, TurnSecret};
use iceway_service::{
    AdminConfig, CommonArgs, ConfigError, ConfigLoader, DrainConfig, Live, LogConfig, REDACTED,
    Reloader,
};
use serde::{Deserialize, Serialize};

/// The whole `iceway-signal` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub signal: SignalConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub drain: DrainConfig,
    pub jwt: JwtConfig,
    pub turn_credentials: TurnCredentialsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            signal: SignalConfig::default(),
            admin: AdminConfig::on_port(9480),
            log: LogConfig::default(),
            drain: DrainConfig::default(),
            jwt: JwtConfig::default(),
            turn_credentials: TurnCredentialsConfig::default(),
        }
    }
}

/// Flags of `iceway-signal`; every one can also be set in the file and the environment.
#[derive(Debug, clap::Parser)]
#[command(
    name = "iceway-signal",
    version,
    about = "Iceway signaling: WebSocket rendezvous for cameras and viewers"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// WebSocket and HTTP listener [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub turn_credentials: TurnCredentialArgs,
    /// Redis for scale-out (redis://host:6379/0).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

/// `[signal]`: the signaling server's own settings, with safe defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    /// WebSocket and HTTP listener (`/v1/ws`, `/v1/ice-servers`, `/camera`, `/viewer`).
    pub listen: SocketAddr,
    /// Directory of the browser reference client (`camera.html`, `viewer.html`, assets).
    pub web_root: PathBuf,

    /// Redis for scale-out; unset: one process holds all state in memory.
    pub redis_url: Option<String>,
    /// A file holding the Redis URL, for one with a password (argv and the environment are
    /// visible to other users of the host, a mounted Secret is not). Exclusive with `redis_url`.
    pub redis_url_file: Option<PathBuf>,
    pub redis_prefix: String,
    /// Lifetime of a camera's presence key; refreshed every third of it. A camera on a replica
    /// that dies is seen offline after at most this long.
    #[serde(with = "iceway_service::duration")]
    pub presence_ttl: Duration,
    /// Lifetime of a replica's liveness key, refreshed every quarter of it: a replica that
    /// dies (or is cut from Redis) this long has its sessions declared gone.
    #[serde(with = "iceway_service::duration")]
    pub replica_ttl: Duration,
    /// Deadline of every Redis call and of a frame routed through Redis.
    #[serde(with = "iceway_service::duration")]
    pub backplane_timeout: Duration,

    /// Time to send the `auth` frame when the upgrade had no `Authorization` header.
    #[serde(with = "iceway_service::duration")]
    pub auth_timeout: Duration,
    /// Interval the client is asked to `ping` at (`welcome.heartbeat`); the server also sends a
    /// WebSocket ping after this much silence.
    #[serde(with = "iceway_service::duration")]
    pub heartbeat: Duration,
    /// Silence after which a connection is closed (4008).
    #[serde(with = "iceway_service::duration")]
    pub idle_timeout: Duration,
    /// Largest frame accepted; larger closes the connection with 4009.
    pub max_frame_bytes: usize,
    /// Sustained client frames per second per connection.
    pub rate_per_second: u32,
    /// Frames a connection may send at once above the sustained rate.
    pub rate_burst: u32,
    /// Refused (rate-limited) frames in a row before the connection is closed with 4008.
    pub rate_strikes: u32,
    /// WebSocket sessions per process; keep below the open-file limit (20,000 here).
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_viewers_per_camera: usize,
    pub max_watches_per_connection: usize,
    /// Sockets per client address (IPv6: per /64); 0 turns the cap off. High by default: a
    /// carrier-grade NAT puts hundreds of phones behind one address.
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades per minute per client address, and the burst above it.
    pub upgrades_per_minute: u32,
    pub upgrade_burst: u32,
    /// Credential API (`/v1/ice-servers`, `/v1/turn-credentials`) requests per minute per client
    /// address, and the burst: the same limit as `auth.rate_limit`. 0 turns it off.
    pub api_per_minute: u32,
    pub api_burst: u32,
    /// Take the client address from the last `X-Forwarded-For` entry (only behind a trusted
    /// ingress that sets it) for the per-address limits.
    pub trust_forwarded_for: bool,
    /// Browser origins (`https://app.example`) whose pages may open a WebSocket here, besides
    /// this server's own origin; `*` allows any. Clients that send no `Origin` (native apps)
    /// are not affected.
    pub allowed_origins: Vec<String>,
    /// Browser origins allowed to call the credential API (CORS), as `auth.cors.origins`.
    pub cors_origins: Vec<String>,
    /// A socket that cannot take a frame for this long is closed.
    #[serde(with = "iceway_service::duration")]
    pub write_timeout: Duration,
    /// How long before the app token's `exp` the server sends `token-expiring` (at most half
    /// the token's remaining life). Without a fresh `auth` the socket closes 4001 at `exp`
    /// plus the JWT leeway.
    #[serde(with = "iceway_service::duration")]
    pub token_refresh_lead: Duration,
    /// How long a session whose socket dropped (no close frame) waits for its client to
    /// reconnect and resume it; its peers are not told meanwhile. 0 turns resume off.
    #[serde(with = "iceway_service::duration")]
    pub resume_grace: Duration,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            web_root: PathBuf::from("client/web"),
            redis_url: None,
            redis_url_file: None,
            redis_prefix: "iceway:".to_owned(),
            presence_ttl: Duration::from_secs(30),
            replica_ttl: Duration::from_secs(10),
            backplane_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            rate_per_second: 20,
            rate_burst: 60,
            rate_strikes: 30,
            max_connections: 16_000,
            max_connections_per_user: 16,
            max_viewers_per_camera: 8,
            max_watches_per_connection: 32,
            max_connections_per_ip: 256,
            upgrades_per_minute: 600,
            upgrade_burst: 200,
            api_per_minute: 120,
            api_burst: 30,
            trust_forwarded_for: false,
            allowed_origins: Vec::new(),
            cors_origins: Vec::new(),
            write_timeout: Duration::from_secs(10),
            token_refresh_lead: Duration::from_secs(60),
            resume_grace: Duration::from_secs(30),
        }
    }
}

const LIST_KEYS: [&str; 4] = [
    "jwt.keys",
    "turn_credentials.urls",
    "signal.allowed_origins",
    "signal.cors_origins",
];

impl Config {
    /// Defaults → `--config` → environment (`None`: the process's) → `cli`, then validated.
    pub fn load(
        cli: &Cli,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let loader = ConfigLoader::new(&Self::default())?
            .list_keys(&LIST_KEYS)
            .file(cli.common.config.as_deref())
            .common_flags(&cli.common)?
            .set("signal.listen", cli.listen.map(|a| a.to_string()))?
            .set("signal.redis_url", cli.redis_url.clone())?;
        let cfg: Self = cli
            .turn_credentials
            .apply(cli.jwt.apply(loader)?)?
            .build_with_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.signal.validate()?;
        if self.jwt.secret_file.is_none() && self.jwt.keys.is_empty() {
            return Err(ConfigError::invalid(
                "jwt.secret_file",
                "no app-token key: set jwt.secret_file (--jwt-secret-file) or jwt.keys (--jwt-key)",
            ));
        }
        let has_turn = self.turn_credentials.urls.iter().any(|u| {
            let u = u.to_ascii_lowercase();
            u.starts_with("turn:") || u.starts_with("turns:")
        });
        if has_turn && self.turn_credentials.secret_file.is_none() {
            return Err(ConfigError::invalid(
                "turn_credentials.secret_file",
                "turn: URLs need a TURN secret to mint credentials",
            ));
        }
        Ok(())
    }

    /// Reads the key files named by the configuration and registers them with `reloader`,
    /// which swaps them while the server runs; `--check-config` runs this too.
    pub fn load_credentials(&self, reloader: &mut Reloader) -> Result<Credentials, ConfigError> {
        let verifier = self.jwt.live_verifier(reloader)?;
        let turn = match &self.turn_credentials.secret_file {
            Some(_) => self.turn_credentials.live_credentials(reloader)?,
            // validate() allows this only without turn: URLs, so nothing is ever minted with
            // this secret; it exists because IceServers always carries credentials.
            None => Live::new(
                TurnCredentials::new(vec![TurnSecret::derived(&rand::random::<[u8; 32]>())])
                    .map_err(|e| ConfigError::invalid("turn_credentials.secret_file", e))?,
            ),
        };
        Ok(Credentials {
            verifier,
            ice: Arc::new(self.turn_credentials.ice_servers(turn)?),
        })
    }

    /// What `--check-config` prints: a Redis URL's password hidden.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if let Some(url) = &mut shown.signal.redis_url
            && let Some((scheme, rest)) = url.split_once("://")
            && let Some((_, host)) = rest.rsplit_once('@')
        {
            *url = format!("{scheme}://{REDACTED}@{host}");
        }
        shown
    }
}

impl SignalConfig {
    /// The Redis URL, from `redis_url` or read from `redis_url_file`.
    pub fn resolved_redis_url(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.redis_url_file else {
            return Ok(self.redis_url.clone());
        };
        let key = "signal.redis_url_file";
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))?;
        let url = text.trim().to_owned();
        if !url.starts_with("redis://")
            && !url.starts_with("rediss://")
            && !url.starts_with("unix://")
        {
            return Err(ConfigError::invalid(
                key,
                "the file must hold a redis://, rediss:// or unix:// URL",
            ));
        }
        Ok(Some(url))
    }

    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("signal.{k}");
        let positive = |k: &str, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::invalid(key(k), "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        positive("presence_ttl", self.presence_ttl)?;
        positive("replica_ttl", self.replica_ttl)?;
        positive("backplane_timeout", self.backplane_timeout)?;
        positive("auth_timeout", self.auth_timeout)?;
        positive("heartbeat", self.heartbeat)?;
        positive("write_timeout", self.write_timeout)?;
        positive("token_refresh_lead", self.token_refresh_lead)?;
        if self.idle_timeout <= self.heartbeat {
            return Err(ConfigError::invalid(
                key("idle_timeout"),
                "must be longer than signal.heartbeat",
            ));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::invalid(
                key("max_frame_bytes"),
                "must be at least 1024 (an SDP offer does not fit in less)",
            ));
        }
        for (k, v) in [
            ("rate_per_second", self.rate_per_second as usize),
            ("rate_burst", self.rate_burst as usize),
            ("rate_strikes", self.rate_strikes as usize),
            ("max_connections", self.max_connections),
            ("max_connections_per_user", self.max_connections_per_user),
            ("max_viewers_per_camera", self.max_viewers_per_camera),
            (
                "max_watches_per_connection",
                self.max_watches_per_connection,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key(k), "must be at least 1"));
            }
        }
        if self.upgrades_per_minute == 0 || self.upgrade_burst == 0 {
            return Err(ConfigError::invalid(
                key("upgrades_per_minute"),
                "upgrades_per_minute and upgrade_burst must be at least 1",
            ));
        }
        if self.api_per_minute > 0 && self.api_burst == 0 {
            return Err(ConfigError::invalid(key("api_burst"), "must be at least 1"));
        }
        if self.redis_url.is_some() && self.redis_url_file.is_some() {
            return Err(ConfigError::invalid(
                key("redis_url_file"),
                "set redis_url or redis_url_file, not both",
            ));
        }
        iceway_auth::api::validate_cors_origins(&self.cors_origins)
            .map_err(|e| ConfigError::invalid(key("cors_origins"), e))?;
        iceway_auth::api::validate_cors_origins(&self.allowed_origins)
            .map_err(|e| ConfigError::invalid(key("allowed_origins"), e))?;
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
        {
            return Err(ConfigError::invalid(
                key("redis_url"),
                "must be a redis://, rediss:// or unix:// URL",
            ));
        }
        Ok(())
    }
}

/// What the server authenticates with and hands out. `iceway dev` builds one in memory.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Swapped when a key file changes.
    pub verifier: Live<AppTokenVerifier>,
    /// The `welcome.iceServers` and `/v1/ice-servers` lists.
    pub ice: Arc<IceServers>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    fn secret_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(b"0123456789abcdef0123456789abcdef\n")
            .expect("write");
        f
    }

    fn cli(args: &[&str]) -> Cli {
        <Cli as clap::Parser>::parse_from(
            std::iter::once("iceway-signal").chain(args.iter().copied()),
        )
    }

    #[test]
    fn the_redis_url_can_come_from_a_file_never_from_both() {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(b"redis://:s3cret@redis:6379/0\n")
            .expect("write");
        let mut cfg = SignalConfig {
            redis_url_file: Some(f.path().to_owned()),
            ..SignalConfig::default()
        };
        cfg.validate().expect("a file alone is fine");
        assert_eq!(
            cfg.resolved_redis_url().expect("read").as_deref(),
            Some("redis://:s3cret@redis:6379/0")
        );
        cfg.redis_url = Some("redis://other:6379/0".into());
        let e = cfg.validate().expect_err("both");
        assert!(e.to_string().contains("signal.redis_url_file"), "{e}");
        let mut bad = tempfile::NamedTempFile::new().expect("temp");
        bad.write_all(b"http://not-redis\n").expect("write");
        cfg.redis_url = None;
        cfg.redis_url_file = Some(bad.path().to_owned());
        assert!(cfg.resolved_redis_url().is_err());
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let secret = secret_file();
        let mut toml = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp");
        writeln!(
            toml,
            "[signal]\npresence_ttl = \"3s\"\nmax_viewers_per_camera = 2\nlisten = \"127.0.0.1:1\"\n[drain]\ntimeout = \"4s\""
        )
        .expect("write");
        let env = HashMap::from([
            (
                "ICEWAY_SIGNAL__MAX_VIEWERS_PER_CAMERA".to_owned(),
                "3".to_owned(),
            ),
            (
                "ICEWAY_TURN_CREDENTIALS__URLS".to_owned(),
                "stun:a:3478,stun:b:3478".to_owned(),
            ),
        ]);
        let path = toml.path().display().to_string();
        let secret_path = secret.path().display().to_string();
        let cfg = Config::load(
            &cli(&[
                "--config",
                &path,
                "--listen",
                "127.0.0.1:2",
                "--jwt-secret-file",
                &secret_path,
            ]),
            Some(env),
        )
        .expect("valid");
        assert_eq!(cfg.signal.presence_ttl, Duration::from_secs(3));
        assert_eq!(cfg.signal.max_viewers_per_camera, 3);
        assert_eq!(cfg.signal.listen.port(), 2);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(4));
        assert_eq!(
            cfg.turn_credentials.urls,
            vec!["stun:a:3478", "stun:b:3478"]
        );
        let creds = cfg.load_credentials(&mut Reloader::new()).expect("keys");
        let list = creds
            .ice
            .for_user("u", std::time::SystemTime::now())
            .expect("stun list");
        assert_eq!(list.ice_servers.len(), 1);
        assert!(list.ice_servers[0].username.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(&cli(&[]), Some(HashMap::new())).expect_err("no key");
        assert!(err.to_string().contains("jwt.secret_file"), "{err}");
        let secret = secret_file();
        let secret_path = secret.path().display().to_string();
        let flags = cli(&["--jwt-secret-file", &secret_path]);
        let env = HashMap::from([("ICEWAY_SIGNAL__HEARTBEAT".to_owned(), "soon".to_owned())]);
        let err = Config::load(&flags, Some(env)).expect_err("bad duration");
        assert!(err.to_string().contains("signal.heartbeat"), "{err}");
        let env = HashMap::from([(
            "ICEWAY_TURN_CREDENTIALS__URLS".to_owned(),
            "turn:t:3478".to_owned(),
        )]);
        let err = Config::load(&flags, Some(env)).expect_err("turn without secret");
        assert!(
            err.to_string().contains("turn_credentials.secret_file"),
            "{err}"
        );
        // Misspelt keys at any level, and the flat keys of earlier releases, are refused with
        // their path.
        for (var, key) in [
            (
                "ICEWAY_SIGNAL__MAX_VIEWRES_PER_CAMERA",
                "signal.max_viewres_per_camera",
            ),
            ("ICEWAY_SIGNAL__JWT_SECRET_FILE", "signal.jwt_secret_file"),
            ("ICEWAY_SIGNAL__DRAIN_GRACE", "signal.drain_grace"),
            ("ICEWAY_JWT__LEWAY", "jwt.leway"),
            ("ICEWAY_DRAIN__GRACE", "drain.grace"),
            ("ICEWAY_TURN__REALM", "turn"),
        ] {
            let env = HashMap::from([(var.to_owned(), "1".to_owned())]);
            let err = Config::load(&flags, Some(env)).expect_err(var);
            assert!(err.to_string().contains(key), "{var}: {err}");
        }
    }

    #[test]
    fn redacted_hides_the_redis_password() {
        let mut cfg = Config::default();
        cfg.signal.redis_url = Some("redis://user:hunter2@redis:6379/0".into());
        let shown = iceway_service::render_effective(&cfg.redacted());
        assert!(
            !shown.contains("hunter2") && shown.contains("@redis:6379/0"),
            "{shown}"
        );
    }
}
