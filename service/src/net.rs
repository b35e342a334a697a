//! Batched UDP sends with sendmmsg(2), shared by the TURN relay's per-shard outbox and the load
//! generator so both hand the kernel many datagrams per syscall through one implementation; and
//! the TCP listener every service binds.
//!
//! Linux only, like the rest of the data plane. Nothing is allocated per batch: the headers,
//! iovecs and socket addresses of one chunk live in stack arrays of `N` entries, `N` chosen by
//! the caller (the relay sends 32 per call, the load generator 64).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// Sends each `(bytes, destination)` datagram with one sendmmsg(2) per `N`. `None` as the
/// destination sends on a connected socket. `flags` go to every call (e.g. `MSG_DONTWAIT`).
///
/// Returns how many datagrams the kernel took. A short or failed call ends the batch early and
/// the rest is dropped, as the network would drop it; the error is returned only if nothing at
/// all was sent.
pub fn send_mmsg<'a, const N: usize>(
    fd: RawFd,
    datagrams: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>)>,
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut datagrams = datagrams.into_iter().peekable();
    let mut sent = 0;
    while datagrams.peek().is_some() {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain old data; all-zero is a valid
        // value for each (an empty address, a null iovec, an empty header).
        let mut names: [libc::sockaddr_storage; N] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; N] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        for (i, (data, to)) in datagrams.by_ref().take(N).enumerate() {
            iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = data.len();
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            if let Some(to) = to {
                hdrs[i].msg_hdr.msg_namelen = to_storage(to, &mut names[i]);
                hdrs[i].msg_hdr.msg_name =
                    (&mut names[i] as *mut libc::sockaddr_storage).cast::<libc::c_void>();
            }
            count = i + 1;
        }
        // SAFETY: the first `count` headers point at `iovs` and `names`, local arrays that are
        // not moved before the call returns, and each iovec at a `&'a [u8]` the caller keeps
        // alive for the whole call with its exact length; the kernel only reads them on send.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), count as libc::c_uint, flags) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if sent > 0 { Ok(sent) } else { Err(err) };
        }
        sent += n as usize;
        if (n as usize) < count {
            break;
        }
    }
    Ok(sent)
}

/// Handshakes the kernel completes before they are accepted. std's and tokio's `bind` listen
/// with 128: every client of a drained replica coming back at once overflows that, and each
/// handshake dropped then waits a second for its SYN to be sent again. The kernel caps it at
/// `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a [`LISTEN_BACKLOG`] accept queue. Must be called inside a
/// tokio runtime.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind: a restarted server takes its port back from connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One message of [`send_mmsg_with`]: `data` to `to`, from the source address `src` (needed on a
/// socket bound to a wildcard address, or the kernel picks one by route), cut by the kernel into
/// datagrams of `segment` bytes when set (UDP GSO; the last may be shorter).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub data: &'a [u8],
    pub to: SocketAddr,
    pub src: Option<IpAddr>,
    pub segment: Option<u16>,
}

/// Room for an IPV6_PKTINFO (the larger of the two source messages) and a UDP_SEGMENT
/// control message, each CMSG_SPACE-aligned.
const CONTROL_BYTES: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_BYTES]);

