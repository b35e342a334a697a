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
}

const MAIN: Token = Token(usize::MAX);
const SOCKET_BUFFER: usize = 4 << 20;

struct Relay {
    socket: mio::net::UdpSocket,
    client: SocketAddr,
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
    while !STOP.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(Duration::from_millis(200))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for ev in events.iter() {
            if ev.token() == MAIN {
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
    let idx = relays.len();
    poll.registry()
        .register(&mut socket, Token(idx), Interest::READABLE)?;
    relays.push(Relay { socket, client });
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
