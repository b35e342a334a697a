//! Batched UDP I/O (recvmmsg / sendmmsg) so the load side spends few syscalls per packet.
//!
//! Linux only; the whole tool targets Linux (it reads /proc for server accounting).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

/// Datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 64;
/// Largest datagram the tool sends or accepts.
pub const MAX_DATAGRAM: usize = 2048;

/// Receive buffers for one recvmmsg call, reused across calls.
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    addrs: Vec<libc::sockaddr_storage>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let zero: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        Self {
            bufs: vec![0; BATCH * MAX_DATAGRAM],
            lens: [0; BATCH],
            addrs: vec![zero; BATCH],
            count: 0,
        }
    }

    /// Receives up to BATCH datagrams without blocking (unless the socket blocks). Returns how
    /// many arrived; `Err(WouldBlock)` when none were waiting.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.recv_fd(socket.as_raw_fd())
    }

    fn recv_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec/mmsghdr are plain old data; zero is valid before we fill them in.
        let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            iov.iov_base = self.bufs[i * MAX_DATAGRAM..].as_mut_ptr().cast();
            iov.iov_len = MAX_DATAGRAM;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call, with
        // lengths that match those buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (len, hdr) in self.lens.iter_mut().zip(hdrs.iter()).take(n) {
            *len = hdr.msg_len as usize;
        }
        self.count = n;
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The i-th datagram of the last call.
    pub fn packet(&self, i: usize) -> &[u8] {
        let start = i * MAX_DATAGRAM;
        &self.bufs[start..start + self.lens[i].min(MAX_DATAGRAM)]
    }

    /// The source of the i-th datagram of the last call.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.addrs[i])
    }
}

/// Sends datagrams in one sendmmsg call (several if more than BATCH). `dests` is empty for a
/// connected socket, or one address per packet. Returns how many were sent; stops early at
/// the first error after at least one was sent (a full socket buffer drops the rest, as UDP may).
pub fn send_batch(
    socket: &impl AsRawFd,
    packets: &[&[u8]],
    dests: &[SocketAddr],
) -> io::Result<usize> {
    let datagrams = packets
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, dests.get(i).copied()));
    iceway_service::net::send_mmsg::<BATCH>(socket.as_raw_fd(), datagrams, 0)
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A non-blocking UDP socket with large kernel buffers, bound to `bind`.
pub fn udp_socket(bind: SocketAddr, buffer_bytes: usize) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(bind);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best-effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(buffer_bytes);
    let _ = s.set_send_buffer_size(buffer_bytes);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = udp_socket("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("a");
        let b = udp_socket("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("b");
        let b_addr = b.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..100_u8).map(|i| vec![i; 10 + i as usize]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
        let dests = vec![b_addr; refs.len()];
        assert_eq!(send_batch(&a, &refs, &dests).expect("send"), 100);
        let mut rb = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..1000 {
            match rb.recv(&b) {
                Ok(n) => {
                    for i in 0..n {
                        assert_eq!(rb.source(i), Some(a.local_addr().expect("addr")));
                        got.push(rb.packet(i).to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if got.len() == 100 {
                        break;
                    }
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, payloads);
    }
}
