//! REST and JWT TURN usernames, checked by the `iceway-auth` crate.

use std::time::SystemTime;

use iceway_auth::turn_credential::{TurnCredentials, TurnGrant};
use iceway_service::Live;

use crate::proto::credentials::{CredentialFailure, CredentialStore, Grant};

impl CredentialStore for TurnCredentials {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        let TurnGrant {
            user,
            expires_at,
            limits,
            keys,
            ..
        } = self
            .check(username, realm, now)
            .map_err(|e| CredentialFailure { reason: e.reason() })?;
        Ok(Grant {
            user,
            keys,
            expires_at: Some(expires_at),
            alloc_limit: limits.alloc,
            kbps: limits.kbps,
        })
    }
}

/// The secret file's current set: swapped by the reloader, read once per lookup.
impl CredentialStore for Live<TurnCredentials> {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<Grant, CredentialFailure> {
        self.get().lookup(username, realm, now)
    }
}
