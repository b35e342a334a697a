//! The credential lookup the protocol core needs: USERNAME -> candidate long-term keys, the
//! user the quota is counted against, expiry and limits. Implemented by static users here and by
//! `iceway_auth::TurnCredentials` (REST and JWT usernames) in `crate::auth`.

use std::collections::HashMap;
use std::time::SystemTime;

pub use iceway_auth::turn_credential::long_term_key;

#[derive(Debug, Clone)]
pub struct Grant {
    /// The quota key: the user id without REST timestamp, or the JWT `sub`.
    pub user: String,
    pub keys: Vec<[u8; 16]>,
    pub expires_at: Option<SystemTime>,
    /// Max concurrent allocations for this user (JWT `alloc` claim).
    pub alloc_limit: Option<u32>,
    /// Relay bandwidth cap (JWT `kbps` claim).
    pub kbps: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("credential refused: {reason}")]
pub struct CredentialFailure {
    /// Low-cardinality label for `iceway_turn_auth_failures_total{reason}`.
    pub reason: &'static str,
}

pub trait CredentialStore: Send + Sync {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure>;
}

/// `--user NAME:PASSWORD` users, for development. Only the derived key is kept.
#[derive(Default)]
pub struct StaticUsers {
    keys: HashMap<String, [u8; 16]>,
}

impl std::fmt::Debug for StaticUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUsers")
            .field("users", &self.keys.len())
            .finish()
    }
}

impl StaticUsers {
    pub fn new(users: &[(String, String)], realm: &str) -> Self {
        let keys = users
            .iter()
            .map(|(name, password)| (name.clone(), long_term_key(name, realm, password)))
            .collect();
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl CredentialStore for StaticUsers {
    fn lookup(
        &self,
        username: &str,
        _realm: &str,
        _now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        let key = self.keys.get(username).ok_or(CredentialFailure {
            reason: "unknown_user",
        })?;
        Ok(Grant {
            user: username.to_owned(),
            keys: vec![*key],
            expires_at: None,
            alloc_limit: None,
            kbps: None,
        })
    }
}

/// Static users first (exact name match), then the next store.
pub struct Chain(pub Vec<Box<dyn CredentialStore>>);

impl CredentialStore for Chain {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        let mut last = CredentialFailure {
            reason: "unknown_user",
        };
        for store in &self.0 {
            match store.lookup(username, realm, now) {
                Ok(g) => return Ok(g),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
