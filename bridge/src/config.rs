//! The typed configuration of `iceway-bridge` (DESIGN §5, `docs/configuration.md`): its own
//! `[bridge]` table with one `[[bridge.cameras]]` entry per camera, and the shared `[admin]`,
//! `[log]`, `[drain]` and `[jwt]` (the app-token key the bridge mints its cameras' tokens with).

use std::path::PathBuf;
use std::time::Duration;

use iceway_auth::config::JwtConfig;
use iceway_service::{AdminConfig, CommonArgs, ConfigError, ConfigLoader, DrainConfig, LogConfig};
use serde::{Deserialize, Serialize};

/// The whole `iceway-bridge` configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub bridge: BridgeConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub drain: DrainConfig,
    pub jwt: JwtConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bridge: BridgeConfig::default(),
            admin: AdminConfig::on_port(9482),
            log: LogConfig::default(),
            drain: DrainConfig::default(),
            jwt: JwtConfig::default(),
        }
    }
}

/// Flags of `iceway-bridge`; every one can also be set in the file and the environment.
#[derive(Debug, clap::Parser)]
#[command(
    name = "iceway-bridge",
    version,
    about = "Iceway bridge: RTSP IP cameras published as WebRTC cameras, H.264 passed through"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Signaling WebSocket URL (wss://signal.example.com/v1/ws).
    #[arg(long, value_name = "URL")]
    pub signal_url: Option<String>,
    /// A camera: ID=rtsp://host/path (repeatable; added to `[[bridge.cameras]]`). Credentials in
    /// the URL are taken out of it and never logged; prefer `credentials_file` in the file.
    #[arg(long = "camera", value_name = "ID=URL")]
    pub cameras: Vec<String>,
    /// File holding the HS256 app-token key (kid "default") the bridge mints camera tokens with.
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Offer viewers TURN relay candidates only.
    #[arg(long)]
    pub relay_only: bool,
}

/// `[bridge]`: the bridge's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Signaling WebSocket URL the cameras publish through.
    pub signal_url: String,
    pub cameras: Vec<CameraConfig>,
    /// Lifetime of the camera tokens the bridge mints (refreshed on the live socket before
    /// they expire).
    #[serde(with = "iceway_service::duration")]
    pub token_ttl: Duration,
    /// Deadline of each RTSP request (DESCRIBE, SETUP, PLAY) and of the first frame after PLAY.
    #[serde(with = "iceway_service::duration")]
    pub rtsp_timeout: Duration,
    /// A playing camera that sends no frame for this long is taken for down and reconnected.
    #[serde(with = "iceway_service::duration")]
    pub frame_timeout: Duration,
    /// First delay before reconnecting a camera, doubled per failure up to `reconnect_max`.
    #[serde(with = "iceway_service::duration")]
    pub reconnect_min: Duration,
    #[serde(with = "iceway_service::duration")]
    pub reconnect_max: Duration,
    /// Delay after a camera refused the credentials (401): retrying at once cannot help and
    /// some cameras lock an account that keeps failing.
    #[serde(with = "iceway_service::duration")]
    pub auth_retry: Duration,
    /// Largest group of pictures kept for viewers that join mid-GOP; a longer one is not cached
    /// (viewers then wait for the next IDR).
    pub gop_max_bytes: usize,
    /// Viewer connections per camera held by the bridge (signaling has its own cap).
    pub max_viewers_per_camera: usize,
    /// Offer viewers TURN relay candidates only.
    pub relay_only: bool,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            signal_url: String::new(),
            cameras: Vec::new(),
            token_ttl: Duration::from_secs(12 * 3600),
            rtsp_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            auth_retry: Duration::from_secs(60),
            gop_max_bytes: 8 << 20,
            max_viewers_per_camera: 16,
            relay_only: false,
        }
    }
}

/// RTP over the RTSP connection (interleaved; through any NAT or firewall) or over UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

/// `[[bridge.cameras]]`: one RTSP camera.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// The camera id viewers watch (the minted token's `sub`).
    pub id: String,
    /// rtsp://host[:port]/path, without credentials.
    pub url: String,
    /// A file with `USER:PASSWORD` on its first line (digest or basic auth).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    #[serde(default)]
    pub transport: Transport,
    /// A camera token to use instead of minting one (read again at each connect and before it
    /// expires); needs no `jwt.secret_file`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// What [`Config::redacted`] shows instead of a URL's password.
const REDACTED_URL_PASSWORD: &str = "REDACTED";

