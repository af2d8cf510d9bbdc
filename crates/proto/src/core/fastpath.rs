//! What a kernel fast path (the shell's XDP program, issue 15) may relay
//! on this core's behalf, as a stream of operations the shell drains with
//! [`Server::poll_fastpath`].
//!
//! A route is one channel binding of one allocation: ChannelData on
//! `channel` from the client's five-tuple goes from the relay to `peer`,
//! and a datagram from `peer` to the relay goes to the client with that
//! channel's header. It carries `expires`: the earliest of the channel's,
//! the peer's permission's and the allocation's expiry, so a route the
//! shell has not yet removed can never outlive what allowed it (the
//! program checks it against the kernel's monotonic clock).
//!
//! The core decides what is mirrored, and only what it would relay itself
//! the same way:
//!
//! * a UDP client (TCP/TLS framing stays in user space);
//! * no bandwidth cap: capped allocations stay on the user-space path,
//!   where their token bucket is charged;
//! * relay and peer of one family (always so: a permission is only for
//!   the allocation's family); the client may be of the other (4↔6);
//! * concrete listener and relay addresses (a wildcard one cannot be
//!   written into a packet);
//! * a peer the peer policy allows now (checked at every sync, so a reload
//!   that denies a peer removes its routes) and that is not one of this
//!   server's own addresses, unless it is one of its relays advertised at
//!   its bound address (relay → relay: the program matches one relay's
//!   route to the other's; behind 1:1 NAT, where peers know relays by
//!   another address, relay → relay stays in the core's own routing).
//!
//! Routes are re-synced after every request on the allocation
//! (ChannelBind, CreatePermission, Refresh: an install with the new
//! expiry), after each expiry sweep, and removed when the allocation ends
//! (expiry, Refresh 0, admin delete, revocation, shutdown). The shell
//! turns mirroring on with [`Server::set_fastpath`] once its program is
//! attached; while it is off, nothing is queued.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::Allocation;
use super::{ChannelNumber, ClientAddr, Family, Now, PeerAddr, Server, Transport};

/// One route of one allocation (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastRoute {
    /// The allocation's admin id (its counters in the program).
    pub alloc_id: u64,
    pub client: ClientAddr,
    /// The listener address the client reached.
    pub listener: SocketAddr,
    /// The relay socket's address.
    pub relay: SocketAddr,
    pub peer: PeerAddr,
    pub channel: ChannelNumber,
    /// The peer is one of this server's relays (relay → relay): the
    /// program hands the data to that relay's client, by its route from
    /// this relay.
    pub to_relay: bool,
    /// Until then (monotonic): min(channel, permission, allocation).
    pub expires: Instant,
}

/// What the shell is to do with its fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastpathOp {
    /// Add the route, or replace it (same client, listener, channel, relay
    /// and peer) with this expiry.
    Install(FastRoute),
    /// Remove the route.
    Remove(FastRoute),
    /// The allocation ended: forget its counters (after folding them in).
    Ended { alloc_id: u64 },
}

/// An allocation's mirrored routes: a `Vec`, empty (no heap, 24 bytes in
/// the allocation) while the fast path is off. Two routes inline cost
/// every allocation about 300 bytes, fast path or not.
pub(super) type Mirrored = Vec<FastRoute>;

impl Server {
    /// Turn mirroring on (the shell's program is attached) or off (it is
    /// detached or was never there). Turning it on installs the routes of
    /// every allocation; off forgets them without queuing removals (the
    /// program and its maps are gone).
    pub fn set_fastpath(&mut self, now: Now, on: bool) {
        self.fastpath_on = on;
        if !on {
            self.fastpath_ops.clear();
            for slot in 0..self.table.slots() {
                if let Some(a) = self.table.get_mut(slot) {
                    a.mirrored.clear();
                }
            }
            return;
        }
        self.mirror_all(now.mono);
    }

    /// Whether mirroring is on.
    pub fn fastpath(&self) -> bool {
        self.fastpath_on
    }

    /// The next operation for the shell's fast path, oldest first.
    pub fn poll_fastpath(&mut self) -> Option<FastpathOp> {
        self.fastpath_ops.pop_front()
    }

    /// Re-sync every allocation (mirroring turned on, a reload changed
    /// the policy).
    pub(super) fn mirror_all(&mut self, now: Instant) {
        if !self.fastpath_on {
            return;
        }
        for slot in 0..self.table.slots() {
            self.mirror(slot, now);
        }
    }

