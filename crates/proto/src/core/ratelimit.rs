//! A per-source token bucket on unauthenticated UDP answers (401, 438,
//! 400, 420, Binding success): what a spoofed source can make the server
//! send to its victim.
//!
//! One table for the whole server, in [`super::Shared`]: the kernel
//! spreads a source's datagrams over the shards by source port, so
//! per-shard tables would give a source one rate per shard. Each bucket is
//! one `AtomicU64` updated with compare-and-swap, so shards never lock.
//!
//! Memory is bounded by construction: a fixed table of buckets, allocated
//! once at start, indexed by a keyed hash of the source's network, an IPv4
//! address (/32, IPv4-mapped IPv6 included) or an IPv6 /64. There is no
//! map that grows per address. Two networks whose hashes collide share a
//! bucket: they are limited together, which errs on the side of sending
//! less. The hash key comes in from the shell's RNG, so an outsider cannot
//! choose which networks collide.
//!
//! Time is the `now` passed in; tokens are counted in thousandths, so any
//! rate refills exactly: one thousandth of a token per millisecond per
//! answer-per-second of rate.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// How many unauthenticated answers one source network gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Answers per second, refilled continuously; 0 turns the limit off.
    pub rate: u32,
    /// Answers a source may receive at once after a quiet spell (at most
    /// [`MAX_BURST`]).
    pub burst: u32,
}

impl RateLimit {
    /// Off: every answer is sent.
    pub const OFF: RateLimit = RateLimit { rate: 0, burst: 0 };
}

impl Default for RateLimit {
    /// Generous: a busy NAT keeps working, a reflector is capped.
    fn default() -> Self {
        RateLimit {
            rate: 1000,
            burst: 2000,
        }
    }
}

/// Buckets of a table unless the shell says otherwise.
pub const DEFAULT_SLOTS: usize = 4096;
/// The largest burst a bucket holds (24 bits of thousandths).
pub const MAX_BURST: u32 = 16_000;

/// Thousandths of a token per answer.
const MILLI: u64 = 1000;
/// A bucket: the milliseconds since the epoch of its last refill (the high
/// 40 bits, 34 years) and its thousandths of a token (the low 24).
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
const STAMP_MAX: u64 = (1 << (64 - TOKEN_BITS)) - 1;
/// A bucket never used: full, whatever the burst.
const FRESH: u64 = TOKEN_MASK;

/// The table of buckets, shared by every shard's core.
#[derive(Debug)]
pub struct Limiter {
    rate: AtomicU32,
    burst: AtomicU32,
    hasher: foldhash::fast::FixedState,
    buckets: Box<[AtomicU64]>,
    /// The first `now` seen; stamps count from here.
    epoch: OnceLock<Instant>,
}

impl Default for Limiter {
    /// [`DEFAULT_SLOTS`] buckets with a fixed key, off until configured.
    fn default() -> Self {
        Limiter::new(DEFAULT_SLOTS, 0)
    }
}

impl Limiter {
    /// A table of `slots` buckets (at least one), every one full; `key`
    /// keys the hash. Off until [`Limiter::configure`]d.
    pub fn new(slots: usize, key: u64) -> Self {
        Limiter {
            rate: AtomicU32::new(0),
            burst: AtomicU32::new(0),
            hasher: foldhash::fast::FixedState::with_seed(key),
            buckets: (0..slots.max(1)).map(|_| AtomicU64::new(FRESH)).collect(),
            epoch: OnceLock::new(),
        }
    }

    /// Set the rate and burst (start and reload; every core calls it with
    /// the same values). Buckets keep their levels, capped at the burst.
    pub fn configure(&self, limit: RateLimit) {
        self.rate.store(limit.rate, Relaxed);
        self.burst.store(limit.burst.min(MAX_BURST), Relaxed);
    }

    pub fn limit(&self) -> RateLimit {
        RateLimit {
            rate: self.rate.load(Relaxed),
            burst: self.burst.load(Relaxed),
        }
    }

    /// Buckets held (fixed at construction).
    pub fn slots(&self) -> usize {
        self.buckets.len()
    }

