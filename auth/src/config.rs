//! Typed configuration of `iceway-auth` (DESIGN §5, `docs/configuration.md`), loaded by
//! `iceway_service::ConfigLoader`: defaults → TOML file → `ICEWAY_<SECTION>__<KEY>` → flags.
//!
//! `[jwt]` (app-token keys) and `[turn_credentials]` (TURN secrets and what is minted with them)
//! are shared: `iceway-signal` and `iceway-turn` take the same sections, built by the same code
//! here, under the same flags ([`JwtArgs`], [`TurnCredentialArgs`]).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iceway_service::{
    AdminConfig, CommonArgs, ConfigError, ConfigLoader, DrainConfig, Live, LogConfig, Reloader,
};
use serde::{Deserialize, Serialize};

use crate::api::{RateLimit, validate_cors_origins};
use crate::app_token::{AppTokenVerifier, DEFAULT_AUDIENCE, DEFAULT_LEEWAY, VerificationKey};
use crate::ice_servers::{IceServers, IceServersConfig};
use crate::turn_credential::{CredentialFormat, TurnCredentials, TurnLimits};

/// Keys whose environment value is a comma-separated list.
pub const LIST_KEYS: &[&str] = &["jwt.keys", "turn_credentials.urls", "auth.cors.origins"];

/// The whole `iceway-auth` configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub auth: AuthSection,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub drain: DrainConfig,
    pub jwt: JwtConfig,
    pub turn_credentials: TurnCredentialsConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            auth: AuthSection::default(),
            admin: AdminConfig::on_port(9481),
            log: LogConfig::default(),
            drain: DrainConfig::default(),
            jwt: JwtConfig::default(),
            turn_credentials: TurnCredentialsConfig::default(),
        }
    }
}

/// `[auth]`: the credential API's own settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Credential API listener.
    pub listen: SocketAddr,
    pub cors: CorsConfig,
    pub rate_limit: RateLimitConfig,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            cors: CorsConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// Flags of `iceway-auth`; every one can also be set in the file and the environment.
#[derive(Debug, clap::Parser)]
#[command(
    name = "iceway-auth",
    version,
    about = "Iceway credential API: ICE-server lists and TURN credentials for app clients holding an app JWT"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of the credential API listener [default: 0.0.0.0:8081].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub turn_credentials: TurnCredentialArgs,
    /// A browser origin allowed by CORS (https://app.example, or *). Repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Requests per minute per client IP; 0 turns the limit off [default: 120].
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Requests a client may make in a burst [default: 30].
    #[arg(long, value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// Key the rate limit by the last X-Forwarded-For entry (behind a trusted ingress only).
    #[arg(long)]
    pub trust_forwarded_for: bool,
}

impl AuthConfig {
    /// Defaults, then `--config`, then the environment (`None`: the process's), then `cli`.
    pub fn load(
        cli: &Cli,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let loader = ConfigLoader::new(&AuthConfig::default())?
            .list_keys(LIST_KEYS)
            .file(cli.common.config.as_deref())
            .common_flags(&cli.common)?
            .set("auth.listen", cli.listen.map(|a| a.to_string()))?;
        cli.turn_credentials
            .apply(cli.jwt.apply(loader)?)?
            .set("auth.cors.origins", non_empty(&cli.cors_origins))?
            .set("auth.rate_limit.per_minute", cli.rate_limit)?
            .set("auth.rate_limit.burst", cli.rate_limit_burst)?
            .set(
                "auth.rate_limit.trust_forwarded_for",
                cli.trust_forwarded_for.then_some(true),
            )?
            .build_with_env(env)
    }

    /// What `--check-config` prints. Nothing secret is held inline here (keys and secrets come
    /// from files), so this is the configuration as loaded.
    pub fn redacted(&self) -> Self {
        self.clone()
    }
}

