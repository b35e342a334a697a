//! The long-term credential mechanism (RFC 8489 §9.2) with stateless nonces, and the 401 limit.

use super::*;

pub(super) struct Authenticated {
    pub(super) key: [u8; 16],
    pub(super) username: String,
    /// `None` when an existing allocation's stored key was used (lenient expiry).
    pub(super) grant: Option<Grant>,
}

impl Server {
    /// A 401 or 438 with a fresh nonce; a 401 over the per-source limit gets no answer, so a
    /// flood with spoofed sources cannot use the server as a reflector.
    pub(super) fn challenge(&mut self, error: StunError, from: FiveTuple, now: Instant) -> Reply {
        if error == StunError::Unauthorized && !self.unauthorized.allow(from.client.ip(), now) {
            return Reply::Silence;
        }
        let mut r = Reply::from(error);
        if let Reply::Error(e) = &mut r {
            e.nonce = true;
        }
        r
    }

    pub(super) fn auth_failure(&self, reason: &'static str) {
        debug_assert!(
            crate::metrics::known_auth_failure(reason),
            "{reason} is not in the initialised auth-failure labels"
        );
        self.shared
            .metrics
            .auth_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Long-term credential mechanism (RFC 8489 §9.2) with stateless nonces.
    pub(super) fn authenticate(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
    ) -> Result<Authenticated, Reply> {
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(self.challenge(StunError::Unauthorized, from, now.instant));
        }
        let text = |t| msg::first(m, t).and_then(|v| std::str::from_utf8(v).ok());
        let (Some(username), Some(_realm), Some(nonce)) = (
            text(ATTR_USERNAME),
            text(ATTR_REALM),
            msg::first(m, ATTR_NONCE),
        ) else {
            return Err(Reply::from(StunError::BadRequest));
        };
        let cfg = &self.shared.config;
        match self.shared.nonce_key.check(
            nonce,
            from.client,
            now.unix_secs(),
            cfg.nonce_lifetime.as_secs(),
        ) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                self.auth_failure("stale_nonce");
                return Err(self.challenge(StunError::StaleNonce, from, now.instant));
            }
        }
        let existing = self.allocations.get(&from);
        let (keys, grant) = match existing {
            // Lenient expiry: an allocation keeps the key it was created with.
            Some(a) if !cfg.strict_expiry && a.username == username => (vec![a.key], None),
            _ => match self
                .shared
                .credentials
                .lookup(username, &cfg.realm, now.unix)
            {
                Ok(g) => (g.keys.clone(), Some(g)),
                Err(e) => {
                    self.auth_failure(e.reason);
                    return Err(self.challenge(StunError::Unauthorized, from, now.instant));
                }
            },
        };
        let mut checked = m.clone();
        let Some(key) = keys
            .into_iter()
            .find(|k| MessageIntegrity(k.to_vec()).check(&mut checked).is_ok())
        else {
            self.auth_failure("bad_integrity");
            return Err(self.challenge(StunError::Unauthorized, from, now.instant));
        };
        if let Some(a) = self.allocations.get(&from) {
            if a.username != username {
                // An Allocate on a 5-tuple in use is refused as such (RFC 8656 §7.2) whoever
                // asks; other requests learn the credentials are not the allocation's.
                if m.typ.method == METHOD_ALLOCATE {
                    return Err(StunError::AllocationMismatch.signed(key));
                }
                self.auth_failure("wrong_credentials");
                return Err(StunError::WrongCredentials.signed(key));
            }
        }
        // Unknown comprehension-required attributes are reported only to an authenticated
        // client (RFC 8489 §6.3.1), so a stranger learns nothing from probing them.
        if let Some(reply) = Reply::unknown_attributes(m) {
            return Err(reply.signed(key));
        }
        Ok(Authenticated {
            key,
            username: username.to_owned(),
            grant,
        })
    }
}
