//! Layered configuration (DESIGN §5): defaults → TOML file → `ICEWAY_<SECTION>__<KEY>` environment
//! → command-line flags. Each service owns one typed struct; this module layers and deserializes
//! it, and holds the sections every service shares (`[admin]`, `[log]`, `[drain]`), so every
//! service resolves settings the same way. `docs/configuration.md` is the reference.

use std::path::Path;
use std::time::Duration;

use config::{Config, ConfigBuilder, Environment, File, FileFormat, builder::DefaultState};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The exit code of every service for a configuration it cannot use (as `sysexits`' EX_USAGE
/// family and clap's own usage errors do).
pub const EXIT_BAD_CONFIG: u8 = 2;

/// A configuration that cannot be used. The message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

/// `[admin]`: the listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
}

impl AdminConfig {
    /// On every address, at the service's own admin port (DESIGN §1).
    pub fn on_port(port: u16) -> Self {
        Self {
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
        }
    }
}

/// `[log]`: how logs are written (always to stderr; `RUST_LOG` sets the filter).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: crate::LogFormat,
}

/// `[drain]`: after SIGTERM, how long work in flight may finish before the process exits.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

/// What `--check-config` prints: the effective configuration as TOML. Callers pass a value whose
/// secrets are already redacted (a secret file's path is not a secret; its content never gets
/// here).
pub fn render_effective<T: Serialize>(config: &T) -> String {
    toml::to_string(config).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// The configuration step of every service's `main`: a configuration that failed to load or to
/// validate prints `SERVICE: error` and gives [`EXIT_BAD_CONFIG`]; with `--check-config` the
/// effective configuration (`shown`, secrets redacted) goes to stdout and the process exits 0.
/// `Ok` means: go on and start.
pub fn settle<T, S: Serialize>(
    service: &str,
    check: bool,
    loaded: Result<T, impl std::fmt::Display>,
    shown: impl FnOnce(&T) -> S,
) -> Result<T, std::process::ExitCode> {
    match loaded {
        Err(e) => {
            eprintln!("{service}: {e}");
            Err(std::process::ExitCode::from(EXIT_BAD_CONFIG))
        }
        Ok(cfg) if check => {
            print!("{}", render_effective(&shown(&cfg)));
            eprintln!("{service}: configuration is valid");
            Err(std::process::ExitCode::SUCCESS)
        }
        Ok(cfg) => Ok(cfg),
    }
}

/// The text that stands for a redacted value in `--check-config` output.
pub const REDACTED: &str = "<redacted>";

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Builds a service's typed configuration from its layers.
pub struct ConfigLoader {
    builder: ConfigBuilder<DefaultState>,
    list_keys: Vec<String>,
}

impl std::fmt::Debug for ConfigLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigLoader").finish_non_exhaustive()
    }
}

impl ConfigLoader {
    /// Starts from the service's defaults (usually `Config::default()` of its struct).
    pub fn new<D: Serialize>(defaults: &D) -> Result<Self, ConfigError> {
        let defaults = Config::try_from(defaults)?;
        Ok(Self {
            builder: Config::builder().add_source(defaults),
            list_keys: Vec::new(),
        })
    }

    /// Keys whose environment value is a comma-separated list (e.g. `turn.allow_peers`).
    pub fn list_keys(mut self, keys: &[&str]) -> Self {
        self.list_keys.extend(keys.iter().map(|k| (*k).to_owned()));
        self
    }

