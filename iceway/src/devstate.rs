//! Where `iceway dev` keeps its generated secrets, so that `iceway token` mints tokens the running
//! dev stack accepts and tokens survive a restart.
//!
//! The directory is, in order: `--state-dir`, `$ICEWAY_DEV_DIR`, `$XDG_DATA_HOME/iceway/dev`,
//! `$HOME/.local/share/iceway/dev`, and `.iceway/dev` in the working directory as a last resort.
//! It holds `jwt-secret` (the HS256 app-token key, kid `default`) and `turn-secret` (the TURN REST
//! secret), each created with mode 0600 on first use. Development only: production keys come
//! from the app's backend and a Kubernetes Secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;

pub const JWT_SECRET_FILE: &str = "jwt-secret";
pub const TURN_SECRET_FILE: &str = "turn-secret";
/// Key id of the dev app-token key; the signal server's `--jwt-secret-file` key has this kid.
pub const JWT_KID: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum DevStateError {
    #[error("cannot create the dev state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty; delete it to have a new secret generated")]
    Empty { path: PathBuf },
}

/// The dev stack's secrets.
#[derive(Clone)]
pub struct DevState {
    pub dir: PathBuf,
    pub jwt_secret: String,
}

impl std::fmt::Debug for DevState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevState")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevState {
    pub fn jwt_secret_path(&self) -> PathBuf {
        self.dir.join(JWT_SECRET_FILE)
    }

    pub fn turn_secret_path(&self) -> PathBuf {
        self.dir.join(TURN_SECRET_FILE)
    }

    /// Loads the secrets, generating any that are missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, DevStateError> {
        create_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            jwt_secret: load_or_generate(&dir.join(JWT_SECRET_FILE))?,
        })
        .and_then(|state| {
            load_or_generate(&dir.join(TURN_SECRET_FILE))?;
            Ok(state)
        })
    }
}

/// The state directory by the precedence in the module docs.
pub fn default_dir() -> PathBuf {
    dir_from_env(
        std::env::var_os("ICEWAY_DEV_DIR"),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

fn dir_from_env(
    explicit: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let non_empty = |v: Option<std::ffi::OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(explicit) {
        return dir;
    }
    if let Some(xdg) = non_empty(xdg) {
        return xdg.join("iceway").join("dev");
    }
    if let Some(home) = non_empty(home) {
        return home.join(".local/share/iceway/dev");
    }
    PathBuf::from(".iceway/dev")
}

fn create_dir(dir: &Path) -> Result<(), DevStateError> {
    let err = |source| DevStateError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

fn load_or_generate(path: &Path) -> Result<String, DevStateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            if secret.is_empty() {
                return Err(DevStateError::Empty {
                    path: path.to_owned(),
                });
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = generate_secret();
            write_private(path, &secret)?;
            Ok(secret)
        }
        Err(source) => Err(DevStateError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// 256 random bits, base64url: long enough for HS256 and HMAC-SHA1.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn write_private(path: &Path, content: &str) -> Result<(), DevStateError> {
    let err = |source| DevStateError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(content.as_bytes()).map_err(err)?;
    file.write_all(b"\n").map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("dev");
        let first = DevState::load_or_create(&state_dir).expect("create");
        let again = DevState::load_or_create(&state_dir).expect("load");
        assert_eq!(first.jwt_secret, again.jwt_secret);
        let turn = std::fs::read_to_string(first.turn_secret_path()).expect("turn secret");
        assert_ne!(first.jwt_secret, turn.trim());
        assert!(first.jwt_secret.len() >= 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(first.jwt_secret_path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn empty_secret_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(JWT_SECRET_FILE), "\n").expect("write");
        let err = DevState::load_or_create(dir.path()).expect_err("empty");
        assert!(err.to_string().contains(JWT_SECRET_FILE), "{err}");
    }

    #[test]
    fn directory_precedence() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            dir_from_env(s("/x"), s("/xdg"), s("/home/u")),
            PathBuf::from("/x")
        );
        assert_eq!(
            dir_from_env(None, s("/xdg"), s("/home/u")),
            PathBuf::from("/xdg/iceway/dev")
        );
        assert_eq!(
            dir_from_env(s(""), None, s("/home/u")),
            PathBuf::from("/home/u/.local/share/iceway/dev")
        );
        assert_eq!(dir_from_env(None, None, None), PathBuf::from(".iceway/dev"));
    }
}
