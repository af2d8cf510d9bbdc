//! Plain counters kept by a server core. The shell reads them to publish
//! metrics; the core never touches a metrics registry.
//!
//! Each core instance is owned by one thread, and only that thread writes
//! its counters, so an increment is a relaxed load and store (no locked
//! read-modify-write on the packet path). Any thread may read them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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

/// Why a packet from a client or a peer was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Not a well-formed STUN message or ChannelData (RFC 8489 §6.3).
    Malformed,
    /// FINGERPRINT present and wrong (RFC 8489 §14.7).
    BadFingerprint,
    /// A response or an indication the server has no use for.
    Unexpected,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Malformed,
        DropReason::BadFingerprint,
        DropReason::Unexpected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadFingerprint => "bad_fingerprint",
            DropReason::Unexpected => "unexpected",
        }
    }
}

/// The response codes counted per method; index 0 is success.
pub const RESULT_CODES: [u16; 15] = [
    200, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 486, 500, 508, 0,
];

fn code_index(code: u16) -> usize {
    RESULT_CODES[..RESULT_CODES.len() - 1]
        .iter()
        .position(|&c| c == code)
        .unwrap_or(RESULT_CODES.len() - 1)
}

/// Methods counted in `requests`; the last slot is "other".
pub const COUNTED_METHODS: [crate::wire::Method; 6] = [
    crate::wire::Method::BINDING,
    crate::wire::Method::ALLOCATE,
    crate::wire::Method::REFRESH,
    crate::wire::Method::CREATE_PERMISSION,
    crate::wire::Method::CHANNEL_BIND,
    crate::wire::Method(0xfff),
];

fn method_index(m: crate::wire::Method) -> usize {
    COUNTED_METHODS[..COUNTED_METHODS.len() - 1]
        .iter()
        .position(|&c| c == m)
        .unwrap_or(COUNTED_METHODS.len() - 1)
}

/// All counters of one core.
#[derive(Default, Debug)]
pub struct Counters {
    /// Binding requests answered (success or error).
    pub binding_requests: Counter,
    /// Requests answered, by method and response code ([`RESULT_CODES`]).
    requests: [[Counter; RESULT_CODES.len()]; COUNTED_METHODS.len()],
    /// Packets dropped, by [`DropReason`].
    dropped: [Counter; DropReason::ALL.len()],
}

impl Counters {
    #[inline]
    pub fn dropped(&self, why: DropReason) {
        self.dropped[why as usize].inc();
    }

    pub fn dropped_count(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].get()
    }

    /// Count one answered request; `code` 200 for success.
    #[inline]
    pub fn answered(&self, method: crate::wire::Method, code: u16) {
        self.requests[method_index(method)][code_index(code)].inc();
    }

    pub fn answered_count(&self, method: crate::wire::Method, code: u16) -> u64 {
        self.requests[method_index(method)][code_index(code)].get()
    }
}
