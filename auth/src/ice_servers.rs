//! ICE-server lists in the shape of `RTCConfiguration.iceServers`, and the draft-uberti TURN REST
//! response for apps written against coturn (DESIGN §2).

use std::time::{Duration, SystemTime};

use iceway_service::Live;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::turn_credential::{CredentialError, CredentialFormat, TurnCredentials, TurnLimits};
use crate::unix_seconds;

/// What the ICE-server list is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServersConfig {
    /// `stun:`/`stuns:` URLs (no credentials) and `turn:`/`turns:` URLs (with credentials).
    pub urls: Vec<String>,
    /// Lifetime of the minted TURN credentials.
    pub ttl: Duration,
    pub format: CredentialFormat,
}

impl IceServersConfig {
    /// Refuses URLs that are not `stun:`, `stuns:`, `turn:` or `turns:` (RFC 7064/7065), naming
    /// the first bad one, and a zero TTL.
    pub fn validate(&self) -> Result<(), String> {
        for url in &self.urls {
            if scheme(url).is_none() || url.split_once(':').is_none_or(|(_, rest)| rest.is_empty())
            {
                return Err(format!(
                    "ICE server URL {url:?} must start with stun:, stuns:, turn: or turns:"
                ));
            }
        }
        if self.ttl.is_zero() {
            return Err("credential ttl must be greater than zero".to_owned());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Stun,
    Turn,
}

fn scheme(url: &str) -> Option<Scheme> {
    let (scheme, _) = url.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "stun" | "stuns" => Some(Scheme::Stun),
        "turn" | "turns" => Some(Scheme::Turn),
        _ => None,
    }
}

/// One `RTCIceServer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `{"iceServers":[...],"ttl":S,"expiresAt":RFC3339}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServersResponse {
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    pub ttl: u64,
    #[serde(rename = "expiresAt")]
    pub expires_at: String,
}

/// draft-uberti-behave-turn-rest-00 §2.2: `{"username","password","ttl","uris"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRestResponse {
    pub username: String,
    pub password: String,
    pub ttl: u64,
    pub uris: Vec<String>,
}

/// Builds ICE-server lists with fresh TURN credentials.
#[derive(Clone, Debug)]
pub struct IceServers {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    ttl: Duration,
    format: CredentialFormat,
    limits: TurnLimits,
    /// Swapped when the secret file changes (`Reloader`).
    creds: Live<TurnCredentials>,
}

impl IceServers {
    /// URLs with an unknown scheme are dropped here; call [`IceServersConfig::validate`] first
    /// to refuse them at start-up instead.
    pub fn new(cfg: IceServersConfig, creds: impl Into<Live<TurnCredentials>>) -> Self {
        let (mut stun_urls, mut turn_urls) = (Vec::new(), Vec::new());
        for url in cfg.urls {
            match scheme(&url) {
                Some(Scheme::Stun) => stun_urls.push(url),
                Some(Scheme::Turn) => turn_urls.push(url),
                None => {}
            }
        }
        Self {
            stun_urls,
            turn_urls,
            ttl: cfg.ttl,
            format: cfg.format,
            limits: TurnLimits::default(),
            creds: creds.into(),
        }
    }

    /// Limits written into JWT-format credentials (REST credentials cannot carry them).
    pub fn with_limits(mut self, limits: TurnLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn format(&self) -> CredentialFormat {
        self.format
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Does a list include TURN URLs, i.e. does answering mint a credential?
    pub fn has_turn(&self) -> bool {
        !self.turn_urls.is_empty()
    }

    /// The list for `user`: one entry for the STUN URLs, one for the TURN URLs with a credential
    /// minted for `user`. Entries without URLs are left out.
    pub fn for_user(
        &self,
        user: &str,
        now: SystemTime,
    ) -> Result<IceServersResponse, CredentialError> {
        let mut ice_servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            ice_servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        let expires_at = if self.turn_urls.is_empty() {
            now + self.ttl
        } else {
            let minted = self
                .creds
                .get()
                .mint(self.format, user, self.ttl, self.limits, now)?;
            ice_servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(minted.username),
                credential: Some(minted.password),
            });
            minted.expires_at
        };
        Ok(IceServersResponse {
            ice_servers,
            ttl: self.ttl.as_secs(),
            expires_at: rfc3339(expires_at),
        })
    }

