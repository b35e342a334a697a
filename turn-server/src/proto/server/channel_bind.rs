//! ChannelBind (RFC 8656 §12).

use super::*;

impl Server {
    pub(super) fn handle_channel_bind(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
    ) -> Result<(), Reply> {
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        let a = self.allocation_of(&from, now.instant, key)?;
        let bad = || StunError::BadRequest.signed(key);
        let number = match msg::first(m, ATTR_CHANNEL_NUMBER) {
            Some([a, b, _, _]) => u16::from_be_bytes([*a, *b]),
            _ => return Err(bad()),
        };
        if !(channel_data::CHANNEL_MIN..=self.shared.config.channel_max).contains(&number) {
            tracing::debug!(number, "channel number out of range");
            return Err(bad());
        }
        let peer = msg::first(m, ATTR_XOR_PEER_ADDRESS)
            .and_then(|v| msg::decode_xor_address(v, &m.transaction_id.0))
            .ok_or_else(bad)?;
        self.check_peer(a, peer, key)?;
        // A number stays with one peer, and a peer with one number, while bound.
        if a.channels
            .get(&number)
            .is_some_and(|c| c.peer != peer && c.expires > now.instant)
            || a.channel_by_peer.get(&peer).is_some_and(|n| *n != number)
        {
            tracing::debug!(number, %peer, "channel already bound differently");
            return Err(bad());
        }
        let cfg = &self.shared.config;
        let ch_expires = now.instant + cfg.channel_lifetime;
        let perm_expires = now.instant + cfg.permission_lifetime;
        let metrics = self.shared.metrics.clone();
        if let Some(a) = self.allocations.get_mut(&from) {
            a.purge_permissions(now.instant, &metrics);
            a.purge_channels(now.instant, &metrics);
            if (!a.channels.contains_key(&number) && a.channels.len() >= cfg.max_channels)
                || (!a.permissions.contains_key(&peer.ip())
                    && a.permissions.len() >= cfg.max_permissions)
            {
                return Err(StunError::InsufficientCapacity.signed(key));
            }
            if let Some(old) = a.channels.insert(
                number,
                Channel {
                    peer,
                    expires: ch_expires,
                },
            ) {
                a.channel_by_peer.remove(&old.peer);
            } else {
                metrics.channels.inc();
            }
            a.channel_by_peer.insert(peer, number);
            let e = a.permissions.entry(peer.ip()).or_insert_with(|| {
                metrics.permissions.inc();
                perm_expires
            });
            *e = (*e).max(perm_expires);
        }
        let r = self.response(m, CLASS_SUCCESS_RESPONSE);
        self.finish(r, Some(key), from);
        Ok(())
    }
}
