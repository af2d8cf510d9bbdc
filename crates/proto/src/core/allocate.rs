//! Allocate, RFC 8656 §7.2, in three steps: [`Server::parse_allocate`]
//! checks that the five-tuple may allocate and reads the request (no side
//! effect); [`Server::reserve`] takes what the allocation needs from the
//! shared state (a reservation, the quota, a slot, a relay port bound
//! through the shell), giving all of it back if a later part fails; and
//! [`Server::install`] answers and puts the allocation in the table.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::allocation::{Allocation, KeyBytes, TokenBucket, Traffic};
use super::auth::{AuthFailure, Authed};
use super::binding::canonical;
use super::cluster::{Admission, Gate};
use super::requests::{ALLOCATION_MISMATCH, Reject, Signer};
use super::shared::{PortChoice, Reservation};
use super::timers::Due;
use super::{
    Event, Family, FiveTuple, Fragmentation, Now, RESERVATION_LIFETIME, RelayFamily, RelayId,
    RelayIo, Server,
};
use crate::wire::{Class, Message, MessageBuilder, Method, attr};

/// How many ports to try binding before answering 508 (another process
/// may hold ports inside the range).
const BIND_ATTEMPTS: usize = 64;

/// 300: ALTERNATE-SERVER names where to allocate instead.
const TRY_ALTERNATE: Reject = Reject::new(300, "Try Alternate");

/// An Allocate request as read, every check of its attributes passed.
struct AllocateRequest {
    /// RESERVATION-TOKEN.
    token: Option<u64>,
    /// EVEN-PORT, and its R bit.
    port: PortChoice,
    lifetime: Option<u32>,
    /// REQUESTED-ADDRESS-FAMILY (IPv4 if absent).
    family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY (IPv6) was asked for.
    additional: bool,
    /// DONT-FRAGMENT.
    fragmentation: Fragmentation,
}

/// What [`Server::reserve`] took for an allocation, and what is left of
/// the request for [`Server::install`].
struct Reserved {
    slot: u32,
    relay: RelayFamily,
    port: u16,
    family: Family,
    /// The next port is held for a RESERVATION-TOKEN (EVEN-PORT, R bit).
    reserved_next: bool,
    lifetime: Option<u32>,
    additional: bool,
}

impl Server {
    /// Take one unit of the total and of `user`'s allocation quota (an
    /// allocation, or a port an EVEN-PORT reservation holds); false at
    /// either limit.
    fn acquire_quota_unit(&self, user: &str) -> bool {
        self.shared
            .acquire(
                user,
                self.cfg.max_allocations,
                self.cfg.max_allocations_per_user,
            )
            .is_ok()
    }

    /// Allocate, RFC 8656 §7.2, checks in the RFC's order. Whether it
    /// was answered (in `out`): not when it waits for the cluster's
    /// admission ([`super::cluster`]), or is a retransmission of one that
    /// waits.
    pub(super) fn allocate<I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> bool {
        self.allocate_with(now, ft, msg, authed, None, out, io)
    }

