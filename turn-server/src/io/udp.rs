//! One UDP shard: a thread with its own SO_REUSEPORT listener sockets, its own allocations and
//! relay sockets, and one mio poll over all of them. Nothing on the per-packet path is shared
//! with other shards: no lock, no task hop, no timer per allocation (one sweep per second).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use iceway_service::net::{Outgoing, send_mmsg_with};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{BATCH_SIZE, Transmit, UdpSocketState};

use super::socket::{self, RecvBatch, RelaySettings, SLOT};
use crate::proto::channel_data::{self, HEADER_LEN};
use crate::proto::server::data_indication_parts;
use crate::proto::{
    Family, FiveTuple, Now, Output, PeerRoute, PortRequest, Relay, RelayError, RelayId, RelayPorts,
    Server, Shared, Transport,
};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = usize::MAX / 2;
/// Batches drained from one socket before others get a turn.
const BUDGET: usize = 16;
/// A tenth of the state is swept this often: a full pass per second, and never a pause of a
/// whole pass on the data thread.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
const SWEEP_PARTS: usize = 10;

struct Listener {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

struct RelaySocket {
    socket: UdpSocket,
    state: UdpSocketState,
}

/// Relay sockets of this shard, indexed by `RelayId` (= mio token).
struct RelayTable {
    registry: mio::Registry,
    slots: Vec<Option<RelaySocket>>,
    free: Vec<usize>,
    released: Vec<usize>,
    settings: RelaySettings,
}

impl RelayPorts for RelayTable {
    fn allocate(&mut self, family: Family, port: PortRequest) -> Result<Relay, RelayError> {
        let std = socket::open_relay(&self.settings, family, port)?;
        let local = std.local_addr().map_err(|_| RelayError::Exhausted)?;
        let state = UdpSocketState::new((&std).into()).map_err(|_| RelayError::Exhausted)?;
        socket::trim_control_messages(&std, local);
        let mut socket = UdpSocket::from_std(std);
        let id = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if self
            .registry
            .register(&mut socket, Token(id), Interest::READABLE)
            .is_err()
        {
            self.free.push(id);
            return Err(RelayError::Exhausted);
        }
        self.slots[id] = Some(RelaySocket { socket, state });
        Ok(Relay { id, local })
    }

    fn release(&mut self, id: RelayId) {
        if let Some(mut r) = self.slots.get_mut(id).and_then(Option::take) {
            let _ = self.registry.deregister(&mut r.socket);
            // Reusable only after the outbox is flushed: datagrams queued for the old socket
            // must not leave from a new allocation's.
            self.released.push(id);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sock {
    Listener(usize),
    Relay(RelayId),
}

/// Datagrams to one destination from one socket, all `segment` bytes but maybe the last: one
/// GSO send.
struct Train {
    sock: Sock,
    to: SocketAddr,
    src_ip: Option<IpAddr>,
    start: usize,
    len: usize,
    segment: usize,
    count: usize,
    /// The last segment was shorter than `segment`: nothing more can follow it.
    closed: bool,
}

/// What one wake-up sends, flushed once at its end: consecutive datagrams to one destination
/// become GSO trains, and all of one socket's trains leave in one sendmmsg.
struct Outbox {
    buf: Vec<u8>,
    trains: Vec<Train>,
    /// Train indices by socket, rebuilt per flush.
    order: Vec<usize>,
}

const OUTBOX_BYTES: usize = 512 * 1024;
const OUTBOX_TRAINS: usize = 256;
/// Datagrams per sendmmsg(2) call.
const MMSG_CHUNK: usize = 32;

struct Sockets<'a> {
    listeners: &'a [Listener],
    relays: &'a RelayTable,
}

impl Sockets<'_> {
    fn get(&self, sock: Sock) -> Option<(&UdpSocket, &UdpSocketState)> {
        match sock {
            Sock::Listener(i) => self.listeners.get(i).map(|l| (&l.socket, &l.state)),
            Sock::Relay(id) => self
                .relays
                .slots
                .get(id)
                .and_then(Option::as_ref)
                .map(|r| (&r.socket, &r.state)),
        }
    }
}

impl Outbox {
    fn new() -> Self {
        Self {
            buf: Vec::with_capacity(OUTBOX_BYTES),
            trains: Vec::with_capacity(OUTBOX_TRAINS),
            order: Vec::with_capacity(OUTBOX_TRAINS),
        }
    }

