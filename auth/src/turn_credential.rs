//! TURN credentials (DESIGN §2): minted here, checked by turn-server with the same secrets.
//!
//! Two username formats, both with password `base64(HMAC-SHA1(secret, username))`:
//! - REST (coturn `use-auth-secret`): `<expiry-unix-seconds>:<user>`. The username does not say
//!   which secret signed it, so checking yields one candidate long-term key per active secret and
//!   the TURN server tries each against MESSAGE-INTEGRITY.
//! - JWT: a compact HS256 JWS `{"alg":"HS256","kid":K}.{sub,exp,iat,aud:"turn",alloc?,kbps?}`
//!   signed with secret K. The JWS itself is verified here, so the limits it carries can be
//!   trusted, and exactly one long-term key results.
//!
//! Nothing here touches a clock or a socket: callers pass `now`.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::app_token::raw_header;
use crate::unix_seconds;

/// Longest username minted. Chrome refuses TURN usernames longer than 509 bytes
/// (`kMaxTurnUsernameLength`), below the STUN USERNAME limit of 513; we stay strictly under 509.
pub const MAX_USERNAME_LEN: usize = 508;
/// The STUN USERNAME attribute limit (RFC 8489 §14.3); longer usernames are refused unread.
pub const STUN_MAX_USERNAME_LEN: usize = 513;
/// Shortest TURN secret accepted: `openssl rand -base64 16` prints 24 bytes, and anything below 16
/// bytes is a password someone typed, not a key.
pub const MIN_SECRET_LEN: usize = 16;
/// The `aud` of JWT-format TURN usernames.
pub const TURN_AUDIENCE: &str = "turn";

/// One TURN shared secret. The first configured secret mints; all are accepted (rotation).
#[derive(Clone, PartialEq, Eq)]
pub struct TurnSecret {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSecret")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TurnSecret {
    /// A secret whose kid is derived from the secret itself (see
    /// [`TurnCredentials::from_secret_lines`]).
    pub fn derived(secret: &[u8]) -> Self {
        Self {
            kid: derived_kid(secret),
            secret: secret.to_vec(),
        }
    }
}

/// Limits a JWT-format credential carries; REST credentials carry none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnLimits {
    /// Maximum concurrent allocations for this user.
    pub alloc: Option<u32>,
    /// Relay bandwidth cap in kbit/s.
    pub kbps: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialFormat {
    Rest,
    Jwt,
}

impl CredentialFormat {
    /// The metric label and config spelling: `rest` or `jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialFormat::Rest => "rest",
            CredentialFormat::Jwt => "jwt",
        }
    }
}

impl std::str::FromStr for CredentialFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rest" => Ok(CredentialFormat::Rest),
            "jwt" => Ok(CredentialFormat::Jwt),
            _ => Err(format!(
                "unknown credential format {s:?} (expected rest or jwt)"
            )),
        }
    }
}

impl fmt::Display for CredentialFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A freshly minted TURN username and password.
#[derive(Clone, PartialEq, Eq)]
pub struct MintedCredential {
    pub username: String,
    pub password: String,
    pub expires_at: SystemTime,
}

impl fmt::Debug for MintedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MintedCredential")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the TURN server needs to authenticate a USERNAME and enforce its limits.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnGrant {
    /// The user id: REST with the timestamp stripped, JWT the `sub`.
    pub user: String,
    pub format: CredentialFormat,
    pub expires_at: SystemTime,
    pub limits: TurnLimits,
    /// Candidate long-term keys `MD5(username:realm:password)`: one per active secret for REST
    /// (the username does not name its secret), exactly one for JWT.
    pub keys: Vec<[u8; 16]>,
}

