//! The benchmark ceiling: a bare batched UDP relay with no protocol beyond a 4-byte frame.
//!
//! A client binds once with a 0xFFFF frame naming its peer; the relay opens a relay socket for
//! that client (connected to the peer) and answers with its address. From then on every
//! datagram from the client loses its 4-byte header and leaves through the relay socket, and
//! every datagram from the peer gains one and goes back to the client. recvmmsg/sendmmsg on
//! every socket, one thread: what a TURN server's data path costs with all of TURN taken away.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mio::{Events, Interest, Poll, Token};

use iceway_loadtest::batch::{BATCH, MAX_DATAGRAM, RecvBatch, send_batch, udp_socket};
use iceway_loadtest::proto::{ceiling_bind_frame, parse_ceiling_bind};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};

#[derive(Parser)]
#[command(
    name = "ceiling-relay",
    about = "Bare batched UDP relay: the benchmark ceiling"
)]
struct Cli {
    /// Where clients send (port 0 picks one; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address relay sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    relay_ip: IpAddr,
    /// Write the PID here once listening.
    #[arg(long)]
    pidfile: Option<PathBuf>,
    /// At most this many clients (relay sockets).
    #[arg(long, default_value_t = 20_000)]
    max_clients: usize,
    /// recvmmsg/sendmmsg only, without UDP GRO/GSO.
    #[arg(long)]
    plain: bool,
}

const MAIN: Token = Token(usize::MAX);
const SOCKET_BUFFER: usize = 4 << 20;

struct Relay {
    socket: mio::net::UdpSocket,
    /// GRO/GSO state (None with --plain).
    state: Option<UdpSocketState>,
    client: SocketAddr,
    peer: SocketAddr,
}

/// Frames waiting to leave through the main socket towards clients.
struct Outbox {
    buf: Vec<u8>,
    lens: Vec<usize>,
    dests: Vec<SocketAddr>,
}

impl Outbox {
    fn push(&mut self, header: [u8; 4], payload: &[u8], dest: SocketAddr) {
        let i = self.lens.len();
        let slot = &mut self.buf[i * MAX_DATAGRAM..(i + 1) * MAX_DATAGRAM];
        let n = (payload.len() + 4).min(MAX_DATAGRAM);
        slot[..4].copy_from_slice(&header);
        slot[4..n].copy_from_slice(&payload[..n - 4]);
        self.lens.push(n);
        self.dests.push(dest);
    }

    fn is_full(&self) -> bool {
        self.lens.len() == BATCH
    }

    fn flush(&mut self, main: &mio::net::UdpSocket) {
        if self.lens.is_empty() {
            return;
        }
        let packets: Vec<&[u8]> = self
            .lens
            .iter()
            .enumerate()
            .map(|(i, n)| &self.buf[i * MAX_DATAGRAM..i * MAX_DATAGRAM + n])
            .collect();
        // What does not fit in the socket buffer is dropped, as any UDP relay would.
        let _ = send_batch(main, &packets, &self.dests);
        self.lens.clear();
        self.dests.clear();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut main_socket = mio::net::UdpSocket::from_std(
        udp_socket(cli.listen, SOCKET_BUFFER).with_context(|| format!("binding {}", cli.listen))?,
    );
    let local = main_socket.local_addr()?;
    if let Some(p) = &cli.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("listening on {local}");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut main_socket, MAIN, Interest::READABLE)?;
    let mut relays: Vec<Relay> = Vec::new();
    let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
    let mut events = Events::with_capacity(1024);
    let mut rb = RecvBatch::new();
    let mut out = Outbox {
        buf: vec![0; BATCH * MAX_DATAGRAM],
        lens: Vec::with_capacity(BATCH),
        dests: Vec::with_capacity(BATCH),
    };
    let main_state = if cli.plain {
        None
    } else {
        Some(UdpSocketState::new((&main_socket).into())?)
    };
    let mut gro = GroBuffers::new();
    while !STOP.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(200))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            if let (Some(ms), true) = (&main_state, ev.token() == MAIN) {
                gro_from_clients(
                    &main_socket,
                    ms,
                    &mut gro,
                    &mut relays,
                    &mut by_client,
                    &poll,
                    &cli,
                )?;
            } else if let (Some(ms), Some(r)) = (&main_state, relays.get(ev.token().0)) {
                gro_from_peer(r, &mut gro, &main_socket, ms)?;
            } else if ev.token() == MAIN {
                from_clients(
                    &main_socket,
                    &mut rb,
                    &mut relays,
                    &mut by_client,
                    &poll,
                    &cli,
                    &mut out,
                )?;
            } else if let Some(r) = relays.get(ev.token().0) {
                from_peer(r, &mut rb, &main_socket, &mut out)?;
            }
        }
        out.flush(&main_socket);
    }
    if let Some(p) = &cli.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn from_clients(
    main: &mio::net::UdpSocket,
    rb: &mut RecvBatch,
    relays: &mut Vec<Relay>,
    by_client: &mut HashMap<SocketAddr, usize>,
    poll: &Poll,
    cli: &Cli,
    out: &mut Outbox,
) -> io::Result<()> {
    loop {
        let n = match rb.recv(main) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        // Consecutive datagrams for the same relay socket leave in one sendmmsg.
        let mut run: Vec<&[u8]> = Vec::with_capacity(BATCH);
        let mut run_relay: Option<usize> = None;
        for i in 0..n {
            let Some(src) = rb.source(i) else { continue };
            let p = rb.packet(i);
            if let Some(peer) = parse_ceiling_bind(p) {
                if let Some(idx) = bind(relays, by_client, poll, cli, src, peer)? {
                    let relayed = relays[idx].socket.local_addr()?;
                    if let Some(frame) = ceiling_bind_frame(relayed) {
                        out.push(frame[..4].try_into().unwrap_or([0; 4]), &frame[4..], src);
                        if out.is_full() {
                            out.flush(main);
                        }
                    }
                }
                continue;
            }
            if p.len() < 4 {
                continue;
            }
            let Some(&idx) = by_client.get(&src) else {
                continue;
            };
            if run_relay != Some(idx) {
                if let Some(r) = run_relay {
                    let _ = send_batch(&relays[r].socket, &run, &[]);
                }
                run.clear();
                run_relay = Some(idx);
            }
            run.push(&p[4..]);
        }
        if let Some(r) = run_relay {
            let _ = send_batch(&relays[r].socket, &run, &[]);
        }
        if n < BATCH {
            return Ok(());
        }
    }
}

