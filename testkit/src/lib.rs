//! Helpers shared by the workspace's process-level tests, one module a concept:
//!
//! - [`port`]: loopback ports free right now (never a fixed port: parallel tests share the host);
//! - [`require`]: fail a test with an install hint when an external tool is missing;
//! - [`process`]: child processes killed (by their own pid) when the guard drops, with their
//!   stderr lines kept for log-reading helpers;
//! - [`ready`]: bounded waits until a server listens (TCP, STUN, a first line, any condition);
//! - [`coturn`]: coturn's `turnserver` and its `turnutils_peer` echo peer;
//! - [`redis`]: a `redis-server` that can be paused, resumed and restarted empty;
//! - [`netns`]: network namespaces made and deleted by a test, entered by a thread for a socket;
//! - [`proxy`]: a TCP proxy that cuts the network between its sides and heals it, and a
//!   front (load balancer) that switches targets and strands old connections.
//!
//! Binaries cargo builds (`env!("CARGO_BIN_EXE_…")`) exist only for their own crate's tests, so
//! every launcher here takes a program path or a prepared [`std::process::Command`].

pub mod coturn;
pub mod netns;
pub mod port;
pub mod process;
pub mod proxy;
pub mod ready;
pub mod redis;
pub mod require;

pub use port::{free_port, free_udp_port_pair};
pub use process::{Proc, Server};
pub use proxy::{CutProxy, Front};
pub use ready::{read_first_line, wait_for_stun, wait_for_tcp, wait_until};
pub use redis::RedisServer;
pub use require::{require, which};
