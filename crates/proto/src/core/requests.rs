//! TURN requests (RFC 8656 §7-§11): authentication and dispatch, the
//! replay of a retransmitted request's response, Refresh,
//! CreatePermission and ChannelBind (Allocate has its own file), and the
//! shape of every answer: [`Reject`] for errors, [`Server::finish`] for
//! the trailing attributes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{Allocation, CHANNEL_LIFETIME, Channel, PERMISSION_LIFETIME};
use super::auth::{AuthFailure, Authed, Integrity, NONCE_SECURITY_PREFIX, OFFERED_ALGORITHMS};
use super::data::Publish;
use super::policy::canonical_addr;
use super::{
    AuthFailureReason, ChannelNumber, ClientOutput, DEFAULT_LIFETIME, DropReason, EndReason,
    FiveTuple, Now, PeerAddr, RateLimitReason, RelayIo, Server, Transport,
};
use crate::wire::{
    Class, IntegrityKey, Message, MessageBuilder, Method, attr, is_rfc8656_channel,
    is_valid_channel,
};

/// What a peer address in a request is for: a permission (per address,
/// its port ignored) or a channel (address and port).
#[derive(Clone, Copy, PartialEq, Eq)]
enum PeerUse {
    Permission,
    Channel,
}

/// How to sign the response to an authenticated request: with its key,
/// the way the request was signed (RFC 8489 §9.2.4).
#[derive(Clone, Copy)]
pub(super) struct Signer<'k> {
    key: &'k IntegrityKey,
    integrity: Integrity,
}

impl<'k> Signer<'k> {
    pub(super) fn of(authed: &'k Authed<'_>) -> Self {
        Signer {
            key: &authed.key,
            integrity: authed.integrity,
        }
    }
}

/// A set of addresses for membership tests only (never iterated: the
/// order would not be reproducible).
type IpSet = std::collections::HashSet<std::net::IpAddr, foldhash::fast::RandomState>;

/// An error answer (RFC 8489 §6.3.4): the code and reason phrase of its
/// ERROR-CODE. Every error response of the core is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reject {
    pub(super) code: u16,
    pub(super) reason: &'static str,
}

impl Reject {
    pub(super) const fn new(code: u16, reason: &'static str) -> Self {
        Reject { code, reason }
    }
}

impl From<AuthFailure> for Reject {
    fn from(f: AuthFailure) -> Self {
        Reject::new(f.code(), f.reason())
    }
}

