//! ICE configuration for the Rust clients: the welcome frame's ICE servers as webrtc-rs wants
//! them, which local address to gather on, and a plain explanation when TURN credentials have
//! expired (webrtc-rs only logs TURN allocation failures, so the CLI checks what it can itself).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use webrtc::peer_connection::RTCIceServer;

use crate::protocol::IceServer;

pub fn to_rtc(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// `host:port` of a `stun:`/`turn:`/`turns:` URL (`?transport=` dropped, default ports filled).
pub fn url_host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once(':')?;
    let rest = rest.split('?').next()?;
    let default_port = match scheme {
        "stun" | "turn" => 3478,
        "turns" | "stuns" => 5349,
        _ => return None,
    };
    if rest.starts_with('[') {
        // [v6]:port or [v6]
        let end = rest.find(']')?;
        let host = &rest[..=end];
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return Some(format!("{host}:{port}"));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => Some(format!("{host}:{port}")),
        _ => Some(format!("{rest}:{default_port}")),
    }
}

/// The local address the OS would use to reach `target` (no packet is sent: a UDP connect only
/// picks a route). Gathering on this one address gives usable candidates on loopback, inside a
/// network namespace and on a laptop alike.
pub fn local_ip_towards(target: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Where to gather: towards the first TURN/STUN server, else towards the signaling host.
pub fn pick_local_ip(servers: &[IceServer], signal_url: &str) -> Option<IpAddr> {
    let mut targets: Vec<String> = servers
        .iter()
        .flat_map(|s| s.urls.iter())
        .filter_map(|u| url_host_port(u))
        .collect();
    if let Some(host_port) = signal_host_port(signal_url) {
        targets.push(host_port);
    }
    targets
        .iter()
        .filter_map(|t| t.to_socket_addrs().ok()?.next())
        .find_map(local_ip_towards)
}

fn signal_host_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default_port = if scheme == "wss" { 443 } else { 80 };
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some(authority.to_owned())
    } else {
        Some(format!("{authority}:{default_port}"))
    }
}

/// When a TURN username says its credential expired (REST `<expiry>:<user>` or a JWT with
/// `exp`), the expiry in Unix seconds.
pub fn turn_username_expiry(username: &str) -> Option<u64> {
    if let Some((exp, _user)) = username.split_once(':')
        && let Ok(exp) = exp.parse::<u64>()
    {
        return Some(exp);
    }
    let payload = username.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}

/// A sentence for each TURN server whose credentials are already expired at `now`.
pub fn expired_turn_credentials(servers: &[IceServer], now: SystemTime) -> Vec<String> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    servers
        .iter()
        .filter(|s| s.urls.iter().any(|u| u.starts_with("turn")))
        .filter_map(|s| {
            let exp = turn_username_expiry(s.username.as_deref()?)?;
            (exp < now).then(|| {
                format!(
                    "TURN credentials for {} expired {} s ago",
                    s.urls.first().map(String::as_str).unwrap_or("?"),
                    now - exp
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn host_port_of_ice_urls() {
        assert_eq!(
            url_host_port("turn:127.0.0.1:3478?transport=udp").as_deref(),
            Some("127.0.0.1:3478")
        );
        assert_eq!(
            url_host_port("stun:example.com").as_deref(),
            Some("example.com:3478")
        );
        assert_eq!(
            url_host_port("turns:h:5349?transport=tcp").as_deref(),
            Some("h:5349")
        );
        assert_eq!(
            url_host_port("turn:[::1]:3478").as_deref(),
            Some("[::1]:3478")
        );
        assert_eq!(url_host_port("http://x"), None);
    }

    #[test]
    fn signal_host_port_defaults() {
        assert_eq!(
            signal_host_port("ws://127.0.0.1:8080/v1/ws").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(signal_host_port("wss://h/v1/ws").as_deref(), Some("h:443"));
    }

    #[test]
    fn loopback_route_picks_loopback() {
        let ip = local_ip_towards("127.0.0.1:3478".parse().expect("addr")).expect("route");
        assert!(ip.is_loopback());
    }

    #[test]
    fn rest_and_jwt_usernames_reveal_expiry() {
        assert_eq!(
            turn_username_expiry("1700000000:alice"),
            Some(1_700_000_000)
        );
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":1800000000,"aud":"turn"}"#);
        assert_eq!(
            turn_username_expiry(&format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig")),
            Some(1_800_000_000)
        );
        assert_eq!(turn_username_expiry("static-user"), None);
    }

    #[test]
    fn expired_credentials_are_named() {
        let servers = vec![IceServer {
            urls: vec!["turn:h:3478?transport=udp".into()],
            username: Some("1000:alice".into()),
            credential: Some("x".into()),
        }];
        let now = UNIX_EPOCH + Duration::from_secs(1060);
        let msgs = expired_turn_credentials(&servers, now);
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].contains("expired 60 s ago"), "{msgs:?}");
        assert!(
            expired_turn_credentials(&servers, UNIX_EPOCH + Duration::from_secs(999)).is_empty()
        );
    }
}
