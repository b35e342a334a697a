//! Typed configuration of `iceway-auth` (DESIGN §5), loaded by `iceway_service::ConfigLoader`:
//! defaults → TOML file → `ICEWAY_<SECTION>__<KEY>` → flags.
//!
//! The `[jwt]` and `[turn]` sections are public so that `iceway-signal`, which takes the same
//! `--jwt-*` and `--turn-*` flags and mounts the same API, can reuse them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iceway_service::{ConfigError, LogFormat, read_secret_lines};
use serde::{Deserialize, Serialize};

use crate::api::{RateLimit, validate_cors_origins};
use crate::app_token::{AppTokenVerifier, DEFAULT_AUDIENCE, DEFAULT_LEEWAY, VerificationKey};
use crate::ice_servers::{IceServers, IceServersConfig};
use crate::turn_credential::{CredentialFormat, TurnCredentials, TurnLimits};

/// Keys whose environment value is a comma-separated list.
pub const LIST_KEYS: &[&str] = &["jwt.keys", "turn.urls", "cors.origins"];

/// The whole `iceway-auth` configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Credential API listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    pub log_format: LogFormat,
    /// How long in-flight requests may finish after SIGTERM.
    #[serde(with = "iceway_service::duration")]
    pub drain_timeout: Duration,
    pub jwt: JwtConfig,
    pub turn: TurnConfig,
    pub cors: CorsConfig,
    pub rate_limit: RateLimitConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            admin: SocketAddr::from(([0, 0, 0, 0], 9481)),
            log_format: LogFormat::Text,
            drain_timeout: Duration::from_secs(10),
            jwt: JwtConfig::default(),
            turn: TurnConfig::default(),
            cors: CorsConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// App-token verification keys and claim checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// File holding the HS256 app key with kid `default` (`--jwt-secret-file`).
    pub secret_file: Option<PathBuf>,
    /// `KID=ALG:FILE` specs (`--jwt-key`); ALG is HS256, RS256, ES256 or EdDSA.
    pub keys: Vec<String>,
    pub audience: String,
    pub issuer: Option<String>,
    #[serde(with = "iceway_service::duration")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            keys: Vec::new(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            issuer: None,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

impl JwtConfig {
    /// Loads every configured key; at least one is required.
    pub fn verifier(&self) -> Result<AppTokenVerifier, ConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = &self.secret_file {
            keys.push(
                VerificationKey::hs256_from_file("default", path)
                    .map_err(|e| ConfigError::invalid("jwt.secret_file", e))?,
            );
        }
        for spec in &self.keys {
            keys.push(
                VerificationKey::parse_spec(spec)
                    .map_err(|e| ConfigError::invalid("jwt.keys", e))?,
            );
        }
        if keys.is_empty() {
            return Err(ConfigError::invalid(
                "jwt.secret_file",
                "no app-token key: set jwt.secret_file (--jwt-secret-file) or jwt.keys (--jwt-key)",
            ));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid("jwt.audience", "must not be empty"));
        }
        AppTokenVerifier::try_new(keys, &self.audience, self.issuer.as_deref(), self.leeway)
            .map_err(|e| ConfigError::invalid("jwt.keys", e))
    }
}

/// TURN secrets and what the ICE-server lists contain.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnConfig {
    /// TURN shared secrets, one per line; the first mints (`--turn-secret-file`).
    pub secret_file: Option<PathBuf>,
    /// `stun:`, `turn:` and `turns:` URLs handed to clients (`--turn-url`).
    pub urls: Vec<String>,
    pub credential_format: CredentialFormat,
    /// Lifetime of minted TURN credentials.
    #[serde(with = "iceway_service::duration")]
    pub ttl: Duration,
    /// Written into JWT-format credentials: concurrent allocations per user.
    pub alloc: Option<u32>,
    /// Written into JWT-format credentials: relay bandwidth cap in kbit/s.
    pub kbps: Option<u32>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            urls: Vec::new(),
            credential_format: CredentialFormat::Rest,
            ttl: Duration::from_secs(3600),
            alloc: None,
            kbps: None,
        }
    }
}

impl TurnConfig {
    pub fn credentials(&self) -> Result<TurnCredentials, ConfigError> {
        let path = self.secret_file.as_deref().ok_or_else(|| {
            ConfigError::invalid("turn.secret_file", "required (--turn-secret-file)")
        })?;
        let lines =
            read_secret_lines(path).map_err(|e| ConfigError::invalid("turn.secret_file", e))?;
        TurnCredentials::from_secret_lines(&lines.join("\n"))
            .map_err(|e| ConfigError::invalid("turn.secret_file", e))
    }

    pub fn ice_servers(&self, creds: Arc<TurnCredentials>) -> Result<IceServers, ConfigError> {
        let cfg = IceServersConfig {
            urls: self.urls.clone(),
            ttl: self.ttl,
            format: self.credential_format,
        };
        cfg.validate().map_err(|e| {
            let key = if self.ttl.is_zero() {
                "turn.ttl"
            } else {
                "turn.urls"
            };
            ConfigError::invalid(key, e)
        })?;
        if self.credential_format == CredentialFormat::Rest
            && (self.alloc.is_some() || self.kbps.is_some())
        {
            return Err(ConfigError::invalid(
                "turn.credential_format",
                "turn.alloc and turn.kbps need credential_format = \"jwt\"; REST usernames cannot carry limits",
            ));
        }
        Ok(IceServers::new(cfg, creds).with_limits(TurnLimits {
            alloc: self.alloc,
            kbps: self.kbps,
        }))
    }
}

