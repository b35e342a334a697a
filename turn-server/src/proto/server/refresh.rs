//! Refresh (RFC 8656 §8).

use super::*;

impl Server {
    pub(super) fn handle_refresh(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
        relays: &mut dyn RelayPorts,
    ) -> Result<(), Reply> {
        let exists = self.live_allocation(&from, now.instant, relays);
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        if !exists {
            return Err(StunError::AllocationMismatch.signed(key));
        }
        if let Some(fam) = msg::leading_byte(m, ATTR_REQUESTED_ADDRESS_FAMILY) {
            let a = &self.allocations[&from];
            let family = match fam {
                Ok(msg::FAMILY_V4) => Family::V4,
                Ok(msg::FAMILY_V6) => Family::V6,
                _ => return Err(StunError::AddressFamilyNotSupported.signed(key)),
            };
            if a.relay_for(family).is_none() {
                return Err(StunError::PeerAddressFamilyMismatch.signed(key));
            }
        }
        let requested = match msg::u32_attr(m, ATTR_LIFETIME) {
            Some(Ok(0)) => Duration::ZERO,
            Some(Ok(_)) | None => {
                let exp = auth
                    .grant
                    .as_ref()
                    .and_then(|g| g.expires_at)
                    .or(self.allocations[&from].credential_expires);
                self.lifetime(m, &exp, now).map_err(|r| r.signed(key))?
            }
            Some(Err(())) => return Err(StunError::BadRequest.signed(key)),
        };
        if requested.is_zero() {
            self.remove_allocation(&from, now.instant, relays);
        } else if let Some(a) = self.allocations.get_mut(&from) {
            a.expires = now.instant + requested;
            if let Some(g) = &auth.grant {
                a.credential_expires = g.expires_at;
            }
        }
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        r.add(ATTR_LIFETIME, &(requested.as_secs() as u32).to_be_bytes());
        self.finish(r, Some(key), from);
        Ok(())
    }
}
