//! Allocate (RFC 8656 §7.2). Every attribute is checked before anything is taken; what is taken
//! (a quota slot, relay ports) is held by a guard that gives it back on every path but success,
//! so no error can leak a port or a slot.

use super::*;
use crate::policy::QuotaLimits;

/// What a valid Allocate asks for, read before anything is acquired.
struct AllocateRequest {
    port: PortRequest,
    /// The primary family, then the additional one (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY).
    families: Vec<Family>,
    lifetime: Duration,
    grant: Grant,
}

/// A quota slot and relay ports taken for an Allocate that has not succeeded yet.
struct Taken<'a> {
    quotas: &'a QuotaLedger,
    relays: &'a mut dyn RelayPorts,
    user: &'a str,
    source: IpAddr,
    ids: Vec<RelayId>,
    committed: bool,
}

impl Taken<'_> {
    /// The allocation now owns what was taken; it is released by `remove_allocation`.
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for id in self.ids.drain(..) {
            self.relays.release(id);
        }
        self.quotas.release(self.user, self.source);
    }
}

fn relay_error(e: RelayError) -> StunError {
    match e {
        RelayError::Exhausted => StunError::InsufficientCapacity,
        RelayError::FamilyUnsupported => StunError::AddressFamilyNotSupported,
    }
}

impl Server {
    pub(super) fn handle_allocate(
        &mut self,
        m: &Message,
        from: FiveTuple,
        now: Now,
        relays: &mut dyn RelayPorts,
    ) -> Result<(), Reply> {
        if self.live_allocation(&from, now.instant, relays) {
            let a = &self.allocations[&from];
            if a.allocate_txid == m.transaction_id.0 {
                // A retransmission whose response was lost: the same answer again, not 437.
                let data = a.allocate_response.clone();
                self.out.push_back(Output::ToClient { to: from, data });
                return Ok(());
            }
        }
        if self.shared.draining.load(Ordering::Relaxed) {
            return Err(match self.shared.config.alternate_server {
                Some(alt) => {
                    let mut tmp = Message::new();
                    msg::add_plain_address(&mut tmp, ATTR_ALTERNATE_SERVER, alt);
                    Reply::from(StunError::TryAlternate)
                        .with(ATTR_ALTERNATE_SERVER, tmp.attributes.0.remove(0).value)
                }
                None => StunError::ServerDraining.into(),
            });
        }
        let auth = self.authenticate(m, from, now)?;
        let key = auth.key;
        if self.allocations.contains_key(&from) {
            return Err(StunError::AllocationMismatch.signed(key));
        }
        let req = self
            .allocate_request(m, auth.grant, now)
            .map_err(|e| e.signed(key))?;
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.config;
        let limits = QuotaLimits {
            user: req.grant.alloc_limit.or(cfg.user_quota),
            per_source: cfg.source_quota,
            total: cfg.total_quota,
        };
        if let Err(e) = shared
            .quotas
            .acquire(&req.grant.user, from.client.ip(), limits)
        {
            let metrics = &shared.metrics;
            metrics
                .quota_rejections
                .with_label_values(&[e.kind()])
                .inc();
            metrics
                .allocations_total
                .with_label_values(&["quota"])
                .inc();
            return Err(StunError::AllocationQuotaReached.signed(key));
        }
        let mut taken = Taken {
            quotas: &shared.quotas,
            relays,
            user: &req.grant.user,
            source: from.client.ip(),
            ids: Vec::new(),
            committed: false,
        };
        // Relay sockets, one per family; the additional family may fail on its own (RFC 8656 §7.2).
        let mut bound: Vec<RelayAddr> = Vec::new();
        let mut address_error: Option<StunError> = None;
        for (i, &family) in req.families.iter().enumerate() {
            let port = if i == 0 { req.port } else { PortRequest::Any };
            match taken.relays.allocate(family, port) {
                Ok(relay) => {
                    taken.ids.push(relay.id);
                    // A reserved port keeps the family it was reserved in.
                    let family = Family::of(relay.local.ip());
                    let advertised_ip = cfg
                        .external_ips
                        .iter()
                        .copied()
                        .find(|ip| Family::of(*ip) == family)
                        .or_else(|| (!relay.local.ip().is_unspecified()).then(|| relay.local.ip()))
                        .filter(|ip| Family::of(*ip) == family)
                        .unwrap_or(from.server.ip());
                    bound.push(RelayAddr {
                        id: relay.id,
                        advertised: SocketAddr::new(advertised_ip, relay.local.port()),
                    });
                }
                Err(e) if i == 0 => {
                    shared
                        .metrics
                        .allocations_total
                        .with_label_values(&["error"])
                        .inc();
                    return Err(relay_error(e).signed(key));
                }
                Err(e) => address_error = Some(relay_error(e)),
            }
        }
        let mut r = self.response(m, CLASS_SUCCESS_RESPONSE);
        for relay in &bound {
            msg::add_xor_address(&mut r, ATTR_XOR_RELAYED_ADDRESS, relay.advertised);
        }
        if let Some(e) = address_error {
            // The additional family is always IPv6 (RFC 8656 §18.12).
            let mut v = msg::error_value(e.code(), e.reason());
            v[0] = msg::FAMILY_V6;
            r.add(msg::ATTR_ADDRESS_ERROR_CODE, &v);
        }
        r.add(
            ATTR_LIFETIME,
            &(req.lifetime.as_secs() as u32).to_be_bytes(),
        );
        if let PortRequest::EvenReserveNext(t) = req.port {
            r.add(ATTR_RESERVATION_TOKEN, &t);
        }
        msg::add_xor_address(&mut r, ATTR_XORMAPPED_ADDRESS, from.client);
        let data = self.encode(r, Some(key));
        let bandwidth = req.grant.kbps.or(cfg.max_kbps).map(|k| {
            let k = cfg.max_kbps.map_or(k, |max| k.min(max));
            Bandwidth::new(k, now.instant)
        });
        taken.commit();
        for relay in &bound {
            if self.by_relay.len() <= relay.id {
                self.by_relay.resize(relay.id + 1, None);
            }
            self.by_relay[relay.id] = Some(from);
        }
        self.allocations.insert(
            from,
            Allocation {
                relays: bound,
                username: auth.username,
                user: req.grant.user,
                key,
                credential_expires: req.grant.expires_at,
                created: now.instant,
                expires: now.instant + req.lifetime,
                allocate_txid: m.transaction_id.0,
                allocate_response: data.clone(),
                permissions: HashMap::default(),
                channels: HashMap::default(),
                channel_by_peer: HashMap::default(),
                bandwidth,
            },
        );
        shared.metrics.allocations.inc();
        shared
            .metrics
            .allocations_total
            .with_label_values(&["ok"])
            .inc();
        self.out.push_back(Output::ToClient { to: from, data });
        Ok(())
    }