impl fmt::Debug for TurnGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnGrant")
            .field("user", &self.user)
            .field("format", &self.format)
            .field("expires_at", &self.expires_at)
            .field("limits", &self.limits)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Why a TURN credential could not be minted or was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("username is malformed")]
    Malformed,
    #[error("credential has expired")]
    Expired,
    #[error("credential names an unknown secret")]
    UnknownKey,
    #[error("JWT username has no kid")]
    MissingKeyId,
    #[error("JWT username algorithm is not HS256")]
    AlgorithmNotAllowed,
    #[error("JWT username signature does not verify")]
    BadSignature,
    #[error("JWT username audience is not \"turn\"")]
    WrongAudience,
    #[error("username would exceed {MAX_USERNAME_LEN} bytes")]
    TooLong,
    #[error("user id is empty or contains control characters")]
    InvalidUser,
    #[error("no TURN secrets configured")]
    NoSecrets,
    #[error("a TURN secret is empty (kid {0:?})")]
    EmptySecret(String),
    #[error("duplicate TURN secret id {0:?}")]
    DuplicateKey(String),
    #[error("invalid TURN secret id {0:?}")]
    InvalidKeyId(String),
    #[error("TURN secret {0:?} is shorter than {MIN_SECRET_LEN} bytes")]
    ShortSecret(String),
    #[error("TURN secret file line {line}: {reason}")]
    SecretLine {
        line: usize,
        reason: SecretLineError,
    },
}

/// Why one line of a TURN secret file was refused. The line's text is never echoed: it holds a
/// secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretLineError {
    #[error("a secret cannot contain whitespace (to name a kid, write `kid:KID SECRET`)")]
    Whitespace,
    #[error("`=` inside a secret (the old `KID=SECRET` form): write `kid:KID SECRET`")]
    EqualsInside,
    #[error("the kid after `kid:` must be 1-32 of A-Z a-z 0-9 _ -")]
    InvalidKeyId,
    #[error("the secret is shorter than {MIN_SECRET_LEN} bytes")]
    TooShort,
}

impl CredentialError {
    /// A low-cardinality label for metrics and problem bodies.
    /// The [`reason`](Self::reason)s a credential being checked can fail with (the rest are
    /// configuration errors): metrics labelled by them are initialised with these at start.
    pub const VERIFY_REASONS: [&'static str; 9] = [
        "malformed",
        "expired",
        "unknown_key",
        "missing_kid",
        "algorithm_not_allowed",
        "bad_signature",
        "wrong_audience",
        "too_long",
        "invalid_user",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            CredentialError::Malformed => "malformed",
            CredentialError::Expired => "expired",
            CredentialError::UnknownKey => "unknown_key",
            CredentialError::MissingKeyId => "missing_kid",
            CredentialError::AlgorithmNotAllowed => "algorithm_not_allowed",
            CredentialError::BadSignature => "bad_signature",
            CredentialError::WrongAudience => "wrong_audience",
            CredentialError::TooLong => "too_long",
            CredentialError::InvalidUser => "invalid_user",
            CredentialError::NoSecrets => "no_secrets",
            CredentialError::EmptySecret(_) => "empty_secret",
            CredentialError::DuplicateKey(_) => "duplicate_key",
            CredentialError::InvalidKeyId(_) => "invalid_key_id",
            CredentialError::ShortSecret(_) => "short_secret",
            CredentialError::SecretLine { .. } => "secret_line",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TurnJwtClaims {
    sub: String,
    exp: u64,
    iat: u64,
    aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alloc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kbps: Option<u32>,
}

/// The active TURN secrets; mints with the first, checks against all.
#[derive(Clone)]
pub struct TurnCredentials {
    secrets: Vec<TurnSecret>,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(|s| &s.kid))
            .finish()
    }
}

impl TurnCredentials {
    /// At least one secret; kids must be unique and secrets non-empty.
    pub fn new(secrets: Vec<TurnSecret>) -> Result<Self, CredentialError> {
        if secrets.is_empty() {
            return Err(CredentialError::NoSecrets);
        }
        let mut seen = std::collections::HashSet::new();
        for s in &secrets {
            if !valid_kid(&s.kid) {
                return Err(CredentialError::InvalidKeyId(s.kid.clone()));
            }
            if s.secret.is_empty() {
                return Err(CredentialError::EmptySecret(s.kid.clone()));
            }
            if s.secret.len() < MIN_SECRET_LEN {
                return Err(CredentialError::ShortSecret(s.kid.clone()));
            }
            if !seen.insert(s.kid.as_str()) {
                return Err(CredentialError::DuplicateKey(s.kid.clone()));
            }
        }
        Ok(Self { secrets })
    }

