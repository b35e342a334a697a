//! The client side of one flow: a UDP socket (batched datagrams) or a TCP connection carrying
//! STUN messages and ChannelData back to back (RFC 8656 §12.5: ChannelData padded to 4 bytes).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mio::{Interest, Registry, Token};

use crate::batch::{BATCH, RecvBatch, send_batch, udp_socket};

/// Bytes queued for a TCP connection before new packets are dropped (counted as not sent).
const MAX_PENDING: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Udp,
    Tcp,
}

/// A connected client socket, before it is handed to a worker thread.
#[derive(Debug)]
pub enum StdTransport {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpStream),
}

impl StdTransport {
    /// Opens a socket from `bind` (port 0) to `server`.
    pub fn connect(
        kind: TransportKind,
        bind: IpAddr,
        server: SocketAddr,
        buffer: usize,
    ) -> io::Result<Self> {
        let local = SocketAddr::new(bind, 0);
        match kind {
            TransportKind::Udp => {
                let s = udp_socket(local, buffer)?;
                s.connect(server)?;
                Ok(StdTransport::Udp(s))
            }
            TransportKind::Tcp => {
                let domain = socket2::Domain::for_address(server);
                let s = socket2::Socket::new(
                    domain,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                s.bind(&local.into())?;
                s.connect_timeout(&server.into(), Duration::from_secs(10))?;
                s.set_tcp_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(StdTransport::Tcp(s.into()))
            }
        }
    }
}

/// What one [`Transport::drain`] call saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub delivered: usize,
    /// UDP: the server's port answered ICMP port-unreachable (nothing listens there).
    pub refused: bool,
}

pub struct TcpConn {
    stream: mio::net::TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

pub enum Transport {
    Udp(mio::net::UdpSocket),
    Tcp(Box<TcpConn>),
}

impl Transport {
    pub fn from_std(s: StdTransport) -> Self {
        match s {
            StdTransport::Udp(u) => Transport::Udp(mio::net::UdpSocket::from_std(u)),
            StdTransport::Tcp(t) => Transport::Tcp(Box::new(TcpConn {
                stream: mio::net::TcpStream::from_std(t),
                rbuf: Vec::with_capacity(4096),
                wbuf: Vec::new(),
            })),
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Transport::Udp(s) => registry.register(s, token, Interest::READABLE),
            Transport::Tcp(c) => registry.register(
                &mut c.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ),
        }
    }

    /// A new connected socket of the same kind from the same source address (port 0) to the
    /// same server: a new 5-tuple, for a churned allocation.
    pub fn reopen(&self, buffer: usize) -> io::Result<Transport> {
        let (kind, local, peer) = match self {
            Transport::Udp(s) => (TransportKind::Udp, s.local_addr()?, s.peer_addr()?),
            Transport::Tcp(c) => (
                TransportKind::Tcp,
                c.stream.local_addr()?,
                c.stream.peer_addr()?,
            ),
        };
        StdTransport::connect(kind, local.ip(), peer, buffer).map(Transport::from_std)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Transport::Udp(s) => registry.deregister(s),
            Transport::Tcp(c) => registry.deregister(&mut c.stream),
        };
    }

    /// Sends packets (datagrams, or messages on the stream); returns how many were accepted.
    pub fn send(&mut self, packets: &[&[u8]]) -> io::Result<usize> {
        match self {
            Transport::Udp(s) => match packets {
                [one] => s.send(one).map(|_| 1),
                _ => send_batch(s, packets, &[]),
            },
            Transport::Tcp(c) => {
                let mut accepted = 0;
                for p in packets {
                    if c.wbuf.len() + p.len() + 3 > MAX_PENDING {
                        break;
                    }
                    c.wbuf.extend_from_slice(p);
                    // ChannelData (first two bits 01) is padded to 4 bytes on streams.
                    if p.first().is_some_and(|b| b & 0xC0 == 0x40) {
                        let pad = (4 - p.len() % 4) % 4;
                        c.wbuf.extend(std::iter::repeat_n(0, pad));
                    }
                    accepted += 1;
                }
                c.flush()?;
                Ok(accepted)
            }
        }
    }

