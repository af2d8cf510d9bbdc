//! A fleet of servers sharing state (issue 14), as far as the core sees
//! it: the shell owns the shared store (Redis) and tells the core two
//! things through [`Fleet`], and the core asks one question.
//!
//! - **Admission**: with a cluster-wide per-user quota, an authenticated
//!   Allocate that passed its checks is *parked* and an [`AdmitRequest`]
//!   (a ticket and the quota user) is queued for the shell
//!   ([`Server::poll_admit`]). The shell answers with
//!   [`Server::admitted`]: [`Admission::Granted`] (the cluster counted it),
//!   [`Admission::Refused`] (486: the user's quota is reached somewhere in
//!   the fleet) or [`Admission::Unavailable`] (local quota only). A parked
//!   Allocate waits at most the fleet's budget: past it,
//!   [`Server::expire_admissions`] resumes it as `Unavailable`, so a slow
//!   or absent store never holds a client longer. The ticket is the id the
//!   allocation gets, so the shell can name the cluster's lease after it.
//! - **Alternates**: other nodes with room, with weights (more room, more
//!   weight). A node that is full or draining answers Allocate with 300
//!   and one of them, picked with the core's seeded RNG; without any, the
//!   static `alternate_servers`; without those, 486.
//!
//! Nothing here is on the data path: only Allocate and the shell's
//! answers touch it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::auth::Authed;
use super::{DropReason, FiveTuple, Now, RelayIo, Server, Transport};
use crate::wire::Message;

/// Allocates parked at once, at most, per core; past it, new ones go on
/// with the local quota at once (the store is too slow to keep up).
pub const MAX_PARKED: usize = 256;

/// What the shell knows about the fleet, pushed into every core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Allocates wait for a cluster quota decision at most this long;
    /// `None`: no cluster quota (Allocates are never parked).
    pub admission_budget: Option<Duration>,
    /// Answer 300 (not 486) when this node is at `max_allocations` and an
    /// alternate is known.
    pub redirect_when_full: bool,
    /// Healthy nodes with room, with their weights.
    pub alternates: Vec<Alternate>,
}

/// A node new allocations may be sent to (ALTERNATE-SERVER).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alternate {
    /// Its UDP (and TCP) listener.
    pub addr: SocketAddr,
    /// Its TLS listener, if it has one: where TLS clients are sent.
    pub tls: Option<SocketAddr>,
    /// Relative chance of being picked; 0 is never picked.
    pub weight: u32,
}

/// The shell's answer to an [`AdmitRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The cluster counted the allocation (under the ticket's lease).
    Granted,
    /// The user's cluster-wide quota is reached: 486.
    Refused,
    /// No decision (store unreachable, too slow, lost): local quota only.
    Unavailable,
}

/// A question for the shell: may `user` have one more allocation?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmitRequest {
    /// The id the allocation will have; answer with it.
    pub ticket: u64,
    /// The quota user (a REST username's user part).
    pub user: String,
}

/// An authenticated Allocate waiting for its admission.
pub(super) struct Parked {
    ticket: u64,
    ft: FiveTuple,
    /// The request as received (re-read when it resumes).
    request: Vec<u8>,
    authed: Authed<'static>,
    deadline: Instant,
}

/// The core's side of the fleet: what the shell pushed, the parked
/// Allocates (oldest first: one budget for all, so deadlines are in
/// order) and the questions not yet polled.
#[derive(Default)]
pub(super) struct FleetState {
    pub(super) fleet: std::sync::Arc<Fleet>,
    parked: VecDeque<Parked>,
    asks: VecDeque<AdmitRequest>,
}

impl FleetState {
    /// The earliest deadline of a parked Allocate.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.parked.front().map(|p| p.deadline)
    }

    pub(super) fn is_parked(&self, ft: &FiveTuple) -> bool {
        self.parked.iter().any(|p| p.ft == *ft)
    }

    /// Drop what `ft` has parked (its connection closed): never answered.
    pub(super) fn forget(&mut self, ft: &FiveTuple) {
        self.parked.retain(|p| p.ft != *ft);
    }
}

/// What to do with an Allocate that passed its checks.
pub(super) enum Gate {
    /// Go on (with this verdict, if there was a question).
    Proceed(Option<Admission>),
    /// Parked: nothing is answered now.
    Parked,
    /// A retransmission of a parked one: dropped.
    Retransmission,
}

impl Server {
    /// Swap in what the shell knows about the fleet.
    pub fn set_fleet(&mut self, fleet: std::sync::Arc<Fleet>) {
        self.fleet.fleet = fleet;
    }

    /// The next admission question for the shell.
    pub fn poll_admit(&mut self) -> Option<AdmitRequest> {
        self.fleet.asks.pop_front()
    }

    /// Whether allocation `id` is alive on this core (after a granted
    /// admission: whether the lease it took is used).
    pub fn allocation_alive(&self, id: u64) -> bool {
        self.table.find_id(id).is_some()
    }

