//! The relay as a STUN client, sans-IO: Binding requests to the servers of
//! `turn.external_ip_stun` until one answers with the relay's mapped (public) address.
//!
//! The caller hands in datagrams and `now`, sends what [`Discovery::poll_transmit`] gives, sleeps
//! until [`Discovery::poll_timeout`], and reads [`Discovery::outcome`]. Retransmits follow RFC 8489
//! §6.2.1 (the RTO doubles) until the overall deadline; every server is asked at once and the first
//! valid answer wins.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun::agent::TransactionId;
use stun::attributes::{ATTR_ERROR_CODE, ATTR_XORMAPPED_ADDRESS};
use stun::message::{
    BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE, METHOD_BINDING, Message,
};

use super::Family;
use super::message as msg;

/// Why one server gave no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    /// Nothing (valid) came back before the deadline.
    NoAnswer,
    /// A Binding error response with this code.
    ErrorResponse(u16),
    /// A success without a decodable XOR-MAPPED-ADDRESS.
    NoMappedAddress,
    /// A mapped address of the other family, or one no peer can send to (unspecified,
    /// multicast).
    UnusableAddress(IpAddr),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAnswer => f.write_str("no answer"),
            Self::ErrorResponse(code) => write!(f, "error response {code}"),
            Self::NoMappedAddress => f.write_str("success without XOR-MAPPED-ADDRESS"),
            Self::UnusableAddress(ip) => write!(f, "unusable mapped address {ip}"),
        }
    }
}

/// Every server failed (or the deadline passed): each with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failures(pub Vec<(SocketAddr, ProbeFailure)>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (server, why)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{server}: {why}")?;
        }
        Ok(())
    }
}

/// The answer: the mapped address and the server that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub address: SocketAddr,
    pub server: SocketAddr,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct Probe {
    server: SocketAddr,
    txid: [u8; 12],
    request: Vec<u8>,
    next_send: Instant,
    rto: Duration,
    failed: Option<ProbeFailure>,
}

/// Asks `servers` (all of one family) for the mapped address of the socket it is driven on.
#[derive(Debug)]
pub struct Discovery {
    family: Family,
    probes: Vec<Probe>,
    deadline: Instant,
    mapped: Option<Mapped>,
}

impl Discovery {
    /// Starts at `now`; `rto` is the first retransmission timeout (doubled after each send),
    /// `deadline` ends it all.
    pub fn new(
        family: Family,
        servers: &[SocketAddr],
        rto: Duration,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        let probes = servers
            .iter()
            .filter(|s| Family::of(s.ip()) == family)
            .map(|&server| {
                let mut m = Message::new();
                m.typ = BINDING_REQUEST;
                m.transaction_id = TransactionId::new();
                m.write_header();
                Probe {
                    server,
                    txid: m.transaction_id.0,
                    request: m.raw,
                    next_send: now,
                    rto,
                    failed: None,
                }
            })
            .collect();
        Self {
            family,
            probes,
            deadline,
            mapped: None,
        }
    }