fn non_empty(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

fn path(p: &Option<PathBuf>) -> Option<String> {
    p.as_ref().map(|p| p.to_string_lossy().into_owned())
}

/// `[jwt]`: app-token verification keys and claim checks (iceway-auth, iceway-signal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// The `[jwt]` flags, the same in every service that verifies app tokens.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JwtArgs {
    /// File holding the HS256 app-token key (kid "default", at least 32 bytes).
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// An app-token key: KID=ALG:FILE, ALG one of HS256, RS256, ES256, EdDSA (PEM public key).
    /// Repeatable.
    #[arg(long = "jwt-key", value_name = "KID=ALG:PEMFILE")]
    pub jwt_keys: Vec<String>,
    /// Required `aud` of app tokens [default: iceway].
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Required `iss` of app tokens [default: not checked].
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on exp/nbf, e.g. 30s [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub jwt_leeway: Option<String>,
}

impl JwtArgs {
    pub fn apply(&self, loader: ConfigLoader) -> Result<ConfigLoader, ConfigError> {
        loader
            .set("jwt.secret_file", path(&self.jwt_secret_file))?
            .set("jwt.keys", non_empty(&self.jwt_keys))?
            .set("jwt.audience", self.jwt_audience.clone())?
            .set("jwt.issuer", self.jwt_issuer.clone())?
            .set("jwt.leeway", self.jwt_leeway.clone())
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

    /// The key files: `secret_file` and the FILE of each `KID=ALG:FILE` spec.
    pub fn files(&self) -> Vec<PathBuf> {
        let specs = self.keys.iter().filter_map(|spec| {
            let (_, rest) = spec.split_once('=')?;
            let (_, file) = rest.split_once(':')?;
            Some(PathBuf::from(file.trim()))
        });
        self.secret_file.iter().cloned().chain(specs).collect()
    }

    /// The verifier, rebuilt by `reloader` when a key file changes. Only the keys reload: the
    /// set of files, audience, issuer and leeway are configuration, fixed for the process.
    pub fn live_verifier(
        &self,
        reloader: &mut Reloader,
    ) -> Result<Live<AppTokenVerifier>, ConfigError> {
        let live = Live::new(self.verifier()?);
        let cfg = self.clone();
        reloader.watch("app_token_keys", self.files(), &live, move || {
            cfg.verifier()
        });
        Ok(live)
    }
}

/// `[turn_credentials]`: the TURN shared secrets, and what services that mint credentials
/// (iceway-auth, iceway-signal) put in them. iceway-turn checks with the same `secret_file` and
/// reads nothing else here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnCredentialsConfig {
    /// TURN shared secrets, one per line; the first mints, all are accepted
    /// (`--turn-secret-file`; syntax in `docs/auth.md`).
    pub secret_file: Option<PathBuf>,
    /// `stun:`, `turn:` and `turns:` URLs handed to clients (`--turn-url`).
    pub urls: Vec<String>,
    /// Username format minted: `rest` (coturn `use-auth-secret`) or `jwt`.
    pub format: CredentialFormat,
    /// Lifetime of minted TURN credentials.
    #[serde(with = "iceway_service::duration")]
    pub ttl: Duration,
    /// Written into JWT-format credentials: concurrent allocations per user.
    pub alloc: Option<u32>,
    /// Written into JWT-format credentials: relay bandwidth cap in kbit/s.
    pub kbps: Option<u32>,
}

impl Default for TurnCredentialsConfig {
    fn default() -> Self {
        Self {
            secret_file: None,
            urls: Vec::new(),
            format: CredentialFormat::Rest,
            ttl: Duration::from_secs(3600),
            alloc: None,
            kbps: None,
        }
    }
}

/// The `[turn_credentials]` flags, the same in every service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TurnCredentialArgs {
    /// TURN shared secrets, one per line (SECRET or `kid:KID SECRET`); the first mints.
    #[arg(long, value_name = "FILE", alias = "secret-file")]
    pub turn_secret_file: Option<PathBuf>,
    /// A stun:, turn: or turns: URL handed to clients. Repeatable.
    #[arg(long = "turn-url", value_name = "URL")]
    pub turn_urls: Vec<String>,
    /// TURN username format minted [default: rest].
    #[arg(long, value_name = "FORMAT", value_parser = ["rest", "jwt"], alias = "credential-format")]
    pub turn_credential_format: Option<String>,
    /// Lifetime of minted TURN credentials, e.g. 1h [default: 1h].
    #[arg(long, value_name = "DURATION", alias = "ttl")]
    pub turn_ttl: Option<String>,
    /// Max concurrent allocations per user, written into jwt-format credentials.
    #[arg(long, value_name = "N")]
    pub turn_alloc: Option<u32>,
    /// Relay bandwidth cap in kbit/s, written into jwt-format credentials.
    #[arg(long, value_name = "KBPS")]
    pub turn_kbps: Option<u32>,
}