    /// Parses a secret file (`--secret-file`, `--turn-secret-file`): one secret per line, the
    /// first mints, all are accepted. Blank lines and lines starting with `#` are skipped;
    /// surrounding whitespace is trimmed. See `docs/auth.md` ("Secret files").
    ///
    /// A line is either a bare secret, used byte for byte as the HMAC key (what coturn's
    /// `static-auth-secret` does with the same string), or `kid:KID SECRET` to name its kid. A
    /// secret never contains whitespace, so the whitespace alone tells the two forms apart and no
    /// secret, however it ends or begins, can be read as a kid. A bare secret gets a kid derived
    /// from itself (`k` + 8 hex digits of a SHA-1 over it), so it stays the same when lines are
    /// reordered during a rotation and JWT usernames minted before the rotation keep verifying.
    ///
    /// A bare line with `=` anywhere but in trailing base64 padding is refused: it is the
    /// `KID=SECRET` form of earlier releases, which cut `abc...==` into kid `abc...` and secret
    /// `=`; reading it as a bare secret now would change the key under a running deployment
    /// without a word. Errors name the line number, never its text.
    pub fn from_secret_lines(text: &str) -> Result<Self, CredentialError> {
        let secrets = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .map(|(line, text)| {
                parse_secret_line(text)
                    .map_err(|reason| CredentialError::SecretLine { line, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(secrets)
    }

    pub fn secrets(&self) -> &[TurnSecret] {
        &self.secrets
    }

    fn minting(&self) -> &TurnSecret {
        // `new` refuses an empty list, so there is always a first secret.
        &self.secrets[0]
    }

    /// Mints a credential for `user` valid from `now` for `ttl`. REST ignores `limits`.
    pub fn mint(
        &self,
        format: CredentialFormat,
        user: &str,
        ttl: Duration,
        limits: TurnLimits,
        now: SystemTime,
    ) -> Result<MintedCredential, CredentialError> {
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(CredentialError::InvalidUser);
        }
        let iat = unix_seconds(now);
        let exp = iat.saturating_add(ttl.as_secs());
        let secret = self.minting();
        let username = match format {
            CredentialFormat::Rest => format!("{exp}:{user}"),
            CredentialFormat::Jwt => {
                // Cheap early refusal: the JWS is longer than its base64'd `sub` alone.
                if user.len() / 3 * 4 > MAX_USERNAME_LEN {
                    return Err(CredentialError::TooLong);
                }
                let claims = TurnJwtClaims {
                    sub: user.to_owned(),
                    exp,
                    iat,
                    aud: TURN_AUDIENCE.to_owned(),
                    alloc: limits.alloc,
                    kbps: limits.kbps,
                };
                let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
                // `typ` would only add bytes to a length-limited username.
                header.typ = None;
                header.kid = Some(secret.kid.clone());
                jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret.secret))
                    .map_err(|_| CredentialError::Malformed)?
            }
        };
        if username.len() > MAX_USERNAME_LEN {
            return Err(CredentialError::TooLong);
        }
        let password = password(&secret.secret, &username);
        Ok(MintedCredential {
            username,
            password,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    /// Checks a TURN USERNAME at `now` and returns what the TURN server needs; the password
    /// itself is proven by the client's MESSAGE-INTEGRITY against one of `keys`.
    pub fn check(
        &self,
        username: &str,
        realm: &str,
        now: SystemTime,
    ) -> Result<TurnGrant, CredentialError> {
        if username.len() > STUN_MAX_USERNAME_LEN {
            return Err(CredentialError::TooLong);
        }
        let now = unix_seconds(now);
        if let Some((expiry, user)) = split_rest(username) {
            if expiry < now {
                return Err(CredentialError::Expired);
            }
            let keys = self
                .secrets
                .iter()
                .map(|s| long_term_key(username, realm, &password(&s.secret, username)))
                .collect();
            return Ok(TurnGrant {
                user: user.to_owned(),
                format: CredentialFormat::Rest,
                expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(expiry),
                limits: TurnLimits::default(),
                keys,
            });
        }
        self.check_jwt(username, realm, now)
    }

    fn check_jwt(
        &self,
        username: &str,
        realm: &str,
        now: u64,
    ) -> Result<TurnGrant, CredentialError> {
        let header = raw_header(username).ok_or(CredentialError::Malformed)?;
        if header.alg != "HS256" {
            return Err(CredentialError::AlgorithmNotAllowed);
        }
        let kid = header.kid.ok_or(CredentialError::MissingKeyId)?;
        let secret = self
            .secrets
            .iter()
            .find(|s| s.kid == kid)
            .ok_or(CredentialError::UnknownKey)?;
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "aud"]);
        validation.set_audience(&[TURN_AUDIENCE]);
        let claims = jsonwebtoken::decode::<TurnJwtClaims>(
            username,
            &DecodingKey::from_secret(&secret.secret),
            &validation,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => CredentialError::BadSignature,
            ErrorKind::InvalidAudience => CredentialError::WrongAudience,
            ErrorKind::InvalidAlgorithm => CredentialError::AlgorithmNotAllowed,
            _ => CredentialError::Malformed,
        })?
        .claims;
        if claims.exp < now {
            return Err(CredentialError::Expired);
        }
        let key = long_term_key(username, realm, &password(&secret.secret, username));
        Ok(TurnGrant {
            user: claims.sub,
            format: CredentialFormat::Jwt,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
            limits: TurnLimits {
                alloc: claims.alloc,
                kbps: claims.kbps,
            },
            keys: vec![key],
        })
    }
}

/// `<digits>` or `<digits>:<user>` (coturn accepts a bare timestamp too).
fn split_rest(username: &str) -> Option<(u64, &str)> {
    let (ts, user) = username.split_once(':').unwrap_or((username, ""));
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ts.parse().ok()?, user))
}

