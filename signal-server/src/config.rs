//! The typed configuration of `iceway-signal` (DESIGN §5). In a TOML file it is the `[signal]`
//! table; in the environment `ICEWAY_SIGNAL__<KEY>` (e.g. `ICEWAY_SIGNAL__REDIS_URL`).
//! Durations are written like `30s`, `500ms`, `2m`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iceway_auth::{
    AppTokenVerifier, CredentialFormat, IceServers, IceServersConfig, TurnCredentials, TurnSecret,
    VerificationKey,
};
use iceway_service::{ConfigError, ConfigLoader, LogFormat};
use serde::{Deserialize, Serialize};

/// Every setting of the signal server, with safe defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    /// WebSocket and HTTP listener (`/v1/ws`, `/v1/ice-servers`, `/camera`, `/viewer`).
    pub listen: SocketAddr,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub log_format: LogFormat,
    /// Directory of the browser reference client (`camera.html`, `viewer.html`, assets).
    pub web_root: PathBuf,

    /// HS256 app-token secret (kid `default`), at least 32 bytes.
    pub jwt_secret_file: Option<PathBuf>,
    /// More app-token keys, each `KID=ALG:PEMFILE` (ALG: HS256, RS256, ES256, EdDSA).
    pub jwt_keys: Vec<String>,
    pub jwt_audience: String,
    pub jwt_issuer: Option<String>,
    #[serde(with = "iceway_service::duration")]
    pub jwt_leeway: Duration,

    /// TURN shared secrets, one per line (the first mints). Needed when `turn_urls` has
    /// `turn:`/`turns:` URLs.
    pub turn_secret_file: Option<PathBuf>,
    /// `stun:`, `turn:` and `turns:` URLs handed to clients in `welcome.iceServers`.
    pub turn_urls: Vec<String>,
    #[serde(with = "iceway_service::duration")]
    pub turn_credential_ttl: Duration,
    /// `rest` (coturn use-auth-secret) or `jwt`.
    pub turn_credential_format: TurnFormat,

    /// Redis for scale-out; unset: one process holds all state in memory.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// Lifetime of a camera's presence key; refreshed every third of it. A camera on a replica
    /// that dies is seen offline after at most this long.
    #[serde(with = "iceway_service::duration")]
    pub presence_ttl: Duration,

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
    /// A socket that cannot take a frame for this long is closed.
    #[serde(with = "iceway_service::duration")]
    pub write_timeout: Duration,
    /// After SIGTERM: time clients get before their sockets are closed with 1001.
    #[serde(with = "iceway_service::duration")]
    pub drain_grace: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnFormat {
    #[default]
    Rest,
    Jwt,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin: SocketAddr::from(([0, 0, 0, 0], 9480)),
            log_format: LogFormat::Text,
            web_root: PathBuf::from("client/web"),
            jwt_secret_file: None,
            jwt_keys: Vec::new(),
            jwt_audience: iceway_auth::app_token::DEFAULT_AUDIENCE.to_owned(),
            jwt_issuer: None,
            jwt_leeway: iceway_auth::app_token::DEFAULT_LEEWAY,
            turn_secret_file: None,
            turn_urls: Vec::new(),
            turn_credential_ttl: Duration::from_secs(12 * 3600),
            turn_credential_format: TurnFormat::Rest,
            redis_url: None,
            redis_prefix: "iceway:".to_owned(),
            presence_ttl: Duration::from_secs(30),
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
            write_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    #[serde(default)]
    signal: SignalConfig,
}

/// The flags of DESIGN §5 that override the file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_keys: Vec<String>,
    pub turn_secret_file: Option<PathBuf>,
    pub turn_urls: Vec<String>,
    pub redis_url: Option<String>,
}

const LIST_KEYS: [&str; 2] = ["signal.jwt_keys", "signal.turn_urls"];

impl SignalConfig {
    /// Defaults → `file` → environment → `flags`, then validated.
    pub fn load(
        file: Option<&std::path::Path>,
        flags: Overrides,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
        let list = |v: Vec<String>| (!v.is_empty()).then_some(v);
        let loader = ConfigLoader::new(&File {
            signal: Self::default(),
        })?
        .list_keys(&LIST_KEYS)
        .file(file)
        .set("signal.listen", flags.listen.map(|a| a.to_string()))?
        .set("signal.admin", flags.admin.map(|a| a.to_string()))?
        .set(
            "signal.log_format",
            flags.log_format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        )?
        .set("signal.jwt_secret_file", path(flags.jwt_secret_file))?
        .set("signal.jwt_keys", list(flags.jwt_keys))?
        .set("signal.turn_secret_file", path(flags.turn_secret_file))?
        .set("signal.turn_urls", list(flags.turn_urls))?
        .set("signal.redis_url", flags.redis_url)?;
        let file: File = match env {
            Some(env) => loader.build_with_env(Some(env))?,
            None => loader.build()?,
        };
        file.signal.validate()?;
        Ok(file.signal)
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
        positive("auth_timeout", self.auth_timeout)?;
        positive("heartbeat", self.heartbeat)?;
        positive("write_timeout", self.write_timeout)?;
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
        if self.jwt_secret_file.is_none() && self.jwt_keys.is_empty() {
            return Err(ConfigError::invalid(
                key("jwt_secret_file"),
                "no app-token key: set signal.jwt_secret_file (--jwt-secret-file) or signal.jwt_keys (--jwt-key)",
            ));
        }
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
        self.ice_servers_config()
            .validate()
            .map_err(|e| ConfigError::invalid(key("turn_urls"), e))?;
        let has_turn = self.turn_urls.iter().any(|u| {
            let u = u.to_ascii_lowercase();
            u.starts_with("turn:") || u.starts_with("turns:")
        });
        if has_turn && self.turn_secret_file.is_none() {
            return Err(ConfigError::invalid(
                key("turn_secret_file"),
                "turn: URLs need a TURN secret to mint credentials",
            ));
        }
        Ok(())
    }

