//! Layered configuration (DESIGN §5): defaults → TOML file → `ICEWAY_<SECTION>__<KEY>` environment
//! → command-line flags. Each service owns one typed struct; this module only layers and
//! deserializes it, so every service resolves settings the same way.

use std::path::Path;

use config::{Config, ConfigBuilder, Environment, File, FileFormat, builder::DefaultState};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A configuration that cannot be used. The message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

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

    /// As [`build`](Self::build), with an explicit environment (for tests).
    pub fn build_with_env<T: DeserializeOwned>(
        self,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<T, ConfigError> {
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
        if let Some(env) = env {
            environment = environment.source(Some(env.into_iter().collect()));
        }
        // Flags were recorded as overrides, which config applies after every source, so adding
        // the environment last still leaves flags on top.
        let config = self.builder.add_source(environment).build()?;
        Ok(config.try_deserialize()?)
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
    fn missing_file_is_an_error() {
        let err = ConfigLoader::new(&defaults())
            .expect("defaults")
            .file(Some(Path::new("/nonexistent/iceway.toml")))
            .build_with_env::<Example>(Some(HashMap::new()))
            .expect_err("must fail");
        assert!(err.to_string().contains("iceway.toml"), "{err}");
    }
}
