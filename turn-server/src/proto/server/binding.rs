//! Binding (RFC 8489): the mapped address, no authentication.

use super::*;

impl Server {
    pub(super) fn handle_binding(&mut self, m: &Message, from: FiveTuple) {
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        msg::add_xor_address(&mut r, ATTR_XORMAPPED_ADDRESS, from.client);
        self.finish(r, None, from);
    }
}