impl Config {
    /// Defaults → `--config` → environment (`None`: the process's) → `cli`, then validated.
    pub fn load(
        cli: &Cli,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let loader = ConfigLoader::new(&Self::default())?
            .file(cli.common.config.as_deref())
            .common_flags(&cli.common)?
            .set("bridge.signal_url", cli.signal_url.clone())?
            .set(
                "jwt.secret_file",
                cli.jwt_secret_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
            )?
            .set("bridge.relay_only", cli.relay_only.then_some(true))?;
        let mut cfg: Self = loader.build_with_env(env)?;
        for spec in &cli.cameras {
            cfg.bridge.cameras.push(parse_camera_flag(spec)?);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.bridge;
        if !(b.signal_url.starts_with("ws://") || b.signal_url.starts_with("wss://")) {
            return Err(ConfigError::invalid(
                "bridge.signal_url",
                "must be a ws:// or wss:// URL (--signal-url)",
            ));
        }
        if b.cameras.is_empty() {
            return Err(ConfigError::invalid(
                "bridge.cameras",
                "no camera: add [[bridge.cameras]] or --camera ID=URL",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, cam) in b.cameras.iter().enumerate() {
            let key = |k: &str| format!("bridge.cameras[{i}].{k}");
            if cam.id.is_empty() || cam.id.len() > 256 {
                return Err(ConfigError::invalid(key("id"), "1 to 256 characters"));
            }
            if !ids.insert(cam.id.as_str()) {
                return Err(ConfigError::invalid(key("id"), format!("{} twice", cam.id)));
            }
            let url = url::Url::parse(&cam.url).map_err(|e| ConfigError::invalid(key("url"), e))?;
            // retina speaks RTSP over TCP (and RTP over UDP), not RTSP over TLS.
            if url.scheme() != "rtsp" {
                return Err(ConfigError::invalid(
                    key("url"),
                    "must be an rtsp:// URL (rtsps:// is not supported)",
                ));
            }
            if cam.token_file.is_none() && self.jwt.secret_file.is_none() {
                return Err(ConfigError::invalid(
                    "jwt.secret_file",
                    format!(
                        "camera {} has no token_file, so the bridge mints its token: set \
                         jwt.secret_file (--jwt-secret-file)",
                        cam.id
                    ),
                ));
            }
        }
        if b.reconnect_min.is_zero() || b.reconnect_max < b.reconnect_min {
            return Err(ConfigError::invalid(
                "bridge.reconnect_max",
                "reconnect_min must be above zero and reconnect_max at least reconnect_min",
            ));
        }
        for (k, d) in [
            ("bridge.rtsp_timeout", b.rtsp_timeout),
            ("bridge.frame_timeout", b.frame_timeout),
            ("bridge.token_ttl", b.token_ttl),
        ] {
            if d < Duration::from_secs(1) {
                return Err(ConfigError::invalid(k, "at least 1s"));
            }
        }
        if b.max_viewers_per_camera == 0 {
            return Err(ConfigError::invalid(
                "bridge.max_viewers_per_camera",
                "at least 1",
            ));
        }
        Ok(())
    }

    /// The configuration as `--check-config` prints it: passwords in camera URLs hidden.
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for cam in &mut c.bridge.cameras {
            cam.url = redact_url(&cam.url);
        }
        c
    }
}

/// `ID=URL` of `--camera`.
fn parse_camera_flag(spec: &str) -> Result<CameraConfig, ConfigError> {
    let (id, url) = spec
        .split_once('=')
        .ok_or_else(|| ConfigError::invalid("bridge.cameras", "--camera takes ID=rtsp://…"))?;
    Ok(CameraConfig {
        id: id.trim().to_owned(),
        url: url.trim().to_owned(),
        credentials_file: None,
        transport: Transport::Tcp,
        token_file: None,
    })
}

/// `url` with its password replaced, for logs and `--check-config`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(REDACTED_URL_PASSWORD));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("iceway-bridge").chain(args.iter().copied()))
            .expect("flags")
    }

    #[test]
    fn cameras_from_flags_and_the_signal_url_make_a_valid_config() {
        let c = Config::load(
            &cli(&[
                "--signal-url",
                "ws://127.0.0.1:8080/v1/ws",
                "--camera",
                "porch=rtsp://10.0.0.5/stream1",
                "--jwt-secret-file",
                "/run/secrets/jwt",
            ]),
            Some(Default::default()),
        )
        .expect("valid");
        assert_eq!(c.bridge.cameras.len(), 1);
        assert_eq!(c.bridge.cameras[0].id, "porch");
        assert_eq!(c.bridge.cameras[0].transport, Transport::Tcp);
        assert_eq!(c.admin.listen.port(), 9482);
    }

    #[test]
    fn a_camera_without_a_token_needs_the_signing_key() {
        let err = Config::load(
            &cli(&[
                "--signal-url",
                "ws://127.0.0.1:8080/v1/ws",
                "--camera",
                "porch=rtsp://10.0.0.5/stream1",
            ]),
            Some(Default::default()),
        )
        .expect_err("no key");
        assert!(err.to_string().contains("jwt.secret_file"), "{err}");
    }

    #[test]
    fn bad_urls_and_duplicate_ids_are_named() {
        for (args, key) in [
            (
                vec!["--signal-url", "http://x/v1/ws", "--camera", "a=rtsp://h/p"],
                "bridge.signal_url",
            ),
            (
                vec!["--signal-url", "ws://x/v1/ws", "--camera", "a=http://h/p"],
                "bridge.cameras[0].url",
            ),
            (
                vec![
                    "--signal-url",
                    "ws://x/v1/ws",
                    "--camera",
                    "a=rtsp://h/p",
                    "--camera",
                    "a=rtsp://h/q",
                ],
                "bridge.cameras[1].id",
            ),
        ] {
            let mut all = args.clone();
            all.extend(["--jwt-secret-file", "/k"]);
            let err = Config::load(&cli(&all), Some(Default::default())).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("rtsp://admin:hunter2@10.0.0.5:554/s"),
            "rtsp://admin:REDACTED@10.0.0.5:554/s"
        );
        assert_eq!(redact_url("rtsp://10.0.0.5/s"), "rtsp://10.0.0.5/s");
    }
}