    /// Adds the TOML file named by `--config`, if any. A named file that is missing is an error.
    pub fn file(mut self, path: Option<&Path>) -> Self {
        if let Some(path) = path {
            self.builder = self
                .builder
                .add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        self
    }

    /// Sets one value from a command-line flag; `None` (flag absent) leaves the lower layers.
    pub fn set<V: Into<config::Value>>(
        mut self,
        key: &str,
        value: Option<V>,
    ) -> Result<Self, ConfigError> {
        if let Some(value) = value {
            self.builder = self.builder.set_override(key, value)?;
        }
        Ok(self)
    }

    /// Applies the environment (from the process) and the flags, and deserializes.
    pub fn build<T: DeserializeOwned>(self) -> Result<T, ConfigError> {
        self.build_with_env(None)
    }

    /// Sets the shared `[admin]`, `[log]` and `[drain]` keys from the flags every service takes.
    pub fn common_flags(self, args: &crate::CommonArgs) -> Result<Self, ConfigError> {
        let format = args.log_format.map(crate::LogFormat::as_str);
        self.set("admin.listen", args.admin.map(|a| a.to_string()))?
            .set("log.format", format)?
            .set("drain.timeout", args.drain_timeout.clone())
    }

    /// As [`build`](Self::build), with an explicit environment (for tests); `None` reads the
    /// process's.
    pub fn build_with_env<T: DeserializeOwned>(
        self,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<T, ConfigError> {
        // Only `ICEWAY_<SECTION>__<KEY>` variables are configuration. Others with the prefix
        // (`ICEWAY_DEV_DIR`, a chart's `ICEWAY_REDIS_URL` used in an argument) are not, and would
        // otherwise be refused as unknown top-level keys.
        let env: std::collections::HashMap<String, String> = env
            .unwrap_or_else(|| std::env::vars().collect())
            .into_iter()
            .filter(|(k, _)| {
                k.strip_prefix("ICEWAY_")
                    .is_some_and(|rest| rest.contains("__"))
            })
            .collect();
        let mut environment = Environment::with_prefix("ICEWAY")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true);
        if !self.list_keys.is_empty() {
            environment = environment.list_separator(",");
            for key in &self.list_keys {
                environment = environment.with_list_parse_key(key);
            }
        }
        environment = environment.source(Some(env.into_iter().collect()));
        // Flags were recorded as overrides, which config applies after every source, so adding
        // the environment last still leaves flags on top.
        let config = self.builder.add_source(environment).build()?;
        // serde_path_to_error gives every error, unknown keys included, the dotted path of the
        // key (`turn.relay_rnage`), which config alone does not for unknown fields.
        serde_path_to_error::deserialize(config).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.to_string();
            // config's own messages already name the key; keep them as they are.
            if key == "." || reason.contains(&key) {
                ConfigError::Load(inner)
            } else {
                ConfigError::Invalid { key, reason }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;
    use std::io::Write;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Example {
        server: Server,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Server {
        realm: String,
        port: u16,
        peers: Vec<String>,
    }

    fn defaults() -> Example {
        Example {
            server: Server {
                realm: "default".into(),
                port: 3478,
                peers: vec![],
            },
        }
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let file = toml_file("[server]\nrealm = \"from-file\"\nport = 1000\n");
        let env = HashMap::from([
            ("ICEWAY_SERVER__PORT".to_owned(), "2000".to_owned()),
            (
                "ICEWAY_SERVER__PEERS".to_owned(),
                "10.0.0.0/8,::1/128".to_owned(),
            ),
        ]);
        let cfg: Example = ConfigLoader::new(&defaults())
            .expect("defaults")
            .list_keys(&["server.peers"])
            .file(Some(file.path()))
            .set("server.realm", Some("from-flag"))
            .expect("flag")
            .build_with_env(Some(env))
            .expect("build");
        assert_eq!(cfg.server.realm, "from-flag");
        assert_eq!(cfg.server.port, 2000);
        assert_eq!(cfg.server.peers, vec!["10.0.0.0/8", "::1/128"]);
    }

    #[test]
    fn bad_value_names_the_key() {
        let env = HashMap::from([("ICEWAY_SERVER__PORT".to_owned(), "not-a-port".to_owned())]);
        let err = ConfigLoader::new(&defaults())
            .expect("defaults")
            .build_with_env::<Example>(Some(env))
            .expect_err("must fail");
        assert!(err.to_string().contains("server.port"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path_at_every_level() {
        #[derive(Debug, Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Strict {
            server: StrictServer,
        }
        #[derive(Debug, Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct StrictServer {
            realm: String,
        }
        let defaults = Strict {
            server: StrictServer { realm: "r".into() },
        };
        let cases = [
            ("[server]\nrelam = \"x\"\n", "server.relam"),
            ("[sever]\nrealm = \"x\"\n", "sever"),
        ];
        for (text, key) in cases {
            let file = toml_file(text);
            let err = ConfigLoader::new(&defaults)
                .expect("defaults")
                .file(Some(file.path()))
                .build_with_env::<Strict>(Some(HashMap::new()))
                .expect_err("unknown key");
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let env = HashMap::from([("ICEWAY_SERVER__RELAM".to_owned(), "x".to_owned())]);
        let err = ConfigLoader::new(&defaults)
            .expect("defaults")
            .build_with_env::<Strict>(Some(env))
            .expect_err("unknown env key");
        assert!(err.to_string().contains("server.relam"), "{err}");
        // A prefixed variable that is not `SECTION__KEY` is not configuration.
        let env = HashMap::from([("ICEWAY_DEV_DIR".to_owned(), "/tmp".to_owned())]);
        assert!(
            ConfigLoader::new(&defaults)
                .expect("defaults")
                .build_with_env::<Strict>(Some(env))
                .is_ok()
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = ConfigLoader::new(&defaults())
            .expect("defaults")
            .file(Some(Path::new("/nonexistent/iceway.toml")))
            .build_with_env::<Example>(Some(HashMap::new()))
            .expect_err("must fail");
        assert!(err.to_string().contains("iceway.toml"), "{err}");
    }
}