impl TurnCredentialArgs {
    pub fn apply(&self, loader: ConfigLoader) -> Result<ConfigLoader, ConfigError> {
        loader
            .set("turn_credentials.secret_file", path(&self.turn_secret_file))?
            .set("turn_credentials.urls", non_empty(&self.turn_urls))?
            .set(
                "turn_credentials.format",
                self.turn_credential_format.clone(),
            )?
            .set("turn_credentials.ttl", self.turn_ttl.clone())?
            .set("turn_credentials.alloc", self.turn_alloc)?
            .set("turn_credentials.kbps", self.turn_kbps)
    }
}

impl TurnCredentialsConfig {
    /// The secrets of `secret_file`, which is required.
    pub fn credentials(&self) -> Result<TurnCredentials, ConfigError> {
        let path = self.secret_file.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                "turn_credentials.secret_file",
                "required (--turn-secret-file)",
            )
        })?;
        read_secret_file(path)
    }

    /// The secrets of `secret_file`, re-read by `reloader` when the file changes.
    pub fn live_credentials(
        &self,
        reloader: &mut Reloader,
    ) -> Result<Live<TurnCredentials>, ConfigError> {
        let live = Live::new(self.credentials()?);
        let cfg = self.clone();
        reloader.watch(
            "turn_secrets",
            self.secret_file.iter().cloned().collect(),
            &live,
            move || cfg.credentials(),
        );
        Ok(live)
    }

    /// The ICE-server list minted for clients; `urls` and the limits are checked here.
    pub fn ice_servers(
        &self,
        creds: impl Into<Live<TurnCredentials>>,
    ) -> Result<IceServers, ConfigError> {
        let cfg = IceServersConfig {
            urls: self.urls.clone(),
            ttl: self.ttl,
            format: self.format,
        };
        cfg.validate().map_err(|e| {
            let key = if self.ttl.is_zero() {
                "turn_credentials.ttl"
            } else {
                "turn_credentials.urls"
            };
            ConfigError::invalid(key, e)
        })?;
        if self.format == CredentialFormat::Rest && (self.alloc.is_some() || self.kbps.is_some()) {
            return Err(ConfigError::invalid(
                "turn_credentials.format",
                "turn_credentials.alloc and .kbps need format = \"jwt\"; REST usernames cannot carry limits",
            ));
        }
        Ok(IceServers::new(cfg, creds).with_limits(TurnLimits {
            alloc: self.alloc,
            kbps: self.kbps,
        }))
    }
}

/// The one reader of TURN secret files, for every service: errors name the key and the line,
/// never a secret.
pub fn read_secret_file(path: &Path) -> Result<TurnCredentials, ConfigError> {
    let key = "turn_credentials.secret_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    TurnCredentials::from_secret_lines(&text)
        .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))
}

/// Browser origins allowed to call the API.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// e.g. `https://app.example`; `*` allows any origin; empty disables CORS.
    pub origins: Vec<String>,
}

impl CorsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cors_origins(&self.origins)
            .map_err(|e| ConfigError::invalid("auth.cors.origins", e))
    }
}

