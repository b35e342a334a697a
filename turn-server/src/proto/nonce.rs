//! Stateless nonces: `hex(issued_at) || hex(HMAC(key, issued_at || client address))[..16]`. A
//! server answering a flood of unauthenticated requests keeps no state for them, and a nonce
//! is bound to the address it was issued to.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

const TS_HEX: usize = 8;
const MAC_HEX: usize = 16;
pub const NONCE_LEN: usize = TS_HEX + MAC_HEX;

#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but older than the nonce lifetime: 438 with a fresh one.
    Stale,
    /// Not a nonce this server issued for this address: also 438, as if it were stale, so a
    /// client with a nonce from another replica or before a restart recovers by itself.
    Invalid,
}

impl NonceKey {
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, issued: u32, client: SocketAddr) -> u64 {
        // The key is 32 bytes, which HMAC accepts for any length.
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(&issued.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes([
            out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
        ])
    }

    pub fn issue(&self, client: SocketAddr, unix_secs: u64) -> String {
        // Truncation is fine: the timestamp only has to be compared within one lifetime.
        let issued = unix_secs as u32;
        let mut s = String::with_capacity(NONCE_LEN);
        let _ = write!(s, "{issued:08x}{:016x}", self.mac(issued, client));
        s
    }

    pub fn check(
        &self,
        nonce: &[u8],
        client: SocketAddr,
        unix_secs: u64,
        lifetime_secs: u64,
    ) -> NonceCheck {
        if nonce.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let parse = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
        };
        let (Some(issued), Some(mac)) = (parse(&nonce[..TS_HEX]), parse(&nonce[TS_HEX..])) else {
            return NonceCheck::Invalid;
        };
        let issued = issued as u32;
        // Constant-time comparison is not needed here: the MAC only proves the nonce is ours.
        if self.mac(issued, client) != mac {
            return NonceCheck::Invalid;
        }
        let age = (unix_secs as u32).wrapping_sub(issued);
        if u64::from(age) >= lifetime_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_round_trip_stale_and_bound_to_address() {
        let key = NonceKey::from_bytes([7; 32]);
        let a: SocketAddr = "192.0.2.1:4000".parse().expect("addr");
        let b: SocketAddr = "192.0.2.1:4001".parse().expect("addr");
        let n = key.issue(a, 1_000_000);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(
            key.check(n.as_bytes(), a, 1_000_100, 600),
            NonceCheck::Valid
        );
        assert_eq!(
            key.check(n.as_bytes(), a, 1_000_600, 600),
            NonceCheck::Stale
        );
        assert_eq!(
            key.check(n.as_bytes(), b, 1_000_100, 600),
            NonceCheck::Invalid
        );
        let mut tampered = n.into_bytes();
        tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.check(&tampered, a, 1_000_100, 600), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::from_bytes([8; 32]).check(key.issue(a, 5).as_bytes(), a, 6, 600),
            NonceCheck::Invalid
        );
    }
}
