//! The client side of one flow: a UDP socket (batched datagrams), or a TCP or TLS connection
//! carrying STUN messages and ChannelData back to back (RFC 8656 §12.5: ChannelData padded to 4
//! bytes; §3.1: the same framing inside TLS).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};

use crate::batch::{BATCH, RecvBatch, send_batch, udp_socket};
use crate::tls::TlsClient;

/// Bytes queued for a TCP or TLS connection before new packets are dropped (counted as not
/// sent).
const MAX_PENDING: usize = 4 << 20;

/// A TCP connect, and after it the TLS handshake, must each finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls(TlsClient),
}

impl TransportKind {
    /// As in report names: "udp", "tcp", "tls".
    pub fn label(&self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls(_) => "tls",
        }
    }
}

/// Why a TLS connection stopped; carried inside the `io::Error` the transport returns.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> Self {
        let kind = match e {
            TlsError::HandshakeTimeout(_) => io::ErrorKind::TimedOut,
            TlsError::Protocol(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// A connected client socket, before it is handed to a worker thread.
#[derive(Debug)]
pub enum StdTransport {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpStream),
    /// Connected over TCP; the handshake runs in the worker's poll loop.
    Tls(Box<StdTls>),
}

#[derive(Debug)]
pub struct StdTls {
    stream: std::net::TcpStream,
    tls: rustls::ClientConnection,
    client: TlsClient,
    handshake_deadline: Instant,
}

fn tcp_connect(local: SocketAddr, server: SocketAddr) -> io::Result<std::net::TcpStream> {
    let domain = socket2::Domain::for_address(server);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.bind(&local.into())?;
    s.connect_timeout(&server.into(), CONNECT_TIMEOUT)?;
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl StdTransport {
    /// Opens a socket from `bind` (port 0) to `server`. TCP and TLS connect before this returns
    /// (up to [`CONNECT_TIMEOUT`]); the TLS handshake is only queued.
    pub fn connect(
        kind: &TransportKind,
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
            TransportKind::Tcp => tcp_connect(local, server).map(StdTransport::Tcp),
            TransportKind::Tls(client) => {
                let tls = client.connection().map_err(TlsError::from)?;
                let stream = tcp_connect(local, server)?;
                Ok(StdTransport::Tls(Box::new(StdTls {
                    stream,
                    tls,
                    client: client.clone(),
                    handshake_deadline: Instant::now() + CONNECT_TIMEOUT,
                })))
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

/// A TLS client connection over a non-blocking stream. Packets queue as plaintext in `wbuf`
/// and go to rustls only when it has nothing left to write, all at once: one TLS record per
/// burst (per 16 KiB), not one per packet.
pub struct TlsConn {
    stream: mio::net::TcpStream,
    tls: rustls::ClientConnection,
    client: TlsClient,
    handshake_deadline: Instant,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

pub enum Transport {
    Udp(mio::net::UdpSocket),
    Tcp(Box<TcpConn>),
    Tls(Box<TlsConn>),
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
            StdTransport::Tls(t) => {
                let StdTls {
                    stream,
                    tls,
                    client,
                    handshake_deadline,
                } = *t;
                Transport::Tls(Box::new(TlsConn {
                    stream: mio::net::TcpStream::from_std(stream),
                    tls,
                    client,
                    handshake_deadline,
                    rbuf: Vec::with_capacity(4096),
                    wbuf: Vec::new(),
                }))
            }
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let both = Interest::READABLE | Interest::WRITABLE;
        match self {
            Transport::Udp(s) => registry.register(s, token, Interest::READABLE),
            Transport::Tcp(c) => registry.register(&mut c.stream, token, both),
            Transport::Tls(c) => registry.register(&mut c.stream, token, both),
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
            Transport::Tls(c) => (
                TransportKind::Tls(c.client.clone()),
                c.stream.local_addr()?,
                c.stream.peer_addr()?,
            ),
        };
        StdTransport::connect(&kind, local.ip(), peer, buffer).map(Transport::from_std)
    }

    pub fn deregister(&mut self, registry: &Registry) {
        let _ = match self {
            Transport::Udp(s) => registry.deregister(s),
            Transport::Tcp(c) => registry.deregister(&mut c.stream),
            Transport::Tls(c) => registry.deregister(&mut c.stream),
        };
    }

    /// False while a TLS handshake is still under way (packets sent meanwhile wait for it).
    pub fn established(&self) -> bool {
        match self {
            Transport::Tls(c) => !c.tls.is_handshaking(),
            Transport::Udp(_) | Transport::Tcp(_) => true,
        }
    }

    /// Sends packets (datagrams, or messages on the stream); returns how many were accepted.
    pub fn send(&mut self, packets: &[&[u8]]) -> io::Result<usize> {
        match self {
            Transport::Udp(s) => match packets {
                [one] => s.send(one).map(|_| 1),
                _ => send_batch(s, packets, &[]),
            },
            Transport::Tcp(c) => {
                let accepted = queue_frames(&mut c.wbuf, packets);
                c.flush()?;
                Ok(accepted)
            }
            Transport::Tls(c) => {
                let accepted = queue_frames(&mut c.wbuf, packets);
                c.flush()?;
                Ok(accepted)
            }
        }
    }

    /// Writes what a TCP or TLS connection still has queued (on a writable event); for TLS
    /// also fails a handshake past its deadline.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Udp(_) => Ok(()),
            Transport::Tcp(c) => c.flush(),
            Transport::Tls(c) => c.flush(),
        }
    }

    /// Reads everything waiting and calls `on_packet` for each datagram or complete message.
    /// A closed TCP or TLS connection is an error; an ICMP port-unreachable on UDP is reported
    /// in the result and reading goes on.
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
                let closed = c.read()?;
                delivered = deliver_frames(&mut c.rbuf, &mut on_packet)?;
                if closed {
                    return Err(closed_by_server("TCP"));
                }
            }
            Transport::Tls(c) => {
                let closed = c.read()?;
                delivered = deliver_frames(&mut c.rbuf, &mut on_packet)?;
                if closed {
                    return Err(closed_by_server("TLS"));
                }
            }
        }
        Ok(Drained { delivered, refused })
    }
}

