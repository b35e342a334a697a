//! TURN credentials for the load: a static user, or minted per allocation by the auth crate
//! (REST `expiry:user` or JWT-in-username, DESIGN §2) from the same secret lines the server reads.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceway_auth::turn_credential::{
    CredentialError, CredentialFormat, TurnCredentials, TurnLimits,
};

use crate::proto::Credentials;

#[derive(Debug, Clone)]
pub enum CredentialSource {
    None,
    Static {
        username: String,
        password: String,
    },
    Minted {
        credentials: Arc<TurnCredentials>,
        format: CredentialFormat,
        ttl: Duration,
    },
}

impl CredentialSource {
    /// Minted credentials from secret-file text (one secret per line, or `KID=SECRET`); the
    /// first secret signs, as in the server and the auth service.
    pub fn minted(
        secret_lines: &str,
        format: CredentialFormat,
        ttl: Duration,
    ) -> Result<Self, CredentialError> {
        Ok(CredentialSource::Minted {
            credentials: Arc::new(TurnCredentials::from_secret_lines(secret_lines)?),
            format,
            ttl,
        })
    }

    /// Credentials for the allocation numbered `index`. Minted ones get a user name per
    /// allocation, so per-user quotas see many users.
    pub fn for_allocation(
        &self,
        index: usize,
        now: SystemTime,
    ) -> Result<Option<Credentials>, CredentialError> {
        Ok(match self {
            CredentialSource::None => None,
            CredentialSource::Static { username, password } => Some(Credentials {
                username: username.clone(),
                password: password.clone(),
            }),
            CredentialSource::Minted {
                credentials,
                format,
                ttl,
            } => {
                let m = credentials.mint(
                    *format,
                    &format!("load{index}"),
                    *ttl,
                    TurnLimits::default(),
                    now,
                )?;
                Some(Credentials {
                    username: m.username,
                    password: m.password,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rest_credentials_match_coturn_format() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let src = CredentialSource::minted(
            "load-secret-0123456789",
            CredentialFormat::Rest,
            Duration::from_secs(3600),
        )
        .expect("one secret");
        let c = src.for_allocation(3, now).expect("mint").expect("some");
        assert_eq!(c.username, "1700003600:load3");
        assert_eq!(
            c.password,
            iceway_auth::turn_credential::password(b"load-secret-0123456789", "1700003600:load3")
        );
    }

    #[test]
    fn jwt_credentials_verify_with_the_same_secret_lines() {
        let now = SystemTime::now();
        let src = CredentialSource::minted(
            "kid:main secret-one-0123456789\nkid:old secret-zero-0123456789",
            CredentialFormat::Jwt,
            Duration::from_secs(600),
        )
        .expect("secrets");
        let c = src.for_allocation(1, now).expect("mint").expect("some");
        assert_eq!(c.username.split('.').count(), 3);
        let checker = TurnCredentials::from_secret_lines(
            "kid:old secret-zero-0123456789\nkid:main secret-one-0123456789",
        )
        .expect("secrets");
        let grant = checker.check(&c.username, "r", now).expect("verifies");
        assert_eq!(grant.user, "load1");
    }
}