    /// Bring the allocation in `slot`'s routes in line with its channels
    /// and permissions at `now`: queue removals for routes that went,
    /// installs for new ones and for those whose expiry moved.
    pub(super) fn mirror(&mut self, slot: u32, now: Instant) {
        if !self.fastpath_on {
            return;
        }
        let Some(a) = self.table.get(slot) else {
            return;
        };
        let want = self.routes_of(a, now);
        let Some(a) = self.table.get_mut(slot) else {
            return;
        };
        for old in &a.mirrored {
            if !want.iter().any(|r| same_key(r, old)) {
                self.fastpath_ops.push_back(FastpathOp::Remove(*old));
            }
        }
        for r in &want {
            if !a.mirrored.iter().any(|old| old == r) {
                self.fastpath_ops.push_back(FastpathOp::Install(*r));
            }
        }
        a.mirrored = want;
    }

    /// A new configuration (reload): routes to peers the policy no longer
    /// allows go at once (the others keep their expiry).
    pub(super) fn unmirror_denied(&mut self) {
        if !self.fastpath_on {
            return;
        }
        for slot in 0..self.table.slots() {
            let Some(a) = self.table.get_mut(slot) else {
                continue;
            };
            let policy = &self.cfg.policy;
            a.mirrored.retain(|r| {
                let keep = policy.allows_peer(r.peer.0);
                if !keep {
                    self.fastpath_ops.push_back(FastpathOp::Remove(*r));
                }
                keep
            });
        }
    }

    /// An allocation ended: its routes go, then its counters.
    pub(super) fn unmirror(&mut self, a: &Allocation) {
        if !self.fastpath_on {
            return;
        }
        for r in &a.mirrored {
            self.fastpath_ops.push_back(FastpathOp::Remove(*r));
        }
        self.fastpath_ops
            .push_back(FastpathOp::Ended { alloc_id: a.id });
    }

    /// The routes `a` should have at `now` (see the module doc).
    fn routes_of(&self, a: &Allocation, now: Instant) -> Mirrored {
        let mut out = Mirrored::new();
        let family = Family::of(a.relay);
        if a.ft.transport != Transport::Udp
            || !a.bucket.unlimited()
            || a.expires <= now
            || Family::of(a.ft.client.0) != Family::of(a.ft.server)
            || a.relay.ip().is_unspecified()
            || a.ft.server.ip().is_unspecified()
        {
            return out;
        }
        for ch in a.channels.iter().filter(|c| c.active(now)) {
            let peer = ch.peer;
            let to_relay = self.is_relay_address(peer);
            if Family::of(peer.0) != family
                || !self.cfg.policy.allows_peer(peer.0)
                || (self.is_own_address(peer) && !(to_relay && self.relays_unnatted(family)))
            {
                continue;
            }
            let Some(perm) = a
                .permissions
                .iter()
                .find(|p| p.ip == peer.ip() && now < p.expires)
            else {
                continue;
            };
            out.push(FastRoute {
                alloc_id: a.id,
                client: a.ft.client,
                listener: a.ft.server,
                relay: a.relay,
                peer,
                channel: ch.number,
                to_relay,
                expires: ch.expires.min(perm.expires).min(a.expires),
            });
        }
        out
    }

    /// Whether relays of `family` are advertised at the address they are
    /// bound to (so a relay's peers know it by the address its packets
    /// carry).
    fn relays_unnatted(&self, family: Family) -> bool {
        self.cfg
            .relay(family)
            .is_some_and(|f| f.bind == f.advertised && !f.bind.is_unspecified())
    }

    /// Whether `peer` is on one of this server's relay addresses (any
    /// port: a relay, or a service on the relay host the program could
    /// not reach by sending out of an interface).
    fn is_own_address(&self, PeerAddr(addr): PeerAddr) -> bool {
        self.cfg
            .relay(Family::of(addr))
            .is_some_and(|f| addr.ip() == f.bind || addr.ip() == f.advertised)
    }
}

/// Whether two routes are the same entry in the program's maps (all but
/// the expiry).
fn same_key(a: &FastRoute, b: &FastRoute) -> bool {
    FastRoute {
        expires: b.expires,
        ..*a
    } == *b
}