    /// The coturn-style response for `username` (the user id; the timestamp is added here).
    pub fn turn_rest(
        &self,
        username: &str,
        now: SystemTime,
    ) -> Result<TurnRestResponse, CredentialError> {
        let minted = self
            .creds
            .get()
            .mint(self.format, username, self.ttl, self.limits, now)?;
        Ok(TurnRestResponse {
            username: minted.username,
            password: minted.password,
            ttl: self.ttl.as_secs(),
            uris: self.turn_urls.clone(),
        })
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = i64::try_from(unix_seconds(t)).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        // Only reachable for times beyond year 9999, which a TTL cannot produce.
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn_credential::password;
    use std::sync::Arc;

    fn ice(format: CredentialFormat, urls: &[&str]) -> IceServers {
        let creds = Arc::new(
            TurnCredentials::from_secret_lines("kid:main X9kzKDyZH4xqbFVHXMie5A==")
                .expect("secret"),
        );
        IceServers::new(
            IceServersConfig {
                urls: urls.iter().map(|s| s.to_string()).collect(),
                ttl: Duration::from_secs(3600),
                format,
            },
            creds,
        )
    }

    const URLS: [&str; 4] = [
        "stun:h:3478",
        "turn:h:3478?transport=udp",
        "turn:h:3478?transport=tcp",
        "turns:h:5349?transport=tcp",
    ];

    #[test]
    fn ice_servers_json_has_the_rtc_configuration_shape() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_996_400);
        let resp = ice(CredentialFormat::Rest, &URLS)
            .for_user("alice", now)
            .expect("list");
        let json = serde_json::to_value(&resp).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "iceServers": [
                    {"urls": ["stun:h:3478"]},
                    {
                        "urls": ["turn:h:3478?transport=udp", "turn:h:3478?transport=tcp", "turns:h:5349?transport=tcp"],
                        "username": "1700000000:alice",
                        // printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'X9kzKDyZH4xqbFVHXMie5A==' -binary | base64
                        "credential": "3641HOo3i0e8J+Spp7GLKNKE0z4="
                    }
                ],
                "ttl": 3600,
                "expiresAt": "2023-11-14T22:13:20Z"
            })
        );
    }

    #[test]
    fn stun_only_lists_mint_nothing() {
        let ice = ice(CredentialFormat::Jwt, &["stun:h:3478"]);
        assert!(!ice.has_turn());
        let resp = ice.for_user("u", SystemTime::UNIX_EPOCH).expect("list");
        assert_eq!(resp.ice_servers.len(), 1);
        assert_eq!(resp.ice_servers[0].username, None);
    }

    #[test]
    fn turn_rest_response_has_the_draft_uberti_shape() {
        let ice = ice(CredentialFormat::Jwt, &URLS).with_limits(TurnLimits {
            alloc: Some(2),
            kbps: None,
        });
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let resp = ice.turn_rest("bob", now).expect("resp");
        assert_eq!(resp.ttl, 3600);
        assert_eq!(resp.uris, URLS[1..].to_vec());
        assert_eq!(
            resp.password,
            password(b"X9kzKDyZH4xqbFVHXMie5A==", &resp.username)
        );
        let creds = TurnCredentials::from_secret_lines("kid:main X9kzKDyZH4xqbFVHXMie5A==")
            .expect("secret");
        let grant = creds.check(&resp.username, "r", now).expect("grant");
        assert_eq!((grant.user.as_str(), grant.limits.alloc), ("bob", Some(2)));
    }

    #[test]
    fn validate_names_bad_urls() {
        let cfg = |urls: &[&str]| IceServersConfig {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            ttl: Duration::from_secs(60),
            format: CredentialFormat::Rest,
        };
        assert!(cfg(&URLS).validate().is_ok());
        let err = cfg(&["http://h"]).validate().expect_err("refused");
        assert!(err.contains("http://h"), "{err}");
        assert!(cfg(&["turn:"]).validate().is_err());
        let mut zero = cfg(&URLS);
        zero.ttl = Duration::ZERO;
        assert!(zero.validate().is_err());
    }
}
