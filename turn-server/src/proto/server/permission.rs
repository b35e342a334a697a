//! CreatePermission (RFC 8656 §10) and the peer checks ChannelBind shares.

use super::*;

impl Server {
    pub(super) fn check_peer(
        &self,
        a: &Allocation,
        peer: SocketAddr,
        key: [u8; 16],
    ) -> Result<(), Reply> {
        if !self.shared.policy.permits(peer.ip()) {
            self.shared.metrics.peer_denied.inc();
            return Err(StunError::Forbidden.signed(key));
        }
        if a.relay_for(Family::of(peer.ip())).is_none() {
            return Err(StunError::PeerAddressFamilyMismatch.signed(key));
        }
        Ok(())
    }

    pub(super) fn handle_create_permission(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
    ) -> Result<(), Reply> {
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        let a = self.allocation_of(&from, now.instant, key)?;
        let max = self.shared.config.max_permissions;
        let attrs = || {
            m.attributes
                .0
                .iter()
                .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
        };
        // More peers in one request than an allocation may hold: refused before any is read.
        if attrs().count() > max {
            return Err(StunError::InsufficientCapacity.signed(key));
        }
        let mut peers = Vec::new();
        for attr in attrs() {
            let peer = msg::decode_xor_address(&attr.value, &m.transaction_id.0)
                .ok_or_else(|| StunError::BadRequest.signed(key))?;
            self.check_peer(a, peer, key)?;
            peers.push(peer.ip());
        }
        if peers.is_empty() {
            return Err(StunError::BadRequest.signed(key));
        }
        peers.sort();
        peers.dedup();
        let expires = now.instant + self.shared.config.permission_lifetime;
        let metrics = self.shared.metrics.clone();
        if let Some(a) = self.allocations.get_mut(&from) {
            a.purge_permissions(now.instant, &metrics);
            let new = peers
                .iter()
                .filter(|ip| !a.permissions.contains_key(ip))
                .count();
            // All or nothing (RFC 8656 §10.2): a request that would pass the cap installs none.
            if a.permissions.len() + new > max {
                return Err(StunError::InsufficientCapacity.signed(key));
            }
            for ip in peers {
                if a.permissions.insert(ip, expires).is_none() {
                    metrics.permissions.inc();
                }
            }
        }
        let r = self.response(m, CLASS_SUCCESS_RESPONSE);
        self.finish(r, Some(key), from);
        Ok(())
    }
}
