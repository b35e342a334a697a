//! Send indications (RFC 8656 §11): unauthenticated, so dropped silently unless the 5-tuple
//! has an allocation with a permission for the peer.

use super::*;

impl Server {
    pub(super) fn handle_send(&mut self, m: &Message, from: FiveTuple, now: Instant) {
        let (Some(peer), Some(data)) = (
            msg::first(m, ATTR_XOR_PEER_ADDRESS)
                .and_then(|v| msg::decode_xor_address(v, &m.transaction_id.0)),
            msg::first(m, ATTR_DATA),
        ) else {
            return;
        };
        let Some(a) = self.allocations.get_mut(&from) else {
            return;
        };
        if a.expires <= now || !a.permitted(peer.ip(), now) || !a.within_bandwidth(data.len(), now)
        {
            return;
        }
        let Some(relay) = a.relay_for(Family::of(peer.ip())) else {
            return;
        };
        self.stats.to_peer_bytes += data.len() as u64;
        self.stats.to_peer_packets += 1;
        self.out.push_back(Output::ToPeer {
            relay: relay.id,
            peer,
            data: data.to_vec(),
        });
    }
}