    /// Reads and checks every attribute of an Allocate (RFC 8656 §7.2), acquiring nothing.
    fn allocate_request(
        &self,
        m: &Message,
        grant: Option<Grant>,
        now: Now,
    ) -> Result<AllocateRequest, StunError> {
        match msg::leading_byte(m, ATTR_REQUESTED_TRANSPORT) {
            None | Some(Err(())) => return Err(StunError::BadRequest),
            Some(Ok(msg::PROTO_UDP)) => {}
            Some(Ok(_)) => return Err(StunError::UnsupportedTransport),
        }
        let requested = msg::leading_byte(m, ATTR_REQUESTED_ADDRESS_FAMILY);
        let additional = msg::leading_byte(m, msg::ATTR_ADDITIONAL_ADDRESS_FAMILY);
        let even_port = msg::first(m, ATTR_EVEN_PORT);
        let token = match msg::first(m, ATTR_RESERVATION_TOKEN) {
            None => None,
            // A reserved port already has its family and parity.
            Some(_) if even_port.is_some() || requested.is_some() || additional.is_some() => {
                return Err(StunError::BadRequest);
            }
            Some(v) => Some(<[u8; 8]>::try_from(v).map_err(|_| StunError::BadRequest)?),
        };
        let port = match (even_port, token) {
            (_, Some(t)) => PortRequest::Reserved(t),
            // Reserving the next port is for one family only.
            (Some([b, ..]), None) if b & 0x80 != 0 && additional.is_some() => {
                return Err(StunError::BadRequest);
            }
            (Some([b, ..]), None) if b & 0x80 != 0 => PortRequest::EvenReserveNext(rand::random()),
            (Some([_, ..]), None) => PortRequest::Even,
            (Some([]), None) => return Err(StunError::BadRequest),
            (None, None) => PortRequest::Any,
        };
        let families = match (requested, additional) {
            (Some(_), Some(_)) => return Err(StunError::BadRequest),
            (Some(Ok(msg::FAMILY_V4)), None) | (None, None) => vec![Family::V4],
            (Some(Ok(msg::FAMILY_V6)), None) => vec![Family::V6],
            (None, Some(Ok(msg::FAMILY_V6))) => vec![Family::V4, Family::V6],
            (Some(_), None) => return Err(StunError::AddressFamilyNotSupported),
            (None, Some(_)) => return Err(StunError::BadRequest),
        };
        // An allocation's existing key authenticated the request, not a credential: the
        // 5-tuple is in use.
        let grant = grant.ok_or(StunError::AllocationMismatch)?;
        let lifetime = self.lifetime(m, &grant.expires_at, now)?;
        Ok(AllocateRequest {
            port,
            families,
            lifetime,
            grant,
        })
    }

    /// The granted lifetime: the request's LIFETIME within [default, max]; with strict expiry
    /// never past the credential's expiry.
    pub(super) fn lifetime(
        &self,
        m: &Message,
        credential_expires: &Option<SystemTime>,
        now: Now,
    ) -> Result<Duration, StunError> {
        let cfg = &self.shared.config;
        let requested = match msg::u32_attr(m, ATTR_LIFETIME) {
            Some(Ok(s)) => Duration::from_secs(u64::from(s)),
            Some(Err(())) => return Err(StunError::BadRequest),
            None => cfg.default_lifetime,
        };
        let mut lifetime = requested.max(cfg.default_lifetime).min(cfg.max_lifetime);
        if cfg.strict_expiry {
            if let Some(exp) = credential_expires {
                lifetime = lifetime.min(exp.duration_since(now.unix).unwrap_or(Duration::ZERO));
            }
        }
        Ok(lifetime)
    }
}
