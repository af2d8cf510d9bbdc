//! Plain counters kept by a server core. The shell reads them to publish
//! metrics; the core never touches a metrics registry.
//!
//! Each core instance is owned by one thread, and only that thread writes
//! its counters, so an update is a relaxed load and store (no locked
//! read-modify-write on the packet path). Any thread may read them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::core::{Family, Transport};
use crate::wire::Method;

/// A counter written by one thread and read by any.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge written by one thread and read by any. Per-shard values may be
/// negative transiently only if misused; totals are sums over shards.
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

macro_rules! labelled {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metric label value.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

labelled!(
    /// Why a packet from a client or a peer was dropped without an answer.
    DropReason {
        Malformed => "malformed",
        BadFingerprint => "bad_fingerprint",
        Unexpected => "unexpected",
        NoAllocation => "no_allocation",
        NoPermission => "no_permission",
        NoChannel => "no_channel",
        PeerPolicy => "peer_policy",
        Bandwidth => "bandwidth",
        SendBufferFull => "send_buffer_full",
        TooLarge => "too_large",
        Amplification => "amplification",
        UnknownMethod => "unknown_method",
        AdmissionPending => "admission_pending",
    }
);

labelled!(
    /// Which unauthenticated UDP answer the per-source rate limit held
    /// back ([`super::ratelimit`]).
    RateLimitReason {
        Unauthorized => "401",
        StaleNonce => "438",
        BadRequest => "400",
        UnknownAttribute => "420",
        Binding => "binding",
    }
);

impl RateLimitReason {
    /// The reason for an error answer with `code`.
    pub fn of_code(code: u16) -> Self {
        match code {
            438 => RateLimitReason::StaleNonce,
            400 => RateLimitReason::BadRequest,
            420 => RateLimitReason::UnknownAttribute,
            _ => RateLimitReason::Unauthorized,
        }
    }
}

labelled!(
    /// Why authentication failed (the 401 challenge itself is not a failure).
    AuthFailureReason {
        BadIntegrity => "bad_integrity",
        StaleNonce => "stale_nonce",
        ExpiredUsername => "expired_username",
        UnknownUser => "unknown_user",
        BadRequest => "bad_request",
        WrongCredentials => "wrong_credentials",
        Revoked => "revoked",
    }
);

labelled!(
    /// Why an allocation ended. `Revoked`: a reload removed its static
    /// user, or the last secret that verified its REST username.
    /// `Revocation`: the admin API revoked its credential (issue 14).
    EndReason {
        Expired => "expired",
        Refreshed0 => "deleted",
        ConnectionClosed => "connection_closed",
        Admin => "admin",
        Shutdown => "shutdown",
        Revoked => "credential_revoked",
        Revocation => "revoked",
    }
);

/// The response codes counted per method; the last slot is "other".
pub const RESULT_CODES: [u16; 17] = [
    200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 487, 500, 508, 0,
];

fn code_index(code: u16) -> usize {
    RESULT_CODES[..RESULT_CODES.len() - 1]
        .iter()
        .position(|&c| c == code)
        .unwrap_or(RESULT_CODES.len() - 1)
}

/// Methods counted in `requests`; the last slot is "other".
pub const COUNTED_METHODS: [Method; 6] = [
    Method::BINDING,
    Method::ALLOCATE,
    Method::REFRESH,
    Method::CREATE_PERMISSION,
    Method::CHANNEL_BIND,
    Method(0xfff),
];

fn method_index(m: Method) -> usize {
    COUNTED_METHODS[..COUNTED_METHODS.len() - 1]
        .iter()
        .position(|&c| c == m)
        .unwrap_or(COUNTED_METHODS.len() - 1)
}

pub const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// All counters of one core.
#[derive(Default, Debug)]
pub struct Counters {
    /// Binding requests answered with success.
    pub binding_requests: Counter,
    requests: [[Counter; RESULT_CODES.len()]; COUNTED_METHODS.len()],
    dropped: [Counter; DropReason::ALL.len()],
    auth_failures: [Counter; AuthFailureReason::ALL.len()],
    rate_limited: [Counter; RateLimitReason::ALL.len()],
    ended: [Counter; EndReason::ALL.len()],
    /// Allocations alive, by client transport and relay family.
    active: [[Gauge; 2]; 3],
    pub allocations_created: Counter,
    pub permissions_active: Gauge,
    pub channels_active: Gauge,
    /// Permissions/ChannelBinds refused by the peer policy (403).
    pub policy_refusals: Counter,
    /// Allocates refused by quotas (486), and permissions/channels refused
    /// by their caps (508).
    pub quota_refusals: Counter,
    /// Client → peer.
    pub relayed_packets_out: Counter,
    pub relayed_bytes_out: Counter,
    /// Peer → client.
    pub relayed_packets_in: Counter,
    pub relayed_bytes_in: Counter,
    /// Datagrams from one of this core's relays to another of its relays,
    /// handed over without the kernel (both clients on this server and
    /// shard), counted when handed over (the receiver may still refuse);
    /// also counted in both directions above when delivered.
    pub relayed_local: Counter,
    /// Datagrams from one of this shard's relays to another shard's
    /// published relay, framed for that relay's client by this shard (see
    /// [`super::directory`]), counted when looked up (the receiver's rules
    /// may still refuse); also counted in both directions above when
    /// delivered.
    pub relayed_cross_shard: Counter,
    /// TCP (0) and TLS (1) client connections open (kept by the shell).
    connections: [Gauge; 2],
}

impl Counters {
    #[inline]
    pub fn dropped(&self, why: DropReason) {
        self.dropped[why as usize].inc();
    }

    #[inline]
    pub fn dropped_n(&self, why: DropReason, n: u64) {
        if n > 0 {
            self.dropped[why as usize].add(n);
        }
    }

    pub fn dropped_count(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].get()
    }

    /// Count one answered request; `code` 200 for success.
    #[inline]
    pub fn answered(&self, method: Method, code: u16) {
        self.requests[method_index(method)][code_index(code)].inc();
    }

    pub fn answered_count(&self, method: Method, code: u16) -> u64 {
        self.requests[method_index(method)][code_index(code)].get()
    }

    pub fn auth_failed(&self, why: AuthFailureReason) {
        self.auth_failures[why as usize].inc();
    }

    pub fn auth_failure_count(&self, why: AuthFailureReason) -> u64 {
        self.auth_failures[why as usize].get()
    }

    /// Count one unauthenticated answer the rate limit held back.
    pub fn rate_limited(&self, why: RateLimitReason) {
        self.rate_limited[why as usize].inc();
    }

    pub fn rate_limited_count(&self, why: RateLimitReason) -> u64 {
        self.rate_limited[why as usize].get()
    }

    pub fn ended(&self, why: EndReason) {
        self.ended[why as usize].inc();
    }

    pub fn ended_count(&self, why: EndReason) -> u64 {
        self.ended[why as usize].get()
    }

    pub fn active(&self, t: Transport, family: Family) -> &Gauge {
        &self.active[transport_index(t)][usize::from(family == Family::V6)]
    }

    /// Open client connections of a stream transport (UDP has none).
    pub fn connections_open(&self, t: Transport) -> &Gauge {
        &self.connections[usize::from(t == Transport::Tls)]
    }

    /// Allocations alive on this core, all transports and families.
    pub fn active_total(&self) -> i64 {
        self.active.iter().flatten().map(Gauge::get).sum()
    }
}