    /// The next request (first send or retransmission) due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.mapped.is_some() || now >= self.deadline {
            return None;
        }
        let p = self
            .probes
            .iter_mut()
            .find(|p| p.failed.is_none() && p.next_send <= now)?;
        p.next_send = now + p.rto;
        p.rto = p.rto.saturating_mul(2);
        Some(Transmit {
            to: p.server,
            bytes: p.request.clone(),
        })
    }

    /// When to call `poll_transmit` (or `outcome`) again.
    pub fn poll_timeout(&self) -> Instant {
        self.probes
            .iter()
            .filter(|p| p.failed.is_none())
            .map(|p| p.next_send)
            .fold(self.deadline, Instant::min)
    }

    /// A datagram received from `from`. Anything that is not the answer to one of our
    /// requests from the server it was sent to is ignored (a stray or spoofed datagram must not
    /// end a server's chances).
    pub fn handle(&mut self, datagram: &[u8], from: SocketAddr) {
        if self.mapped.is_some() {
            return;
        }
        let Ok(m) = msg::decode(datagram) else {
            return;
        };
        let Some(p) = self
            .probes
            .iter_mut()
            .find(|p| p.failed.is_none() && p.server == from && p.txid == m.transaction_id.0)
        else {
            return;
        };
        if m.typ == BINDING_SUCCESS {
            let address = msg::first(&m, ATTR_XORMAPPED_ADDRESS)
                .and_then(|v| msg::decode_xor_address(v, &p.txid));
            match address {
                None => p.failed = Some(ProbeFailure::NoMappedAddress),
                Some(a)
                    if Family::of(a.ip()) != self.family
                        || a.ip().is_unspecified()
                        || a.ip().is_multicast() =>
                {
                    p.failed = Some(ProbeFailure::UnusableAddress(a.ip()));
                }
                Some(address) => {
                    self.mapped = Some(Mapped {
                        address,
                        server: from,
                    });
                }
            }
        } else if m.typ.method == METHOD_BINDING && m.typ.class == CLASS_ERROR_RESPONSE {
            let code = msg::first(&m, ATTR_ERROR_CODE)
                .and_then(|v| Some(u16::from(*v.get(2)? & 0x07) * 100 + u16::from(*v.get(3)?)))
                .unwrap_or(0);
            p.failed = Some(ProbeFailure::ErrorResponse(code));
        }
        // Requests and indications with our transaction id are not answers: ignored.
    }

    /// `None` while still waiting; then the mapped address, or why every server failed (all of
    /// them answered unusably, or the deadline passed).
    pub fn outcome(&self, now: Instant) -> Option<Result<Mapped, Failures>> {
        if let Some(m) = self.mapped {
            return Some(Ok(m));
        }
        let all_failed = self.probes.iter().all(|p| p.failed.is_some());
        if !all_failed && now < self.deadline {
            return None;
        }
        Some(Err(Failures(
            self.probes
                .iter()
                .map(|p| (p.server, p.failed.unwrap_or(ProbeFailure::NoAnswer)))
                .collect(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::message::{BINDING_ERROR, CLASS_REQUEST, MessageType};

    const RTO: Duration = Duration::from_millis(500);
    const A: &str = "203.0.113.1:3478";
    const B: &str = "198.51.100.1:19302";
    const MAPPED: &str = "192.0.2.50:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn start(servers: &[&str], deadline: Duration) -> (Discovery, Instant) {
        let now = Instant::now();
        let servers: Vec<_> = servers.iter().map(|s| addr(s)).collect();
        (
            Discovery::new(Family::V4, &servers, RTO, now, now + deadline),
            now,
        )
    }

    fn txid(t: &Transmit) -> [u8; 12] {
        let m = msg::decode(&t.bytes).expect("a request that decodes");
        assert_eq!(m.typ, BINDING_REQUEST);
        m.transaction_id.0
    }

    fn answer(typ: MessageType, txid: [u8; 12], mapped: Option<SocketAddr>) -> Vec<u8> {
        let mut m = Message::new();
        m.typ = typ;
        m.transaction_id.0 = txid;
        m.write_header();
        if let Some(a) = mapped {
            msg::add_xor_address(&mut m, ATTR_XORMAPPED_ADDRESS, a);
        }
        m.raw
    }

    fn send_all(d: &mut Discovery, now: Instant) -> Vec<Transmit> {
        std::iter::from_fn(|| d.poll_transmit(now)).collect()
    }

    #[test]
    fn first_valid_answer_is_the_mapped_address() {
        let (mut d, now) = start(&[A, B], Duration::from_secs(5));
        let sent = send_all(&mut d, now);
        assert_eq!(
            sent.iter().map(|t| t.to).collect::<Vec<_>>(),
            [addr(A), addr(B)]
        );
        assert_ne!(txid(&sent[0]), txid(&sent[1]), "one transaction per server");
        assert_eq!(d.outcome(now), None);
        d.handle(
            &answer(BINDING_SUCCESS, txid(&sent[1]), Some(addr(MAPPED))),
            addr(B),
        );
        assert_eq!(
            d.outcome(now),
            Some(Ok(Mapped {
                address: addr(MAPPED),
                server: addr(B)
            }))
        );
        assert_eq!(d.poll_transmit(now + RTO), None, "done: nothing more sent");
    }

    #[test]
    fn answers_that_are_not_ours_are_ignored() {
        let (mut d, now) = start(&[A], Duration::from_secs(5));
        let sent = send_all(&mut d, now);
        let id = txid(&sent[0]);
        let mut other = id;
        other[0] ^= 1;
        let ok = answer(BINDING_SUCCESS, id, Some(addr(MAPPED)));
        // Another transaction, another source, a request echoed back, and bytes that are not
        // STUN: still waiting.
        d.handle(&answer(BINDING_SUCCESS, other, Some(addr(MAPPED))), addr(A));
        d.handle(&ok, addr(B));
        d.handle(
            &answer(MessageType::new(METHOD_BINDING, CLASS_REQUEST), id, None),
            addr(A),
        );
        d.handle(b"not stun at all, just some bytes", addr(A));
        d.handle(&ok[..ok.len() - 4], addr(A));
        assert_eq!(d.outcome(now), None);
        d.handle(&ok, addr(A));
        assert_eq!(
            d.outcome(now).map(|r| r.map(|m| m.address)),
            Some(Ok(addr(MAPPED)))
        );
    }

    #[test]
    fn retransmits_with_a_doubling_rto_until_the_deadline() {
        let (mut d, now) = start(&[A], Duration::from_secs(5));
        let mut at = now;
        let mut sends = Vec::new();
        while d.outcome(at).is_none() {
            if let Some(t) = d.poll_transmit(at) {
                assert_eq!(
                    t.bytes, d.probes[0].request,
                    "a retransmission is the same request"
                );
                sends.push(at - now);
            }
            let next = d.poll_timeout();
            assert!(next > at, "poll_timeout moves forward");
            at = next;
        }
        let ms: Vec<u128> = sends.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 500, 1500, 3500]);
        assert_eq!(at - now, Duration::from_secs(5));
        assert_eq!(
            d.outcome(at),
            Some(Err(Failures(vec![(addr(A), ProbeFailure::NoAnswer)])))
        );
    }

    #[test]
    fn unusable_answers_fail_their_server_and_all_failed_ends_early() {
        let (mut d, now) = start(&[A, B], Duration::from_secs(5));
        let sent = send_all(&mut d, now);
        let mut err = Message::new();
        err.typ = BINDING_ERROR;
        err.transaction_id.0 = txid(&sent[0]);
        err.write_header();
        err.add(ATTR_ERROR_CODE, &msg::error_value(400, "Bad Request"));
        d.handle(&err.raw, addr(A));
        assert_eq!(d.outcome(now), None, "B may still answer");
        assert_eq!(
            d.poll_transmit(now + RTO).map(|t| t.to),
            Some(addr(B)),
            "a server that answered is not asked again"
        );
        d.handle(
            &answer(
                BINDING_SUCCESS,
                txid(&sent[1]),
                Some(addr("[2001:db8::1]:5")),
            ),
            addr(B),
        );
        let failures = d.outcome(now).expect("over").expect_err("no address");
        assert_eq!(
            failures.0,
            [
                (addr(A), ProbeFailure::ErrorResponse(400)),
                (
                    addr(B),
                    ProbeFailure::UnusableAddress("2001:db8::1".parse().expect("ip"))
                )
            ]
        );
        assert_eq!(
            failures.to_string(),
            "203.0.113.1:3478: error response 400; 198.51.100.1:19302: unusable mapped address 2001:db8::1"
        );
    }

    #[test]
    fn success_without_mapped_address_or_with_a_wildcard_is_refused() {
        let (mut d, now) = start(&[A, B], Duration::from_secs(5));
        let sent = send_all(&mut d, now);
        d.handle(&answer(BINDING_SUCCESS, txid(&sent[0]), None), addr(A));
        d.handle(
            &answer(BINDING_SUCCESS, txid(&sent[1]), Some(addr("0.0.0.0:1"))),
            addr(B),
        );
        let failures = d.outcome(now).expect("over").expect_err("no address");
        assert_eq!(failures.0[0].1, ProbeFailure::NoMappedAddress);
        assert!(matches!(failures.0[1].1, ProbeFailure::UnusableAddress(_)));
    }

    #[test]
    fn servers_of_the_other_family_are_not_asked() {
        let (mut d, now) = start(&["[2001:db8::3]:3478"], Duration::from_secs(5));
        assert_eq!(d.poll_transmit(now), None);
        assert_eq!(d.outcome(now), Some(Err(Failures(Vec::new()))));
    }
}
