//! `turn.external_ip_stun`: before the relay is ready, learn the address to advertise by asking
//! STUN servers, from the relay address, what they see (the NAT's public address on a cloud node).
//! The protocol is `proto::discover`; this is its tokio driver. No answer in time fails the start:
//! a relay that advertises a private address silently breaks every call.

use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::config::TurnConfig;
use crate::proto::Family;
use crate::proto::discover::{Discovery, Failures};

const KEY: &str = "turn.external_ip_stun";

/// Why the advertised address could not be discovered.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{KEY}: cannot resolve {server}: {why}")]
    Resolve { server: String, why: String },
    #[error("{KEY}: no server has an address of the relay's family ({relay})")]
    NoServer { relay: String },
    #[error("{KEY}: cannot bind {addr} to ask from: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{KEY}: no mapped address for {relay} within {timeout}: {failures}")]
    Failed {
        relay: IpAddr,
        timeout: String,
        failures: Failures,
    },
}

/// `t` with `external_ip` set to the discovered addresses (one per relay family that has a
/// server); `t` unchanged when no STUN server is configured.
pub async fn with_external_ips(t: &TurnConfig) -> Result<TurnConfig, DiscoverError> {
    let mut out = t.clone();
    if t.external_ip_stun.is_empty() {
        return Ok(out);
    }
    let start = Instant::now();
    let deadline = start + t.external_ip_stun_timeout;
    let timeout = humantime::format_duration(t.external_ip_stun_timeout).to_string();
    let mut servers = Vec::new();
    for s in &t.external_ip_stun {
        let resolve = tokio::time::timeout_at(deadline, tokio::net::lookup_host(s.as_str()));
        match resolve.await {
            Ok(Ok(addrs)) => servers.extend(addrs),
            Ok(Err(e)) => {
                return Err(DiscoverError::Resolve {
                    server: s.clone(),
                    why: e.to_string(),
                });
            }
            Err(_) => {
                return Err(DiscoverError::Resolve {
                    server: s.clone(),
                    why: format!("no answer within {timeout}"),
                });
            }
        }
    }
    let relays: Vec<IpAddr> = [true, false]
        .into_iter()
        .filter_map(|v4| {
            t.relay_ip
                .into_iter()
                .chain(t.listen.iter().map(SocketAddr::ip))
                .find(|ip| ip.is_ipv4() == v4)
        })
        .filter(|ip| servers.iter().any(|s| s.is_ipv4() == ip.is_ipv4()))
        .collect();
    if relays.is_empty() {
        let relay = t.relay_bind_ip().to_string();
        return Err(DiscoverError::NoServer { relay });
    }
    let asks = relays.iter().map(|&relay| {
        let servers = &servers;
        let timeout = &timeout;
        async move {
            let bind = SocketAddr::new(relay, 0);
            let socket = UdpSocket::bind(bind)
                .await
                .map_err(|source| DiscoverError::Socket { addr: bind, source })?;
            let d = Discovery::new(
                Family::of(relay),
                servers,
                t.external_ip_stun_rto,
                start.into_std(),
                deadline.into_std(),
            );
            match drive(d, &socket).await {
                Ok(m) => {
                    tracing::info!(
                        relay = %relay,
                        external_ip = %m.address.ip(),
                        server = %m.server,
                        "external address discovered"
                    );
                    Ok(m.address.ip())
                }
                Err(failures) => Err(DiscoverError::Failed {
                    relay,
                    timeout: timeout.clone(),
                    failures,
                }),
            }
        }
    });
    out.external_ip = futures_util::future::try_join_all(asks).await?;
    Ok(out)
}

async fn drive(
    mut d: Discovery,
    socket: &UdpSocket,
) -> Result<crate::proto::discover::Mapped, Failures> {
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now().into_std();
        while let Some(t) = d.poll_transmit(now) {
            // A send that fails (no route yet) is one lost datagram: the retransmit retries.
            if let Err(e) = socket.send_to(&t.bytes, t.to).await {
                tracing::debug!(server = %t.to, error = %e, "STUN Binding request not sent");
            }
        }
        if let Some(outcome) = d.outcome(now) {
            return outcome;
        }
        let wake = Instant::from_std(d.poll_timeout());
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    d.handle(&buf[..n], from);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn turn(servers: Vec<String>, timeout: Duration) -> TurnConfig {
        TurnConfig {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            external_ip_stun: servers,
            external_ip_stun_timeout: timeout,
            external_ip_stun_rto: Duration::from_millis(50),
            ..TurnConfig::default()
        }
    }

    /// A loopback STUN responder (iceway's own core) that drops the first request: the answer
    /// comes from a retransmission.
    #[tokio::test]
    async fn learns_the_mapped_address_from_a_retransmission() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let responder = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let (_, _) = server.recv_from(&mut buf).await.expect("first request");
            let (n, from) = server.recv_from(&mut buf).await.expect("retransmission");
            let req = crate::proto::message::decode(&buf[..n]).expect("request");
            let mut m = stun::message::Message::new();
            m.typ = stun::message::BINDING_SUCCESS;
            m.transaction_id = req.transaction_id;
            m.write_header();
            crate::proto::message::add_xor_address(
                &mut m,
                stun::attributes::ATTR_XORMAPPED_ADDRESS,
                "192.0.2.77:1234".parse().expect("addr"),
            );
            server.send_to(&m.raw, from).await.expect("send");
        });
        let t = turn(vec![addr.to_string()], Duration::from_secs(5));
        let out = with_external_ips(&t).await.expect("discovered");
        assert_eq!(
            out.external_ip,
            ["192.0.2.77".parse::<IpAddr>().expect("ip")]
        );
        responder.await.expect("responder");
    }

    #[tokio::test]
    async fn silence_fails_within_the_deadline_naming_the_key() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let t = turn(
            vec![silent.local_addr().expect("addr").to_string()],
            Duration::from_millis(300),
        );
        let started = std::time::Instant::now();
        let err = with_external_ips(&t).await.expect_err("no answer");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let text = err.to_string();
        assert!(
            text.starts_with("turn.external_ip_stun: no mapped address"),
            "{text}"
        );
        assert!(text.contains("no answer"), "{text}");
    }

    #[tokio::test]
    async fn no_server_of_the_relay_family_is_an_error() {
        let t = turn(vec!["[::1]:3478".into()], Duration::from_secs(1));
        let err = with_external_ips(&t).await.expect_err("family");
        assert!(matches!(err, DiscoverError::NoServer { .. }), "{err}");
    }
}
