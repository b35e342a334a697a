//! Network namespaces for tests that need addresses of their own (a LAN, a NAT, the internet)
//! without touching the machine's interfaces: named uniquely per test, deleted on drop, and
//! entered only by a short-lived thread, so the test process itself stays where it is.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `program args…` and fails the test with its stderr if it does not succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails the test unless it runs as root (namespaces and veth links need it).
pub fn require_root() {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "needs root (network namespaces)"
    );
}

/// A network namespace with `lo` up, deleted (with its links) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `prefix`, the test's pid and a counter (unique across parallel
    /// tests and runs; keep `prefix` short, link names derived from it have 15 bytes).
    pub fn new(prefix: &str) -> Self {
        require_root();
        crate::require("ip", "scripts/install-test-deps.sh");
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = Self {
            name: format!(
                "{prefix}{}n{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        };
        sh(&["ip", "netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// `program args…` run inside the namespace, its output collected.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} {args:?} in {}: {e}", self.name))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it, so the
    /// child's pid is the program's own).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens (a client's
    /// connect, a bound UDP socket) live there and stay usable from any thread afterwards.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace fd this thread opened; it changes only this thread,
            // which ends when `f` returns.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            f()
        })
        .join()
        .expect("thread in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
