//! A `redis-server` on a free loopback port, with the faults a backplane must survive: paused
//! (SIGSTOP: connections stay open, nothing answers), resumed, and killed then restarted empty
//! on the same port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, free_port, wait_until};

const INSTALL: &str = "apt-get install -y --no-install-recommends redis-server";
const STARTUP: Duration = Duration::from_secs(30);

pub struct RedisServer {
    port: u16,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts one without persistence and waits until it answers PING.
    pub async fn start() -> Self {
        crate::require("redis-server", INSTALL);
        let mut redis = Self {
            port: free_port(),
            proc: None,
        };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn spawn(&mut self) {
        self.proc = Some(Proc::spawn(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdout(Stdio::null()),
            "redis-server",
        ));
        let port = self.port;
        wait_until("redis-server answers PING", STARTUP, || async move {
            pong(port)
        })
        .await;
    }

    fn signal(&self, sig: &str) {
        let pid = self.proc.as_ref().expect("redis-server running").pid();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, then a new empty server on the same port.
    pub async fn restart_empty(&mut self) {
        drop(self.proc.take());
        self.spawn().await;
    }
}

/// Whether a server on `port` answers an inline PING.
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