fn bind(
    relays: &mut Vec<Relay>,
    by_client: &mut HashMap<SocketAddr, usize>,
    poll: &Poll,
    cli: &Cli,
    client: SocketAddr,
    peer: SocketAddr,
) -> io::Result<Option<usize>> {
    if let Some(&idx) = by_client.get(&client) {
        return Ok(Some(idx));
    }
    if relays.len() >= cli.max_clients {
        return Ok(None);
    }
    let std_socket = udp_socket(SocketAddr::new(cli.relay_ip, 0), SOCKET_BUFFER)?;
    std_socket.connect(peer)?;
    let mut socket = mio::net::UdpSocket::from_std(std_socket);
    let state = if cli.plain {
        None
    } else {
        Some(UdpSocketState::new((&socket).into())?)
    };
    let idx = relays.len();
    poll.registry()
        .register(&mut socket, Token(idx), Interest::READABLE)?;
    relays.push(Relay {
        socket,
        state,
        client,
        peer,
    });
    by_client.insert(client, idx);
    Ok(Some(idx))
}

fn from_peer(
    r: &Relay,
    rb: &mut RecvBatch,
    main: &mio::net::UdpSocket,
    out: &mut Outbox,
) -> io::Result<()> {
    loop {
        let n = match rb.recv(&r.socket) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        for i in 0..n {
            let p = rb.packet(i);
            let mut header = [0x40, 0x00, 0, 0];
            header[2..4].copy_from_slice(&(p.len() as u16).to_be_bytes());
            out.push(header, p, r.client);
            if out.is_full() {
                out.flush(main);
            }
        }
        if n < BATCH {
            return Ok(());
        }
    }
}

/// Receive slots large enough for a GRO-coalesced batch, plus one GSO send buffer.
struct GroBuffers {
    slots: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    out: Vec<u8>,
}

const GRO_SLOT: usize = 64 * 1024;

impl GroBuffers {
    fn new() -> Self {
        Self {
            slots: (0..quinn_udp::BATCH_SIZE)
                .map(|_| vec![0; GRO_SLOT])
                .collect(),
            meta: vec![RecvMeta::default(); quinn_udp::BATCH_SIZE],
            out: Vec::with_capacity(GRO_SLOT + 4 * 64),
        }
    }

    fn recv(&mut self, socket: &mio::net::UdpSocket, state: &UdpSocketState) -> io::Result<usize> {
        let mut iovs: Vec<io::IoSliceMut<'_>> = self
            .slots
            .iter_mut()
            .map(|s| io::IoSliceMut::new(s))
            .collect();
        state.recv(socket.into(), &mut iovs, &mut self.meta)
    }
}

/// Consecutive datagrams to one destination, coalesced into a GSO train: all segments the same
/// size except a shorter last one, at most `max` of them.
struct Train {
    dest: Option<SocketAddr>,
    seg: usize,
    count: usize,
    closed: bool,
}

impl Train {
    fn new() -> Self {
        Self {
            dest: None,
            seg: 0,
            count: 0,
            closed: false,
        }
    }

    /// Whether a segment of `len` bytes to `dest` can join the current train.
    fn fits(&self, dest: SocketAddr, len: usize, max: usize) -> bool {
        self.dest == Some(dest) && !self.closed && len <= self.seg && self.count < max
    }

