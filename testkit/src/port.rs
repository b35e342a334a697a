//! Loopback ports that are free right now.
//!
//! A port found here can still be taken by a parallel test before the server binds it; tests
//! never assume a fixed port is free, and servers that can bind port 0 should rather do that
//! and report the address they got.

use std::net::{TcpListener, UdpSocket};

/// A loopback port free for both UDP and TCP right now (TURN and STUN servers listen on both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        if TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no loopback port free for both UDP and TCP after 100 tries");
}

/// An even loopback UDP port P with P+1 also free right now (RTP and RTCP, as coturn's
/// `turnutils_peer -p P` listens on both).
pub fn free_udp_port_pair() -> u16 {
    for _ in 0..200 {
        let port = free_port() & !1;
        if port < 1024 {
            continue;
        }
        let first = UdpSocket::bind(("127.0.0.1", port));
        let second = UdpSocket::bind(("127.0.0.1", port + 1));
        if first.is_ok() && second.is_ok() {
            return port;
        }
    }
    panic!("no free pair of loopback UDP ports found");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_for_udp_and_tcp() {
        let port = free_port();
        assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn udp_pair_is_even_and_both_bindable() {
        let port = free_udp_port_pair();
        assert_eq!(port % 2, 0);
        assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
        assert!(UdpSocket::bind(("127.0.0.1", port + 1)).is_ok());
    }
}
