//! `docs/configuration.md` against the code: every example loads with the service it names, and
//! every key of every service's defaults appears in the reference tables, so neither can drift.

use std::collections::HashMap;
use std::io::Write;

use clap::Parser;

const DOC: &str = include_str!("../../docs/configuration.md");
const JWT_KEY: &[u8] = b"configuration-doc-test-key-0123456789";
const TURN_SECRET: &[u8] = b"S7Zrz29OvyUmMxSGCSuMVw==\n";

/// `(service, toml)` of every block introduced by `<!-- example: SERVICE -->`.
fn examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = DOC;
    while let Some(i) = rest.find("<!-- example: ") {
        let after = &rest[i + "<!-- example: ".len()..];
        let service = after[..after.find(" -->").expect("closed marker")].to_owned();
        let body = &after[after.find("```toml\n").expect("toml block") + "```toml\n".len()..];
        let end = body.find("```").expect("closed block");
        out.push((service, body[..end].to_owned()));
        rest = &body[end..];
    }
    out
}

struct Files {
    _dir: tempfile::TempDir,
    jwt: String,
    secret: String,
    dir: std::path::PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(data))
            .expect("write");
        path.display().to_string()
    };
    let jwt = write("jwt", JWT_KEY);
    let secret = write("turn", TURN_SECRET);
    let path = dir.path().to_owned();
    Files {
        _dir: dir,
        jwt,
        secret,
        dir: path,
    }
}

fn load(service: &str, toml_text: &str, f: &Files) -> Result<toml::Value, String> {
    let text = toml_text
        .replace("JWT_FILE", &f.jwt)
        .replace("SECRET_FILE", &f.secret);
    let path = f.dir.join(format!("{service}.toml"));
    std::fs::write(&path, text).expect("write example");
    let path = path.display().to_string();
    let args = ["x", "--config", path.as_str()];
    let env = Some(HashMap::new());
    let value = match service {
        "iceway-turn" => {
            let cli = iceway_turn::config::Cli::parse_from(args);
            toml::Value::try_from(
                iceway_turn::config::Config::load_with_env(&cli, env).map_err(|e| e.to_string())?,
            )
        }
        "iceway-signal" => {
            let cli = iceway_signal::Cli::parse_from(args);
            let cfg = iceway_signal::Config::load(&cli, env).map_err(|e| e.to_string())?;
            cfg.load_credentials(&mut iceway_service::Reloader::new())
                .map_err(|e| e.to_string())?;
            toml::Value::try_from(cfg)
        }
        "iceway-auth" => {
            let cli = iceway_auth::config::Cli::parse_from(args);
            let cfg =
                iceway_auth::config::AuthConfig::load(&cli, env).map_err(|e| e.to_string())?;
            iceway_auth::server::api_state(&cfg, &mut iceway_service::Reloader::new())
                .map_err(|e| e.to_string())?;
            toml::Value::try_from(cfg)
        }
        "iceway-bridge" => {
            let cli = iceway_bridge::Cli::parse_from(args);
            let cfg = iceway_bridge::Config::load(&cli, env).map_err(|e| e.to_string())?;
            toml::Value::try_from(cfg)
        }
        other => panic!("example for unknown service {other}"),
    };
    value.map_err(|e| e.to_string())
}

/// Dotted paths of the leaves (and of tables' keys) of a serialized configuration.
fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_table() {
                keys(&path, v, out);
            } else {
                out.push(path);
            }
        }
    }
}

#[test]
fn every_documented_example_loads_with_its_service() {
    let f = files();
    let found = examples();
    let services: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        services,
        [
            "iceway-turn",
            "iceway-signal",
            "iceway-auth",
            "iceway-bridge"
        ]
    );
    for (service, text) in &found {
        load(service, text, &f).unwrap_or_else(|e| panic!("{service} example: {e}"));
    }
}

#[test]
fn every_key_of_every_service_is_documented() {
    let f = files();
    let mut missing = Vec::new();
    for (service, text) in examples() {
        // The examples set the optional keys too, so the loaded configuration has every key.
        let value = load(&service, &text, &f).expect("example loads");
        let mut all = Vec::new();
        keys("", &value, &mut all);
        for key in all {
            if !DOC.contains(&format!("`{key}`")) {
                missing.push(format!("{service}: {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:#?}");
}

#[test]
fn a_misspelt_key_in_a_documented_example_is_refused_with_its_path() {
    let f = files();
    for (service, text) in examples() {
        let broken = text.replacen("listen =", "lisen =", 1);
        let err = load(&service, &broken, &f).expect_err("misspelt key");
        assert!(err.contains(".lisen"), "{service}: {err}");
    }
}
