//! Iceway authentication: app-JWT verification, TURN credential minting and checking, ICE-server
//! lists, and the HTTP credential API (DESIGN §2).
//!
//! The library is shared: `iceway-auth` serves [`api::router`], `iceway-signal` mounts the same
//! router and verifies app tokens on its WebSocket, and `iceway-turn` checks TURN usernames with
//! [`turn_credential::TurnCredentials::check`].

pub mod api;
pub mod app_token;
pub mod config;
pub mod ice_servers;
pub mod server;
pub mod turn_credential;

pub use app_token::{
    AppClaims, AppTokenError, AppTokenVerifier, KeyError, Role, VerificationKey, mint_hs256,
};
pub use ice_servers::{
    IceServer, IceServers, IceServersConfig, IceServersResponse, TurnRestResponse,
};
pub use turn_credential::{
    CredentialError, CredentialFormat, MIN_SECRET_LEN, MintedCredential, SecretLineError,
    TurnCredentials, TurnGrant, TurnLimits, TurnSecret, long_term_key,
};

/// Seconds since the Unix epoch; times before it count as 0 (a clock that far off fails checks
/// anyway, and no caller should panic on it).
pub(crate) fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