fn closed_by_server(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("server closed the {what} connection"),
    )
}

/// Appends packets to a stream's queue, ChannelData padded to 4 bytes; returns how many fit.
fn queue_frames(wbuf: &mut Vec<u8>, packets: &[&[u8]]) -> usize {
    let mut accepted = 0;
    for p in packets {
        if wbuf.len() + p.len() + 3 > MAX_PENDING {
            break;
        }
        wbuf.extend_from_slice(p);
        // ChannelData (first two bits 01) is padded to 4 bytes on streams.
        if p.first().is_some_and(|b| b & 0xC0 == 0x40) {
            let pad = (4 - p.len() % 4) % 4;
            wbuf.extend(std::iter::repeat_n(0, pad));
        }
        accepted += 1;
    }
    accepted
}

/// Calls `on_packet` for every complete frame at the start of `rbuf` and keeps the rest.
fn deliver_frames(rbuf: &mut Vec<u8>, on_packet: &mut impl FnMut(&[u8])) -> io::Result<usize> {
    let mut at = 0;
    let mut delivered = 0;
    while let Some(len) = frame_len(&rbuf[at..])? {
        on_packet(&rbuf[at..at + len]);
        at += len;
        delivered += 1;
    }
    rbuf.drain(..at);
    Ok(delivered)
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

    /// Reads until the socket would block; true if the server closed the connection.
    fn read(&mut self) -> io::Result<bool> {
        let mut chunk = [0_u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl TlsConn {
    fn flush(&mut self) -> io::Result<()> {
        loop {
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.stream) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.tls.is_handshaking() {
                if Instant::now() >= self.handshake_deadline {
                    return Err(TlsError::HandshakeTimeout(CONNECT_TIMEOUT).into());
                }
                return Ok(());
            }
            if self.wbuf.is_empty() {
                return Ok(());
            }
            // rustls has written everything: hand it the whole queue in one write, which it
            // seals into as few records as fit (16 KiB of plaintext each).
            let n = self.tls.writer().write(&self.wbuf)?;
            self.wbuf.drain(..n);
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// Reads and decrypts until the socket would block, then writes what the handshake
    /// answers (and, once it is done, what waited for it); true if the server closed.
    fn read(&mut self) -> io::Result<bool> {
        let handshaking = self.tls.is_handshaking();
        let mut closed = false;
        loop {
            let eof = match self.tls.read_tls(&mut self.stream) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Tell the server why (the alert rustls queued), then give up.
                    let _ = self.tls.write_tls(&mut self.stream);
                    return Err(TlsError::Protocol(e).into());
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let at = self.rbuf.len();
                self.rbuf.resize(at + n, 0);
                self.tls.reader().read_exact(&mut self.rbuf[at..])?;
            }
            if eof || state.peer_has_closed() {
                closed = true;
                break;
            }
        }
        self.flush()?;
        if handshaking && !self.tls.is_handshaking() {
            tracing::debug!(
                version = ?self.tls.protocol_version(),
                suite = ?self.tls.negotiated_cipher_suite().map(|s| s.suite()),
                "TLS handshake done"
            );
        }
        Ok(closed)
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
            &TransportKind::Tcp,
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

    /// Reads TLS records from a raw client→server byte stream: how many carried application
    /// data (type 23), the client's encrypted Finished included.
    fn application_records(mut raw: &[u8]) -> usize {
        let mut n = 0;
        while raw.len() >= 5 {
            let len = u16::from_be_bytes([raw[3], raw[4]]) as usize;
            n += usize::from(raw[0] == 23);
            raw = &raw[(5 + len).min(raw.len())..];
        }
        n
    }

    /// A TLS echo server for one connection: reads until `want` plaintext bytes came, echoes
    /// them, and returns them with every raw byte the client sent (and keeps the socket open).
    fn tls_echo(
        listener: std::net::TcpListener,
        config: std::sync::Arc<rustls::ServerConfig>,
        want: usize,
    ) -> std::thread::JoinHandle<(Vec<u8>, Vec<u8>, std::net::TcpStream)> {
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut s = rustls::ServerConnection::new(config).expect("server");
            let (mut raw, mut plain) = (Vec::new(), Vec::new());
            let mut buf = [0_u8; 16 * 1024];
            while plain.len() < want {
                while s.wants_write() {
                    s.write_tls(&mut sock).expect("server write");
                }
                let n = sock.read(&mut buf).expect("server read");
                assert!(n > 0, "client closed early");
                raw.extend_from_slice(&buf[..n]);
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).expect("server read_tls");
                    s.process_new_packets().expect("server TLS");
                }
                let _ = s.reader().read_to_end(&mut plain);
            }
            s.writer().write_all(&plain).expect("echo");
            while s.wants_write() {
                s.write_tls(&mut sock).expect("server write");
            }
            (raw, plain, sock)
        })
    }

    fn tls_kind(server: &crate::tls::tests::TestServer) -> (tempfile::TempDir, TransportKind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &server.cert_pem).expect("write CA");
        let client = TlsClient::new(&crate::tls::Trust::CaFile(ca), "localhost").expect("client");
        (dir, TransportKind::Tls(client))
    }

    /// Polls `t` (drain on every event) until `done` or 10 s.
    fn poll_until(
        t: &mut Transport,
        mut done: impl FnMut(&Transport, &[Vec<u8>]) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut poll = mio::Poll::new().expect("poll");
        t.register(poll.registry(), Token(0)).expect("register");
        let mut events = mio::Events::with_capacity(4);
        let mut rb = RecvBatch::new();
        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(t, &frames) {
            assert!(Instant::now() < deadline, "not done within 10 s");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            t.flush().expect("flush");
            t.drain(&mut rb, |p| frames.push(p.to_vec()))
                .expect("drain");
        }
        t.deregister(poll.registry());
        frames
    }

    #[test]
    fn tls_round_trip_with_padding_one_record_per_burst() {
        let server = crate::tls::tests::test_server();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let frame: &[u8] = &[0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        let echo = tls_echo(listener, server.config.clone(), 11 * 12);
        let (_dir, kind) = tls_kind(&server);
        let std = StdTransport::connect(&kind, "127.0.0.1".parse().expect("ip"), addr, 0)
            .expect("connect");
        let mut t = Transport::from_std(std);
        assert!(!t.established(), "the handshake runs in the poll loop");
        poll_until(&mut t, |t, _| t.established());
        assert_eq!(t.send(&[frame; 8]).expect("send"), 8);
        assert_eq!(t.send(&[frame; 3]).expect("send"), 3);
        let (raw, plain, _server_side) = echo.join().expect("echo thread");
        assert_eq!(plain.len(), 11 * 12, "padded to a multiple of 4");
        // The Finished, then one record per send call.
        assert_eq!(application_records(&raw), 1 + 2);
        let frames = poll_until(&mut t, |_, f| f.len() == 11);
        assert!(
            frames
                .iter()
                .all(|f| &f[..9] == frame && f[9..] == [0, 0, 0])
        );
    }

    #[test]
    fn packets_sent_during_the_handshake_wait_for_it() {
        let server = crate::tls::tests::test_server();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let stun = [
            0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        let echo = tls_echo(listener, server.config.clone(), 20);
        let (_dir, kind) = tls_kind(&server);
        let std = StdTransport::connect(&kind, "127.0.0.1".parse().expect("ip"), addr, 0)
            .expect("connect");
        let mut t = Transport::from_std(std);
        assert_eq!(t.send(&[&stun]).expect("queued"), 1);
        let frames = poll_until(&mut t, |_, f| !f.is_empty());
        assert_eq!(frames, vec![stun.to_vec()]);
        drop(echo.join().expect("echo thread"));
    }

    #[test]
    fn a_tls_handshake_past_its_deadline_fails() {
        // A listener that never accepts: the kernel completes the TCP connect, nobody answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let server = crate::tls::tests::test_server();
        let (_dir, kind) = tls_kind(&server);
        let mut std = StdTransport::connect(&kind, "127.0.0.1".parse().expect("ip"), addr, 0)
            .expect("connect");
        if let StdTransport::Tls(t) = &mut std {
            t.handshake_deadline = Instant::now();
        }
        let mut t = Transport::from_std(std);
        let err = t.flush().expect_err("past the deadline");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