    fn ice_servers_config(&self) -> IceServersConfig {
        IceServersConfig {
            urls: self.turn_urls.clone(),
            ttl: self.turn_credential_ttl,
            format: match self.turn_credential_format {
                TurnFormat::Rest => CredentialFormat::Rest,
                TurnFormat::Jwt => CredentialFormat::Jwt,
            },
        }
    }

    /// Reads the key files named by the configuration.
    pub fn load_credentials(&self) -> Result<Credentials, ConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = &self.jwt_secret_file {
            keys.push(
                VerificationKey::hs256_from_file("default", path)
                    .map_err(|e| ConfigError::invalid("signal.jwt_secret_file", e))?,
            );
        }
        for spec in &self.jwt_keys {
            keys.push(
                VerificationKey::parse_spec(spec)
                    .map_err(|e| ConfigError::invalid("signal.jwt_keys", e))?,
            );
        }
        let verifier = AppTokenVerifier::try_new(
            keys,
            &self.jwt_audience,
            self.jwt_issuer.as_deref(),
            self.jwt_leeway,
        )
        .map_err(|e| ConfigError::invalid("signal.jwt_keys", e))?;
        let turn = match &self.turn_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(
                        "signal.turn_secret_file",
                        format!("{}: {e}", path.display()),
                    )
                })?;
                TurnCredentials::from_secret_lines(&text)
                    .map_err(|e| ConfigError::invalid("signal.turn_secret_file", e))?
            }
            // validate() allows this only without turn: URLs, so nothing is ever minted with
            // this secret; it exists because IceServers always carries credentials.
            None => TurnCredentials::new(vec![TurnSecret::derived(&rand::random::<[u8; 32]>())])
                .map_err(|e| ConfigError::invalid("signal.turn_secret_file", e))?,
        };
        Ok(Credentials {
            verifier: Arc::new(verifier),
            ice: Arc::new(IceServers::new(self.ice_servers_config(), Arc::new(turn))),
        })
    }
}

/// What the server authenticates with and hands out. `iceway dev` builds one in memory.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub verifier: Arc<AppTokenVerifier>,
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

    #[test]
    fn file_env_and_flags_layer_in_order() {
        let secret = secret_file();
        let mut toml = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp");
        writeln!(
            toml,
            "[signal]\npresence_ttl = \"3s\"\nmax_viewers_per_camera = 2\nlisten = \"127.0.0.1:1\""
        )
        .expect("write");
        let env = HashMap::from([
            (
                "ICEWAY_SIGNAL__MAX_VIEWERS_PER_CAMERA".to_owned(),
                "3".to_owned(),
            ),
            (
                "ICEWAY_SIGNAL__TURN_URLS".to_owned(),
                "stun:a:3478,stun:b:3478".to_owned(),
            ),
        ]);
        let cfg = SignalConfig::load(
            Some(toml.path()),
            Overrides {
                listen: Some("127.0.0.1:2".parse().expect("addr")),
                jwt_secret_file: Some(secret.path().to_owned()),
                ..Overrides::default()
            },
            Some(env),
        )
        .expect("valid");
        assert_eq!(cfg.presence_ttl, Duration::from_secs(3));
        assert_eq!(cfg.max_viewers_per_camera, 3);
        assert_eq!(cfg.listen.port(), 2);
        assert_eq!(cfg.turn_urls, vec!["stun:a:3478", "stun:b:3478"]);
        let creds = cfg.load_credentials().expect("keys");
        let list = creds
            .ice
            .for_user("u", std::time::SystemTime::now())
            .expect("stun list");
        assert_eq!(list.ice_servers.len(), 1);
        assert!(list.ice_servers[0].username.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let err = SignalConfig::load(None, Overrides::default(), Some(HashMap::new()))
            .expect_err("no key");
        assert!(err.to_string().contains("signal.jwt_secret_file"), "{err}");
        let secret = secret_file();
        let flags = Overrides {
            jwt_secret_file: Some(secret.path().to_owned()),
            ..Overrides::default()
        };
        let env = HashMap::from([("ICEWAY_SIGNAL__HEARTBEAT".to_owned(), "soon".to_owned())]);
        let err = SignalConfig::load(None, flags.clone(), Some(env)).expect_err("bad duration");
        assert!(err.to_string().contains("heartbeat"), "{err}");
        let env = HashMap::from([(
            "ICEWAY_SIGNAL__TURN_URLS".to_owned(),
            "turn:t:3478".to_owned(),
        )]);
        let err = SignalConfig::load(None, flags, Some(env)).expect_err("turn without secret");
        assert!(err.to_string().contains("signal.turn_secret_file"), "{err}");
    }
}
