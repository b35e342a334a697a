//! Waiting, bounded in time, until a server is ready: it accepts TCP, answers a STUN Binding,
//! prints its first line, or any condition holds. Never a bare sleep.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Proc;

/// Waits until a TCP listener accepts on `addr`; fails the test when `proc` exits first or
/// nothing listens within `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, proc: &mut Proc, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = proc.try_wait() {
            panic!("server exited before listening: {status}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        // Connection refused returns at once: yield briefly before the next attempt.
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on {addr} within {timeout:?}");
}

/// Waits until the STUN server at `addr` answers a Binding request (it is listening); fails the
/// test when `proc` exits first or no answer comes within `timeout`.
pub fn wait_for_stun(addr: SocketAddr, proc: &mut Proc, timeout: Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    // A Binding request: type 0x0001, length 0, the magic cookie, a fixed transaction id.
    let mut req = [0_u8; 20];
    req[1] = 0x01;
    req[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
    req[8..20].copy_from_slice(b"testkit-wait");
    let deadline = Instant::now() + timeout;
    let mut buf = [0_u8; 512];
    while Instant::now() < deadline {
        if let Some(status) = proc.try_wait() {
            panic!("server exited before listening: {status}");
        }
        let _ = s.send_to(&req, addr);
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if n >= 20 && buf[8..20] == req[8..20] {
                return;
            }
        }
    }
    panic!("server at {addr} did not answer STUN within {timeout:?}");
}

/// The first line `reader` gives (without its line end), or `None` when it ends first or gives
/// nothing within `timeout`. For servers that print their address once they listen.
pub fn read_first_line(reader: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(reader).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(timeout).ok()?;
    if line.is_empty() {
        return None;
    }
    Some(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Polls `ready` (every 50 ms) until it holds; fails the test naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if ready().await {
            return;
        }
        if start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not ready after {timeout:?}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn first_line_of_a_child() {
        let mut proc = Proc::spawn(
            Command::new("sh")
                .args(["-c", "echo 'listening on 127.0.0.1:1'; sleep 60"])
                .stdout(Stdio::piped()),
            "sh",
        );
        let out = proc.child_mut().stdout.take().expect("stdout");
        assert_eq!(
            read_first_line(out, Duration::from_secs(10)).as_deref(),
            Some("listening on 127.0.0.1:1")
        );
    }

    #[test]
    fn first_line_is_none_when_output_ends() {
        let mut proc = Proc::spawn(Command::new("true").stdout(Stdio::piped()), "true");
        let out = proc.child_mut().stdout.take().expect("stdout");
        assert_eq!(read_first_line(out, Duration::from_secs(10)), None);
    }

    #[test]
    fn tcp_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut proc = Proc::spawn(Command::new("sleep").arg("60"), "sleep");
        wait_for_tcp(addr, &mut proc, Duration::from_secs(10));
    }

    #[test]
    #[should_panic(expected = "server exited before listening")]
    fn exited_server_fails_the_wait() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let mut proc = Proc::spawn(&mut Command::new("true"), "true");
        wait_for_tcp(addr, &mut proc, Duration::from_secs(10));
    }
}
