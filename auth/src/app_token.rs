//! App tokens: JWTs issued by the app's own backend, which Iceway only verifies (DESIGN §2).
//!
//! Every key is configured with its `kid` and one pinned algorithm. The token header is read
//! before any cryptography so that `alg: none`, an algorithm other than the key's and an unknown
//! `kid` are refused by name instead of surfacing as a generic decode failure.
//!
//! `kid` policy: a token must name its key with `kid`, except when exactly one key is configured;
//! then a token without `kid` is checked against that key (still with the key's pinned algorithm).
//! With several keys, guessing would mean trying keys until one verifies, which turns one refused
//! token into several signature checks and blurs which key an app is really using.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::unix_seconds;

/// The audience app tokens carry unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "iceway";
/// Clock skew tolerated on `exp` and `nbf` unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Tokens longer than this are refused before any decoding; real app tokens are a few hundred
/// bytes, and an unbounded header would let a client make us base64-decode megabytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Shortest HS256 secret accepted from configuration (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// The algorithms a key may be pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl Algorithm {
    /// The JOSE name, as it appears in a token header's `alg`.
    pub fn as_jose(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_jose())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = KeyError;

    /// Accepts the JOSE names case-insensitively (`HS256`, `RS256`, `ES256`, `EdDSA`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(Algorithm::Hs256),
            "RS256" => Ok(Algorithm::Rs256),
            "ES256" => Ok(Algorithm::Es256),
            "EDDSA" => Ok(Algorithm::EdDsa),
            _ => Err(KeyError::UnknownAlgorithm(s.to_owned())),
        }
    }
}

/// Why a configured key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key spec {0:?} is not KID=ALG:FILE")]
    BadSpec(String),
    #[error("empty key id")]
    EmptyKid,
    #[error("unknown algorithm {0:?} (expected HS256, RS256, ES256 or EdDSA)")]
    UnknownAlgorithm(String),
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] iceway_service::SecretError),
    #[error("HS256 secret is {0} bytes; at least {MIN_HS256_SECRET_LEN} are required")]
    WeakSecret(usize),
    #[error("{alg} needs a PEM public key (BEGIN PUBLIC KEY); refusing a private key or other PEM")]
    NotPublicKey { alg: Algorithm },
    #[error("invalid {alg} PEM public key: {source}")]
    BadPem {
        alg: Algorithm,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

/// One verification key: its `kid`, the algorithm it is pinned to, and the key material.
#[derive(Clone)]
pub struct VerificationKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerificationKey {
    /// An HS256 shared secret. Takes any length so tests and `iceway dev` can use short
    /// secrets; configuration paths use [`VerificationKey::hs256_from_file`], which insists on
    /// [`MIN_HS256_SECRET_LEN`].
    pub fn hs256(kid: &str, secret: &[u8]) -> Self {
        Self {
            kid: kid.to_owned(),
            alg: Algorithm::Hs256,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// An HS256 secret read from a file (a mounted Kubernetes Secret) with
    /// `iceway_service::read_secret`, which drops surrounding whitespace.
    pub fn hs256_from_file(kid: &str, path: &Path) -> Result<Self, KeyError> {
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        let secret = iceway_service::read_secret(path)?.into_bytes();
        if secret.len() < MIN_HS256_SECRET_LEN {
            return Err(KeyError::WeakSecret(secret.len()));
        }
        Ok(Self::hs256(kid, &secret))
    }

    /// A public key in PEM (SPKI `BEGIN PUBLIC KEY`, or PKCS#1 `BEGIN RSA PUBLIC KEY` for RS256).
    /// For `Algorithm::Hs256` the bytes are taken as the shared secret.
    pub fn from_pem(kid: &str, alg: Algorithm, pem: &[u8]) -> Result<Self, KeyError> {
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        let parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey> = match alg {
            Algorithm::Hs256 => return Ok(Self::hs256(kid, pem)),
            Algorithm::Rs256 => DecodingKey::from_rsa_pem,
            Algorithm::Es256 => DecodingKey::from_ec_pem,
            Algorithm::EdDsa => DecodingKey::from_ed_pem,
        };
        // A private key here would be a deployment mistake (it leaks signing power to every
        // verifier); jsonwebtoken would accept some private PEMs, so refuse them up front.
        let text = String::from_utf8_lossy(pem);
        let public = text.contains("-----BEGIN PUBLIC KEY-----")
            || (alg == Algorithm::Rs256 && text.contains("-----BEGIN RSA PUBLIC KEY-----"));
        if !public || text.contains("PRIVATE KEY-----") {
            return Err(KeyError::NotPublicKey { alg });
        }
        let key = parse(pem).map_err(|source| KeyError::BadPem { alg, source })?;
        Ok(Self {
            kid: kid.to_owned(),
            alg,
            key,
        })
    }

    /// Parses `KID=ALG:FILE` as given to `--jwt-key`, reading FILE. For HS256, FILE holds the
    /// shared secret (at least [`MIN_HS256_SECRET_LEN`] bytes); otherwise a PEM public key.
    pub fn parse_spec(spec: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadSpec(spec.to_owned());
        let (kid, rest) = spec.split_once('=').ok_or_else(bad)?;
        let (alg, file) = rest.split_once(':').ok_or_else(bad)?;
        let (kid, file) = (kid.trim(), file.trim());
        if kid.is_empty() {
            return Err(KeyError::EmptyKid);
        }
        if file.is_empty() {
            return Err(bad());
        }
        let alg: Algorithm = alg.trim().parse()?;
        let path = Path::new(file);
        if alg == Algorithm::Hs256 {
            return Self::hs256_from_file(kid, path);
        }
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: file.to_owned(),
            source,
        })?;
        Self::from_pem(kid, alg, &pem)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// What a caller is allowed to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Camera,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Viewer => "viewer",
        }
    }
}