    /// A parked Allocate resumed with the cluster's `verdict`: the same
    /// checks again (the server may have started draining, the credential
    /// may have been revoked meanwhile), then the verdict, then the rest.
    #[allow(
        clippy::too_many_arguments,
        reason = "the request, its admission and the outputs"
    )]
    pub(super) fn allocate_admitted<I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        ticket: u64,
        verdict: Admission,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> bool {
        if self.revoked(&authed.username, now.unix) {
            return self.auth_error(now, msg, ft, AuthFailure::Revoked, out);
        }
        self.allocate_with(now, ft, msg, authed, Some((ticket, verdict)), out, io)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the request, its admission and the outputs"
    )]
    fn allocate_with<I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        admitted: Option<(u64, Admission)>,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> bool {
        let req = match self.parse_allocate(ft, msg) {
            Ok(req) => req,
            Err(r) => {
                self.reject_allocate(ft, msg, out, r, authed);
                return true;
            }
        };
        if self.full_with_fleet() {
            // A full node of a fleet sends the client to one with room.
            if let Some(alt) = self.pick_alternate(ft) {
                self.reject_with(msg, out, TRY_ALTERNATE, Some(Signer::of(authed)), |b| {
                    b.address(attr::ALTERNATE_SERVER, alt);
                });
                return true;
            }
        }
        let (id, verdict) = match admitted {
            Some((ticket, v)) => (ticket, Some(v)),
            None => match self.admission_gate(now, ft, msg, authed) {
                Gate::Proceed(v) => (self.take_id(), v),
                Gate::Parked | Gate::Retransmission => return false,
            },
        };
        if verdict == Some(Admission::Refused) {
            self.counters.quota_refusals.inc();
            let r = Reject::new(486, "Allocation Quota Reached (cluster)");
            self.reject(msg, out, r, Some(Signer::of(authed)));
            return true;
        }
        match self.reserve(now.mono, &req, authed, io) {
            Ok(r) => self.install(now, ft, msg, authed, r, id, out),
            Err(r) => self.reject(msg, out, r, Some(Signer::of(authed))),
        }
        true
    }

    /// Answer a refused Allocate; a 300 names an alternate server (the
    /// fleet's, else a static one), or becomes 486 without one.
    fn reject_allocate(
        &mut self,
        ft: &FiveTuple,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
        r: Reject,
        authed: &Authed<'_>,
    ) {
        let sign = Some(Signer::of(authed));
        if r.code != 300 {
            return self.reject(msg, out, r, sign);
        }
        match self.pick_alternate(ft) {
            Some(alt) => self.reject_with(msg, out, r, sign, |b| {
                b.address(attr::ALTERNATE_SERVER, alt);
            }),
            None => {
                self.counters.quota_refusals.inc();
                self.reject(
                    msg,
                    out,
                    Reject::new(486, "Allocation Quota Reached (draining)"),
                    sign,
                );
            }
        }
    }

    /// The next allocation id (also the ticket of a parked Allocate).
    pub(super) fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// May `ft` allocate now (437 if it has an allocation; while draining,
    /// 300 to the alternate server or 486), and is the request well
    /// formed (442, 400, 440)?
    fn parse_allocate(&self, ft: &FiveTuple, msg: &Message<'_>) -> Result<AllocateRequest, Reject> {
        if self.table.slot_of(ft).is_some() {
            return Err(ALLOCATION_MISMATCH);
        }
        if self.cfg.draining {
            // Operations: while draining, send new allocations elsewhere.
            if self.cfg.alternate_servers.is_empty() && self.fleet.fleet.alternates.is_empty() {
                self.counters.quota_refusals.inc();
                return Err(Reject::new(486, "Allocation Quota Reached (draining)"));
            }
            return Err(TRY_ALTERNATE);
        }
        match msg.requested_transport() {
            Ok(Some(attr::TRANSPORT_UDP)) => {}
            Ok(Some(_)) => return Err(Reject::new(442, "Unsupported Transport Protocol")),
            Ok(None) => return Err(Reject::new(400, "Missing REQUESTED-TRANSPORT")),
            Err(_) => return Err(Reject::new(400, "Bad REQUESTED-TRANSPORT")),
        }
        let (Ok(token), Ok(even), Ok(lifetime)) =
            (msg.reservation_token(), msg.even_port(), msg.lifetime())
        else {
            return Err(Reject::new(400, "Bad Request"));
        };
        let Ok(requested_family) = msg.requested_address_family() else {
            return Err(Reject::new(440, "Address Family not Supported"));
        };
        let Ok(additional_family) = msg.additional_address_family() else {
            return Err(Reject::new(400, "Bad ADDITIONAL-ADDRESS-FAMILY"));
        };
        if token.is_some()
            && (even.is_some() || requested_family.is_some() || additional_family.is_some())
        {
            return Err(Reject::new(
                400,
                "RESERVATION-TOKEN with EVEN-PORT or address family",
            ));
        }
        if requested_family.is_some() && additional_family.is_some() {
            return Err(Reject::new(
                400,
                "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together",
            ));
        }
        if additional_family == Some(attr::FAMILY_IPV4) {
            return Err(Reject::new(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6"));
        }
        Ok(AllocateRequest {
            token: token.map(u64::from_be_bytes),
            port: match even {
                None => PortChoice::Any,
                Some(false) => PortChoice::Even,
                Some(true) => PortChoice::EvenPair,
            },
            lifetime,
            family: if requested_family == Some(attr::FAMILY_IPV6) {
                Family::V6
            } else {
                Family::V4
            },
            additional: additional_family.is_some(),
            fragmentation: if msg.dont_fragment() {
                Fragmentation::DontFragment
            } else {
                Fragmentation::Allowed
            },
        })
    }

    /// Take a reservation (508 if unknown or expired), the relay family
    /// (440), the quota (486), a slot and a relay port bound through `io`
    /// (508 when none binds). On failure, what was taken goes back.
    fn reserve<I: RelayIo>(
        &mut self,
        now: Instant,
        req: &AllocateRequest,
        authed: &Authed<'_>,
        io: &mut I,
    ) -> Result<Reserved, Reject> {
        // The reservation decides the family when a token is used.
        let reservation = match req.token {
            Some(t) => match self.shared.take_reservation(t, now) {
                Some(r) => Some(r),
                None => {
                    return Err(Reject::new(
                        508,
                        "Insufficient Capacity (unknown or expired token)",
                    ));
                }
            },
            None => None,
        };
        let family = match reservation {
            Some(r) => Family::of_ip(r.ip),
            None => req.family,
        };
        let release_reservation = |s: &Server, io: &mut I| {
            if let Some(r) = reservation {
                s.shared.pool(family).release(r.port);
                io.release_hold(SocketAddr::new(r.ip, r.port));
            }
        };
        let Some(relay) = self.cfg.relay(family) else {
            release_reservation(self, io);
            return Err(Reject::new(440, "Address Family not Supported"));
        };
        if !self.acquire_quota_unit(authed.quota_user()) {
            release_reservation(self, io);
            self.counters.quota_refusals.inc();
            return Err(Reject::new(486, "Allocation Quota Reached"));
        }
        // EVEN-PORT with the R bit holds a second port: it counts against
        // the quotas too, until it is used or expires.
        let holds_next = reservation.is_none() && req.port == PortChoice::EvenPair;
        if holds_next && !self.acquire_quota_unit(authed.quota_user()) {
            self.shared.release(authed.quota_user());
            self.counters.quota_refusals.inc();
            return Err(Reject::new(
                486,
                "Allocation Quota Reached (EVEN-PORT reservation)",
            ));
        }
        let slot = self.table.reserve();
        let bound = match reservation {
            Some(r) => self.bind_reserved(slot, relay.bind, r, req.fragmentation, io),
            None => self.bind_picked(slot, relay.bind, family, req, io),
        };
        let Some(port) = bound else {
            self.table.unreserve(slot);
            self.shared.release(authed.quota_user());
            if holds_next {
                self.shared.release(authed.quota_user());
            }
            return Err(Reject::new(508, "Insufficient Capacity"));
        };
        Ok(Reserved {
            slot,
            relay,
            port,
            family,
            reserved_next: holds_next,
            lifetime: req.lifetime,
            additional: req.additional,
        })
    }

    /// Bind the reserved port, or give it back.
    fn bind_reserved<I: RelayIo>(
        &mut self,
        slot: u32,
        ip: IpAddr,
        r: Reservation,
        fragmentation: Fragmentation,
        io: &mut I,
    ) -> Option<u16> {
        if io
            .bind(RelayId(slot), SocketAddr::new(ip, r.port), fragmentation)
            .is_ok()
        {
            return Some(r.port);
        }
        self.shared.pool(Family::of_ip(r.ip)).release(r.port);
        io.release_hold(SocketAddr::new(r.ip, r.port));
        None
    }

    /// Pick a free port (even, or an even one with the next held for a
    /// reservation, as EVEN-PORT asks) and bind it; up to
    /// [`BIND_ATTEMPTS`] ports.
    fn bind_picked<I: RelayIo>(
        &mut self,
        slot: u32,
        ip: IpAddr,
        family: Family,
        req: &AllocateRequest,
        io: &mut I,
    ) -> Option<u16> {
        let pool = self.shared.pool(family);
        // Ports another process holds stay claimed until the loop ends,
        // so each attempt tries a new one.
        let pair = req.port == PortChoice::EvenPair;
        let mut failed = [0u16; BIND_ATTEMPTS];
        let mut n_failed = 0;
        let mut bound = None;
        while n_failed < BIND_ATTEMPTS {
            let Some(port) = pool.pick(&mut self.rng, req.port) else {
                break;
            };
            // With the R bit the successor is reserved: it is bound and
            // held first, so the token never promises a port another
            // process has (RFC 8656 §7.2).
            let next = pair.then(|| SocketAddr::new(ip, port + 1));
            if next.is_none_or(|n| io.hold(n).is_ok()) {
                if io
                    .bind(RelayId(slot), SocketAddr::new(ip, port), req.fragmentation)
                    .is_ok()
                {
                    bound = Some(port);
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
        bound
    }

    /// Answer with the relayed address and lifetime (and a
    /// RESERVATION-TOKEN for a held next port), and put the allocation in
    /// the table, the timer heap and the counters.
    #[allow(
        clippy::too_many_arguments,
        reason = "the request, what was reserved for it, its id and the output"
    )]
    fn install(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
        r: Reserved,
        id: u64,
        out: &mut Vec<u8>,
    ) {
        let Reserved {
            slot,
            relay: fam,
            port,
            family,
            reserved_next,
            lifetime,
            additional,
        } = r;
        let new_token = reserved_next.then(|| {
            let t: u64 = rand::Rng::random(&mut self.rng);
            self.shared.reserve(
                t,
                Reservation {
                    ip: fam.bind,
                    port: port + 1,
                    expires: now.mono + RESERVATION_LIFETIME,
                },
                authed.quota_user(),
            );
            self.timers
                .push(now.mono + RESERVATION_LIFETIME, Due::Reservation(t));
            t
        });
        let life = self.granted_lifetime(lifetime, authed.rest_expiry, now.unix);
        let relay = SocketAddr::new(fam.bind, port);
        let advertised = SocketAddr::new(fam.advertised_for(ft.server), port);
        let expires = now.mono + life;
        // Build the response first: it is also what a retransmission gets.
        let start = out.len();
        let mut b = MessageBuilder::response(out, msg, Class::Success);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, advertised)
            .lifetime(life.as_secs() as u32);
        if let Some(t) = new_token {
            b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        b.xor_address(attr::XOR_MAPPED_ADDRESS, canonical(ft.client.0));
        if additional {
            // RFC 8656 §7.2: dual allocation is optional; say the IPv6
            // part was not made, the IPv4 one was.
            b.address_error_code(attr::FAMILY_IPV6, 440, "Address Family not Supported");
        }
        self.finish(b, msg, Some(Signer::of(authed)));
        self.counters.answered(Method::ALLOCATE, 200);
        let generation = self.table.install(
            slot,
            Allocation {
                generation: 0, // set by the table
                ft: *ft,
                relay,
                advertised,
                username: authed.username.as_ref().into(),
                quota_user: authed.quota_user().into(),
                key: KeyBytes::of(&authed.key),
                password_algorithm: authed.password_algorithm,
                rest_expiry: authed.rest_expiry,
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
                mirrored: Default::default(),
            },
        );
        self.timers
            .push(expires, Due::Allocation { slot, generation });
        self.counters.allocations_created.inc();
        self.counters.active(ft.transport, family).add(1);
        self.push_event(Event::AllocationCreated {
            id,
            ft: *ft,
            relay,
            username: authed.username.to_string(),
            lifetime: life,
        });
    }
}
