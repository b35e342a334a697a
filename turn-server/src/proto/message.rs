//! STUN message decoding on top of `stun`, with the checks `stun` leaves out, and the small
//! TURN attributes (RFC 8656 §18) encoded by hand.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use stun::attributes::{ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, AttrType};
use stun::fingerprint::FINGERPRINT;
use stun::message::{MAGIC_COOKIE, MESSAGE_HEADER_SIZE, Message};

pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
pub const ATTR_ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);
pub const ATTR_ICMP: AttrType = AttrType(0x8004);

pub const FAMILY_V4: u8 = 0x01;
pub const FAMILY_V6: u8 = 0x02;
pub const PROTO_UDP: u8 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No transaction id can be read: the datagram is silently dropped.
    #[error("not a STUN message")]
    NotStun,
    /// The header fails RFC 8489 §6.3 (length not a multiple of 4, or not the datagram's):
    /// silently dropped, since it may not be STUN at all.
    #[error("malformed STUN header")]
    Header,
    /// The header is sound but an attribute is not: a request gets 400.
    #[error("malformed STUN body")]
    Malformed,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// Decodes one complete STUN message (exactly `buf`, no trailing bytes).
pub fn decode(buf: &[u8]) -> Result<Message, (DecodeError, Option<Message>)> {
    if buf.len() < MESSAGE_HEADER_SIZE
        || buf[0] & 0xC0 != 0
        || u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
    {
        return Err((DecodeError::NotStun, None));
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len % 4 != 0 || MESSAGE_HEADER_SIZE + len != buf.len() {
        return Err((DecodeError::Header, None));
    }
    let mut m = Message::new();
    if m.unmarshal_binary(buf).is_err() {
        return Err((DecodeError::Malformed, Some(header_only(buf))));
    }
    if m.contains(ATTR_FINGERPRINT) && FINGERPRINT.check(&m).is_err() {
        return Err((DecodeError::BadFingerprint, None));
    }
    match integrity_end(&m) {
        Some(end) if end < buf.len() => Ok(truncated(buf, end)),
        _ => Ok(m),
    }
}

/// Where MESSAGE-INTEGRITY ends, if the message has one.
fn integrity_end(m: &Message) -> Option<usize> {
    let mut at = MESSAGE_HEADER_SIZE;
    for a in &m.attributes.0 {
        at += 4 + usize::from(a.length).div_ceil(4) * 4;
        if a.typ == ATTR_MESSAGE_INTEGRITY {
            return Some(at);
        }
    }
    None
}

/// The message up to and including MESSAGE-INTEGRITY, with its length field set to match, as
/// if nothing had followed (RFC 8489 §14.5: everything after MESSAGE-INTEGRITY but FINGERPRINT
/// is ignored; FINGERPRINT was checked already). An attribute appended to a captured request
/// therefore changes nothing, and the integrity check still covers exactly what it signed.
fn truncated(buf: &[u8], end: usize) -> Message {
    let mut raw = buf[..end].to_vec();
    let len = u16::try_from(end - MESSAGE_HEADER_SIZE).unwrap_or(u16::MAX);
    raw[2..4].copy_from_slice(&len.to_be_bytes());
    let mut m = Message::new();
    // Cannot fail: a prefix of a message that parsed, cut at an attribute boundary.
    let _ = m.unmarshal_binary(&raw);
    m
}

/// A message carrying only the type and transaction id of `buf`, to answer it with an error.
fn header_only(buf: &[u8]) -> Message {
    let mut m = Message::new();
    m.typ.read_value(u16::from_be_bytes([buf[0], buf[1]]));
    m.transaction_id
        .0
        .copy_from_slice(&buf[8..MESSAGE_HEADER_SIZE]);
    m
}

/// Comprehension-required attributes this server understands (RFC 8489, RFC 8656); any other
/// in a request is answered with 420. MESSAGE-INTEGRITY-SHA256, PASSWORD-ALGORITHM and USERHASH
/// are not implemented, so they are not listed: a client that requires them learns so.
pub fn understood(t: AttrType) -> bool {
    matches!(
        t.0,
        0x0001
            | 0x0006
            | 0x0008
            | 0x0009
            | 0x000A
            | 0x000C
            | 0x000D
            | 0x0012
            | 0x0013
            | 0x0014
            | 0x0015
            | 0x0016
            | 0x0017
            | 0x0018
            | 0x0019
            | 0x001A
            | 0x0020
            | 0x0022
            | 0x0024
            | 0x0025
    )
}

pub fn unknown_required(m: &Message) -> Vec<AttrType> {
    let mut unknown: Vec<AttrType> = Vec::new();
    for a in &m.attributes.0 {
        if a.typ.required() && !understood(a.typ) && !unknown.contains(&a.typ) {
            unknown.push(a.typ);
        }
    }
    unknown
}

pub fn first(m: &Message, t: AttrType) -> Option<&[u8]> {
    m.attributes
        .0
        .iter()
        .find(|a| a.typ == t)
        .map(|a| a.value.as_slice())
}

pub fn u32_attr(m: &Message, t: AttrType) -> Option<Result<u32, ()>> {
    first(m, t).map(|v| match v {
        [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(()),
    })
}

/// First byte of a 4-byte attribute (REQUESTED-TRANSPORT, *-ADDRESS-FAMILY).
pub fn leading_byte(m: &Message, t: AttrType) -> Option<Result<u8, ()>> {
    first(m, t).map(|v| if v.len() == 4 { Ok(v[0]) } else { Err(()) })
}

fn xor_mask(txid: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(txid);
    mask
}

/// Decodes an XOR-*-ADDRESS value; `None` when malformed.
pub fn decode_xor_address(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    let mask = xor_mask(txid);
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (v.get(1)?, v.len()) {
        (&FAMILY_V4, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        (&FAMILY_V6, 20) => {
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

pub fn add_xor_address(m: &mut Message, t: AttrType, addr: SocketAddr) {
    let mask = xor_mask(&m.transaction_id.0);
    let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
    let mut v = [0u8; 20];
    v[2..4].copy_from_slice(&port);
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            v[1] = FAMILY_V4;
            for (i, b) in ip.octets().iter().enumerate() {
                v[4 + i] = b ^ mask[i];
            }
            8
        }
        IpAddr::V6(ip) => {
            v[1] = FAMILY_V6;
            for (i, b) in ip.octets().iter().enumerate() {
                v[4 + i] = b ^ mask[i];
            }
            20
        }
    };
    m.add(t, &v[..n]);
}

pub fn add_plain_address(m: &mut Message, t: AttrType, addr: SocketAddr) {
    let mut v = [0u8; 20];
    v[2..4].copy_from_slice(&addr.port().to_be_bytes());
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            v[1] = FAMILY_V4;
            v[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            v[1] = FAMILY_V6;
            v[4..20].copy_from_slice(&ip.octets());
            20
        }
    };
    m.add(t, &v[..n]);
}

pub fn error_value(code: u16, reason: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + reason.len());
    v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
    v.extend_from_slice(reason.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trip() {
        for addr in ["192.0.2.1:3478", "[2001:db8::7]:50000"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let mut m = Message::new();
            m.transaction_id.0 = [9; 12];
            m.write_header();
            add_xor_address(&mut m, stun::attributes::ATTR_XOR_PEER_ADDRESS, addr);
            let v = first(&m, stun::attributes::ATTR_XOR_PEER_ADDRESS).expect("attr");
            assert_eq!(decode_xor_address(v, &[9; 12]), Some(addr));
        }
        assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1], &[0; 12]), None);
    }

    #[test]
    fn rejects_non_stun_and_malformed() {
        assert!(matches!(
            decode(&[0u8; 10]),
            Err((DecodeError::NotStun, None))
        ));
        let mut hdr = [0u8; 20];
        hdr[1] = 1;
        hdr[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert!(decode(&hdr).is_ok());
        let mut bad_cookie = hdr;
        bad_cookie[4] = 0;
        assert!(matches!(
            decode(&bad_cookie),
            Err((DecodeError::NotStun, None))
        ));
        // Attribute length 8 but only 4 value bytes present.
        let mut over = hdr.to_vec();
        over[3] = 8;
        over.extend_from_slice(&[0x00, 0x06, 0x00, 0x08, b'a', b'b', b'c', b'd']);
        assert!(matches!(
            decode(&over),
            Err((DecodeError::Malformed, Some(_)))
        ));
        // Header failures (RFC 8489 §6.3) are not answered at all.
        let mut odd = hdr.to_vec();
        odd[3] = 2;
        odd.extend_from_slice(&[0, 0]);
        assert!(matches!(decode(&odd), Err((DecodeError::Header, None))));
        let mut past = hdr.to_vec();
        past[3] = 8;
        past.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(decode(&past), Err((DecodeError::Header, None))));
        let mut trailing = hdr.to_vec();
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            decode(&trailing),
            Err((DecodeError::Header, None))
        ));
    }
}
