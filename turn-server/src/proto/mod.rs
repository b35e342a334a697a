//! The sans-IO protocol core: decode/encode and the server state machine. No sockets, no clock.

pub mod channel_data;
pub mod credentials;
pub mod message;
pub mod nonce;
pub mod server;

#[cfg(test)]
mod tests;

pub use server::{
    CoreConfig, Family, FiveTuple, Now, Output, PeerRoute, PortRequest, Relay, RelayError, RelayId,
    RelayPorts, Server, Shared, Transport,
};
