//! Socket creation: SO_REUSEPORT listeners, relay ports in the configured range, enlarged
//! buffers with a warning when the kernel caps them.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::RelayRange;
use crate::proto::{Family, PortRequest, RelayError};

/// How long a port reserved by EVEN-PORT(R) is held (RFC 8656 §7.2: about 30 s).
const RESERVATION_HOLD: Duration = Duration::from_secs(30);

/// Relay ports held under RESERVATION-TOKENs. Shared by all shards and stream tasks because the
/// Allocate that claims a port comes from another 5-tuple, which may land anywhere. Bounded:
/// past `max` held ports, EVEN-PORT(R) is refused (508) rather than parking more of the range.
#[derive(Debug)]
pub struct Reservations {
    max: usize,
    held: Mutex<HashMap<[u8; 8], (std::net::UdpSocket, Instant)>>,
}

impl Default for Reservations {
    fn default() -> Self {
        Self::new(crate::config::DEFAULT_MAX_RESERVATIONS)
    }
}

impl Reservations {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn hold(&self, token: [u8; 8], socket: std::net::UdpSocket) -> bool {
        let mut held = self.held.lock();
        let now = Instant::now();
        held.retain(|_, (_, at)| now.duration_since(*at) < RESERVATION_HOLD);
        if held.len() >= self.max {
            return false;
        }
        held.insert(token, (socket, now));
        true
    }

    fn take(&self, token: &[u8; 8]) -> Option<std::net::UdpSocket> {
        let (socket, at) = self.held.lock().remove(token)?;
        (at.elapsed() < RESERVATION_HOLD).then_some(socket)
    }

    /// Closes reservations nobody claimed in time; called from the sweeps.
    pub fn purge(&self, now: Instant) {
        let mut held = self.held.lock();
        if !held.is_empty() {
            held.retain(|_, (_, at)| now.saturating_duration_since(*at) < RESERVATION_HOLD);
        }
    }

    pub fn len(&self) -> usize {
        self.held.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.lock().is_empty()
    }
}

/// What one receive slot holds: a GRO-coalesced train or one datagram of the largest size.
pub const SLOT: usize = 65_536;

/// One `recvmmsg` batch (quinn-udp, GRO trains included), reused for every receive of a UDP
/// shard or of a runtime thread's stream connections.
pub struct RecvBatch {
    slots: Vec<u8>,
    meta: [RecvMeta; BATCH_SIZE],
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            slots: vec![0; SLOT * BATCH_SIZE],
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }
}

impl RecvBatch {
    /// Fills up to `BATCH_SIZE` slots; fewer means the socket's queue is empty now.
    pub fn recv(&mut self, socket: UdpSockRef<'_>, state: &UdpSocketState) -> io::Result<usize> {
        let mut rest: &mut [u8] = &mut self.slots;
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let (slot, tail) = std::mem::take(&mut rest).split_at_mut(SLOT);
            rest = tail;
            IoSliceMut::new(slot)
        });
        state.recv(socket, &mut iovs, &mut self.meta)
    }

    /// Every datagram of the first `n` slots (trains cut at their stride), with its slot's
    /// metadata.
    pub fn datagrams(&self, n: usize) -> impl Iterator<Item = (&RecvMeta, &[u8])> {
        self.slots
            .chunks(SLOT)
            .zip(&self.meta)
            .take(n)
            .flat_map(|(slot, meta)| {
                slot[..meta.len]
                    .chunks(meta.stride.max(1))
                    .map(move |d| (meta, d))
            })
    }
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
    pub range: RelayRange,
    pub buffer: usize,
    pub reservations: Arc<Reservations>,
}

/// Opens the relay socket an Allocate asked for.
pub fn open_relay(
    settings: &RelaySettings,
    family: Family,
    port: PortRequest,
) -> Result<std::net::UdpSocket, RelayError> {
    let ip = match family {
        Family::V4 => settings.v4,
        Family::V6 => settings.v6,
    }
    .ok_or(RelayError::FamilyUnsupported)?;
    let exhausted = |e: io::Error| {
        tracing::warn!(error = %e, "cannot bind a relay socket");
        RelayError::Exhausted
    };
    match port {
        PortRequest::Any => {
            bind_relay(ip, settings.range, false, settings.buffer).map_err(exhausted)
        }
        PortRequest::Even => {
            bind_relay(ip, settings.range, true, settings.buffer).map_err(exhausted)
        }
        PortRequest::Reserved(token) => settings
            .reservations
            .take(&token)
            .ok_or(RelayError::Exhausted),
        PortRequest::EvenReserveNext(token) => {
            if settings.reservations.len() >= settings.reservations.max {
                return Err(RelayError::Exhausted);
            }
            for _ in 0..16 {
                let even =
                    bind_relay(ip, settings.range, true, settings.buffer).map_err(exhausted)?;
                let port = even.local_addr().map_err(exhausted)?.port();
                if port >= settings.range.hi {
                    continue;
                }
                let next = SocketAddr::new(ip, port + 1);
                let Ok(socket) = udp_socket(next) else {
                    continue;
                };
                enlarge_buffers(&socket, settings.buffer, "relay", false);
                if socket.bind(&next.into()).is_ok() {
                    if !settings.reservations.hold(token, socket.into()) {
                        return Err(RelayError::Exhausted);
                    }
                    return Ok(even);
                }
            }
            Err(RelayError::Exhausted)
        }
    }
}

