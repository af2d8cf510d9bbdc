//! One allocation (RFC 8656 §2.2): its relayed address, permissions,
//! channel bindings, lifetime and bandwidth bucket.
//!
//! Permission and channel tables are short vectors scanned linearly: they
//! hold a few entries in practice and at most the configured caps, and a
//! scan of a few cache lines beats hashing at these sizes.

use std::net::{IpAddr, SocketAddr};

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::{ChannelNumber, FiveTuple, PeerAddr};
use crate::wire::{IntegrityKey, PasswordAlgorithm, TransactionId};

/// Permissions and channels kept inline up to this many (the common case
/// is one or two peers), so the hot path does not chase a pointer.
pub const INLINE: usize = 2;

/// A long-term key kept by an allocation: just its bytes (16 for MD5, 32
/// for SHA-256). The HMAC states are rebuilt for the rare request on the
/// allocation rather than stored (they would triple its size).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyBytes {
    bytes: [u8; 32],
    len: u8,
}

impl KeyBytes {
    pub fn of(k: &IntegrityKey) -> Self {
        let b = k.as_bytes();
        let mut bytes = [0u8; 32];
        let len = b.len().min(32);
        bytes[..len].copy_from_slice(&b[..len]);
        KeyBytes {
            bytes,
            len: len as u8,
        }
    }

    pub fn key(&self) -> IntegrityKey {
        IntegrityKey::new(self.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(..)")
    }
}

/// RFC 8656 §9: a permission lasts 300 s unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: a channel binding lasts 600 s unless refreshed.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// RFC 8656 §12: after a binding expires, neither its number nor its peer
/// may be bound to anything else for another 300 s.
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    /// Until then the channel relays; after it, it is cooling down until
    /// `expires + CHANNEL_COOLDOWN` and relays nothing.
    pub expires: Instant,
    /// Counted as active (cleared by the sweep at `expires`).
    pub counted: bool,
}

impl Channel {
    #[inline]
    pub fn active(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Whether `ip` has a live permission in `perms` (RFC 8656 §9: the port
/// is not part of a permission).
#[inline]
pub fn permitted(perms: &[Permission], ip: IpAddr, now: Instant) -> bool {
    perms.iter().any(|p| p.ip == ip && now < p.expires)
}

/// The active channel of `chans` bound to `peer`, if any.
#[inline]
pub fn channel_by_peer(chans: &[Channel], peer: PeerAddr, now: Instant) -> Option<&Channel> {
    chans
        .iter()
        .find(|c| c.peer == peer)
        .filter(|c| c.active(now))
}

/// What a sweep changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub permissions_removed: usize,
    pub channels_deactivated: usize,
}

/// A token bucket in bytes: `rate` bytes/s, up to one second's worth of
/// burst. A rate of 0 means unlimited.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_bytes: u64, now: Instant) -> Self {
        TokenBucket {
            rate: rate_bytes,
            tokens: rate_bytes,
            last: now,
        }
    }

    /// Whether the bucket never refuses (rate 0).
    pub fn unlimited(&self) -> bool {
        self.rate == 0
    }

    /// Take `n` bytes; false (and nothing taken) if the bucket is short.
    #[inline]
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        if now > self.last {
            let dt = now - self.last;
            // Integer nanosecond arithmetic, no floats, no overflow for any
            // sane rate (u128 intermediate).
            let add = (u128::from(self.rate) * dt.as_nanos() / 1_000_000_000) as u64;
            if add > 0 {
                self.tokens = (self.tokens + add).min(self.rate);
                self.last = now;
            }
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Byte and packet counts of an allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client → peer.
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Peer → client.
    pub packets_in: u64,
    pub bytes_in: u64,
}

/// An allocation's state.
#[derive(Debug)]
pub struct Allocation {
    /// Distinguishes reuses of the same slot (timer entries carry it).
    pub generation: u32,
    pub ft: FiveTuple,
    /// The socket address the relay socket is bound to.
    pub relay: SocketAddr,
    /// XOR-RELAYED-ADDRESS as reported (public address under 1:1 NAT).
    pub advertised: SocketAddr,
    pub username: Box<str>,
    pub quota_user: Box<str>,
    pub key: KeyBytes,
    pub password_algorithm: PasswordAlgorithm,
    /// The Unix time the REST credential expires (`None`: a static user).
    /// Requests after it get 401; the lifetime never runs past it.
    pub rest_expiry: Option<u64>,
    pub created: Instant,
    pub expires: Instant,
    /// The deadline this allocation is filed under in the timer heap.
    pub next_check: Instant,
    pub permissions: SmallVec<[Permission; INLINE]>,
    pub channels: SmallVec<[Channel; INLINE]>,
    pub bucket: TokenBucket,
    pub traffic: Traffic,
    /// The transaction ID and bytes of the last response sent on this
    /// five-tuple, replayed for a retransmitted request (RFC 8656 §7.2,
    /// and RFC 8489 §6.3.1 on idempotent retransmissions).
    pub last_response: Option<(TransactionId, Vec<u8>)>,
    /// Admin-visible id (stable for the allocation's life).
    pub id: u64,
    /// In the relay directory (from its first relay-to-relay datagram on;
    /// see [`super::directory`]).
    pub published: bool,
    /// Its routes in the shell's fast path (see [`super::fastpath`]).
    pub mirrored: super::fastpath::Mirrored,
}

impl Allocation {
    /// Whether the peer's IP has a live permission (RFC 8656 §9: port is
    /// not part of a permission).
    #[inline]
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        permitted(&self.permissions, ip, now)
    }

    /// Install or refresh a permission. Returns whether a new entry was
    /// added; the caller has checked the cap.
    pub fn permit(&mut self, ip: IpAddr, until: Instant) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = p.expires.max(until);
            return false;
        }
        self.permissions.push(Permission { ip, expires: until });
        true
    }

    /// The active channel with this number, if any.
    #[inline]
    pub fn channel_by_number(&self, n: ChannelNumber, now: Instant) -> Option<&Channel> {
        self.channels
            .iter()
            .find(|c| c.number == n)
            .filter(|c| c.active(now))
    }

    /// The active channel bound to this peer, if any.
    #[inline]
    pub fn channel_by_peer(&self, peer: PeerAddr, now: Instant) -> Option<&Channel> {
        channel_by_peer(&self.channels, peer, now)
    }

    /// Earliest instant something in this allocation needs attention:
    /// its own expiry, a permission's, a channel's (it stops relaying) or a
    /// channel's cool-down end (it is forgotten).
    pub fn earliest_deadline(&self) -> Instant {
        let mut t = self.expires;
        for p in &self.permissions {
            t = t.min(p.expires);
        }
        for c in &self.channels {
            t = t.min(if c.counted {
                c.expires
            } else {
                c.expires + CHANNEL_COOLDOWN
            });
        }
        t
    }

    /// Drop expired permissions, deactivate expired channels and forget
    /// channels whose cool-down is over.
    pub fn sweep(&mut self, now: Instant) -> Swept {
        let p0 = self.permissions.len();
        self.permissions.retain(|p| now < p.expires);
        let mut deactivated = 0;
        for c in &mut self.channels {
            if c.counted && !c.active(now) {
                c.counted = false;
                deactivated += 1;
            }
        }
        self.channels.retain(|c| now < c.expires + CHANNEL_COOLDOWN);
        Swept {
            permissions_removed: p0 - self.permissions.len(),
            channels_deactivated: deactivated,
        }
    }
}