    fn push(
        &mut self,
        sockets: &Sockets<'_>,
        sock: Sock,
        to: SocketAddr,
        src_ip: Option<IpAddr>,
        // What goes before the payload, the payload, and what follows it.
        parts: [&[u8]; 3],
    ) {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let joins = self.trains.last().is_some_and(|t| {
            !t.closed
                && t.sock == sock
                && t.to == to
                && t.src_ip == src_ip
                && len <= t.segment
                && t.len + len <= SLOT
                && t.count
                    < sockets
                        .get(sock)
                        .map_or(1, |(_, s)| s.max_gso_segments().min(BATCH_SIZE))
        });
        if !joins {
            if self.trains.len() == OUTBOX_TRAINS || self.buf.len() + len > OUTBOX_BYTES {
                self.flush(sockets);
            }
            self.trains.push(Train {
                sock,
                to,
                src_ip,
                start: self.buf.len(),
                len: 0,
                segment: len,
                count: 0,
                closed: false,
            });
        }
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        if let Some(t) = self.trains.last_mut() {
            t.len += len;
            t.count += 1;
            t.closed = len < t.segment;
        }
    }

    fn flush(&mut self, sockets: &Sockets<'_>) {
        // One sendmmsg per socket per wake-up, each train one message (with its source address
        // on a wildcard listener, its GSO segment size when it holds several datagrams). A
        // socket's trains keep their order (the sort is stable); trains of different sockets
        // belong to different 5-tuples and need none.
        self.order.clear();
        self.order.extend(0..self.trains.len());
        let trains = &self.trains;
        if !self.order.is_sorted_by_key(|&k| trains[k].sock) {
            self.order.sort_by_key(|&k| trains[k].sock);
        }
        let mut i = 0;
        while i < self.order.len() {
            let sock = trains[self.order[i]].sock;
            let end = i + self.order[i..]
                .iter()
                .take_while(|&&k| trains[k].sock == sock)
                .count();
            if let Some((socket, state)) = sockets.get(sock) {
                let mut at = i;
                while at < end {
                    let buf = &self.buf;
                    let msgs = self.order[at..end].iter().map(|&k| {
                        let t = &trains[k];
                        Outgoing {
                            data: &buf[t.start..t.start + t.len],
                            to: t.to,
                            src: t.src_ip,
                            segment: (t.count > 1).then_some(t.segment as u16),
                        }
                    });
                    let (sent, err) =
                        send_mmsg_with::<MMSG_CHUNK>(socket.as_raw_fd(), msgs, libc::MSG_DONTWAIT);
                    at += sent;
                    let Some(e) = err else { break };
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(libc::ENOBUFS)
                    {
                        // A full socket buffer drops the rest, as the network would.
                        break;
                    }
                    // Anything else (EIO: a device that cannot segment) goes through
                    // quinn-udp once, which learns from it to stop offering GSO.
                    let t = &trains[self.order[at]];
                    let transmit = Transmit {
                        destination: t.to,
                        ecn: None,
                        contents: &self.buf[t.start..t.start + t.len],
                        segment_size: (t.count > 1).then_some(t.segment),
                        src_ip: t.src_ip,
                    };
                    if let Err(e) = state.try_send(socket.into(), &transmit) {
                        tracing::trace!(error = %e, "send dropped");
                    }
                    at += 1;
                }
            }
            i = end;
        }
        self.buf.clear();
        self.trains.clear();
    }
}

/// What the I/O thread needs to run one shard.
pub struct ShardSpec {
    pub index: usize,
    pub listeners: Vec<std::net::UdpSocket>,
    pub relays: RelaySettings,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
}

pub struct ShardHandle {
    pub waker: Arc<Waker>,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn spawn(spec: ShardSpec) -> io::Result<ShardHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let registry = poll.registry().try_clone()?;
    let mut listeners = Vec::new();
    for (i, std) in spec.listeners.into_iter().enumerate() {
        let local = std.local_addr()?;
        let state = UdpSocketState::new((&std).into())?;
        socket::trim_control_messages(&std, local);
        let mut socket = UdpSocket::from_std(std);
        poll.registry()
            .register(&mut socket, Token(LISTENER_BASE + i), Interest::READABLE)?;
        listeners.push(Listener {
            socket,
            state,
            local,
        });
    }
    let relays = RelayTable {
        registry,
        slots: Vec::new(),
        free: Vec::new(),
        released: Vec::new(),
        settings: spec.relays,
    };
    let server = Server::new(spec.shared);
    let stop = spec.stop;
    let thread = std::thread::Builder::new()
        .name(format!("turn-udp-{}", spec.index))
        .spawn(move || {
            let mut shard = Shard {
                poll,
                listeners,
                relays,
                server,
                outbox: Outbox::new(),
                stop,
            };
            shard.run();
        })?;
    Ok(ShardHandle { waker, thread })
}

struct Shard {
    poll: Poll,
    listeners: Vec<Listener>,
    relays: RelayTable,
    server: Server,
    outbox: Outbox,
    stop: Arc<AtomicBool>,
}

impl Shard {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut bufs = RecvBatch::default();
        let mut pending: Vec<Token> = Vec::new();
        let mut ready: Vec<Token> = Vec::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let timeout = if pending.is_empty() {
                next_sweep.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed");
                    break;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            ready.clear();
            ready.append(&mut pending);
            ready.extend(
                events
                    .iter()
                    .filter(|e| e.token() != WAKER)
                    .map(|e| e.token()),
            );
            ready.dedup();
            for &token in &ready {
                let more = if token.0 >= LISTENER_BASE {
                    self.drain_listener(token.0 - LISTENER_BASE, &mut bufs)
                } else {
                    self.drain_relay(token.0, &mut bufs)
                };
                if more {
                    pending.push(token);
                }
            }
            self.outbox.flush(&Sockets {
                listeners: &self.listeners,
                relays: &self.relays,
            });
            let RelayTable { free, released, .. } = &mut self.relays;
            free.append(released);
            // Relay counters go to Prometheus once per wake-up: live, at no per-packet cost.
            self.server.flush_stats();
            let now = Instant::now();
            if now >= next_sweep {
                self.server
                    .sweep_part(Now::system(), &mut self.relays, SWEEP_PARTS);
                self.relays.settings.reservations.purge(now);
                next_sweep = now + SWEEP_EVERY;
            }
        }
        self.server.close_all(Instant::now(), &mut self.relays);
    }