/// Every address on this host's interfaces (getifaddrs(3)): with a wildcard listener, these are
/// the server's own addresses, which peers must not be (a relay to them reaches our own ports).
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we own until freeifaddrs; each node and its
    // ifa_addr are read only while the list is alive, and ifa_addr is checked for null and
    // its family before the cast to the matching sockaddr type.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut node = head;
        while !node.is_null() {
            let addr = (*node).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            node = (*node).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

fn udp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Asks for `bytes` of receive and send buffer and reports what the kernel granted (Linux
/// reports twice the usable size, and silently caps at net.core.rmem_max / wmem_max).
pub fn enlarge_buffers(socket: &Socket, bytes: usize, what: &str, warn: bool) {
    if bytes == 0 {
        return;
    }
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
    if !warn {
        return;
    }
    let got_rcv = socket.recv_buffer_size().unwrap_or(0);
    let got_snd = socket.send_buffer_size().unwrap_or(0);
    if got_rcv < bytes || got_snd < bytes {
        tracing::warn!(
            socket = what,
            requested = bytes,
            recv_buffer = got_rcv,
            send_buffer = got_snd,
            "kernel capped UDP socket buffers; raise net.core.rmem_max / wmem_max to avoid drops under load"
        );
    }
}

/// A client listener; several shards bind the same address with SO_REUSEPORT and the kernel
/// spreads clients across them by 4-tuple hash.
pub fn reuseport_udp(
    addr: SocketAddr,
    buffer: usize,
    warn: bool,
) -> io::Result<std::net::UdpSocket> {
    let socket = udp_socket(addr)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    enlarge_buffers(&socket, buffer, "listener", warn);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a relay socket on a port of `range` (even when asked): from a random port, every port
/// of the range in turn until one binds. Random probes alone miss the last free ports of a nearly
/// full range most of the time (40 probes find the one free port of 40 only two times in three),
/// and then answer 508 while ports are free. One socket serves every try: a failed bind leaves it
/// unbound.
pub fn bind_relay(
    ip: IpAddr,
    range: RelayRange,
    even: bool,
    buffer: usize,
) -> io::Result<std::net::UdpSocket> {
    let span = u32::from(range.hi - range.lo) + 1;
    let socket = udp_socket(SocketAddr::new(ip, 0))?;
    enlarge_buffers(&socket, buffer, "relay", false);
    let start = rand::random_range(0..span);
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "relay range exhausted");
    for i in 0..span {
        let port = range.lo + ((start + i) % span) as u16;
        if even && port % 2 == 1 {
            continue;
        }
        match socket.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => return Ok(socket.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Turns off the per-datagram control messages quinn-udp asks for and the relay does not use:
/// the TOS/traffic class always, the destination address unless the socket is bound to a
/// wildcard address. Less work per datagram in the kernel.
pub fn trim_control_messages(socket: &impl std::os::fd::AsRawFd, local: SocketAddr) {
    let fd = socket.as_raw_fd();
    let off: libc::c_int = 0;
    let set = |level: libc::c_int, name: libc::c_int| {
        // SAFETY: setsockopt with a c_int option value that lives for the call.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&off as *const libc::c_int).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    if local.is_ipv4() {
        set(libc::IPPROTO_IP, libc::IP_RECVTOS);
        if !local.ip().is_unspecified() {
            set(libc::IPPROTO_IP, libc::IP_PKTINFO);
        }
    } else {
        set(libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS);
        if !local.ip().is_unspecified() {
            set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_addresses_include_loopback() {
        let all = interface_addresses();
        assert!(all.contains(&IpAddr::from([127, 0, 0, 1])), "{all:?}");
    }

    #[test]
    fn the_last_free_port_of_a_range_is_always_found() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        // Eight ports outside the ephemeral range, all free now; hold seven of them.
        let first = 20_000 + (std::process::id() % 1000) as u16 * 8;
        let (lo, _held) = (0..100u16)
            .map(|k| first + k * 8)
            .find_map(|lo| {
                let held: Vec<_> = (0..7)
                    .filter_map(|i| std::net::UdpSocket::bind((ip, lo + i)).ok())
                    .collect();
                let last_free = std::net::UdpSocket::bind((ip, lo + 7)).is_ok();
                (held.len() == 7 && last_free).then_some((lo, held))
            })
            .expect("a free run of eight ports");
        let range = RelayRange { lo, hi: lo + 7 };
        for _ in 0..50 {
            let s = bind_relay(ip, range, false, 0).expect("the free port");
            assert_eq!(s.local_addr().expect("addr").port(), lo + 7);
        }
        // Even ports only: the free one is odd, so the range is full for an EVEN-PORT request.
        assert!(bind_relay(ip, range, true, 0).is_err());
    }

    #[test]
    fn reservations_are_capped_and_purged() {
        let r = Reservations::new(1);
        let sock = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(r.hold([1; 8], sock()));
        assert!(!r.hold([2; 8], sock()), "over the cap");
        r.purge(Instant::now() + RESERVATION_HOLD);
        assert_eq!(r.len(), 0);
        assert!(r.hold([2; 8], sock()));
        assert!(r.take(&[2; 8]).is_some());
    }
}
