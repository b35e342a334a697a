//! iceway-loadtest: TURN, STUN and signaling load with latency histograms and server CPU
//! accounting. The binary in main.rs is a thin CLI over [`datagram::run_turn`],
//! [`datagram::run_stun`] and the signaling load.

pub mod batch;
pub mod control;
pub mod credentials;
pub mod datagram;
pub mod driver;
pub mod echo;
pub mod engine;
pub mod progress;
pub mod proto;
pub mod render;
pub mod signal;
pub mod stats;
pub mod sysstat;
pub mod tls;
pub mod transport;