/// Sends `msgs` in sendmmsg(2) calls of up to `N` messages, each with its own source address
/// and GSO segment size, so that a socket bound to `0.0.0.0` or `[::]` still hands the kernel
/// a whole wake-up's datagrams at once.
///
/// Returns how many messages the kernel took and, when it stopped before the end, the error of
/// the first message it did not take (the caller decides whether to drop the rest or retry that
/// one another way).
pub fn send_mmsg_with<'a, const N: usize>(
    fd: RawFd,
    msgs: impl IntoIterator<Item = Outgoing<'a>>,
    flags: libc::c_int,
) -> (usize, Option<io::Error>) {
    let mut msgs = msgs.into_iter().peekable();
    let mut sent = 0;
    while msgs.peek().is_some() {
        // SAFETY: as in `send_mmsg`: plain old data, all-zero is valid for each.
        let mut names: [libc::sockaddr_storage; N] = unsafe { std::mem::zeroed() };
        let mut iovs: [libc::iovec; N] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
        let mut controls = [Control([0; CONTROL_BYTES]); N];
        let mut count = 0;
        for (i, m) in msgs.by_ref().take(N).enumerate() {
            iovs[i].iov_base = m.data.as_ptr() as *mut libc::c_void;
            iovs[i].iov_len = m.data.len();
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_namelen = to_storage(m.to, &mut names[i]);
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast::<libc::c_void>();
            let len = write_control(&mut controls[i], m.src, m.segment);
            if len > 0 {
                h.msg_control = controls[i].0.as_mut_ptr().cast::<libc::c_void>();
                h.msg_controllen = len;
            }
            count = i + 1;
        }
        let mut at = 0;
        while at < count {
            // A short count loses the error of the message it stopped at (sendmmsg(2), BUGS):
            // the next call starts there, and fails with it if that message cannot go.
            // SAFETY: headers `at..count` point at `iovs`, `names` and `controls`, local
            // arrays not moved before the call returns; each iovec at a caller's slice alive
            // for the call with its exact length; each control buffer holds `msg_controllen`
            // bytes of well-formed, aligned cmsgs. The kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs[at..].as_mut_ptr(),
                    (count - at) as libc::c_uint,
                    flags,
                )
            };
            if n <= 0 {
                return (sent, Some(io::Error::last_os_error()));
            }
            sent += n as usize;
            at += n as usize;
        }
    }
    (sent, None)
}

/// Writes the IP_PKTINFO / IPV6_PKTINFO and UDP_SEGMENT control messages; returns their total
/// length (0: none).
fn write_control(out: &mut Control, src: Option<IpAddr>, segment: Option<u16>) -> usize {
    let mut at = 0;
    let mut push = |level: libc::c_int, typ: libc::c_int, data: &[u8]| {
        // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic on a length.
        let (len, space) = unsafe {
            (
                libc::CMSG_LEN(data.len() as u32) as usize,
                libc::CMSG_SPACE(data.len() as u32) as usize,
            )
        };
        let header = std::mem::size_of::<libc::cmsghdr>();
        debug_assert!(at + space <= CONTROL_BYTES);
        let mut cmsg: libc::cmsghdr = unsafe { std::mem::zeroed() };
        cmsg.cmsg_len = len as _;
        cmsg.cmsg_level = level;
        cmsg.cmsg_type = typ;
        // SAFETY: the cmsghdr is plain old data, copied as bytes into an 8-aligned buffer at an
        // offset that is a multiple of CMSG_SPACE's alignment.
        let bytes = unsafe {
            std::slice::from_raw_parts((&cmsg as *const libc::cmsghdr).cast::<u8>(), header)
        };
        out.0[at..at + header].copy_from_slice(bytes);
        out.0[at + header..at + header + data.len()].copy_from_slice(data);
        at += space;
    };
    match src {
        Some(IpAddr::V4(ip)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            push(libc::IPPROTO_IP, libc::IP_PKTINFO, as_bytes(&info));
        }
        Some(IpAddr::V6(ip)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, as_bytes(&info));
        }
        None => {}
    }
    if let Some(segment) = segment {
        push(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes());
    }
    at
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `T` is a padding-free libc struct of plain integers (in_pktinfo, in6_pktinfo),
    // read as bytes for its exact size while borrowed.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Writes `addr` into `out` (which must be zeroed) as a sockaddr_in or sockaddr_in6; returns
