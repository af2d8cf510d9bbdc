//! A per-source token bucket on unauthenticated UDP answers (401, 438,
//! 400, 420, Binding success): what a spoofed source can make the server
//! send to its victim.
//!
//! Memory is bounded by construction: a fixed table of buckets, allocated
//! once, indexed by a keyed hash of the source's network, an IPv4 address
//! (/32, IPv4-mapped IPv6 included) or an IPv6 /64. There is no map that
//! grows per address. Two networks whose hashes collide share a bucket:
//! they are limited together, which errs on the side of sending less. The
//! hash key comes in from the shell's RNG (through the core's seed), so an
//! outsider cannot choose which networks collide.
//!
//! Time is the `now` passed in; tokens are counted in thousandths so any
//! rate refills exactly, one thousandth token per millisecond per
//! answer-per-second of rate.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// How many unauthenticated answers one source network gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Answers per second, refilled continuously; 0 turns the limit off.
    pub rate: u32,
    /// Answers a source may receive at once after a quiet spell.
    pub burst: u32,
    /// Buckets in the table (at least 1).
    pub slots: usize,
}

impl RateLimit {
    /// Off: every answer is sent.
    pub const OFF: RateLimit = RateLimit {
        rate: 0,
        burst: 0,
        slots: 1,
    };
}

impl Default for RateLimit {
    /// Generous: a busy NAT keeps working, a reflector is capped.
    fn default() -> Self {
        RateLimit {
            rate: 1000,
            burst: 2000,
            slots: 4096,
        }
    }
}

/// Thousandths of a token per answer.
const MILLI: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Thousandths of a token.
    tokens: u64,
    /// Milliseconds since the limiter's epoch at the last refill.
    stamp: u64,
}

/// The table of buckets (one per shard core).
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    hasher: foldhash::fast::FixedState,
    buckets: Box<[Bucket]>,
    /// The first `now` seen; stamps count from here.
    epoch: Option<Instant>,
}

impl Limiter {
    /// A table for `limit`, every bucket full. `key` keys the hash.
    pub fn new(limit: RateLimit, key: u64) -> Self {
        let slots = if limit.rate == 0 {
            1
        } else {
            limit.slots.max(1)
        };
        Limiter {
            limit,
            hasher: foldhash::fast::FixedState::with_seed(key),
            buckets: vec![
                Bucket {
                    tokens: u64::from(limit.burst) * MILLI,
                    stamp: 0,
                };
                slots
            ]
            .into_boxed_slice(),
            epoch: None,
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Buckets held (fixed at construction).
    pub fn slots(&self) -> usize {
        self.buckets.len()
    }

    /// Take a new limit (reload). Same table size: the buckets keep their
    /// levels, capped at the new burst; another size: a new, full table.
    pub fn set_limit(&mut self, limit: RateLimit) {
        let slots = if limit.rate == 0 {
            1
        } else {
            limit.slots.max(1)
        };
        if slots != self.buckets.len() {
            let key = self.hasher.clone();
            *self = Limiter::new(limit, 0);
            self.hasher = key;
            return;
        }
        self.limit = limit;
        let cap = u64::from(limit.burst) * MILLI;
        for b in self.buckets.iter_mut() {
            b.tokens = b.tokens.min(cap);
        }
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
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.limit.rate == 0 {
            return true;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let ms =
            u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX);
        let cap = u64::from(self.limit.burst) * MILLI;
        let rate = u64::from(self.limit.rate);
        let i = self.slot(ip);
        let b = &mut self.buckets[i];
        let elapsed = ms.saturating_sub(b.stamp);
        b.tokens = b
            .tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(cap);
        b.stamp = b.stamp.max(ms);
        if b.tokens >= MILLI {
            b.tokens -= MILLI;
            true
        } else {
            false
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
        Limiter::new(RateLimit { rate, burst, slots }, 42)
    }

    fn count(l: &mut Limiter, now: Instant, who: IpAddr, n: usize) -> usize {
        (0..n).filter(|_| l.allow(now, who)).count()
    }

    #[test]
    fn a_source_gets_its_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = limited(1000, 2000, 4096);
        let a = ip("192.0.2.1");
        assert_eq!(count(&mut l, t0, a, 5000), 2000, "the burst, at once");
        assert_eq!(count(&mut l, t0, a, 10), 0, "then nothing more");
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(count(&mut l, t1, a, 5000), 250, "250 ms refill 250");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(count(&mut l, t2, a, 5000), 2000, "never above the burst");
    }

    #[test]
    fn fractional_rates_refill_exactly() {
        let t0 = Instant::now();
        let mut l = limited(3, 1, 16);
        let a = ip("192.0.2.1");
        assert!(l.allow(t0, a));
        assert!(!l.allow(t0 + Duration::from_millis(333), a), "0.999 token");
        assert!(l.allow(t0 + Duration::from_millis(334), a), "1.002 tokens");
    }

    #[test]
    fn sources_are_limited_apart() {
        let t0 = Instant::now();
        let mut l = limited(10, 20, 4096);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_ne!(l.slot(a), l.slot(b), "distinct slots for this key");
        assert_eq!(count(&mut l, t0, a, 100), 20);
        assert_eq!(count(&mut l, t0, b, 100), 20, "b is not charged for a");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let t0 = Instant::now();
        let mut l = limited(10, 20, 4096);
        assert_eq!(count(&mut l, t0, ip("2001:db8:1:2::1"), 15), 15);
        assert_eq!(
            count(&mut l, t0, ip("2001:db8:1:2:ffff:1:2:3"), 15),
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
        assert_eq!(count(&mut l, t0, ip("192.0.2.7"), 15), 15);
        assert_eq!(count(&mut l, t0, ip("::ffff:192.0.2.7"), 15), 5);
    }

    #[test]
    fn the_table_never_grows() {
        let t0 = Instant::now();
        let mut l = limited(1, 1, 64);
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
        let a = limited(1, 1, 4096);
        let b = Limiter::new(
            RateLimit {
                rate: 1,
                burst: 1,
                slots: 4096,
            },
            43,
        );
        let differ = (0..64u32)
            .filter(|&i| {
                let x = IpAddr::V4(i.into());
                a.slot(x) != b.slot(x)
            })
            .count();
        assert!(differ > 32, "another key, other slots ({differ}/64)");
    }

    #[test]
    fn rate_zero_is_off_and_reload_keeps_levels() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimit::OFF, 1);
        assert_eq!(count(&mut l, t0, ip("192.0.2.1"), 10_000), 10_000);
        assert_eq!(l.slots(), 1);
        let mut l = limited(10, 20, 128);
        let a = ip("192.0.2.1");
        assert_eq!(count(&mut l, t0, a, 15), 15);
        l.set_limit(RateLimit {
            rate: 10,
            burst: 10,
            slots: 128,
        });
        assert_eq!(count(&mut l, t0, a, 15), 5, "level kept (5 left)");
        l.set_limit(RateLimit {
            rate: 10,
            burst: 10,
            slots: 256,
        });
        assert_eq!(l.slots(), 256);
        assert_eq!(count(&mut l, t0, a, 15), 10, "a new table is full");
    }
}