    /// Returns true when the budget ran out before the socket was empty.
    fn drain_listener(&mut self, index: usize, bufs: &mut RecvBatch) -> bool {
        for _ in 0..BUDGET {
            let Some(l) = self.listeners.get(index) else {
                return false;
            };
            let local = l.local;
            let n = match bufs.recv((&l.socket).into(), &l.state) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::debug!(error = %e, "listener recv error");
                    continue;
                }
            };
            let now = Now::system();
            for (meta, datagram) in bufs.datagrams(n) {
                let server_addr = match meta.dst_ip {
                    Some(ip) if local.ip().is_unspecified() => SocketAddr::new(ip, local.port()),
                    _ => local,
                };
                let ft = FiveTuple {
                    client: meta.addr,
                    server: server_addr,
                    transport: Transport::Udp,
                };
                self.client_datagram(index, &ft, datagram, now);
            }
            if n < BATCH_SIZE {
                // A short batch emptied the queue; a later datagram raises a new edge.
                return false;
            }
        }
        true
    }

    fn client_datagram(&mut self, index: usize, ft: &FiveTuple, data: &[u8], now: Now) {
        if channel_data::is_channel_data(data) {
            // The fast path: no `stun`, no allocation; the payload leaves from the receive buffer.
            if let Ok(cd) = channel_data::parse(data) {
                if let Some((relay, peer)) =
                    self.server
                        .route_channel_data(ft, cd.number, cd.payload.len(), now.instant)
                {
                    let sockets = Sockets {
                        listeners: &self.listeners,
                        relays: &self.relays,
                    };
                    self.outbox.push(
                        &sockets,
                        Sock::Relay(relay),
                        peer,
                        None,
                        [&[], cd.payload, &[]],
                    );
                }
            }
            return;
        }
        self.server.handle_client(data, *ft, now, &mut self.relays);
        let src_ip = self.listeners[index]
            .local
            .ip()
            .is_unspecified()
            .then_some(ft.server.ip());
        while let Some(out) = self.server.poll_output() {
            let sockets = Sockets {
                listeners: &self.listeners,
                relays: &self.relays,
            };
            match out {
                Output::ToClient { to, data } => self.outbox.push(
                    &sockets,
                    Sock::Listener(index),
                    to.client,
                    src_ip,
                    [&[], &data, &[]],
                ),
                Output::ToPeer { relay, peer, data } => {
                    self.outbox
                        .push(&sockets, Sock::Relay(relay), peer, None, [&[], &data, &[]])
                }
            }
        }
    }

    fn listener_for(&self, server: SocketAddr) -> Option<(usize, Option<IpAddr>)> {
        self.listeners
            .iter()
            .position(|l| l.local == server)
            .map(|i| (i, None))
            .or_else(|| {
                self.listeners
                    .iter()
                    .position(|l| {
                        l.local.port() == server.port()
                            && l.local.ip().is_unspecified()
                            && l.local.is_ipv4() == server.is_ipv4()
                    })
                    .map(|i| (i, Some(server.ip())))
            })
    }

    fn drain_relay(&mut self, id: RelayId, bufs: &mut RecvBatch) -> bool {
        for _ in 0..BUDGET {
            let Some(Some(r)) = self.relays.slots.get(id) else {
                return false;
            };
            let n = match bufs.recv((&r.socket).into(), &r.state) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    tracing::debug!(error = %e, "relay recv error");
                    continue;
                }
            };
            let now = Instant::now();
            for (meta, payload) in bufs.datagrams(n) {
                let (to, header) =
                    match self
                        .server
                        .route_from_peer(id, meta.addr, payload.len(), now)
                    {
                        PeerRoute::Drop => continue,
                        PeerRoute::Channel { to, number } => {
                            (to, Some(channel_data::header(number, payload.len() as u16)))
                        }
                        PeerRoute::Indication { to } => (to, None),
                    };
                let Some((index, src_ip)) = self.listener_for(to.server) else {
                    continue;
                };
                let sockets = Sockets {
                    listeners: &self.listeners,
                    relays: &self.relays,
                };
                match header {
                    Some(h) => self.outbox.push(
                        &sockets,
                        Sock::Listener(index),
                        to.client,
                        src_ip,
                        [&h[..HEADER_LEN], payload, &[]],
                    ),
                    None => {
                        let (head, len, pad) =
                            data_indication_parts(meta.addr, payload.len(), rand::random());
                        self.outbox.push(
                            &sockets,
                            Sock::Listener(index),
                            to.client,
                            src_ip,
                            [&head[..len], payload, &[0; 3][..pad]],
                        );
                    }
                }
            }
            if n < BATCH_SIZE {
                // A short batch emptied the queue; a later datagram raises a new edge.
                return false;
            }
        }
        true
    }
}
