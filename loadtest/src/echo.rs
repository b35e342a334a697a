//! The built-in UDP echo peer: every datagram goes back to where it came from (the relayed
//! address), in batches. It counts what it received: the server's to-peer relay work.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use crate::batch::{BATCH, RecvBatch, send_batch, udp_socket};

pub struct EchoPeer {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EchoPeer {
    /// Binds `bind` (port 0 for any) and starts echoing on a thread of its own.
    pub fn start(bind: SocketAddr) -> io::Result<Self> {
        let std_socket = udp_socket(bind, 8 << 20)?;
        let addr = std_socket.local_addr()?;
        let mut socket = mio::net::UdpSocket::from_std(std_socket);
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("echo-peer".into())
            .spawn(move || echo_loop(&mut socket, &r, &s))?;
        Ok(Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> io::Result<u64> {
        self.shutdown()?;
        Ok(self.received())
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("echo peer thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn echo_loop(
    socket: &mut mio::net::UdpSocket,
    received: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(socket, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let mut rb = RecvBatch::new();
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        // The timeout only bounds how long a stop request waits.
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        if events.is_empty() {
            continue;
        }
        loop {
            let n = match rb.recv(socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            received.fetch_add(n as u64, Ordering::Relaxed);
            dests.clear();
            let mut packets: Vec<&[u8]> = Vec::with_capacity(n);
            for i in 0..n {
                if let Some(src) = rb.source(i) {
                    dests.push(src);
                    packets.push(rb.packet(i));
                }
            }
            // A full send buffer drops echoes: the client counts them as lost, as it should.
            let _ = send_batch(socket, &packets, &dests);
            if n < BATCH {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_back_to_sender() {
        let peer = EchoPeer::start("127.0.0.1:0".parse().expect("addr")).expect("start");
        let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.send_to(b"hello", peer.addr()).expect("send");
        let mut buf = [0_u8; 64];
        let (n, from) = c.recv_from(&mut buf).expect("echo");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, peer.addr());
        assert_eq!(peer.stop().expect("stop"), 1);
    }
}