/// RFC 8656 §7.3, §9.2, §11.2: no allocation on this five-tuple (or, for
/// Allocate, one already).
pub(super) const ALLOCATION_MISMATCH: Reject = Reject::new(437, "Allocation Mismatch");
const PEER_FAMILY_MISMATCH: Reject = Reject::new(443, "Peer Address Family Mismatch");
const BAD_PEER_ADDRESS: Reject = Reject::new(400, "Bad XOR-PEER-ADDRESS");
pub(super) const UNKNOWN_ATTRIBUTE: Reject = Reject::new(420, "Unknown Attribute");

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
            // Nobody who could authenticate sends these: a 400 would only
            // feed a reflection (issue 12), so nothing goes back.
            self.counters.dropped(DropReason::UnknownMethod);
            return ClientOutput::None;
        }
        let slot = self.table.slot_of(ft);
        let tid = msg.transaction_id();
        if let Some(a) = slot.and_then(|s| self.table.get(s)) {
            if let Some((t, bytes)) = &a.last_response {
                // Not once the credential has expired: the retransmission
                // authenticates again and gets 401.
                if *t == tid
                    && a.rest_expiry.is_none_or(|e| e > now.unix)
                    && !self.revoked(&a.username, now.unix)
                {
                    out.extend_from_slice(bytes);
                    return ClientOutput::Reply;
                }
            }
        }
        let existing = slot
            .and_then(|s| self.table.get(s))
            .map(|a| (a.username.to_string(), a.key.key(), a.password_algorithm));
        let authed = match self.auth.authenticate(
            msg,
            ft.client,
            now.unix,
            existing.as_ref().map(|(u, k, a)| (u.as_str(), k, *a)),
        ) {
            // A revoked credential (issue 14) is refused like an expired
            // one, on every request: Allocate, Refresh, CreatePermission,
            // ChannelBind.
            Ok(a) if self.revoked(&a.username, now.unix) => {
                return if self.auth_error(now, msg, ft, AuthFailure::Revoked, out) {
                    ClientOutput::Reply
                } else {
                    ClientOutput::None
                };
            }
            Ok(a) => a,
            Err(f) => {
                return if self.auth_error(now, msg, ft, f, out) {
                    ClientOutput::Reply
                } else {
                    ClientOutput::None
                };
            }
        };
        let sign = Some(Signer::of(&authed));
        let start = out.len();
        // RFC 8489 §6.3.1: after authentication, unknown
        // comprehension-required attributes → 420.
        let unknown = msg.unknown_comprehension_required(attr::known_to_server);
        if !unknown.is_empty() {
            self.reject_with(msg, out, UNKNOWN_ATTRIBUTE, sign, |b| {
                b.unknown_attributes(unknown.as_slice());
            });
            return ClientOutput::Reply;
        }
        if method == Method::ALLOCATE {
            return if self.allocate(now, ft, msg, &authed, out, io) {
                ClientOutput::Reply
            } else {
                ClientOutput::None
            };
        }
        let Some(slot) = slot else {
            self.reject(msg, out, ALLOCATION_MISMATCH, sign);
            return ClientOutput::Reply;
        };
        if existing.is_some_and(|(u, _, _)| u != authed.username) {
            // RFC 8656 §5: later requests must use the allocation's
            // credentials.
            self.counters
                .auth_failed(AuthFailureReason::WrongCredentials);
            self.reject(msg, out, Reject::new(441, "Wrong Credentials"), sign);
            return ClientOutput::Reply;
        }
        let done = match method {
            Method::REFRESH => self.refresh(now, slot, msg, &authed, out, io),
            Method::CREATE_PERMISSION => self.create_permission(now.mono, slot, msg, sign, out),
            _ => self.channel_bind(now.mono, slot, msg, sign, out),
        };
        if let Err(r) = done {
            self.reject(msg, out, r, sign);
        }
        if let Some(a) = self.table.get_mut(slot) {
            a.last_response = Some((tid, out[start..].to_vec()));
        }
        self.publish(slot, Publish::Republish);
        self.mirror(slot, now.mono);
        ClientOutput::Reply
    }

    /// 401/438 carry REALM and a fresh NONCE so the client can
    /// (re)compute its key (RFC 8489 §9.2.4), and, where the amplification
    /// budget leaves room, the security features (the nonce cookie and
    /// PASSWORD-ALGORITHMS); they are not signed. 400 is plain. Whether
    /// anything is sent: the rate limit and the budget decide
    /// ([`Server::reject_unsigned`]).
    pub(super) fn auth_error(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        ft: &FiveTuple,
        f: AuthFailure,
        out: &mut Vec<u8>,
    ) -> bool {
        let reason = match f {
            AuthFailure::Challenge => None,
            AuthFailure::BadRequest(_) => Some(AuthFailureReason::BadRequest),
            AuthFailure::StaleNonce => Some(AuthFailureReason::StaleNonce),
            AuthFailure::UnknownUser => Some(AuthFailureReason::UnknownUser),
            AuthFailure::ExpiredUsername => Some(AuthFailureReason::ExpiredUsername),
            AuthFailure::BadIntegrity => Some(AuthFailureReason::BadIntegrity),
            AuthFailure::Revoked => Some(AuthFailureReason::Revoked),
        };
        if let Some(r) = reason {
            self.counters.auth_failed(r);
        }
        let r = Reject::from(f);
        if !self.unauth_allowed(now.mono, ft, RateLimitReason::of_code(r.code)) {
            return false;
        }
        if r.code == 400 {
            return self.reject_unsigned(msg, ft, out, r, false, |_, _| {});
        }
        let nonce = self.auth.nonce(ft.client, now.unix);
        let realm = self.auth.credentials().realm();
        self.reject_unsigned(msg, ft, out, r, true, |b, security| {
            b.text(attr::REALM, realm);
            if security {
                b.text(attr::NONCE, &nonce);
                b.password_algorithms(&OFFERED_ALGORITHMS);
            } else {
                b.text(attr::NONCE, &nonce[NONCE_SECURITY_PREFIX.len()..]);
            }
        })
    }

    /// The most bytes an unauthenticated answer to `req` may have: over
    /// UDP three times the request's, so a spoofed source gains at most
    /// threefold (issue 12); over TCP/TLS the handshake proved the address.
    pub(super) fn unauth_budget(ft: &FiveTuple, req: &Message<'_>) -> usize {
        match ft.transport {
            Transport::Udp => 3 * req.as_bytes().len(),
            Transport::Tcp | Transport::Tls => usize::MAX,
        }
    }

    /// The per-source rate limit on unauthenticated UDP answers
    /// ([`super::ratelimit`]): whether this one may go; counted if not.
    pub(super) fn unauth_allowed(
        &self,
        now: Instant,
        ft: &FiveTuple,
        why: RateLimitReason,
    ) -> bool {
        if ft.transport != Transport::Udp || self.shared.rate_limit.allow(now, ft.client.0.ip()) {
            return true;
        }
        self.counters.rate_limited(why);
        false
    }

    /// An unsigned error answer, fitted to [`Server::unauth_budget`]: the
    /// fullest of (reason phrase and security features), (security
    /// features), (reason phrase), (neither) that fits is sent; `extra`
    /// writes the attributes after ERROR-CODE, with or without the security
    /// features (`security` is false when the answer has none to offer).
    /// Nothing fits: nothing is sent (RFC 8489 allows a server not to
    /// answer), counted as dropped for amplification, and false returned.
    pub(super) fn reject_unsigned(
        &self,
        req: &Message<'_>,
        ft: &FiveTuple,
        out: &mut Vec<u8>,
        r: Reject,
        security: bool,
        extra: impl Fn(&mut MessageBuilder<'_>, bool),
    ) -> bool {
        let budget = Self::unauth_budget(ft, req);
        let start = out.len();
        for (with_reason, with_security) in
            [(true, true), (false, true), (true, false), (false, false)]
        {
            if with_security && !security {
                continue;
            }
            let mut b = MessageBuilder::response(out, req, Class::Error);
            b.error_code(r.code, if with_reason { r.reason } else { "" });
            extra(&mut b, with_security);
            self.finish(b, req, None);
            if out.len() - start <= budget {
                self.counters.answered(req.method(), r.code);
                return true;
            }
            out.truncate(start);
        }
        self.counters.dropped(DropReason::Amplification);
        false
    }

    /// RFC 8656 §7.2 lifetime rule: min(requested, maximum), but never
    /// below the default (600 s) unless the maximum itself is lower; and
    /// never past a REST credential's expiry (`rest_expiry`, Unix seconds;
    /// authentication refused it once `wall` reached it, so at least a
    /// second is left).
    pub(super) fn granted_lifetime(
        &self,
        requested: Option<u32>,
        rest_expiry: Option<u64>,
        wall: u64,
    ) -> Duration {
        let max = self.cfg.max_lifetime;
        let want = requested.map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(u64::from(s)));
        let life = want.min(max).max(DEFAULT_LIFETIME.min(max));
        match rest_expiry {
            Some(e) => life.min(Duration::from_secs(e.saturating_sub(wall))),
            None => life,
        }
    }

    /// Refresh, RFC 8656 §7.3: LIFETIME 0 deletes, anything else sets a
    /// new expiry by the §7.2 rule, clamped to the credential's expiry.
    fn refresh<I: RelayIo>(
        &mut self,
        now: Now,
        slot: u32,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> Result<(), Reject> {
        let sign = Some(Signer::of(authed));
        let Ok(requested) = msg.lifetime() else {
            return Err(Reject::new(400, "Bad LIFETIME"));
        };
        let a = self.table.get(slot).ok_or(ALLOCATION_MISMATCH)?;
        match msg.requested_address_family() {
            Ok(None) => {}
            Ok(Some(f)) if (f == attr::FAMILY_IPV6) == a.relay.is_ipv6() => {}
            _ => return Err(PEER_FAMILY_MISMATCH),
        }
        let life = if requested == Some(0) {
            Duration::ZERO
        } else {
            self.granted_lifetime(requested, authed.rest_expiry, now.unix)
        };
        let mut b = MessageBuilder::response(out, msg, Class::Success);
        b.lifetime(life.as_secs() as u32);
        self.finish(b, msg, sign);
        self.counters.answered(Method::REFRESH, 200);
        if life.is_zero() {
            self.delete(slot, now.mono, EndReason::Refreshed0, io);
        } else if let Some(a) = self.table.get_mut(slot) {
            a.expires = now.mono + life;
            self.reschedule(slot);
        }
        Ok(())
    }

    /// Canonicalise a peer address and check it against the allocation's
    /// family (443) and the peer policy (403), its port too: the server's
    /// own addresses only on relay ports ([`super::PeerPolicy::allows_peer`]).
    /// A permission's port is ignored (RFC 8656 §9.1) and ICE agents send
    /// 0: then the address alone is judged, and the port of each datagram
    /// later (ChannelBind, every Send indication).
    fn check_peer(
        &self,
        a: &Allocation,
        peer: SocketAddr,
        use_: PeerUse,
    ) -> Result<PeerAddr, Reject> {
        let peer = PeerAddr(canonical_addr(peer));
        if peer.0.is_ipv6() != a.relay.is_ipv6() {
            return Err(PEER_FAMILY_MISMATCH);
        }
        let allowed = match use_ {
            PeerUse::Permission if peer.0.port() == 0 => self.cfg.policy.allows(peer.ip()),
            _ => self.cfg.policy.allows_peer(peer.0),
        };
        if !allowed {
            self.counters.policy_refusals.inc();
            return Err(Reject::new(403, "Forbidden"));
        }
        Ok(peer)
    }

    /// CreatePermission, RFC 8656 §9.2: every XOR-PEER-ADDRESS is checked
    /// before any is installed, so the request is all or nothing.
    ///
    /// Cheap against a hostile client (issue 12): more addresses than the
    /// permission cap is a 508 before any address is decoded; the
    /// duplicate scan is linear (hash sets), never each address against
    /// every other (and the parser allows 128 attributes in all).
    fn create_permission(
        &mut self,
        now: Instant,
        slot: u32,
        msg: &Message<'_>,
        sign: Option<Signer<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        let a = self.table.get(slot).ok_or(ALLOCATION_MISMATCH)?;
        let count = msg
            .attributes()
            .filter(|x| x.typ == attr::XOR_PEER_ADDRESS)
            .count();
        if count == 0 {
            return Err(Reject::new(400, "Missing XOR-PEER-ADDRESS"));
        }
        if count > self.cfg.max_permissions {
            self.counters.quota_refusals.inc();
            return Err(Reject::new(508, "Insufficient Capacity (permissions)"));
        }
        // One pass over the addresses, one over the permissions: set
        // lookups, never every address against every other.
        let have: IpSet = a.permissions.iter().map(|x| x.ip).collect();
        let mut seen = IpSet::with_capacity_and_hasher(count, Default::default());
        let mut ips: smallvec::SmallVec<[std::net::IpAddr; 8]> =
            smallvec::SmallVec::with_capacity(count);
        let mut new = 0;
        for p in msg.xor_peer_addresses() {
            let ip = self
                .check_peer(a, p.map_err(|_| BAD_PEER_ADDRESS)?, PeerUse::Permission)?
                .ip();
            if seen.insert(ip) {
                ips.push(ip);
                new += usize::from(!have.contains(&ip));
            }
        }
        if a.permissions.len() + new > self.cfg.max_permissions {
            self.counters.quota_refusals.inc();
            return Err(Reject::new(508, "Insufficient Capacity (permissions)"));
        }
        let a = self.table.get_mut(slot).ok_or(ALLOCATION_MISMATCH)?;
        let mut added = 0;
        for ip in ips {
            added += i64::from(a.permit(ip, now + PERMISSION_LIFETIME));
        }
        self.counters.permissions_active.add(added);
        self.reschedule(slot);
        let b = MessageBuilder::response(out, msg, Class::Success);
        self.finish(b, msg, sign);
        self.counters.answered(Method::CREATE_PERMISSION, 200);
        Ok(())
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
        sign: Option<Signer<'_>>,
        out: &mut Vec<u8>,
    ) -> Result<(), Reject> {
        let a = self.table.get(slot).ok_or(ALLOCATION_MISMATCH)?;
        let number = match msg.channel_number() {
            Ok(Some(n))
                if is_valid_channel(n)
                    && (!self.cfg.strict_channel_numbers || is_rfc8656_channel(n)) =>
            {
                ChannelNumber(n)
            }
            _ => return Err(Reject::new(400, "Bad CHANNEL-NUMBER")),
        };
        let peer = match msg.xor_peer_address() {
            Ok(Some(p)) => p,
            _ => return Err(BAD_PEER_ADDRESS),
        };
        let peer = self.check_peer(a, peer, PeerUse::Channel)?;
        let by_number = a.channels.iter().position(|c| c.number == number);
        let by_peer = a.channels.iter().position(|c| c.peer == peer);
        if by_number != by_peer {
            return Err(Reject::new(400, "Channel or peer bound elsewhere"));
        }
        let need_perm = !a.permissions.iter().any(|p| p.ip == peer.ip());
        if (by_number.is_none() && a.channels.len() >= self.cfg.max_channels)
            || (need_perm && a.permissions.len() >= self.cfg.max_permissions)
        {
            self.counters.quota_refusals.inc();
            return Err(Reject::new(508, "Insufficient Capacity (channels)"));
        }
        let a = self.table.get_mut(slot).ok_or(ALLOCATION_MISMATCH)?;
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
        Ok(())
    }

    /// The trailing attributes of every response: SOFTWARE (unless hidden)
    /// and MESSAGE-INTEGRITY(-SHA256) for an authenticated request, signed
    /// the way the request was (RFC 8489 §9.2.4) — an unauthenticated
    /// answer carries no SOFTWARE, so that it stays small (issue 12:
    /// amplification); FINGERPRINT if the request carried one (§14.7).
    pub(super) fn finish(
        &self,
        mut b: MessageBuilder<'_>,
        req: &Message<'_>,
        sign: Option<Signer<'_>>,
    ) {
        if let (Some(sw), Some(_)) = (&self.cfg.software, sign) {
            b.text(attr::SOFTWARE, sw);
        }
        match sign {
            Some(Signer {
                key,
                integrity: Integrity::Sha256,
            }) => {
                b.integrity_sha256(key);
            }
            Some(Signer {
                key,
                integrity: Integrity::Sha1,
            }) => {
                b.integrity(key);
            }
            None => {}
        }
        if req.has_fingerprint() {
            b.fingerprint();
        }
    }

    /// Answer `req` with the error `r`, signed if `sign` is given. A 300
    /// (Try Alternate) names the alternate server (RFC 8489 §10).
    pub(super) fn reject(
        &self,
        req: &Message<'_>,
        out: &mut Vec<u8>,
        r: Reject,
        sign: Option<Signer<'_>>,
    ) {
        self.reject_with(req, out, r, sign, |b| {
            if r.code == 300 {
                if let Some(&alt) = self.cfg.alternate_servers.first() {
                    b.address(attr::ALTERNATE_SERVER, alt);
                }
            }
        });
    }

    /// [`Server::reject`] with attributes of its own, written by `extra`
    /// after ERROR-CODE.
    pub(super) fn reject_with(
        &self,
        req: &Message<'_>,
        out: &mut Vec<u8>,
        r: Reject,
        sign: Option<Signer<'_>>,
        extra: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        let mut b = MessageBuilder::response(out, req, Class::Error);
        b.error_code(r.code, r.reason);
        extra(&mut b);
        self.finish(b, req, sign);
        self.counters.answered(req.method(), r.code);
    }
}
