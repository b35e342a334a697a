//! The address `iceway dev --lan` serves on: the one other devices on the home network reach.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Documentation addresses (RFC 5737, RFC 3849): only the route towards them matters, and
/// `connect` on a UDP socket picks that route and a source address without sending anything.
const PROBE_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
const PROBE_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);

#[derive(Debug, thiserror::Error)]
pub enum LanAddrError {
    #[error(
        "no LAN address found: this machine has no route to the outside (IPv4: {v4}; IPv6: {v6}); \
         pass the address phones should use with --bind"
    )]
    NoRoute { v4: io::Error, v6: io::Error },
    #[error(
        "{0} is a loopback address, which phones cannot reach; pass this machine's LAN address \
         with --bind"
    )]
    Loopback(IpAddr),
    #[error("{0} is unspecified; pass this machine's LAN address with --bind")]
    Unspecified(IpAddr),
}

/// The explicit `--bind` when given, else what `detect` finds; either way one phones can reach.
pub fn choose(
    explicit: Option<IpAddr>,
    detect: impl FnOnce() -> Result<IpAddr, LanAddrError>,
) -> Result<IpAddr, LanAddrError> {
    let ip = match explicit {
        Some(ip) => ip,
        None => detect()?,
    };
    if ip.is_loopback() {
        return Err(LanAddrError::Loopback(ip));
    }
    if ip.is_unspecified() {
        return Err(LanAddrError::Unspecified(ip));
    }
    Ok(ip)
}

/// The source address of the default route, IPv4 first (home networks hand phones IPv4 for sure).
pub fn detect() -> Result<IpAddr, LanAddrError> {
    let v4 = source_towards(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0), PROBE_V4);
    let v4 = match v4 {
        Ok(ip) => return Ok(ip),
        Err(e) => e,
    };
    source_towards(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0), PROBE_V6)
        .map_err(|v6| LanAddrError::NoRoute { v4, v6 })
}

fn source_towards(bind: SocketAddr, probe: SocketAddr) -> io::Result<IpAddr> {
    let socket = UdpSocket::bind(bind)?;
    socket.connect(probe)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn explicit_address_wins_over_detection() {
        let got = choose(Some(ip("192.168.1.20")), || panic!("not detected")).expect("lan");
        assert_eq!(got, ip("192.168.1.20"));
    }

    #[test]
    fn detected_address_is_used_without_bind() {
        assert_eq!(
            choose(None, || Ok(ip("10.0.0.5"))).expect("lan"),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn loopback_and_unspecified_are_refused_with_a_hint() {
        for bad in ["127.0.0.1", "::1", "127.1.2.3"] {
            let err = choose(Some(ip(bad)), || unreachable!()).expect_err(bad);
            assert!(matches!(err, LanAddrError::Loopback(_)), "{bad}: {err}");
            assert!(err.to_string().contains("--bind"), "{err}");
        }
        let err = choose(None, || Ok(ip("127.0.0.1"))).expect_err("detected loopback");
        assert!(matches!(err, LanAddrError::Loopback(_)));
        for bad in ["0.0.0.0", "::"] {
            let err = choose(Some(ip(bad)), || unreachable!()).expect_err(bad);
            assert!(matches!(err, LanAddrError::Unspecified(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn no_route_names_both_families() {
        let err = choose(None, || {
            Err(LanAddrError::NoRoute {
                v4: io::Error::other("network unreachable"),
                v6: io::Error::other("no v6"),
            })
        })
        .expect_err("no route");
        let text = err.to_string();
        assert!(
            text.contains("network unreachable") && text.contains("--bind"),
            "{text}"
        );
    }
}
