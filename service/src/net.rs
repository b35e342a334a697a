//! Batched UDP sends with sendmmsg(2), shared by the TURN relay's per-shard outbox and the load
//! generator so both hand the kernel many datagrams per syscall through one implementation.
//!
//! Linux only, like the rest of the data plane. Nothing is allocated per batch: the headers,
//! iovecs and socket addresses of one chunk live in stack arrays of `N` entries, `N` chosen by
//! the caller (the relay sends 32 per call, the load generator 64).

use std::io;
use std::net::SocketAddr;
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
    fn nothing_to_send_is_zero_and_a_failure_is_an_error() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
        assert_eq!(send_mmsg::<4>(tx.as_raw_fd(), [], 0).expect("empty"), 0);
        let to: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let err = send_mmsg::<4>(-1, [(&b"x"[..], Some(to))], 0).expect_err("bad fd");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
