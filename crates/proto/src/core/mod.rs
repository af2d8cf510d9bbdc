//! The sans-IO server core: STUN Binding (RFC 8489) and TURN (RFC 8656).
//!
//! The core does no I/O, reads no clock and draws no global randomness.
//! The shell passes the time ([`Now`]) into every call, gives the core a
//! seeded RNG at construction, and performs the two side effects the core
//! asks for through [`RelayIo`] (bind and close a relay socket). The
//! driving loop:
//!
//! 1. bytes from a client → [`Server::handle_client`] → [`ClientOutput`],
//!    the final route: a reply for the client in `out`; data to send from
//!    a relay socket to a peer (borrowed from the input, no copy); or, when
//!    the peer is one of this server's relays (this core's, or another
//!    shard's published in the [`directory`]), the message for that
//!    relay's client, framed in `out` (one copy, no trip through the
//!    kernel);
//! 2. a datagram on a relay socket → [`Server::handle_peer`] →
//!    [`PeerOutput`]: the ChannelData or Data indication for the client,
//!    written in place in the headroom in front of the payload;
//! 3. when [`Server::poll_timeout`] passes → [`Server::handle_timeout`]
//!    (expiry of allocations, permissions, channels, reservations);
//! 4. [`Server::poll_event`] for allocation start/end (logs, admin);
//! 5. [`Counters`] are read by the shell whenever it publishes metrics.
//!
//! With a fleet (issue 14, [`cluster`]): [`Server::poll_admit`] after a
//! request, [`Server::admitted`] with the shell's answer, and
//! [`Server::expire_admissions`] when [`Server::poll_timeout`] passes.
//!
//! Tests drive exactly these calls with a manual clock.
//!
//! Files by job: `types` (what the interface is written in: [`Now`],
//! [`FiveTuple`], [`RelayId`], the outputs, [`RelayIo`], events),
//! `config` ([`CoreConfig`], [`Setup`]), `table` (the allocation table:
//! slots, generations, free list, the five-tuple and advertised-address
//! indexes), `data` (the data plane: client → peer, peer → client, relay
//! → relay), `requests` (authentication, Refresh, CreatePermission,
//! ChannelBind, the shape of every answer), `allocate` (Allocate: parse,
//! reserve, install), `lifecycle` (timeouts, deletion, admin, shutdown),
//! [`fastpath`] (the routes a kernel fast path may relay, for the shell),
//! `binding` (the Binding responder); and the parts with a public face:
//! [`allocation`] (one allocation's state), [`auth`], [`policy`],
//! [`ratelimit`] (the per-source bucket on unauthenticated UDP answers),
//! [`shared`] (port pools, quotas, reservations), [`directory`] (the
//! relay directory), [`revocation`] (revoked credentials), [`counters`].

mod allocate;
pub mod allocation;
pub mod auth;
mod binding;
pub mod cluster;
mod config;
pub mod counters;
mod data;
pub mod directory;
pub mod fastpath;
mod lifecycle;
pub mod policy;
pub mod ratelimit;
mod requests;
pub mod revocation;
pub mod shared;
mod slots;
mod table;
mod timers;
mod types;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

pub use allocation::{Allocation, Traffic};
pub use auth::{Authenticator, Credentials, Integrity, StaticCredential};
pub use binding::canonical;
pub use cluster::{Admission, AdmitRequest, Alternate, Fleet};
pub use config::{CoreConfig, RelayFamily, Setup};
pub use counters::{
    AuthFailureReason, Counter, Counters, DropReason, EndReason, Gauge, RateLimitReason,
};
pub use fastpath::{FastRoute, FastpathOp};
pub use policy::{OwnAddresses, PeerPolicy};
pub use ratelimit::RateLimit;
pub use revocation::Revocations;
pub use shared::{PortChoice, Shared};
pub use types::{
    ChannelNumber, ClientAddr, ClientOutput, DEFAULT_LIFETIME, Event, Family, FiveTuple,
    Fragmentation, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAddr, PeerOutput, PortRange,
    RESERVATION_LIFETIME, RelayId, RelayIo, SessionInfo, Transport,
};

use crate::wire::{Class, FrameKind, Message, Method};
use table::Table;
use timers::Timers;

/// Events kept for the shell before the oldest are dropped, at least (see
/// [`Server::push_event`]).
const MAX_EVENTS: usize = 4096;

/// One server core. The shell owns one per shard (thread).
pub struct Server {
    cfg: Arc<CoreConfig>,
    counters: Arc<Counters>,
    shared: Arc<Shared>,
    auth: Authenticator,
    /// Credentials revoked by the admin API (pushed by the shell).
    revocations: Arc<Revocations>,
    rng: StdRng,
    table: Table,
    timers: Timers,
    events: VecDeque<Event>,
    next_id: u64,
    /// Routes are mirrored for the shell's fast path ([`fastpath`]).
    fastpath_on: bool,
    /// Operations for it, drained by [`Server::poll_fastpath`].
    fastpath_ops: VecDeque<fastpath::FastpathOp>,
    /// The fleet (issue 14): alternates, parked Allocates.
    fleet: cluster::FleetState,
}