/// Browser origins allowed to call the API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// e.g. `https://app.example`; `*` allows any origin; empty disables CORS.
    pub origins: Vec<String>,
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cors_origins(&self.origins).map_err(|e| ConfigError::invalid("cors.origins", e))
    }
}

/// Per-client-IP rate limit of the credential API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Sustained requests per minute per client IP; 0 turns the limit off.
    pub per_minute: u32,
    /// Requests a client may make in a burst.
    pub burst: u32,
    /// Key clients by the last `X-Forwarded-For` entry (only behind a trusted ingress).
    pub trust_forwarded_for: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_minute: 120,
            burst: 30,
            trust_forwarded_for: false,
        }
    }
}

impl RateLimitConfig {
    /// `None` when turned off.
    pub fn rate_limit(&self) -> Result<Option<RateLimit>, ConfigError> {
        let Some(per_minute) = NonZeroU32::new(self.per_minute) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| ConfigError::invalid("rate_limit.burst", "must be at least 1"))?;
        Ok(Some(RateLimit {
            per_minute,
            burst,
            trust_forwarded_for: self.trust_forwarded_for,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceway_service::ConfigLoader;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)]) -> Result<AuthConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>();
        ConfigLoader::new(&AuthConfig::default())?
            .list_keys(LIST_KEYS)
            .build_with_env(Some(env))
    }

    #[test]
    fn defaults_round_trip_through_the_loader() {
        let cfg = load(&[]).expect("defaults");
        assert_eq!(cfg.listen, "0.0.0.0:8081".parse().expect("addr"));
        assert_eq!(cfg.admin, "0.0.0.0:9481".parse().expect("addr"));
        assert_eq!(cfg.turn.ttl, Duration::from_secs(3600));
        assert_eq!(cfg.jwt.leeway, Duration::from_secs(30));
        assert_eq!(cfg.jwt.audience, "iceway");
        assert_eq!(cfg.jwt.issuer, None);
    }

    #[test]
    fn environment_sets_sections_lists_and_durations() {
        let cfg = load(&[
            ("ICEWAY_TURN__TTL", "10m"),
            ("ICEWAY_TURN__URLS", "stun:h:3478,turn:h:3478"),
            ("ICEWAY_TURN__CREDENTIAL_FORMAT", "jwt"),
            ("ICEWAY_JWT__LEEWAY", "5"),
            ("ICEWAY_RATE_LIMIT__PER_MINUTE", "7"),
        ])
        .expect("config");
        assert_eq!(cfg.turn.ttl, Duration::from_secs(600));
        assert_eq!(cfg.turn.urls, vec!["stun:h:3478", "turn:h:3478"]);
        assert_eq!(cfg.turn.credential_format, CredentialFormat::Jwt);
        assert_eq!(cfg.jwt.leeway, Duration::from_secs(5));
        assert_eq!(cfg.rate_limit.per_minute, 7);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[("ICEWAY_TURN__TTL", "soon")]).expect_err("bad ttl");
        assert!(err.to_string().contains("turn.ttl"), "{err}");
        let err = load(&[("ICEWAY_TURN__CREDENTIAL_FORMAT", "xml")]).expect_err("bad format");
        assert!(err.to_string().contains("turn.credential_format"), "{err}");

        let cfg = AuthConfig::default();
        let err = cfg.jwt.verifier().expect_err("no keys");
        assert!(err.to_string().contains("jwt.secret_file"), "{err}");
        let err = cfg.turn.credentials().expect_err("no secrets");
        assert!(err.to_string().contains("turn.secret_file"), "{err}");
        let mut turn = TurnConfig {
            urls: vec!["http://x".into()],
            ..TurnConfig::default()
        };
        let creds =
            Arc::new(TurnCredentials::from_secret_lines("some-secret-0123456789").expect("secret"));
        let err = turn.ice_servers(creds.clone()).expect_err("bad url");
        assert!(err.to_string().contains("turn.urls"), "{err}");
        turn.urls = vec!["turn:x".into()];
        turn.kbps = Some(100);
        let err = turn.ice_servers(creds).expect_err("limits need jwt");
        assert!(err.to_string().contains("turn.credential_format"), "{err}");
        let cors = CorsConfig {
            origins: vec!["example.com".into()],
        };
        assert!(
            cors.validate()
                .expect_err("bad origin")
                .to_string()
                .contains("cors.origins")
        );
        let rl = RateLimitConfig {
            per_minute: 5,
            burst: 0,
            trust_forwarded_for: false,
        };
        assert!(
            rl.rate_limit()
                .expect_err("burst")
                .to_string()
                .contains("rate_limit.burst")
        );
        assert_eq!(
            RateLimitConfig {
                per_minute: 0,
                ..rl
            }
            .rate_limit()
            .ok(),
            Some(None)
        );
    }
}