/// Per-client-IP rate limit of the credential API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
            .ok_or_else(|| ConfigError::invalid("auth.rate_limit.burst", "must be at least 1"))?;
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
    use std::collections::HashMap;
    use std::sync::Arc;

    fn load(env: &[(&str, &str)]) -> Result<AuthConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>();
        let cli = <Cli as clap::Parser>::parse_from(["iceway-auth"]);
        AuthConfig::load(&cli, Some(env))
    }

    #[test]
    fn defaults_round_trip_through_the_loader() {
        let cfg = load(&[]).expect("defaults");
        assert_eq!(cfg.auth.listen, "0.0.0.0:8081".parse().expect("addr"));
        assert_eq!(cfg.admin.listen, "0.0.0.0:9481".parse().expect("addr"));
        assert_eq!(cfg.turn_credentials.ttl, Duration::from_secs(3600));
        assert_eq!(cfg.jwt.leeway, Duration::from_secs(30));
        assert_eq!(cfg.jwt.audience, "iceway");
        assert_eq!(cfg.jwt.issuer, None);
    }

    #[test]
    fn environment_sets_sections_lists_and_durations() {
        let cfg = load(&[
            ("ICEWAY_TURN_CREDENTIALS__TTL", "10m"),
            ("ICEWAY_TURN_CREDENTIALS__URLS", "stun:h:3478,turn:h:3478"),
            ("ICEWAY_TURN_CREDENTIALS__FORMAT", "jwt"),
            ("ICEWAY_JWT__LEEWAY", "5s"),
            ("ICEWAY_AUTH__RATE_LIMIT__PER_MINUTE", "7"),
            ("ICEWAY_DRAIN__TIMEOUT", "3s"),
        ])
        .expect("config");
        assert_eq!(cfg.turn_credentials.ttl, Duration::from_secs(600));
        assert_eq!(
            cfg.turn_credentials.urls,
            vec!["stun:h:3478", "turn:h:3478"]
        );
        assert_eq!(cfg.turn_credentials.format, CredentialFormat::Jwt);
        assert_eq!(cfg.jwt.leeway, Duration::from_secs(5));
        assert_eq!(cfg.auth.rate_limit.per_minute, 7);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(3));
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(&[("ICEWAY_TURN_CREDENTIALS__TTL", "soon")]).expect_err("bad ttl");
        assert!(err.to_string().contains("turn_credentials.ttl"), "{err}");
        let err = load(&[("ICEWAY_TURN_CREDENTIALS__FORMAT", "xml")]).expect_err("bad format");
        assert!(err.to_string().contains("turn_credentials.format"), "{err}");
        // Misspelt keys, at every level, are refused with their path.
        for (var, key) in [
            ("ICEWAY_AUTH__LISTN", "auth.listn"),
            (
                "ICEWAY_AUTH__RATE_LIMIT__PER_MINUT",
                "auth.rate_limit.per_minut",
            ),
            ("ICEWAY_JWT__AUDIENSE", "jwt.audiense"),
            ("ICEWAY_TURN__TTL", "turn"),
            ("ICEWAY_LOG__FROMAT", "log.fromat"),
        ] {
            let err = load(&[(var, "1")]).expect_err(var);
            assert!(err.to_string().contains(key), "{var}: {err}");
        }

        let cfg = AuthConfig::default();
        let err = cfg.jwt.verifier().expect_err("no keys");
        assert!(err.to_string().contains("jwt.secret_file"), "{err}");
        let err = cfg.turn_credentials.credentials().expect_err("no secrets");
        assert!(
            err.to_string().contains("turn_credentials.secret_file"),
            "{err}"
        );
        let mut turn = TurnCredentialsConfig {
            urls: vec!["http://x".into()],
            ..TurnCredentialsConfig::default()
        };
        let creds =
            Arc::new(TurnCredentials::from_secret_lines("some-secret-0123456789").expect("secret"));
        let err = turn.ice_servers(creds.clone()).expect_err("bad url");
        assert!(err.to_string().contains("turn_credentials.urls"), "{err}");
        turn.urls = vec!["turn:x".into()];
        turn.kbps = Some(100);
        let err = turn.ice_servers(creds).expect_err("limits need jwt");
        assert!(err.to_string().contains("turn_credentials.format"), "{err}");
        let cors = CorsConfig {
            origins: vec!["example.com".into()],
        };
        assert!(
            cors.validate()
                .expect_err("bad origin")
                .to_string()
                .contains("auth.cors.origins")
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
                .contains("auth.rate_limit.burst")
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
