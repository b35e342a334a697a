//! Error responses as a type: one enum carries the code, the reason phrase and the metric label,
//! so the three cannot drift apart, and "no answer" is a variant rather than a magic code.

use stun::attributes::AttrType;

/// Every STUN/TURN error this server answers with (RFC 8489 §14.8, RFC 8656 §19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    TryAlternate,
    BadRequest,
    StunOnly,
    UnsupportedMethod,
    Unauthorized,
    Forbidden,
    UnknownAttribute,
    AllocationMismatch,
    StaleNonce,
    AddressFamilyNotSupported,
    WrongCredentials,
    UnsupportedTransport,
    PeerAddressFamilyMismatch,
    AllocationQuotaReached,
    ServerDraining,
    InsufficientCapacity,
}

impl StunError {
    pub const ALL: [StunError; 16] = {
        use StunError::*;
        [
            TryAlternate,
            BadRequest,
            StunOnly,
            UnsupportedMethod,
            Unauthorized,
            Forbidden,
            UnknownAttribute,
            AllocationMismatch,
            StaleNonce,
            AddressFamilyNotSupported,
            WrongCredentials,
            UnsupportedTransport,
            PeerAddressFamilyMismatch,
            AllocationQuotaReached,
            ServerDraining,
            InsufficientCapacity,
        ]
    };

    pub fn code(self) -> u16 {
        use StunError::*;
        match self {
            TryAlternate => 300,
            BadRequest | StunOnly | UnsupportedMethod => 400,
            Unauthorized => 401,
            Forbidden => 403,
            UnknownAttribute => 420,
            AllocationMismatch => 437,
            StaleNonce => 438,
            AddressFamilyNotSupported => 440,
            WrongCredentials => 441,
            UnsupportedTransport => 442,
            PeerAddressFamilyMismatch => 443,
            AllocationQuotaReached | ServerDraining => 486,
            InsufficientCapacity => 508,
        }
    }

    pub fn reason(self) -> &'static str {
        use StunError::*;
        match self {
            TryAlternate => "Try Alternate",
            BadRequest => "Bad Request",
            StunOnly => "STUN only",
            UnsupportedMethod => "Unsupported Method",
            Unauthorized => "Unauthorized",
            Forbidden => "Forbidden",
            UnknownAttribute => "Unknown Attribute",
            AllocationMismatch => "Allocation Mismatch",
            StaleNonce => "Stale Nonce",
            AddressFamilyNotSupported => "Address Family not Supported",
            WrongCredentials => "Wrong Credentials",
            UnsupportedTransport => "Unsupported Transport Protocol",
            PeerAddressFamilyMismatch => "Peer Address Family Mismatch",
            AllocationQuotaReached => "Allocation Quota Reached",
            ServerDraining => "Server Draining",
            InsufficientCapacity => "Insufficient Capacity",
        }
    }

    /// The `result` label of `iceway_turn_requests_total`: the code, as DESIGN names it.
    pub fn label(self) -> &'static str {
        match self.code() {
            300 => "300",
            400 => "400",
            401 => "401",
            403 => "403",
            420 => "420",
            437 => "437",
            438 => "438",
            440 => "440",
            441 => "441",
            442 => "442",
            443 => "443",
            486 => "486",
            _ => "508",
        }
    }
}

/// What a failed request gets back.
#[derive(Debug)]
pub enum Reply {
    /// No answer at all: over the per-source 401 limit, or where the RFC says silence.
    Silence,
    Error(ErrorReply),
}

#[derive(Debug)]
pub struct ErrorReply {
    pub error: StunError,
    /// Sign with this key (responses to authenticated requests), else only FINGERPRINT.
    pub key: Option<[u8; 16]>,
    pub extra: Vec<(AttrType, Vec<u8>)>,
    /// Add REALM and a fresh NONCE (401 and 438 challenges).
    pub nonce: bool,
}

impl From<StunError> for Reply {
    fn from(error: StunError) -> Self {
        Reply::Error(ErrorReply {
            error,
            key: None,
            extra: Vec::new(),
            nonce: false,
        })
    }
}

impl StunError {
    /// This error, signed with the request's key.
    pub fn signed(self, key: [u8; 16]) -> Reply {
        Reply::from(self).signed(key)
    }
}

impl Reply {
    pub fn signed(mut self, key: [u8; 16]) -> Self {
        if let Reply::Error(e) = &mut self {
            e.key = Some(key);
        }
        self
    }

    pub fn with(mut self, t: AttrType, v: Vec<u8>) -> Self {
        if let Reply::Error(e) = &mut self {
            e.extra.push((t, v));
        }
        self
    }

    /// 420 listing the comprehension-required attributes of `m` this server does not know.
    pub fn unknown_attributes(m: &stun::message::Message) -> Option<Self> {
        let unknown = super::msg::unknown_required(m);
        if unknown.is_empty() {
            return None;
        }
        let v: Vec<u8> = unknown.iter().flat_map(|t| t.0.to_be_bytes()).collect();
        Some(
            Reply::from(StunError::UnknownAttribute)
                .with(stun::attributes::ATTR_UNKNOWN_ATTRIBUTES, v),
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            Reply::Silence => "dropped",
            Reply::Error(e) => e.error.label(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_own_code_label() {
        for e in StunError::ALL {
            assert_eq!(e.label(), e.code().to_string(), "{e:?}");
            assert!(!e.reason().is_empty());
        }
    }
}
