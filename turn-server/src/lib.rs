//! iceway-turn: a TURN relay (RFC 8656) and STUN Binding responder.
//!
//! `proto` is the sans-IO core, `policy` the peer filter, quotas and rate limits, `limits` the
//! caps and deadlines of TCP/TLS connections, `io` the sockets and event loops, `config` the
//! typed configuration.

pub mod auth;
pub mod config;
pub mod io;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod server;