/// The claims of a verified app token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppClaims {
    /// User or device id; a camera's id is its `sub`.
    pub sub: String,
    pub role: Role,
    /// Viewer: the camera ids it may watch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cams: Vec<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Checked against the configured audience before this struct is built (arrays included);
    /// an array `aud` is kept here as its first member.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "string_or_first"
    )]
    pub aud: Option<String>,
}

impl AppClaims {
    /// Claims for `sub` valid from `now` for `ttl`, with the default audience.
    pub fn new(sub: &str, role: Role, cams: Vec<String>, now: SystemTime, ttl: Duration) -> Self {
        let iat = unix_seconds(now);
        Self {
            sub: sub.to_owned(),
            role,
            cams,
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            nbf: None,
            iss: None,
            aud: Some(DEFAULT_AUDIENCE.to_owned()),
        }
    }

    /// May this token watch `camera`? A camera may always see itself.
    pub fn may_watch(&self, camera: &str) -> bool {
        match self.role {
            Role::Viewer => self.cams.iter().any(|c| c == camera),
            Role::Camera => self.sub == camera,
        }
    }
}

fn string_or_first<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(s),
        Some(OneOrMany::Many(v)) => v.into_iter().next(),
    })
}

/// Why an app token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppTokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token has no kid and several keys are configured")]
    MissingKeyId,
    #[error("token names an unknown key")]
    UnknownKey,
    #[error("token algorithm is not the one pinned for its key")]
    AlgorithmNotAllowed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token lacks the required claim {0}")]
    MissingClaim(String),
}

impl AppTokenError {
    /// Every [`reason`](Self::reason): metrics labelled by it are initialised with these at
    /// start, so their series exist before the first failure.
    pub const REASONS: [&'static str; 10] = [
        "malformed",
        "missing_kid",
        "unknown_key",
        "algorithm_not_allowed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "missing_claim",
    ];

    /// A low-cardinality label for metrics and problem bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            AppTokenError::Malformed => "malformed",
            AppTokenError::MissingKeyId => "missing_kid",
            AppTokenError::UnknownKey => "unknown_key",
            AppTokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AppTokenError::BadSignature => "bad_signature",
            AppTokenError::Expired => "expired",
            AppTokenError::NotYetValid => "not_yet_valid",
            AppTokenError::WrongAudience => "wrong_audience",
            AppTokenError::WrongIssuer => "wrong_issuer",
            AppTokenError::MissingClaim(_) => "missing_claim",
        }
    }
}

