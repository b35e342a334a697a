//! The sans-IO protocol core: decode/encode, the server state machine, and the STUN client that
//! discovers the relay's public address. No sockets, no clock.

pub mod channel_data;
pub mod credentials;
pub mod discover;
pub mod message;
pub mod nonce;
pub mod server;

#[cfg(test)]
mod tests;

pub use server::{
    CoreConfig, Family, FiveTuple, Now, Output, PeerRoute, PortRequest, Relay, RelayError, RelayId,
    RelayPorts, Server, Shared, Transport,
};