/// One non-blank, non-comment, trimmed line of a secret file (see
/// [`TurnCredentials::from_secret_lines`]).
fn parse_secret_line(line: &str) -> Result<TurnSecret, SecretLineError> {
    let secret = match line.split_once(char::is_whitespace) {
        Some((head, rest)) => {
            let kid = head
                .strip_prefix("kid:")
                .ok_or(SecretLineError::Whitespace)?;
            if !valid_kid(kid) {
                return Err(SecretLineError::InvalidKeyId);
            }
            let secret = rest.trim_start();
            if secret.contains(char::is_whitespace) {
                return Err(SecretLineError::Whitespace);
            }
            Some((kid, secret))
        }
        None => {
            if line.trim_end_matches('=').contains('=') {
                return Err(SecretLineError::EqualsInside);
            }
            None
        }
    };
    let bytes = secret.map_or(line, |(_, s)| s).as_bytes();
    if bytes.len() < MIN_SECRET_LEN {
        return Err(SecretLineError::TooShort);
    }
    Ok(match secret {
        Some((kid, _)) => TurnSecret {
            kid: kid.to_owned(),
            secret: bytes.to_vec(),
        },
        None => TurnSecret::derived(bytes),
    })
}

fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn derived_kid(secret: &[u8]) -> String {
    let digest = Sha1::new_with_prefix(b"iceway-turn-kid\0")
        .chain_update(secret)
        .finalize();
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("k{hex}")
}