    /// The network an address is limited by: IPv4 (also IPv4-mapped
    /// IPv6) by address, IPv6 by its /64.
    pub fn network(ip: IpAddr) -> u64 {
        match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)) | 1 << 63,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u64::from(u32::from(v4)) | 1 << 63,
                None => {
                    let o = v6.octets();
                    let mut top = [0u8; 8];
                    top.copy_from_slice(&o[..8]);
                    // A v6 /64 may equal the tagged IPv4 value; both then
                    // simply share a hash input, like any collision.
                    u64::from_be_bytes(top)
                }
            },
        }
    }

    /// The bucket of `ip`'s network.
    pub fn slot(&self, ip: IpAddr) -> usize {
        (self.hasher.hash_one(Self::network(ip)) % self.buckets.len() as u64) as usize
    }

    /// Whether one more answer may go to `ip` at `now`; takes its token if
    /// so.
    pub fn allow(&self, now: Instant, ip: IpAddr) -> bool {
        let rate = u64::from(self.rate.load(Relaxed));
        if rate == 0 {
            return true;
        }
        let cap = u64::from(self.burst.load(Relaxed)) * MILLI;
        let epoch = *self.epoch.get_or_init(|| now);
        let ms = u64::try_from(now.saturating_duration_since(epoch).as_millis())
            .unwrap_or(u64::MAX)
            .min(STAMP_MAX);
        let bucket = &self.buckets[self.slot(ip)];
        let mut cur = bucket.load(Relaxed);
        loop {
            let (stamp, tokens) = (cur >> TOKEN_BITS, cur & TOKEN_MASK);
            // Another shard may have read a slightly later clock: no
            // refill then, and the later stamp stays.
            let (stamp, elapsed) = if ms > stamp {
                (ms, ms - stamp)
            } else {
                (stamp, 0)
            };
            let tokens = tokens.saturating_add(elapsed.saturating_mul(rate)).min(cap);
            if tokens < MILLI {
                return false;
            }
            let next = stamp << TOKEN_BITS | (tokens - MILLI);
            match bucket.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "a test: any instant will do as the manual clock's start"
)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limited(rate: u32, burst: u32, slots: usize) -> Limiter {
        let l = Limiter::new(slots, 42);
        l.configure(RateLimit { rate, burst });
        l
    }

    fn count(l: &Limiter, now: Instant, who: IpAddr, n: usize) -> usize {
        (0..n).filter(|_| l.allow(now, who)).count()
    }

    #[test]
    fn a_source_gets_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let l = limited(1000, 2000, 4096);
        let a = ip("192.0.2.1");
        assert_eq!(count(&l, t0, a, 5000), 2000, "the burst, at once");
        assert_eq!(count(&l, t0, a, 10), 0, "then nothing more");
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(count(&l, t1, a, 5000), 250, "250 ms refill 250");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(count(&l, t2, a, 5000), 2000, "never above the burst");
    }

    #[test]
    fn fractional_rates_refill_exactly() {
        let t0 = Instant::now();
        let l = limited(3, 1, 16);
        let a = ip("192.0.2.1");
        assert!(l.allow(t0, a));
        assert!(!l.allow(t0 + Duration::from_millis(333), a), "0.999 token");
        assert!(l.allow(t0 + Duration::from_millis(334), a), "1.002 tokens");
    }

    #[test]
    fn sources_are_limited_apart() {
        let t0 = Instant::now();
        let l = limited(10, 20, 4096);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_ne!(l.slot(a), l.slot(b), "distinct slots for this key");
        assert_eq!(count(&l, t0, a, 100), 20);
        assert_eq!(count(&l, t0, b, 100), 20, "b is not charged for a");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let t0 = Instant::now();
        let l = limited(10, 20, 4096);
        assert_eq!(count(&l, t0, ip("2001:db8:1:2::1"), 15), 15);
        assert_eq!(
            count(&l, t0, ip("2001:db8:1:2:ffff:1:2:3"), 15),
            5,
            "the same /64 shares the bucket"
        );
        assert_eq!(
            Limiter::network(ip("2001:db8:1:2::1")),
            Limiter::network(ip("2001:db8:1:2:8000::9"))
        );
        assert_ne!(
            Limiter::network(ip("2001:db8:1:2::1")),
            Limiter::network(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Limiter::network(ip("::ffff:192.0.2.7")),
            Limiter::network(ip("192.0.2.7"))
        );
        assert_ne!(
            Limiter::network(ip("192.0.2.7")),
            Limiter::network(ip("192.0.2.8")),
            "IPv4 by address (/32)"
        );
        assert_eq!(count(&l, t0, ip("192.0.2.7"), 15), 15);
        assert_eq!(count(&l, t0, ip("::ffff:192.0.2.7"), 15), 5);
    }

    #[test]
    fn the_table_never_grows() {
        let t0 = Instant::now();
        let l = limited(1, 1, 64);
        for i in 0..100_000u32 {
            l.allow(t0, IpAddr::V4(i.into()));
            l.allow(t0, IpAddr::V6((u128::from(i) << 64).into()));
        }
        assert_eq!(l.slots(), 64);
        // With 200,000 networks in 64 buckets every bucket is spent.
        assert!(!l.allow(t0, ip("203.0.113.9")));
    }

    #[test]
    fn the_hash_key_decides_collisions() {
        let a = Limiter::new(4096, 42);
        let b = Limiter::new(4096, 43);
        let differ = (0..64u32)
            .filter(|&i| {
                let x = IpAddr::V4(i.into());
                a.slot(x) != b.slot(x)
            })
            .count();
        assert!(differ > 32, "another key, other slots ({differ}/64)");
    }

    #[test]
    fn rate_zero_is_off_and_reconfiguring_keeps_levels() {
        let t0 = Instant::now();
        let l = Limiter::default();
        assert_eq!(count(&l, t0, ip("192.0.2.1"), 10_000), 10_000, "off");
        let l = limited(10, 20, 128);
        let a = ip("192.0.2.1");
        assert_eq!(count(&l, t0, a, 15), 15);
        l.configure(RateLimit {
            rate: 10,
            burst: 10,
        });
        assert_eq!(count(&l, t0, a, 15), 5, "level kept (5 left)");
        l.configure(RateLimit {
            rate: 10,
            burst: 10,
        });
        let b = ip("192.0.2.2");
        assert_eq!(
            count(&l, t0, b, 15),
            10,
            "a fresh bucket holds the new burst"
        );
        l.configure(RateLimit::OFF);
        assert_eq!(count(&l, t0, a, 100), 100);
    }

    /// Shards share the table: a source's datagrams on several threads
    /// draw on one bucket, exactly.
    #[test]
    fn threads_share_one_bucket_exactly() {
        let t0 = Instant::now();
        let l = std::sync::Arc::new(limited(1000, 2000, 64));
        let a = ip("192.0.2.1");
        let got: usize = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || count(&l, t0, a, 1000))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(got, 2000, "the burst, across four threads");
    }

    #[test]
    fn a_later_clock_on_another_shard_is_no_refill() {
        let t0 = Instant::now();
        let l = limited(1000, 2, 16);
        let a = ip("192.0.2.1");
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!(count(&l, t1, a, 2), 2);
        assert_eq!(count(&l, t0, a, 2), 0, "an earlier now refills nothing");
        assert_eq!(count(&l, t1 + Duration::from_millis(1), a, 2), 1);
    }
}