/// its length.
fn to_storage(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn receiver(addr: &str) -> Option<UdpSocket> {
        let s = UdpSocket::bind(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Some(s)
    }

    fn recv_all(rx: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, from) = rx.recv_from(&mut buf).expect("recv");
                (buf[..len].to_vec(), from)
            })
            .collect()
    }

    #[test]
    fn sends_every_datagram_in_chunks_to_its_destination() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        let a = receiver("127.0.0.1:0").expect("a");
        let b = receiver("127.0.0.1:0").expect("b");
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        // 70 datagrams in chunks of 8: several full calls and a short last one.
        let payloads: Vec<Vec<u8>> = (0..70_u8).map(|i| vec![i; 1 + i as usize]).collect();
        let sent = send_mmsg::<8>(
            tx.as_raw_fd(),
            payloads.iter().enumerate().map(|(i, p)| {
                let to = if i % 2 == 0 { a_addr } else { b_addr };
                (p.as_slice(), Some(to))
            }),
            0,
        )
        .expect("send");
        assert_eq!(sent, 70);
        let from = tx.local_addr().expect("tx");
        let got_a = recv_all(&a, 35);
        let got_b = recv_all(&b, 35);
        for (i, (data, src)) in got_a.into_iter().enumerate() {
            assert_eq!((data, src), (payloads[2 * i].clone(), from));
        }
        for (i, (data, src)) in got_b.into_iter().enumerate() {
            assert_eq!((data, src), (payloads[2 * i + 1].clone(), from));
        }
    }

    #[test]
    fn connected_socket_needs_no_destination() {
        let rx = receiver("127.0.0.1:0").expect("rx");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        tx.connect(rx.local_addr().expect("rx")).expect("connect");
        let packets: [&[u8]; 3] = [b"one", b"two", b"three"];
        let sent = send_mmsg::<64>(
            tx.as_raw_fd(),
            packets.iter().map(|p| (*p, None)),
            libc::MSG_DONTWAIT,
        )
        .expect("send");
        assert_eq!(sent, 3);
        let got: Vec<Vec<u8>> = recv_all(&rx, 3).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    }

    #[test]
    fn ipv6_destinations() {
        let Some(rx) = receiver("[::1]:0") else {
            return; // no IPv6 loopback here
        };
        let tx = UdpSocket::bind("[::1]:0").expect("tx");
        let to = rx.local_addr().expect("rx");
        let sent = send_mmsg::<4>(tx.as_raw_fd(), [(&b"v6"[..], Some(to))], 0).expect("send");
        assert_eq!(sent, 1);
        assert_eq!(
            recv_all(&rx, 1),
            [(b"v6".to_vec(), tx.local_addr().expect("tx"))]
        );
    }

    #[test]
    fn a_wildcard_socket_sends_from_the_source_asked_for_and_cuts_gso_trains() {
        let rx = receiver("127.0.0.1:0").expect("rx");
        let to = rx.local_addr().expect("rx");
        let tx = UdpSocket::bind("0.0.0.0:0").expect("tx");
        let port = tx.local_addr().expect("tx").port();
        let train = [7u8; 30];
        let msgs = [
            Outgoing {
                data: b"from two",
                to,
                src: Some(IpAddr::from([127, 0, 0, 2])),
                segment: None,
            },
            Outgoing {
                data: &train,
                to,
                src: Some(IpAddr::from([127, 0, 0, 3])),
                segment: Some(12),
            },
            Outgoing {
                data: b"by route",
                to,
                src: None,
                segment: None,
            },
        ];
        let (sent, err) = send_mmsg_with::<2>(tx.as_raw_fd(), msgs, 0);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(sent, 3);
        let from = |ip: [u8; 4]| SocketAddr::from((ip, port));
        let got = recv_all(&rx, 5);
        assert_eq!(got[0], (b"from two".to_vec(), from([127, 0, 0, 2])));
        // 30 bytes in segments of 12: 12 + 12 + 6.
        let lens: Vec<usize> = got[1..4].iter().map(|(d, _)| d.len()).collect();
        assert_eq!(lens, [12, 12, 6]);
        assert!(got[1..4].iter().all(|(_, f)| *f == from([127, 0, 0, 3])));
        assert_eq!(got[4], (b"by route".to_vec(), from([127, 0, 0, 1])));
    }

    #[test]
    fn the_error_of_the_first_message_not_taken_is_returned() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        let rx = receiver("127.0.0.1:0").expect("rx");
        let to = rx.local_addr().expect("rx");
        let ok = Outgoing {
            data: b"ok",
            to,
            src: None,
            segment: None,
        };
        // A source address this host does not have: EINVAL for that message only.
        let foreign = Outgoing {
            src: Some(IpAddr::from([192, 0, 2, 1])),
            ..ok
        };
        let (sent, err) = send_mmsg_with::<8>(tx.as_raw_fd(), [ok, ok, foreign, ok], 0);
        assert_eq!(sent, 2);
        assert!(err.is_some());
        assert_eq!(recv_all(&rx, 2).len(), 2);
    }

    #[test]
    fn nothing_to_send_is_zero_and_a_failure_is_an_error() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        assert_eq!(send_mmsg::<4>(tx.as_raw_fd(), [], 0).expect("empty"), 0);
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let err = send_mmsg::<4>(-1, [(&b"x"[..], Some(to))], 0).expect_err("bad fd");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