/// `base64(HMAC-SHA1(secret, username))`, the TURN password of both formats.
pub fn password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term key `MD5(username ":" realm ":" password)` (RFC 8489 §9.2.2). Iceway usernames
/// and passwords are ASCII, so the OpaqueString preparation of the RFC changes nothing.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn creds(lines: &str) -> TurnCredentials {
        TurnCredentials::from_secret_lines(lines).expect("secrets")
    }

    #[test]
    fn rest_password_matches_openssl_vectors() {
        // printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'secret' -binary | base64
        assert_eq!(
            password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        // printf '%s' '1700003600:bob:with:colons' | openssl dgst -sha1 -hmac 'north-secret' -binary | base64
        assert_eq!(
            password(b"north-secret", "1700003600:bob:with:colons"),
            "3z83ErOeFVeM+F3Di9DKqm8tOHo="
        );
    }

    #[test]
    fn rest_mint_produces_the_openssl_vector() {
        // `openssl rand -base64 16` printed this secret; its `==` is part of it.
        let c = creds("X9kzKDyZH4xqbFVHXMie5A==");
        let m = c
            .mint(
                CredentialFormat::Rest,
                "alice",
                Duration::from_secs(3600),
                TurnLimits::default(),
                at(1_699_996_400),
            )
            .expect("mint");
        assert_eq!(m.username, "1700000000:alice");
        // printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'X9kzKDyZH4xqbFVHXMie5A==' -binary | base64
        assert_eq!(m.password, "3641HOo3i0e8J+Spp7GLKNKE0z4=");
        assert_eq!(m.expires_at, at(1_700_000_000));
    }

    #[test]
    fn long_term_key_matches_md5sum_vectors() {
        // printf '%s' 'user:realm:pass' | md5sum
        assert_eq!(
            hex(&long_term_key("user", "realm", "pass")),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
        // P=$(printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'X9kzKDyZH4xqbFVHXMie5A==' -binary | base64)
        // printf '%s' "1700000000:alice:iceway.example:$P" | md5sum
        assert_eq!(
            hex(&long_term_key(
                "1700000000:alice",
                "iceway.example",
                "3641HOo3i0e8J+Spp7GLKNKE0z4="
            )),
            "7e8326b29bcd4e61f336c8eca63dedff"
        );
    }

    #[test]
    fn rest_check_strips_the_timestamp_and_offers_a_key_per_secret() {
        let c = creds("X9kzKDyZH4xqbFVHXMie5A==\nother-secret-0123456789\n");
        let g = c
            .check("1700000000:alice", "iceway.example", at(1_699_999_000))
            .expect("grant");
        assert_eq!(g.user, "alice");
        assert_eq!(g.format, CredentialFormat::Rest);
        assert_eq!(g.expires_at, at(1_700_000_000));
        assert_eq!(g.limits, TurnLimits::default());
        assert_eq!(g.keys.len(), 2);
        // Same vector as long_term_key_matches_md5sum_vectors.
        assert_eq!(hex(&g.keys[0]), "7e8326b29bcd4e61f336c8eca63dedff");
        // Colons after the first belong to the user id.
        let g = c.check("1700000000:a:b", "r", at(0)).expect("grant");
        assert_eq!(g.user, "a:b");
    }

    #[test]
    fn rest_check_refuses_expired() {
        let c = creds("rest-secret-0123456789");
        assert!(c.check("1700000000:alice", "r", at(1_700_000_000)).is_ok());
        assert_eq!(
            c.check("1700000000:alice", "r", at(1_700_000_001)),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn jwt_mint_and_check_round_trip_with_limits() {
        let c = creds("kid:main first-secret-0123\nkid:old second-secret-0123");
        let limits = TurnLimits {
            alloc: Some(3),
            kbps: Some(2000),
        };
        let m = c
            .mint(
                CredentialFormat::Jwt,
                "cam-42",
                Duration::from_secs(600),
                limits,
                at(1_000),
            )
            .expect("mint");
        let header = m.username.split('.').next().expect("header");
        let header = URL_SAFE_NO_PAD.decode(header).expect("b64");
        assert_eq!(header, br#"{"alg":"HS256","kid":"main"}"#);
        assert_eq!(m.password, password(b"first-secret-0123", &m.username));

        let g = c
            .check(&m.username, "iceway.example", at(1_000))
            .expect("grant");
        assert_eq!(g.user, "cam-42");
        assert_eq!(g.format, CredentialFormat::Jwt);
        assert_eq!(g.limits, limits);
        assert_eq!(g.expires_at, at(1_600));
        assert_eq!(
            g.keys,
            vec![long_term_key(&m.username, "iceway.example", &m.password)]
        );
    }

    #[test]
    fn jwt_minted_with_an_older_secret_still_checks_after_rotation() {
        let before = creds("kid:old second-secret-0123");
        let m = before
            .mint(
                CredentialFormat::Jwt,
                "u",
                Duration::from_secs(60),
                TurnLimits::default(),
                at(0),
            )
            .expect("mint");
        let after = creds("kid:new first-secret-0123\nkid:old second-secret-0123");
        let g = after.check(&m.username, "r", at(10)).expect("grant");
        assert_eq!(g.keys, vec![long_term_key(&m.username, "r", &m.password)]);
        // And once the old secret is retired, the kid is unknown.
        let retired = creds("kid:new first-secret-0123");
        assert_eq!(
            retired.check(&m.username, "r", at(10)),
            Err(CredentialError::UnknownKey)
        );
    }

    #[test]
    fn derived_kids_survive_reordering() {
        let a = creds("alpha-secret-0123456\nbeta-secret-01234567");
        let b = creds("beta-secret-01234567\nalpha-secret-0123456");
        let m = a
            .mint(
                CredentialFormat::Jwt,
                "u",
                Duration::from_secs(60),
                TurnLimits::default(),
                at(0),
            )
            .expect("mint");
        assert!(b.check(&m.username, "r", at(0)).is_ok());
        assert!(a.secrets()[0].kid.starts_with('k') && a.secrets()[0].kid.len() == 9);
    }

    /// Secrets as operators make them, each checked against a REST password computed outside
    /// Rust: `printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac "$S" -binary | base64`.
    #[test]
    fn secrets_printed_by_openssl_round_trip_exactly() {
        let vectors = [
            // openssl rand -base64 16 (always ends in `==`)
            ("X9kzKDyZH4xqbFVHXMie5A==", "3641HOo3i0e8J+Spp7GLKNKE0z4="),
            // openssl rand -base64 32 (ends in `=`)
            (
                "JK5RND7AolH2N8oyZCYyUzmWqGAIQaVv41zhILqg9H8=",
                "BSUTyuxikxvM/iyu0g+SiGP3eIQ=",
            ),
            // openssl rand -hex 32
            (
                "cfa9fccf6c73cf67686d3b0a8b5c7588de1cfa2867228cdb28c296671c4ff74e",
                "fk3Mph60jpngpuZkRPjNto2OF24=",
            ),
            // The secret of the report that found the old `KID=SECRET` split.
            ("abcdEFGHijklMNOPqrstuv==", "tYlqEenCE+HzlQQhxSN1VUGY/Pg="),
        ];
        for (secret, expected) in vectors {
            for text in [
                format!("{secret}\n"),
                format!("  {secret}  \r\n"),
                format!("kid:main {secret}"),
                format!("kid:main\t {secret}"),
            ] {
                let c = creds(&text);
                assert_eq!(c.secrets().len(), 1, "{text:?}");
                assert_eq!(c.secrets()[0].secret, secret.as_bytes(), "{text:?}");
                let m = c
                    .mint(
                        CredentialFormat::Rest,
                        "alice",
                        Duration::from_secs(3600),
                        TurnLimits::default(),
                        at(1_699_996_400),
                    )
                    .expect("mint");
                assert_eq!(m.password, expected, "{text:?}");
            }
        }
        // What the old parser made of `abcdEFGHijklMNOPqrstuv==`: HMAC key "=", whose password
        // (`openssl dgst -sha1 -hmac '='`) must not verify any more.
        let c = creds("abcdEFGHijklMNOPqrstuv==");
        let keys = c.check("1700000000:alice", "r", at(0)).expect("grant").keys;
        assert!(!keys.contains(&long_term_key(
            "1700000000:alice",
            "r",
            "JLf9lsD3vYVQ0jgmGHChwCleF8Q="
        )));
        // A bare secret's kid is derived, never a prefix of the secret.
        assert!(c.secrets()[0].kid.starts_with('k') && c.secrets()[0].kid.len() == 9);
        assert_eq!(
            creds("kid:main abcdEFGHijklMNOPqrstuv==").secrets()[0].kid,
            "main"
        );
    }

    #[test]
    fn ambiguous_or_weak_secret_lines_are_refused_by_line_number() {
        let refused = |text: &str| TurnCredentials::from_secret_lines(text).err();
        let at_line = |line, reason| Some(CredentialError::SecretLine { line, reason });
        // The old `KID=SECRET` form would now silently change the key: refused.
        assert_eq!(
            refused("# rotation\nmain=first-secret-0123"),
            at_line(2, SecretLineError::EqualsInside)
        );
        assert_eq!(
            refused("abc=def=ghijklmnopqrst=="),
            at_line(1, SecretLineError::EqualsInside)
        );
        assert_eq!(
            refused("two words-0123456789"),
            at_line(1, SecretLineError::Whitespace)
        );
        assert_eq!(
            refused("kid:main two words-0123456789"),
            at_line(1, SecretLineError::Whitespace)
        );
        assert_eq!(
            refused("kid:bad.kid secret-0123456789"),
            at_line(1, SecretLineError::InvalidKeyId)
        );
        assert_eq!(
            refused("kid: secret-0123456789"),
            at_line(1, SecretLineError::InvalidKeyId)
        );
        // 15 bytes, and `openssl rand -base64 8` (12 bytes): too short, bare or named.
        for short in [
            "0123456789abcde",
            "q8bXH9wGaNc=",
            "kid:k 0123456789abcde",
            "=",
        ] {
            assert_eq!(
                refused(short),
                at_line(1, SecretLineError::TooShort),
                "{short}"
            );
        }
        assert!(TurnCredentials::from_secret_lines("0123456789abcdef").is_ok());
        // The message names the line and never the secret.
        let err = refused("\n\nmain=hunter2-hunter2-hunter2").expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("line 3") && !text.contains("hunter2"),
            "{text}"
        );
        // Secrets made in code obey the same floor.
        assert_eq!(
            TurnCredentials::new(vec![TurnSecret::derived(b"short")]).err(),
            Some(CredentialError::ShortSecret(derived_kid(b"short")))
        );
    }

    #[test]
    fn jwt_check_refusals() {
        let c = creds("kid:main first-secret-0123");
        let m = c
            .mint(
                CredentialFormat::Jwt,
                "u",
                Duration::from_secs(60),
                TurnLimits::default(),
                at(0),
            )
            .expect("mint");
        assert_eq!(
            c.check(&m.username, "r", at(61)),
            Err(CredentialError::Expired)
        );

        let mut tampered = m.username.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert_eq!(
            c.check(&tampered, "r", at(0)),
            Err(CredentialError::BadSignature)
        );

        let encode = |header: serde_json::Value, claims: serde_json::Value, secret: &[u8]| {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            let p = URL_SAFE_NO_PAD.encode(claims.to_string());
            let msg = format!("{h}.{p}");
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("key");
            mac.update(msg.as_bytes());
            format!(
                "{msg}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            )
        };
        let claims = serde_json::json!({"sub":"u","exp":100,"iat":0,"aud":"turn"});
        let ok = encode(
            serde_json::json!({"alg":"HS256","kid":"main"}),
            claims.clone(),
            b"first-secret-0123",
        );
        assert!(c.check(&ok, "r", at(0)).is_ok());
        let wrong_aud = serde_json::json!({"sub":"u","exp":100,"iat":0,"aud":"iceway"});
        let t = encode(
            serde_json::json!({"alg":"HS256","kid":"main"}),
            wrong_aud,
            b"first-secret-0123",
        );
        assert_eq!(c.check(&t, "r", at(0)), Err(CredentialError::WrongAudience));
        let t = encode(
            serde_json::json!({"alg":"HS256"}),
            claims.clone(),
            b"first-secret-0123",
        );
        assert_eq!(c.check(&t, "r", at(0)), Err(CredentialError::MissingKeyId));
        let t = encode(
            serde_json::json!({"alg":"HS256","kid":"nope"}),
            claims.clone(),
            b"first-secret-0123",
        );
        assert_eq!(c.check(&t, "r", at(0)), Err(CredentialError::UnknownKey));
        let t = encode(
            serde_json::json!({"alg":"none","kid":"main"}),
            claims.clone(),
            b"x",
        );
        assert_eq!(
            c.check(&t, "r", at(0)),
            Err(CredentialError::AlgorithmNotAllowed)
        );
        let no_aud = serde_json::json!({"sub":"u","exp":100,"iat":0});
        let t = encode(
            serde_json::json!({"alg":"HS256","kid":"main"}),
            no_aud,
            b"first-secret-0123",
        );
        assert_eq!(c.check(&t, "r", at(0)), Err(CredentialError::Malformed));

        for bad in ["", "alice", ":alice", "12a:alice", "a.b", "x.y.z"] {
            assert_eq!(
                c.check(bad, "r", at(0)),
                Err(CredentialError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            c.check(&"1".repeat(514), "r", at(0)),
            Err(CredentialError::TooLong)
        );
    }

    #[test]
    fn jwt_username_stays_under_509_bytes_and_long_user_ids_are_refused() {
        let c = creds("kid:main first-secret-0123");
        let limits = TurnLimits {
            alloc: Some(u32::MAX),
            kbps: Some(u32::MAX),
        };
        let mint = |user: &str| {
            c.mint(
                CredentialFormat::Jwt,
                user,
                Duration::from_secs(u32::MAX.into()),
                limits,
                at(1_800_000_000),
            )
        };
        // Find the longest user id that still mints; its username must be under 509 bytes and
        // one more byte must be refused.
        let mut longest = 0;
        for len in 1..=400 {
            match mint(&"u".repeat(len)) {
                Ok(m) => {
                    assert!(m.username.len() < 509, "len {len}: {}", m.username.len());
                    longest = len;
                }
                Err(e) => {
                    assert_eq!(e, CredentialError::TooLong);
                    break;
                }
            }
        }
        assert!(longest > 200, "room for realistic user ids, got {longest}");
        assert_eq!(
            mint(&"u".repeat(longest + 1)),
            Err(CredentialError::TooLong)
        );
        assert_eq!(mint(&"u".repeat(5_000)), Err(CredentialError::TooLong));
        // REST usernames obey the same bound.
        let long = "u".repeat(600);
        assert_eq!(
            c.mint(
                CredentialFormat::Rest,
                &long,
                Duration::from_secs(1),
                limits,
                at(0)
            ),
            Err(CredentialError::TooLong)
        );
    }

    #[test]
    fn invalid_users_and_secret_sets_are_refused() {
        let c = creds("some-secret-0123456789");
        for user in ["", "a\nb", "tab\there"] {
            assert_eq!(
                c.mint(
                    CredentialFormat::Rest,
                    user,
                    Duration::ZERO,
                    TurnLimits::default(),
                    at(0)
                ),
                Err(CredentialError::InvalidUser)
            );
        }
        assert_eq!(
            TurnCredentials::from_secret_lines("\n# comment\n").err(),
            Some(CredentialError::NoSecrets)
        );
        assert_eq!(
            TurnCredentials::from_secret_lines(
                "kid:a secret-x-0123456789\nkid:a secret-y-0123456789"
            )
            .err(),
            Some(CredentialError::DuplicateKey("a".into()))
        );
        assert_eq!(
            TurnCredentials::new(vec![TurnSecret {
                kid: "k".into(),
                secret: vec![]
            }])
            .err(),
            Some(CredentialError::EmptySecret("k".into()))
        );
        assert_eq!(
            TurnCredentials::new(vec![TurnSecret {
                kid: "bad kid".into(),
                secret: vec![1]
            }])
            .err(),
            Some(CredentialError::InvalidKeyId("bad kid".into()))
        );
    }

    #[test]
    fn debug_output_hides_secrets_and_passwords() {
        let c = creds("kid:main hunter2-secret-0123");
        let m = c
            .mint(
                CredentialFormat::Rest,
                "u",
                Duration::from_secs(1),
                TurnLimits::default(),
                at(0),
            )
            .expect("mint");
        let text = format!("{c:?} {m:?} {:?}", c.secrets()[0]);
        assert!(
            !text.contains("hunter2") && !text.contains(&m.password),
            "{text}"
        );
    }
}