    /// Writes what a TCP connection still has queued (on a writable event).
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Udp(_) => Ok(()),
            Transport::Tcp(c) => c.flush(),
        }
    }

    /// Reads everything waiting and calls `on_packet` for each datagram or complete message.
    /// A closed TCP connection is an error; an ICMP port-unreachable on UDP is reported in the
    /// result and reading goes on.
    pub fn drain(
        &mut self,
        rb: &mut RecvBatch,
        mut on_packet: impl FnMut(&[u8]),
    ) -> io::Result<Drained> {
        let mut delivered = 0;
        let mut refused = false;
        match self {
            Transport::Udp(s) => loop {
                let n = match rb.recv(s) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error from an earlier send: reported once, then the queue goes on.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        refused = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for k in 0..n {
                    on_packet(rb.packet(k));
                }
                delivered += n;
                if n < BATCH {
                    break;
                }
            },
            Transport::Tcp(c) => {
                let mut chunk = [0_u8; 16 * 1024];
                let mut closed = false;
                loop {
                    match c.stream.read(&mut chunk) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => c.rbuf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                let mut at = 0;
                while let Some(len) = frame_len(&c.rbuf[at..])? {
                    on_packet(&c.rbuf[at..at + len]);
                    at += len;
                    delivered += 1;
                }
                c.rbuf.drain(..at);
                if closed {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server closed the TCP connection",
                    ));
                }
            }
        }
        Ok(Drained { delivered, refused })
    }
}

impl TcpConn {
    fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while written < self.wbuf.len() {
            match self.stream.write(&self.wbuf[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.wbuf.drain(..written);
        Ok(())
    }
}

/// The length of the complete frame at the start of `b` (STUN message or padded ChannelData),
/// None if more bytes are needed.
pub fn frame_len(b: &[u8]) -> io::Result<Option<usize>> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let total = match b[0] >> 6 {
        0b00 => 20 + len,
        0b01 => 4 + len.div_ceil(4) * 4,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither STUN nor ChannelData on the TCP stream",
            ));
        }
    };
    Ok((b.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_stun_and_padded_channel_data() {
        let mut stream = Vec::new();
        // ChannelData, 5 bytes of payload, padded to 8.
        stream.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        // A STUN header with 4 bytes of attributes.
        stream.extend_from_slice(&[0x01, 0x01, 0x00, 0x04]);
        stream.extend_from_slice(&[0; 16]);
        stream.extend_from_slice(&[9, 9, 9, 9]);
        assert_eq!(frame_len(&stream).expect("valid"), Some(12));
        assert_eq!(frame_len(&stream[12..]).expect("valid"), Some(24));
        assert_eq!(frame_len(&stream[12..30]).expect("valid"), None);
        assert!(frame_len(&[0xC0, 0, 0, 0]).is_err());
    }

    #[test]
    fn tcp_round_trip_with_padding() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0_u8; 64];
            let mut got = Vec::new();
            while got.len() < 12 {
                let n = s.read(&mut buf).expect("read");
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(&got).expect("echo");
            // Handing the stream back keeps it open until the client has read.
            (got, s)
        });
        let std = StdTransport::connect(
            TransportKind::Tcp,
            "127.0.0.1".parse().expect("ip"),
            addr,
            0,
        )
        .expect("connect");
        let mut t = Transport::from_std(std);
        let frame = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(t.send(&[&frame]).expect("send"), 1);
        let (sent, _server_side) = echo.join().expect("echo thread");
        assert_eq!(sent.len(), 12, "padded to a multiple of 4");
        let mut poll = mio::Poll::new().expect("poll");
        t.register(poll.registry(), Token(0)).expect("register");
        let mut events = mio::Events::with_capacity(4);
        let mut rb = RecvBatch::new();
        let mut frames = Vec::new();
        for _ in 0..50 {
            poll.poll(&mut events, Some(Duration::from_millis(200)))
                .expect("poll");
            t.drain(&mut rb, |p| frames.push(p.to_vec()))
                .expect("drain");
            if !frames.is_empty() {
                break;
            }
        }
        assert_eq!(frames, vec![sent]);
    }
}