    fn flush(&mut self, socket: &mio::net::UdpSocket, state: &UdpSocketState, out: &mut Vec<u8>) {
        if let Some(destination) = self.dest.take() {
            let t = Transmit {
                destination,
                ecn: None,
                contents: out,
                segment_size: (self.count > 1).then_some(self.seg),
                src_ip: None,
            };
            // What does not fit in the socket buffer is dropped, as UDP may.
            let _ = state.try_send(socket.into(), &t);
        }
        out.clear();
        self.count = 0;
        self.closed = false;
    }

    /// Appends one segment (optionally behind a 4-byte frame header), flushing first if it
    /// cannot join.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        socket: &mio::net::UdpSocket,
        state: &UdpSocketState,
        out: &mut Vec<u8>,
        dest: SocketAddr,
        header: Option<[u8; 4]>,
        payload: &[u8],
        max: usize,
    ) {
        let len = payload.len() + header.map_or(0, |h| h.len());
        if !self.fits(dest, len, max) {
            self.flush(socket, state, out);
            self.dest = Some(dest);
            self.seg = len;
        }
        if let Some(h) = header {
            out.extend_from_slice(&h);
        }
        out.extend_from_slice(payload);
        self.count += 1;
        // A shorter segment can only end a train.
        if len < self.seg {
            self.closed = true;
        }
    }
}

fn gro_from_clients(
    main: &mio::net::UdpSocket,
    main_state: &UdpSocketState,
    gro: &mut GroBuffers,
    relays: &mut Vec<Relay>,
    by_client: &mut HashMap<SocketAddr, usize>,
    poll: &Poll,
    cli: &Cli,
) -> io::Result<()> {
    loop {
        let n = match gro.recv(main, main_state) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let mut train = Train::new();
        let mut train_relay: Option<usize> = None;
        let mut out = std::mem::take(&mut gro.out);
        for i in 0..n {
            let m = gro.meta[i];
            let data = &gro.slots[i][..m.len.min(GRO_SLOT)];
            if let Some(peer) = parse_ceiling_bind(data) {
                if let Some(idx) = bind(relays, by_client, poll, cli, m.addr, peer)? {
                    if let Some(frame) = ceiling_bind_frame(relays[idx].socket.local_addr()?) {
                        let t = Transmit {
                            destination: m.addr,
                            ecn: None,
                            contents: &frame,
                            segment_size: None,
                            src_ip: None,
                        };
                        let _ = main_state.try_send(main.into(), &t);
                    }
                }
                continue;
            }
            let Some(&idx) = by_client.get(&m.addr) else {
                continue;
            };
            // Each relay socket is its own fd: a train cannot span relays.
            if train_relay != Some(idx) {
                if let Some(r) = train_relay.and_then(|r| relays.get(r)) {
                    if let Some(rs) = &r.state {
                        train.flush(&r.socket, rs, &mut out);
                    }
                }
                train_relay = Some(idx);
            }
            let r = &relays[idx];
            let Some(rs) = &r.state else { continue };
            let max = rs.max_gso_segments().max(1);
            // Strip each segment's 4-byte frame; the payloads leave as GSO trains.
            for seg in data.chunks(m.stride.max(1)).filter(|s| s.len() >= 4) {
                train.push(&r.socket, rs, &mut out, r.peer, None, &seg[4..], max);
            }
        }
        if let Some(r) = train_relay.and_then(|r| relays.get(r)) {
            if let Some(rs) = &r.state {
                train.flush(&r.socket, rs, &mut out);
            }
        }
        gro.out = out;
        if n < quinn_udp::BATCH_SIZE {
            return Ok(());
        }
    }
}

fn gro_from_peer(
    r: &Relay,
    gro: &mut GroBuffers,
    main: &mio::net::UdpSocket,
    main_state: &UdpSocketState,
) -> io::Result<()> {
    let Some(rs) = &r.state else { return Ok(()) };
    let max = main_state.max_gso_segments().max(1);
    let mut out = std::mem::take(&mut gro.out);
    let mut train = Train::new();
    loop {
        let n = match gro.recv(&r.socket, rs) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                gro.out = out;
                return Err(e);
            }
        };
        for i in 0..n {
            let m = gro.meta[i];
            let data = &gro.slots[i][..m.len.min(GRO_SLOT)];
            for seg in data.chunks(m.stride.max(1)) {
                let mut header = [0x40, 0x00, 0, 0];
                header[2..4].copy_from_slice(&(seg.len() as u16).to_be_bytes());
                train.push(main, main_state, &mut out, r.client, Some(header), seg, max);
            }
        }
        if n < quinn_udp::BATCH_SIZE {
            break;
        }
    }
    train.flush(main, main_state, &mut out);
    gro.out = out;
    Ok(())
}