impl Server {
    pub fn new(s: Setup) -> Self {
        s.shared.rate_limit.configure(s.cfg.unauth_limit);
        Server {
            table: Table::new(s.shared.pool(Family::V4).range()),
            auth: Authenticator::new(s.creds, &s.nonce_key),
            revocations: Arc::default(),
            cfg: s.cfg,
            counters: s.counters,
            shared: s.shared,
            rng: StdRng::seed_from_u64(s.seed),
            timers: Timers::default(),
            events: VecDeque::new(),
            next_id: u64::from(s.shard) << 48,
            fastpath_on: false,
            fastpath_ops: VecDeque::new(),
            fleet: cluster::FleetState::default(),
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Derived keys cached by the authenticator.
    pub fn cached_keys(&self) -> usize {
        self.auth.cached_keys()
    }

    /// Entries in the timer heap (live and stale), for memory tests.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Swap in a new configuration (reload): peer policy, quotas, caps,
    /// lifetimes, draining. Live allocations keep relaying.
    pub fn set_config(&mut self, cfg: Arc<CoreConfig>) {
        self.shared.rate_limit.configure(cfg.unauth_limit);
        self.cfg = cfg;
        self.unmirror_denied();
    }

    /// Swap in new credentials (reload), and end at once every allocation
    /// whose key no longer verifies with them: its static user was removed
    /// (or its password changed), or the last secret that derived its REST
    /// key is gone (counted as [`EndReason::Revoked`]). Ending them, rather
    /// than refusing their next request, stops their relaying now: a
    /// revoked credential keeps no relay, port or quota until the
    /// allocation's lifetime runs out. Returns how many ended.
    pub fn set_credentials<I: RelayIo>(
        &mut self,
        now: Now,
        creds: Arc<Credentials>,
        io: &mut I,
    ) -> usize {
        let unchanged_or_wider = creds.covers(self.auth.credentials());
        self.auth.set_credentials(creds);
        if unchanged_or_wider {
            // Nothing removed: every key that verified still does.
            return 0;
        }
        let revoked: Vec<u32> = self
            .table
            .iter()
            .filter(|(_, a)| {
                !self
                    .auth
                    .still_verifies(&a.username, a.password_algorithm, a.key.as_bytes())
            })
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &revoked {
            self.delete(slot, now.mono, EndReason::Revoked, io);
        }
        revoked.len()
    }

    /// Swap in a new revocation set (the admin API changed it), and end at
    /// once every allocation whose username it revokes at `now` (counted
    /// as [`EndReason::Revocation`]): from then on every request with a
    /// revoked credential gets 401, as an expired one does. Returns how
    /// many ended.
    pub fn set_revocations<I: RelayIo>(
        &mut self,
        now: Now,
        revocations: Arc<Revocations>,
        io: &mut I,
    ) -> usize {
        self.revocations = revocations;
        if self.revocations.is_empty() {
            return 0;
        }
        let revoked: Vec<u32> = self
            .table
            .iter()
            .filter(|(_, a)| self.revocations.revokes(&a.username, now.unix))
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &revoked {
            self.delete(slot, now.mono, EndReason::Revocation, io);
        }
        revoked.len()
    }

    /// Whether `username` is revoked at Unix time `wall`.
    pub(super) fn revoked(&self, username: &str, wall: u64) -> bool {
        self.revocations.revokes(username, wall)
    }

    /// Allocations alive on this core.
    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// The earliest instant [`Server::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.fleet.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Next allocation start/end event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queue an event. The queue is bounded so a shell that never polls
    /// does not grow without limit, but the bound must hold what a single
    /// call can queue when the shell does poll after every call: one end
    /// per allocation of this core ([`Server::delete_all`] at shutdown, a
    /// timer batch). Twice the core's allocation high-water mark (its
    /// slot table) covers that and stays bounded by `max_allocations`.
    pub(super) fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS.max(2 * self.table.slots() as usize) {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Handle one datagram (UDP) or one whole frame (TCP/TLS) from a
    /// client. A reply is appended to `out` (which the caller clears).
    ///
    /// RFC 8489 §6.3 and RFC 8656 §12: the first two bits tell STUN (00)
    /// from ChannelData (01); anything else, or a message that is not
    /// well-formed, is dropped silently and counted, as is one whose
    /// FINGERPRINT does not match (§14.7). A malformed packet never costs
    /// more bytes out than it brought in.
    pub fn handle_client<'a, I: RelayIo>(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        data: &'a [u8],
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> ClientOutput<'a> {
        match crate::wire::classify_bytes(data) {
            Some(FrameKind::Stun) => {}
            Some(FrameKind::ChannelData) => {
                return self.client_channel_data(now.mono, ft, data, out);
            }
            None => {
                self.counters.dropped(DropReason::Malformed);
                return ClientOutput::None;
            }
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.dropped(DropReason::Malformed);
                return ClientOutput::None;
            }
        };
        if msg.check_fingerprint() == Some(false) {
            self.counters.dropped(DropReason::BadFingerprint);
            return ClientOutput::None;
        }
        match (msg.class(), msg.method()) {
            (Class::Request, Method::BINDING) => binding::respond(self, now, &msg, ft, out),
            (Class::Request, _) => self.turn_request(now, ft, &msg, out, io),
            (Class::Indication, Method::SEND) => self.send_indication(now.mono, ft, &msg, out),
            _ => {
                // A Binding indication is a keepalive and gets nothing
                // back (RFC 8489 §6.3.2); responses are not ours.
                self.counters.dropped(DropReason::Unexpected);
                ClientOutput::None
            }
        }
    }
}
