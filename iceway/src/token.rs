//! `iceway token`: app tokens (DESIGN §2) signed with the dev key.

use std::time::{Duration, SystemTime};

use iceway_auth::{AppClaims, Role, mint_hs256};

use crate::devstate::{DevState, JWT_KID};

/// A token for `sub` with `role`; viewers list the cameras they may watch in `cams`.
pub fn mint(state: &DevState, role: Role, sub: &str, cams: &[String], ttl: Duration) -> String {
    mint_at(state, role, sub, cams, ttl, SystemTime::now())
}

pub fn mint_at(
    state: &DevState,
    role: Role,
    sub: &str,
    cams: &[String],
    ttl: Duration,
    now: SystemTime,
) -> String {
    let claims = AppClaims::new(sub, role, cams.to_vec(), now, ttl);
    mint_hs256(JWT_KID, state.jwt_secret.as_bytes(), &claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceway_auth::{AppTokenVerifier, VerificationKey};

    fn state() -> DevState {
        DevState {
            dir: "/nonexistent".into(),
            jwt_secret: "dev-secret-for-tests-0123456789abcdef".into(),
        }
    }

    fn verifier(s: &DevState) -> AppTokenVerifier {
        AppTokenVerifier::new(
            vec![VerificationKey::hs256(JWT_KID, s.jwt_secret.as_bytes())],
            "iceway",
            None,
            Duration::from_secs(0),
        )
    }

    #[test]
    fn minted_viewer_token_verifies_with_the_dev_key() {
        let s = state();
        let token = mint(
            &s,
            Role::Viewer,
            "alice",
            &["cam1".into()],
            Duration::from_secs(3600),
        );
        let claims = verifier(&s).verify(&token).expect("valid");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, Role::Viewer);
        assert_eq!(claims.cams, vec!["cam1"]);
    }

    #[test]
    fn token_from_the_past_is_expired() {
        let s = state();
        let past = SystemTime::now() - Duration::from_secs(7200);
        let token = mint_at(&s, Role::Camera, "cam1", &[], Duration::from_secs(60), past);
        assert!(verifier(&s).verify(&token).is_err());
    }
}
