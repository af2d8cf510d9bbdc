//! TURN request and data handling, RFC 8656 §7-§12.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{
    Allocation, CHANNEL_LIFETIME, Channel, PERMISSION_LIFETIME, TokenBucket, Traffic,
};
use super::auth::{AuthFailure, Authed, OFFERED_ALGORITHMS};
use super::binding::canonical;
use super::policy::canonical_addr;
use super::shared::Reservation;
use super::timers::Due;
use super::{
    AuthFailureReason, ClientOutput, DEFAULT_LIFETIME, DropReason, Event, FiveTuple, Now,
    PEER_HEADROOM, PEER_TAILROOM, RESERVATION_LIFETIME, RelayId, RelayIo, Server,
};
use crate::wire::{
    ChannelData, Class, IntegrityKey, Message, MessageBuilder, Method, attr, is_rfc8656_channel,
    is_valid_channel,
};

/// How many ports to try binding before answering 508 (another process
/// may hold ports inside the range).
const BIND_ATTEMPTS: usize = 64;

/// The response key and algorithm of an authenticated request.
type Sign<'k> = Option<(&'k IntegrityKey, bool)>;

impl Server {
    /// Authenticate a TURN request (RFC 8489 §9.2), then dispatch it. The
    /// response to a request on an allocation is remembered, so a
    /// retransmission gets the same bytes back (RFC 8656 §7.2, RFC 8489
    /// §6.3.1) without the request being applied twice.
    pub(super) fn turn_request<'a, I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'a>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> ClientOutput<'a> {
        let method = msg.method();
        if !matches!(
            method,
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        ) {
            self.error(msg, out, 400, "Unsupported Method", None);
            return ClientOutput::Reply;
        }
        let slot = self.by_ft.get(ft).copied();
        let tid = msg.transaction_id();
        if let Some(s) = slot {
            if let Some(Some(a)) = self.slots.get(s as usize) {
                if let Some((t, bytes)) = &a.last_response {
                    if *t == tid {
                        out.extend_from_slice(bytes);
                        return ClientOutput::Reply;
                    }
                }
            }
        }
        let existing = slot
            .and_then(|s| self.slots[s as usize].as_ref())
            .map(|a| (a.username.to_string(), a.key.key(), a.password_algorithm));
        let authed = match self.auth.authenticate(
            msg,
            ft.client,
            now.unix,
            existing.as_ref().map(|(u, k, a)| (u.as_str(), k, *a)),
        ) {
            Ok(a) => a,
            Err(f) => {
                self.auth_error(msg, ft, now.unix, f, out);
                return ClientOutput::Reply;
            }
        };
        let sign = Some((&authed.key, authed.sha256));
        let start = out.len();
        // RFC 8489 §6.3.1: after authentication, unknown
        // comprehension-required attributes → 420.
        let unknown = msg.unknown_comprehension_required(attr::known_to_server);
        if !unknown.is_empty() {
            let mut b = MessageBuilder::response(out, msg, Class::Error);
            b.error_code(420, "Unknown Attribute")
                .unknown_attributes(unknown.as_slice());
            self.finish(b, msg, sign);
            self.counters.answered(method, 420);
            return ClientOutput::Reply;
        }
        if method == Method::ALLOCATE {
            self.allocate(now, ft, msg, &authed, out, io);
            return ClientOutput::Reply;
        }
        let Some(slot) = slot else {
            // RFC 8656 §7.3, §9.2, §11.2: no allocation on this five-tuple.
            self.error(msg, out, 437, "Allocation Mismatch", sign);
            return ClientOutput::Reply;
        };
        if existing.is_some_and(|(u, _, _)| u != authed.username) {
            // RFC 8656 §5: later requests must use the allocation's
            // credentials.
            self.counters
                .auth_failed(AuthFailureReason::WrongCredentials);
            self.error(msg, out, 441, "Wrong Credentials", sign);
            return ClientOutput::Reply;
        }
        match method {
            Method::REFRESH => self.refresh(now.mono, slot, msg, sign, out, io),
            Method::CREATE_PERMISSION => self.create_permission(now.mono, slot, msg, sign, out),
            _ => self.channel_bind(now.mono, slot, msg, sign, out),
        }
        if let Some(Some(a)) = self.slots.get_mut(slot as usize) {
            a.last_response = Some((tid, out[start..].to_vec()));
        }
        self.publish(slot, false);
        ClientOutput::Reply
    }

    /// 401/438 carry REALM, a fresh NONCE and PASSWORD-ALGORITHMS so the
    /// client can (re)compute its key (RFC 8489 §9.2.4); they are not
    /// signed. 400 is plain.
    fn auth_error(
        &self,
        msg: &Message<'_>,
        ft: &FiveTuple,
        wall: u64,
        f: AuthFailure,
        out: &mut Vec<u8>,
    ) {
        let reason = match f {
            AuthFailure::Challenge => None,
            AuthFailure::BadRequest(_) => Some(AuthFailureReason::BadRequest),
            AuthFailure::StaleNonce => Some(AuthFailureReason::StaleNonce),
            AuthFailure::UnknownUser => Some(AuthFailureReason::UnknownUser),
            AuthFailure::ExpiredUsername => Some(AuthFailureReason::ExpiredUsername),
            AuthFailure::BadIntegrity => Some(AuthFailureReason::BadIntegrity),
        };
        if let Some(r) = reason {
            self.counters.auth_failed(r);
        }
        let mut b = MessageBuilder::response(out, msg, Class::Error);
        b.error_code(f.code(), f.reason());
        if f.code() != 400 {
            b.text(attr::REALM, self.auth.credentials().realm());
            b.text(attr::NONCE, &self.auth.nonce(ft.client, wall));
            b.password_algorithms(&OFFERED_ALGORITHMS);
        }
        self.finish(b, msg, None);
        self.counters.answered(msg.method(), f.code());
    }

    /// RFC 8656 §7.2 lifetime rule: min(requested, maximum), but never
    /// below the default (600 s) unless the maximum itself is lower.
    fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        let max = self.cfg.max_lifetime;
        let want = requested.map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(u64::from(s)));
        want.min(max).max(DEFAULT_LIFETIME.min(max))
    }

    /// Allocate, RFC 8656 §7.2, checks in the RFC's order.
    fn allocate<I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) {
        let sign = Some((&authed.key, authed.sha256));
        let fail = |s: &Server, out: &mut Vec<u8>, code: u16, reason: &str| {
            s.error(msg, out, code, reason, sign)
        };
        if self.by_ft.contains_key(ft) {
            return fail(self, out, 437, "Allocation Mismatch");
        }
        if self.cfg.draining {
            // Operations: while draining, send new allocations elsewhere.
            let Some(&alt) = self.cfg.alternate_servers.first() else {
                self.counters.quota_refusals.inc();
                return fail(self, out, 486, "Allocation Quota Reached (draining)");
            };
            let mut b = MessageBuilder::response(out, msg, Class::Error);
            b.error_code(300, "Try Alternate")
                .address(attr::ALTERNATE_SERVER, alt);
            self.finish(b, msg, sign);
            self.counters.answered(Method::ALLOCATE, 300);
            return;
        }
        match msg.requested_transport() {
            Ok(Some(attr::TRANSPORT_UDP)) => {}
            Ok(Some(_)) => return fail(self, out, 442, "Unsupported Transport Protocol"),
            Ok(None) => return fail(self, out, 400, "Missing REQUESTED-TRANSPORT"),
            Err(_) => return fail(self, out, 400, "Bad REQUESTED-TRANSPORT"),
        }
        let (Ok(token), Ok(even), Ok(lifetime)) =
            (msg.reservation_token(), msg.even_port(), msg.lifetime())
        else {
            return fail(self, out, 400, "Bad Request");
        };
        let requested_family = match msg.requested_address_family() {
            Ok(f) => f,
            Err(_) => return fail(self, out, 440, "Address Family not Supported"),
        };
        let additional_family = match msg.additional_address_family() {
            Ok(f) => f,
            Err(_) => return fail(self, out, 400, "Bad ADDITIONAL-ADDRESS-FAMILY"),
        };
        if token.is_some()
            && (even.is_some() || requested_family.is_some() || additional_family.is_some())
        {
            return fail(
                self,
                out,
                400,
                "RESERVATION-TOKEN with EVEN-PORT or address family",
            );
        }
        if requested_family.is_some() && additional_family.is_some() {
            return fail(
                self,
                out,
                400,
                "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together",
            );
        }
        if additional_family == Some(attr::FAMILY_IPV4) {
            return fail(self, out, 400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6");
        }
        // The reservation decides the family when a token is used.
        let reservation = match token {
            Some(t) => match self
                .shared
                .take_reservation(u64::from_be_bytes(t), now.mono)
            {
                Some(r) => Some(r),
                None => {
                    return fail(
                        self,
                        out,
                        508,
                        "Insufficient Capacity (unknown or expired token)",
                    );
                }
            },
            None => None,
        };
        let ipv6 = match reservation {
            Some(r) => r.ip.is_ipv6(),
            None => requested_family == Some(attr::FAMILY_IPV6),
        };
        let release_reservation = |s: &Server, io: &mut I| {
            if let Some(r) = reservation {
                s.shared.pool(r.ip.is_ipv6()).release(r.port);
                io.release_hold(SocketAddr::new(r.ip, r.port));
            }
        };
        let Some(fam) = (if ipv6 {
            self.cfg.relay6
        } else {
            self.cfg.relay4
        }) else {
            release_reservation(self, io);
            return fail(self, out, 440, "Address Family not Supported");
        };
        if self
            .shared
            .acquire(
                authed.quota_user(),
                self.cfg.max_allocations,
                self.cfg.max_allocations_per_user,
            )
            .is_err()
        {
            release_reservation(self, io);
            self.counters.quota_refusals.inc();
            return fail(self, out, 486, "Allocation Quota Reached");
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push_empty();
            self.generations.push(0);
            (self.slots.len() - 1) as u32
        });
        let relay_id = RelayId(slot);
        let dont_fragment = msg.dont_fragment();
        let pool = self.shared.pool(ipv6);
        let mut bound: Option<(u16, bool)> = None;
        if let Some(r) = reservation {
            if io
                .bind(relay_id, SocketAddr::new(fam.bind, r.port), dont_fragment)
                .is_ok()
            {
                bound = Some((r.port, false));
            } else {
                pool.release(r.port);
                io.release_hold(SocketAddr::new(r.ip, r.port));
            }
        } else {
            // Ports another process holds stay claimed until the loop ends,
            // so each attempt tries a new one.
            let pair = even == Some(true);
            let mut failed = [0u16; BIND_ATTEMPTS];
            let mut n_failed = 0;
            while n_failed < BIND_ATTEMPTS {
                let Some(port) = pool.pick(&mut self.rng, even.is_some(), pair) else {
                    break;
                };
                // With the R bit the successor is reserved: it is bound
                // and held first, so the token never promises a port
                // another process has (RFC 8656 §7.2).
                let next = pair.then(|| SocketAddr::new(fam.bind, port + 1));
                if next.is_none_or(|n| io.hold(n).is_ok()) {
                    if io
                        .bind(relay_id, SocketAddr::new(fam.bind, port), dont_fragment)
                        .is_ok()
                    {
                        bound = Some((port, pair));
                        break;
                    }
                    if let Some(n) = next {
                        io.release_hold(n);
                    }
                }
                if pair {
                    pool.release(port + 1);
                }
                failed[n_failed] = port;
                n_failed += 1;
            }
            for &p in &failed[..n_failed] {
                pool.release(p);
            }
        }
        let Some((port, reserved_next)) = bound else {
            self.free.push(slot);
            self.shared.release(authed.quota_user());
            return fail(self, out, 508, "Insufficient Capacity");
        };
        let new_token = reserved_next.then(|| {
            let t: u64 = rand::Rng::random(&mut self.rng);
            self.shared.reserve(
                t,
                Reservation {
                    ip: fam.bind,
                    port: port + 1,
                    expires: now.mono + RESERVATION_LIFETIME,
                },
            );
            self.timers
                .push(now.mono + RESERVATION_LIFETIME, Due::Reservation(t));
            t
        });
        let life = self.granted_lifetime(lifetime);
        let generation = self.generations[slot as usize].wrapping_add(1);
        self.generations[slot as usize] = generation;
        let relay = SocketAddr::new(fam.bind, port);
        let advertised = SocketAddr::new(fam.advertised_for(ft.server), port);
        let id = self.next_id;
        self.next_id += 1;
        let expires = now.mono + life;
        // Build the response first: it is also what a retransmission gets.
        let start = out.len();
        let mut b = MessageBuilder::response(out, msg, Class::Success);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, advertised)
            .lifetime(life.as_secs() as u32);
        if let Some(t) = new_token {
            b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        b.xor_address(attr::XOR_MAPPED_ADDRESS, canonical(ft.client));
        if additional_family.is_some() {
            // RFC 8656 §7.2: dual allocation is optional; say the IPv6
            // part was not made, the IPv4 one was.
            b.address_error_code(attr::FAMILY_IPV6, 440, "Address Family not Supported");
        }
        self.finish(b, msg, sign);
        self.counters.answered(Method::ALLOCATE, 200);
        let a = Allocation {
            generation,
            ft: *ft,
            relay,
            advertised,
            username: authed.username.as_ref().into(),
            quota_user: authed.quota_user().into(),
            key: super::allocation::KeyBytes::of(&authed.key),
            password_algorithm: authed.password_algorithm,
            created: now.mono,
            expires,
            next_check: expires,
            permissions: Default::default(),
            channels: Default::default(),
            bucket: TokenBucket::new(self.cfg.max_bytes_per_sec, now.mono),
            traffic: Traffic::default(),
            last_response: Some((msg.transaction_id(), out[start..].to_vec())),
            id,
            published: false,
        };
        self.slots[slot as usize] = Some(a);
        self.by_ft.insert(*ft, slot);
        self.by_port.insert(advertised, slot);
        self.timers
            .push(expires, Due::Allocation { slot, generation });
        self.counters.allocations_created.inc();
        self.counters.active(ft.transport, ipv6).add(1);
        self.push_event(Event::AllocationCreated {
            id,
            ft: *ft,
            relay,
            username: authed.username.to_string(),
            lifetime: life,
        });
    }

    /// Refresh, RFC 8656 §7.3: LIFETIME 0 deletes, anything else sets a
    /// new expiry by the §7.2 rule.
    fn refresh<I: RelayIo>(
        &mut self,
        now: Instant,
        slot: u32,
        msg: &Message<'_>,
        sign: Sign<'_>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) {
        let Ok(requested) = msg.lifetime() else {
            return self.error(msg, out, 400, "Bad LIFETIME", sign);
        };
        let Some(a) = self.slots[slot as usize].as_ref() else {
            return;
        };
        match msg.requested_address_family() {
            Ok(None) => {}
            Ok(Some(f)) if (f == attr::FAMILY_IPV6) == a.relay.is_ipv6() => {}
            _ => return self.error(msg, out, 443, "Peer Address Family Mismatch", sign),
        }
        let life = if requested == Some(0) {
            Duration::ZERO
        } else {
            self.granted_lifetime(requested)
        };
        let mut b = MessageBuilder::response(out, msg, Class::Success);
        b.lifetime(life.as_secs() as u32);
        self.finish(b, msg, sign);
        self.counters.answered(Method::REFRESH, 200);
        if life.is_zero() {
            self.delete(slot, now, super::EndReason::Refreshed0, io);
        } else if let Some(a) = self.slots[slot as usize].as_mut() {
            a.expires = now + life;
            self.reschedule(slot);
        }
    }

    /// Canonicalise a peer address and check it against the allocation's
    /// family (443) and the peer policy (403).
    fn check_peer(
        &self,
        a: &Allocation,
        peer: SocketAddr,
    ) -> Result<SocketAddr, (u16, &'static str)> {
        let peer = canonical_addr(peer);
        if peer.is_ipv6() != a.relay.is_ipv6() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        if !self.cfg.policy.allows(peer.ip()) {
            self.counters.policy_refusals.inc();
            return Err((403, "Forbidden"));
        }
        Ok(peer)
    }

    /// CreatePermission, RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked
    /// before any is installed, so the request is all or nothing.
    fn create_permission(
        &mut self,
        now: Instant,
        slot: u32,
        msg: &Message<'_>,
        sign: Sign<'_>,
        out: &mut Vec<u8>,
    ) {
        let Some(a) = self.slots[slot as usize].as_ref() else {
            return;
        };
        let mut count = 0;
        let mut new = 0;
        for (i, p) in msg.xor_peer_addresses().enumerate() {
            let Ok(p) = p else {
                return self.error(msg, out, 400, "Bad XOR-PEER-ADDRESS", sign);
            };
            match self.check_peer(a, p) {
                Ok(p) => {
                    let seen_before = msg
                        .xor_peer_addresses()
                        .take(i)
                        .any(|q| q.is_ok_and(|q| canonical_addr(q).ip() == p.ip()));
                    if !seen_before && !a.permissions.iter().any(|x| x.ip == p.ip()) {
                        new += 1;
                    }
                }
                Err((code, reason)) => return self.error(msg, out, code, reason, sign),
            }
            count += 1;
        }
        if count == 0 {
            return self.error(msg, out, 400, "Missing XOR-PEER-ADDRESS", sign);
        }
        if a.permissions.len() + new > self.cfg.max_permissions {
            self.counters.quota_refusals.inc();
            return self.error(msg, out, 508, "Insufficient Capacity (permissions)", sign);
        }
        let Some(a) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let mut added = 0;
        for p in msg.xor_peer_addresses().flatten() {
            added += i64::from(a.permit(canonical_addr(p).ip(), now + PERMISSION_LIFETIME));
        }
        self.counters.permissions_active.add(added);
        self.reschedule(slot);
        let b = MessageBuilder::response(out, msg, Class::Success);
        self.finish(b, msg, sign);
        self.counters.answered(Method::CREATE_PERMISSION, 200);
    }

    /// ChannelBind, RFC 8656 §11.2: a number 0x4000-0x4FFF (0x4000-0x7FFF
    /// as RFC 5766 allowed, unless strict), bound to one
    /// peer; neither may be bound to anything else while bound or cooling
    /// down (400); a re-bind of the same pair refreshes it, and the peer's
    /// permission with it.
    fn channel_bind(
        &mut self,
        now: Instant,
        slot: u32,
        msg: &Message<'_>,
        sign: Sign<'_>,
        out: &mut Vec<u8>,
    ) {
        let Some(a) = self.slots[slot as usize].as_ref() else {
            return;
        };
        let number = match msg.channel_number() {
            Ok(Some(n))
                if is_valid_channel(n)
                    && (!self.cfg.strict_channel_numbers || is_rfc8656_channel(n)) =>
            {
                n
            }
            _ => return self.error(msg, out, 400, "Bad CHANNEL-NUMBER", sign),
        };
        let peer = match msg.xor_peer_address() {
            Ok(Some(p)) => p,
            _ => return self.error(msg, out, 400, "Bad XOR-PEER-ADDRESS", sign),
        };
        let peer = match self.check_peer(a, peer) {
            Ok(p) => p,
            Err((code, reason)) => return self.error(msg, out, code, reason, sign),
        };
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        if by_number != by_peer {
            return self.error(msg, out, 400, "Channel or peer bound elsewhere", sign);
        }
        let need_perm = !a.permissions.iter().any(|p| p.ip == peer.ip());
        if (by_number.is_none() && a.channels.len() >= self.cfg.max_channels)
            || (need_perm && a.permissions.len() >= self.cfg.max_permissions)
        {
            self.counters.quota_refusals.inc();
            return self.error(msg, out, 508, "Insufficient Capacity (channels)", sign);
        }
        let Some(a) = self.slots[slot as usize].as_mut() else {
            return;
        };
        if a.permit(peer.ip(), now + PERMISSION_LIFETIME) {
            self.counters.permissions_active.add(1);
        }
        let expires = now + CHANNEL_LIFETIME;
        match by_number {
            Some(i) => {
                let c = &mut a.channels[i];
                c.expires = expires;
                if !c.counted {
                    c.counted = true;
                    self.counters.channels_active.add(1);
                }
            }
            None => {
                a.channels.push(Channel {
                    number,
                    peer,
                    expires,
                    counted: true,
                });
                self.counters.channels_active.add(1);
            }
        }
        self.reschedule(slot);
        let b = MessageBuilder::response(out, msg, Class::Success);
        self.finish(b, msg, sign);
        self.counters.answered(Method::CHANNEL_BIND, 200);
    }

    /// Send indication, RFC 8656 §10.2: relay DATA to XOR-PEER-ADDRESS if
    /// a permission exists; otherwise drop (indications get no answer).
    pub(super) fn send_indication<'a>(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        msg: &Message<'a>,
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Some(&slot) = self.by_ft.get(ft) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_peer_address(), msg.data()) else {
            self.counters.dropped(DropReason::Malformed);
            return ClientOutput::None;
        };
        let peer = canonical_addr(peer);
        self.relay_out(now, slot, peer, data, out)
    }

    /// ChannelData from a client, RFC 8656 §12.6.
    pub(super) fn client_channel_data<'a>(
        &mut self,
        now: Instant,
        ft: &FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Ok(cd) = ChannelData::parse(data) else {
            self.counters.dropped(DropReason::Malformed);
            return ClientOutput::None;
        };
        let Some(&slot) = self.by_ft.get(ft) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let Some(Some(a)) = self.slots.get(slot as usize) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        let Some(ch) = a.channel_by_number(cd.channel, now) else {
            self.counters.dropped(DropReason::NoChannel);
            return ClientOutput::None;
        };
        let peer = ch.peer;
        self.relay_out(now, slot, peer, cd.data, out)
    }

    /// The common tail of client → peer relaying: permission, peer policy
    /// (counted separately when it is why there is no permission),
    /// bandwidth, accounting; then the route ([`Server::route`]).
    #[inline]
    fn relay_out<'a>(
        &mut self,
        now: Instant,
        slot: u32,
        peer: SocketAddr,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        let Some(Some(a)) = self.slots.get_mut(slot as usize) else {
            self.counters.dropped(DropReason::NoAllocation);
            return ClientOutput::None;
        };
        if !a.permitted(peer.ip(), now) {
            let why = if self.cfg.policy.allows(peer.ip()) {
                DropReason::NoPermission
            } else {
                DropReason::PeerPolicy
            };
            self.counters.dropped(why);
            return ClientOutput::None;
        }
        if !a.bucket.take(data.len(), now) {
            self.counters.dropped(DropReason::Bandwidth);
            return ClientOutput::None;
        }
        a.traffic.packets_out += 1;
        a.traffic.bytes_out += data.len() as u64;
        let from = a.advertised;
        self.counters.relayed_packets_out.inc();
        self.counters.relayed_bytes_out.add(data.len() as u64);
        self.route(now, slot, from, peer, data, out)
    }

    /// Where `data`, leaving the relay in `slot` (which peers know as
    /// `from`) for `peer`, goes. To one of this core's relays: handed to
    /// that allocation as if it had arrived on its socket from `from`
    /// (`relayed_local`). To another shard's relay published in the relay
    /// directory: framed for its UDP client under its rules, to be sent
    /// from this shard's socket of the client's listener (the sockets of
    /// a listener share its address, so the client sees its five-tuple),
    /// without waking the other shard (`relayed_cross_shard`). Either way
    /// the one copy is into `out`. Anywhere else: through the kernel, from
    /// the relay socket, no copy.
    #[inline]
    fn route<'a>(
        &mut self,
        now: Instant,
        slot: u32,
        from: SocketAddr,
        peer: SocketAddr,
        data: &'a [u8],
        out: &mut Vec<u8>,
    ) -> ClientOutput<'a> {
        if let Some(to) = self.own_relay(peer) {
            self.counters.relayed_local.inc();
            return self
                .relay_to_relay(data, out, |s, buf, len| s.peer_in(now, to, from, buf, len));
        }
        if self.cfg.publish_relays {
            // One shard (publishing off): nothing is published, no lookup.
            if let Some(view) = self.shared.directory.get(peer) {
                self.counters.relayed_cross_shard.inc();
                return self.relay_to_relay(data, out, |s, buf, len| {
                    s.published_in(now, &view, from, buf, len)
                });
            }
        }
        ClientOutput::ToPeer {
            relay: RelayId(slot),
            peer,
            data,
        }
    }

    /// Copy `data` into `out` with room around it for the receiving
    /// allocation's framing, and let `frame` apply that allocation's rules
    /// and write it (see [`Server::handle_peer`]).
    fn relay_to_relay<'a>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        frame: impl FnOnce(&mut Self, &mut [u8], usize) -> Option<(FiveTuple, std::ops::Range<usize>)>,
    ) -> ClientOutput<'a> {
        let base = out.len();
        out.resize(base + PEER_HEADROOM, 0);
        out.extend_from_slice(data);
        out.resize(base + PEER_HEADROOM + data.len() + PEER_TAILROOM, 0);
        match frame(self, &mut out[base..], data.len()) {
            Some((ft, r)) => ClientOutput::ToClient {
                ft,
                range: base + r.start..base + r.end,
            },
            None => {
                out.truncate(base);
                ClientOutput::None
            }
        }
    }
}
