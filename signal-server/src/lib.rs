//! `iceway-signal`: WebSocket signaling between cameras and viewers (DESIGN §3).
//!
//! A camera publishes, viewers watch it, and the server relays their offers, answers and ICE
//! candidates. With `redis_url` set, replicas share presence and route through Redis.
//!
//! ```text
//! server.rs      listener, /v1/ws upgrade, drain
//! connection.rs  one task per socket: auth, then socket <-> session <-> router
//! resume.rs      resume secrets; taking a session over here or from another replica
//! session/       the session rules, no I/O: frames, deliveries, time in; outputs out
//! protocol.rs    the frames (serde-tagged enums) and codes
//! router/        sessions, presence, watching: in memory or over Redis
//! limits.rs      rate limit, per-user connections, liveness
//! metrics.rs     the Prometheus series of DESIGN §4
//! config.rs      the typed configuration
//! ```

pub mod config;
mod connection;
pub mod limits;
pub mod metrics;
pub mod protocol;
mod resume;
pub mod router;
mod server;
pub mod session;
mod web;

pub use config::{Cli, Config, Credentials, SignalConfig};
pub use server::{SignalError, SignalServer};