    /// Allocates waiting for an admission.
    pub fn parked_allocates(&self) -> usize {
        self.fleet.parked.len()
    }

    /// The shell's answer for `ticket`: the parked Allocate resumes and its
    /// answer is appended to `out`, for the returned five-tuple. `None`
    /// when nothing waits under that ticket any more (answered already, or
    /// resumed at its deadline).
    pub fn admitted<I: RelayIo>(
        &mut self,
        now: Now,
        ticket: u64,
        verdict: Admission,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> Option<FiveTuple> {
        let i = self.fleet.parked.iter().position(|p| p.ticket == ticket)?;
        let p = self.fleet.parked.remove(i)?;
        self.resume(now, p, verdict, out, io)
    }

    /// Resume the first parked Allocate whose budget ran out at `now`, with
    /// the local quota only; its answer is in `out`, for the returned
    /// five-tuple. Call until `None`.
    pub fn expire_admissions<I: RelayIo>(
        &mut self,
        now: Now,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> Option<FiveTuple> {
        loop {
            if self.fleet.parked.front()?.deadline > now.mono {
                return None;
            }
            let p = self.fleet.parked.pop_front()?;
            if let Some(ft) = self.resume(now, p, Admission::Unavailable, out, io) {
                return Some(ft);
            }
        }
    }

    fn resume<I: RelayIo>(
        &mut self,
        now: Now,
        p: Parked,
        verdict: Admission,
        out: &mut Vec<u8>,
        io: &mut I,
    ) -> Option<FiveTuple> {
        let Ok(msg) = Message::parse(&p.request) else {
            return None;
        };
        self.allocate_admitted(now, &p.ft, &msg, &p.authed, p.ticket, verdict, out, io)
            .then_some(p.ft)
    }

    /// Whether an Allocate that passed its checks goes on now or waits for
    /// the cluster (`verdict`: the answer it already has, if resumed).
    pub(super) fn admission_gate(
        &mut self,
        now: Now,
        ft: &FiveTuple,
        msg: &Message<'_>,
        authed: &Authed<'_>,
    ) -> Gate {
        let Some(budget) = self.fleet.fleet.admission_budget else {
            return Gate::Proceed(None);
        };
        if self.fleet.is_parked(ft) {
            self.counters.dropped(DropReason::AdmissionPending);
            return Gate::Retransmission;
        }
        if self.cfg.max_allocations > 0 && self.shared.allocations() >= self.cfg.max_allocations {
            // This node is full: the answer is 486 whatever the cluster says.
            return Gate::Proceed(None);
        }
        if self.fleet.parked.len() >= MAX_PARKED {
            return Gate::Proceed(Some(Admission::Unavailable));
        }
        let ticket = self.take_id();
        let user = authed.quota_user().to_string();
        self.fleet.parked.push_back(Parked {
            ticket,
            ft: *ft,
            request: msg.as_bytes().to_vec(),
            authed: Authed {
                username: std::borrow::Cow::Owned(authed.username.to_string()),
                key: authed.key.clone(),
                integrity: authed.integrity,
                password_algorithm: authed.password_algorithm,
                rest_expiry: authed.rest_expiry,
            },
            deadline: now.mono + budget,
        });
        self.fleet.asks.push_back(AdmitRequest { ticket, user });
        Gate::Parked
    }

    /// An alternate server for a new allocation of the client on `ft`: one
    /// of the fleet's of the client's address family (RFC 8489 §10), picked
    /// by weight (for TLS clients, among those with a TLS listener), else
    /// the first static one.
    pub(super) fn pick_alternate(&mut self, ft: &FiveTuple) -> Option<SocketAddr> {
        let v6 = super::canonical(ft.client.0).is_ipv6();
        let at = |a: &Alternate| {
            match ft.transport {
                Transport::Tls => a.tls,
                Transport::Udp | Transport::Tcp => Some(a.addr),
            }
            .filter(|x| x.is_ipv6() == v6)
        };
        let alts = &self.fleet.fleet.alternates;
        let total: u64 = alts
            .iter()
            .filter(|a| at(a).is_some())
            .map(|a| u64::from(a.weight))
            .sum();
        if total > 0 {
            let mut r = rand::Rng::random_range(&mut self.rng, 0..total);
            for a in alts {
                let Some(addr) = at(a) else { continue };
                let w = u64::from(a.weight);
                if r < w {
                    return Some(addr);
                }
                r -= w;
            }
        }
        self.cfg.alternate_servers.first().copied()
    }

    /// This node is at `max_allocations` and the fleet may take the
    /// allocation instead.
    pub(super) fn full_with_fleet(&self) -> bool {
        self.fleet.fleet.redirect_when_full
            && self.cfg.max_allocations > 0
            && self.shared.allocations() >= self.cfg.max_allocations
    }
}