/// The header fields we look at before choosing a key. `alg` is kept as a string so that
/// `none` and other unsupported names are refused as an algorithm, not as malformed JSON.
#[derive(Deserialize)]
pub(crate) struct RawHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
}

pub(crate) fn raw_header(token: &str) -> Option<RawHeader> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Verifies app tokens against the configured keys.
#[derive(Clone, Debug)]
pub struct AppTokenVerifier {
    keys: HashMap<String, VerificationKey>,
    audience: String,
    issuer: Option<String>,
    leeway: Duration,
}

impl AppTokenVerifier {
    /// Keys with a duplicate `kid` replace earlier ones; configuration loading should refuse
    /// duplicates before getting here (see [`AppTokenVerifier::try_new`]).
    pub fn new(
        keys: Vec<VerificationKey>,
        audience: &str,
        issuer: Option<&str>,
        leeway: Duration,
    ) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
            audience: audience.to_owned(),
            issuer: issuer.map(str::to_owned),
            leeway,
        }
    }

    /// Like [`AppTokenVerifier::new`], but refuses an empty key list and duplicate key ids,
    /// naming the duplicate.
    pub fn try_new(
        keys: Vec<VerificationKey>,
        audience: &str,
        issuer: Option<&str>,
        leeway: Duration,
    ) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no app-token keys configured".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for k in &keys {
            if !seen.insert(k.kid.as_str()) {
                return Err(format!("duplicate app-token key id {:?}", k.kid));
            }
        }
        Ok(Self::new(keys, audience, issuer, leeway))
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How long past `exp` (and before `nbf`) a token is still accepted.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies `token` at the current time.
    pub fn verify(&self, token: &str) -> Result<AppClaims, AppTokenError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Verifies `token` as of `now` (tests move the clock by hand).
    pub fn verify_at(&self, token: &str, now: SystemTime) -> Result<AppClaims, AppTokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AppTokenError::Malformed);
        }
        let header = raw_header(token).ok_or(AppTokenError::Malformed)?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.keys.get(kid).ok_or(AppTokenError::UnknownKey)?,
            None if self.keys.len() == 1 => {
                self.keys.values().next().ok_or(AppTokenError::UnknownKey)?
            }
            None if self.keys.is_empty() => return Err(AppTokenError::UnknownKey),
            None => return Err(AppTokenError::MissingKeyId),
        };
        // Exact comparison: "none", "None", "HS256" against an RS256 key (algorithm confusion)
        // and anything unknown all end here, before any cryptography runs.
        if header.alg != key.alg.as_jose() {
            return Err(AppTokenError::AlgorithmNotAllowed);
        }

        let mut validation = Validation::new(key.alg.to_jwt());
        // Time is checked below against the caller's `now`, not jsonwebtoken's own clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.set_audience(&[&self.audience]);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        // Decoded as JSON first so that jsonwebtoken's claim checks (which run after its own
        // deserialization) report a missing `exp` as such rather than as a shape error.
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims: AppClaims =
            serde_json::from_value(data.claims).map_err(|_| AppTokenError::Malformed)?;

        let now = unix_seconds(now);
        let leeway = self.leeway.as_secs();
        if claims.exp.saturating_add(leeway) < now {
            return Err(AppTokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AppTokenError::NotYetValid);
        }
        Ok(claims)
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AppTokenError {
    match kind {
        ErrorKind::InvalidSignature => AppTokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            AppTokenError::AlgorithmNotAllowed
        }
        ErrorKind::ExpiredSignature => AppTokenError::Expired,
        ErrorKind::ImmatureSignature => AppTokenError::NotYetValid,
        ErrorKind::InvalidAudience => AppTokenError::WrongAudience,
        ErrorKind::InvalidIssuer => AppTokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => AppTokenError::MissingClaim(c.clone()),
        _ => AppTokenError::Malformed,
    }
}

