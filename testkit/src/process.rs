//! Child processes owned by a test: killed by their own pid (SIGKILL) and reaped when the guard
//! drops, passing or failing. Never by name: other tests run the same programs at the same time.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

/// A child process killed and reaped when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd`; `name` is for the panic message when it cannot start.
    pub fn spawn(cmd: &mut Command, name: &str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { child }
    }

    /// Spawns `cmd` with stderr piped and returns its lines as they come. A thread drains the
    /// pipe for the whole run (the child never blocks on a full pipe) and, with `keep`, also
    /// appends every line to that file for a failed test's post-mortem. The receiver
    /// disconnects when the child closes its stderr (it exited).
    pub fn spawn_with_stderr_lines(
        cmd: &mut Command,
        name: &str,
        keep: Option<&Path>,
    ) -> (Self, mpsc::Receiver<String>) {
        let mut proc = Self::spawn(cmd.stderr(Stdio::piped()), name);
        let stderr = proc.child.stderr.take().expect("stderr piped");
        let mut keep = keep.and_then(|p| std::fs::File::create(p).ok());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        (proc, rx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited (reaped), without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit and reaps it.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for child")
    }

    /// Sends SIGTERM (a graceful stop) to this child by its pid.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child this guard owns and has not reaped (a reaped
        // child's pid is only reused after `wait`, which needs `&mut self`).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process listening on `addr`, with the temporary directory its files live in.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn new(proc: Proc, addr: SocketAddr, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            proc,
            addr,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn drop_kills_the_child() {
        let proc = Proc::spawn(Command::new("sleep").arg("60"), "sleep");
        let pid = libc::pid_t::try_from(proc.pid()).expect("pid");
        drop(proc);
        // SAFETY: signal 0 only checks whether the pid exists; the child was reaped above.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still exists after drop");
    }

    #[test]
    fn stderr_lines_arrive_then_disconnect() {
        let (mut proc, lines) = Proc::spawn_with_stderr_lines(
            Command::new("sh").args(["-c", "echo one >&2; echo two >&2"]),
            "sh",
            None,
        );
        let got: Vec<String> =
            std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(10)).ok()).collect();
        assert_eq!(got, ["one", "two"]);
        assert!(proc.wait().success());
    }
}