/// Mints an HS256 app token (for `iceway dev`, `iceway token` and tests; production tokens come
/// from the app's backend).
pub fn mint_hs256(kid: &str, secret: &[u8], claims: &AppClaims) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret))
        .expect("HS256 with a secret key and serializable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use jsonwebtoken::Algorithm as J;

    #[test]
    fn every_reason_is_listed_for_the_metrics() {
        use AppTokenError::*;
        let all = [
            Malformed,
            MissingKeyId,
            UnknownKey,
            AlgorithmNotAllowed,
            BadSignature,
            Expired,
            NotYetValid,
            WrongAudience,
            WrongIssuer,
            MissingClaim("sub".into()),
        ];
        let reasons: Vec<_> = all.iter().map(AppTokenError::reason).collect();
        assert_eq!(reasons, AppTokenError::REASONS);
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/keys/rsa_public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/keys/ec_private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/keys/ec_public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../tests/keys/ed25519_private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/keys/ed25519_public.pem");

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn claims() -> AppClaims {
        AppClaims::new(
            "cam-1",
            Role::Camera,
            vec![],
            now(),
            Duration::from_secs(3600),
        )
    }

    fn verifier(keys: Vec<VerificationKey>) -> AppTokenVerifier {
        AppTokenVerifier::new(keys, DEFAULT_AUDIENCE, None, DEFAULT_LEEWAY)
    }

    fn sign(alg: J, kid: Option<&str>, key: &EncodingKey, claims: &impl Serialize) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).expect("test signing")
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// HS256 over an arbitrary header, for headers jsonwebtoken refuses to produce.
    fn hs256_raw(header_json: &str, claims: &impl Serialize, secret: &[u8]) -> String {
        let payload = serde_json::to_vec(claims).expect("claims");
        let msg = format!("{}.{}", b64(header_json.as_bytes()), b64(&payload));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac key");
        mac.update(msg.as_bytes());
        format!("{msg}.{}", b64(&mac.finalize().into_bytes()))
    }

    #[test]
    fn hs256_token_verifies_with_typed_claims() {
        let mut c = claims();
        c.role = Role::Viewer;
        c.cams = vec!["cam-1".into(), "cam-2".into()];
        let token = mint_hs256("default", SECRET, &c);
        let got = verifier(vec![VerificationKey::hs256("default", SECRET)])
            .verify_at(&token, now())
            .expect("valid token");
        assert_eq!(got, c);
        assert!(got.may_watch("cam-2"));
        assert!(!got.may_watch("cam-3"));
    }

    #[test]
    fn rs256_es256_eddsa_tokens_verify_with_their_pinned_keys() {
        let cases = [
            (
                J::RS256,
                Algorithm::Rs256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE),
                RSA_PUBLIC,
            ),
            (
                J::ES256,
                Algorithm::Es256,
                EncodingKey::from_ec_pem(EC_PRIVATE),
                EC_PUBLIC,
            ),
            (
                J::EdDSA,
                Algorithm::EdDsa,
                EncodingKey::from_ed_pem(ED_PRIVATE),
                ED_PUBLIC,
            ),
        ];
        for (jalg, alg, enc, public) in cases {
            let enc = enc.expect("private key fixture");
            let key = VerificationKey::from_pem("k1", alg, public).expect("public key fixture");
            let token = sign(jalg, Some("k1"), &enc, &claims());
            let got = verifier(vec![key]).verify_at(&token, now());
            assert_eq!(got, Ok(claims()), "{alg}");
        }
    }

    #[test]
    fn tampered_signature_is_refused() {
        let token = mint_hs256("default", SECRET, &claims());
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        // Flip one character of the signature.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(
            v.verify_at(&tampered, now()),
            Err(AppTokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = mint_hs256("default", SECRET, &claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut evil = claims();
        evil.sub = "someone-else".into();
        let forged = b64(&serde_json::to_vec(&evil).expect("json"));
        parts[1] = &forged;
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        assert_eq!(
            v.verify_at(&parts.join("."), now()),
            Err(AppTokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = mint_hs256("default", b"another secret of 32 bytes......", &claims());
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        assert_eq!(v.verify_at(&token, now()), Err(AppTokenError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        let payload = b64(&serde_json::to_vec(&claims()).expect("json"));
        for alg in ["none", "None", "NONE"] {
            let header = b64(format!(r#"{{"alg":"{alg}","kid":"default"}}"#).as_bytes());
            for sig in ["", "AAAA"] {
                let token = format!("{header}.{payload}.{sig}");
                assert_eq!(
                    v.verify_at(&token, now()),
                    Err(AppTokenError::AlgorithmNotAllowed),
                    "alg {alg} sig {sig:?}"
                );
            }
        }
        // Same without kid, with the single configured key chosen implicitly.
        let header = b64(br#"{"alg":"none"}"#);
        assert_eq!(
            v.verify_at(&format!("{header}.{payload}."), now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn hs256_token_signed_with_rsa_public_pem_is_refused_by_rs256_key() {
        // Algorithm confusion: the attacker knows the RSA public key and uses its PEM text as an
        // HMAC secret, hoping the verifier feeds the same bytes to HMAC.
        let token = sign(
            J::HS256,
            Some("rsa"),
            &EncodingKey::from_secret(RSA_PUBLIC),
            &claims(),
        );
        let key = VerificationKey::from_pem("rsa", Algorithm::Rs256, RSA_PUBLIC).expect("key");
        let v = verifier(vec![key.clone()]);
        assert_eq!(
            v.verify_at(&token, now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
        // Also when the token omits kid and the single key is picked implicitly.
        let token = sign(
            J::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC),
            &claims(),
        );
        assert_eq!(
            v.verify_at(&token, now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn algorithm_other_than_the_keys_is_refused() {
        // An ES256 token presented under the kid of an RS256 key.
        let enc = EncodingKey::from_ec_pem(EC_PRIVATE).expect("fixture");
        let token = sign(J::ES256, Some("rsa"), &enc, &claims());
        let key = VerificationKey::from_pem("rsa", Algorithm::Rs256, RSA_PUBLIC).expect("key");
        assert_eq!(
            verifier(vec![key]).verify_at(&token, now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
        // An RS384 token for an RS256 key: same family, still refused.
        let enc = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("fixture");
        let token = sign(J::RS384, Some("rsa"), &enc, &claims());
        let key = VerificationKey::from_pem("rsa", Algorithm::Rs256, RSA_PUBLIC).expect("key");
        assert_eq!(
            verifier(vec![key]).verify_at(&token, now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let token = mint_hs256("other", SECRET, &claims());
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        assert_eq!(v.verify_at(&token, now()), Err(AppTokenError::UnknownKey));
        assert_eq!(
            verifier(vec![]).verify_at(&token, now()),
            Err(AppTokenError::UnknownKey)
        );
    }

    #[test]
    fn missing_kid_uses_the_only_key_but_not_one_of_several() {
        let token = sign(J::HS256, None, &EncodingKey::from_secret(SECRET), &claims());
        let one = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        assert_eq!(one.verify_at(&token, now()), Ok(claims()));
        let two = verifier(vec![
            VerificationKey::hs256("default", SECRET),
            VerificationKey::hs256("second", b"another"),
        ]);
        assert_eq!(
            two.verify_at(&token, now()),
            Err(AppTokenError::MissingKeyId)
        );
    }

    #[test]
    fn rotation_accepts_tokens_of_every_configured_key() {
        let v = verifier(vec![
            VerificationKey::hs256("old", b"old secret"),
            VerificationKey::from_pem("new", Algorithm::EdDsa, ED_PUBLIC).expect("key"),
        ]);
        let old = mint_hs256("old", b"old secret", &claims());
        let enc = EncodingKey::from_ed_pem(ED_PRIVATE).expect("fixture");
        let new = sign(J::EdDSA, Some("new"), &enc, &claims());
        assert!(v.verify_at(&old, now()).is_ok());
        assert!(v.verify_at(&new, now()).is_ok());
    }

    #[test]
    fn expiry_is_refused_after_the_leeway() {
        let token = mint_hs256("default", SECRET, &claims());
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims().exp);
        assert!(v.verify_at(&token, exp + Duration::from_secs(30)).is_ok());
        assert_eq!(
            v.verify_at(&token, exp + Duration::from_secs(31)),
            Err(AppTokenError::Expired)
        );
        let strict = AppTokenVerifier::new(
            vec![VerificationKey::hs256("default", SECRET)],
            DEFAULT_AUDIENCE,
            None,
            Duration::ZERO,
        );
        assert_eq!(
            strict.verify_at(&token, exp + Duration::from_secs(1)),
            Err(AppTokenError::Expired)
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused_beyond_the_leeway() {
        let mut c = claims();
        c.nbf = Some(c.iat + 100);
        let token = mint_hs256("default", SECRET, &c);
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        assert_eq!(v.verify_at(&token, now()), Err(AppTokenError::NotYetValid));
        assert!(v.verify_at(&token, now() + Duration::from_secs(70)).is_ok());
    }

    #[test]
    fn wrong_audience_is_refused_and_missing_audience_is_accepted() {
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        let mut c = claims();
        c.aud = Some("another-service".into());
        assert_eq!(
            v.verify_at(&mint_hs256("default", SECRET, &c), now()),
            Err(AppTokenError::WrongAudience)
        );
        // An array audience naming us is fine; one that does not is refused.
        let mut raw = serde_json::to_value(claims()).expect("json");
        raw["aud"] = serde_json::json!(["other", "iceway"]);
        let token = sign(
            J::HS256,
            Some("default"),
            &EncodingKey::from_secret(SECRET),
            &raw,
        );
        assert_eq!(
            v.verify_at(&token, now()).map(|c| c.aud),
            Ok(Some("other".into()))
        );
        raw["aud"] = serde_json::json!(["other"]);
        let token = sign(
            J::HS256,
            Some("default"),
            &EncodingKey::from_secret(SECRET),
            &raw,
        );
        assert_eq!(
            v.verify_at(&token, now()),
            Err(AppTokenError::WrongAudience)
        );
        // DESIGN §2 lists aud as optional: a token without it is accepted.
        c.aud = None;
        assert!(
            v.verify_at(&mint_hs256("default", SECRET, &c), now())
                .is_ok()
        );
    }

    #[test]
    fn wrong_or_missing_issuer_is_refused_when_one_is_configured() {
        let v = AppTokenVerifier::new(
            vec![VerificationKey::hs256("default", SECRET)],
            DEFAULT_AUDIENCE,
            Some("https://app.example"),
            DEFAULT_LEEWAY,
        );
        let mut c = claims();
        c.iss = Some("https://evil.example".into());
        assert_eq!(
            v.verify_at(&mint_hs256("default", SECRET, &c), now()),
            Err(AppTokenError::WrongIssuer)
        );
        c.iss = None;
        assert_eq!(
            v.verify_at(&mint_hs256("default", SECRET, &c), now()),
            Err(AppTokenError::MissingClaim("iss".into()))
        );
        c.iss = Some("https://app.example".into());
        assert!(
            v.verify_at(&mint_hs256("default", SECRET, &c), now())
                .is_ok()
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        let good = mint_hs256("default", SECRET, &claims());
        let too_long = "a".repeat(MAX_TOKEN_LEN + 1);
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.", too_long.as_str()] {
            assert_eq!(
                v.verify_at(token, now()),
                Err(AppTokenError::Malformed),
                "{token:.20}"
            );
        }
        // Valid signature over claims of the wrong shape (role missing).
        let raw = serde_json::json!({"sub": "x", "exp": claims().exp});
        let token = sign(
            J::HS256,
            Some("default"),
            &EncodingKey::from_secret(SECRET),
            &raw,
        );
        assert_eq!(v.verify_at(&token, now()), Err(AppTokenError::Malformed));
        // Missing exp.
        let raw = serde_json::json!({"sub": "x", "role": "camera"});
        let token = sign(
            J::HS256,
            Some("default"),
            &EncodingKey::from_secret(SECRET),
            &raw,
        );
        assert_eq!(
            v.verify_at(&token, now()),
            Err(AppTokenError::MissingClaim("exp".into()))
        );
        // Unknown role.
        let raw = serde_json::json!({"sub": "x", "role": "admin", "exp": claims().exp});
        let token = sign(
            J::HS256,
            Some("default"),
            &EncodingKey::from_secret(SECRET),
            &raw,
        );
        assert_eq!(v.verify_at(&token, now()), Err(AppTokenError::Malformed));
        assert!(v.verify_at(&good, now()).is_ok());
    }

    #[test]
    fn header_with_hand_written_alg_is_checked_exactly() {
        let v = verifier(vec![VerificationKey::hs256("default", SECRET)]);
        let token = hs256_raw(r#"{"alg":"hs256","kid":"default"}"#, &claims(), SECRET);
        assert_eq!(
            v.verify_at(&token, now()),
            Err(AppTokenError::AlgorithmNotAllowed)
        );
        let token = hs256_raw(r#"{"alg":"HS256","kid":"default"}"#, &claims(), SECRET);
        assert!(v.verify_at(&token, now()).is_ok());
    }

    #[test]
    fn key_loading_refuses_private_keys_and_bad_specs() {
        assert!(matches!(
            VerificationKey::from_pem("k", Algorithm::Rs256, RSA_PRIVATE),
            Err(KeyError::NotPublicKey { .. })
        ));
        assert!(matches!(
            VerificationKey::from_pem("k", Algorithm::Es256, RSA_PUBLIC),
            Err(KeyError::BadPem { .. })
        ));
        assert!(matches!(
            VerificationKey::parse_spec("nokid"),
            Err(KeyError::BadSpec(_))
        ));
        assert!(matches!(
            VerificationKey::parse_spec("k=PS512:/x"),
            Err(KeyError::UnknownAlgorithm(_))
        ));
        assert!(matches!(
            VerificationKey::parse_spec("k=RS256:/does/not/exist"),
            Err(KeyError::Read { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("ec.pem");
        std::fs::write(&pem, EC_PUBLIC).expect("write");
        let key =
            VerificationKey::parse_spec(&format!("app-2=es256:{}", pem.display())).expect("spec");
        assert_eq!((key.kid(), key.algorithm()), ("app-2", Algorithm::Es256));
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").expect("write");
        assert!(matches!(
            VerificationKey::parse_spec(&format!("h=HS256:{}", short.display())),
            Err(KeyError::WeakSecret(8))
        ));
        let long = dir.path().join("long");
        std::fs::write(&long, [b"x".repeat(40), b"\n".to_vec()].concat()).expect("write");
        let key = VerificationKey::parse_spec(&format!("h=HS256:{}", long.display())).expect("ok");
        let token = mint_hs256("h", &b"x".repeat(40), &claims());
        assert!(verifier(vec![key]).verify_at(&token, now()).is_ok());
    }

    #[test]
    fn try_new_refuses_duplicates_and_empty() {
        let k = VerificationKey::hs256("a", SECRET);
        assert!(AppTokenVerifier::try_new(vec![], "iceway", None, DEFAULT_LEEWAY).is_err());
        assert!(
            AppTokenVerifier::try_new(vec![k.clone(), k], "iceway", None, DEFAULT_LEEWAY).is_err()
        );
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            AppTokenError::Malformed,
            AppTokenError::MissingKeyId,
            AppTokenError::UnknownKey,
            AppTokenError::AlgorithmNotAllowed,
            AppTokenError::BadSignature,
            AppTokenError::Expired,
            AppTokenError::NotYetValid,
            AppTokenError::WrongAudience,
            AppTokenError::WrongIssuer,
            AppTokenError::MissingClaim("exp".into()),
        ];
        let set: std::collections::HashSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(set.len(), all.len());
    }
}
