//! State shared by every shard's core: relay port pools, EVEN-PORT
//! reservations, allocation quotas and the relay directory. Only requests,
//! deletion and expiry change it; the per-packet path only reads the
//! directory (lock-free). The port pools are lock-free bitmaps; the quota
//! and reservation maps take a short mutex.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use rand::Rng;

use super::{Family, PortRange};

/// A set of relay ports, one bit each, claimed with atomic bit operations
/// so shards never collide on a port.
#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    words: Box<[AtomicU64]>,
    taken: AtomicUsize,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        let words = range.len().div_ceil(64);
        PortPool {
            range,
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            taken: AtomicUsize::new(0),
        }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Ports currently claimed.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    fn slot(&self, port: u16) -> Option<(usize, u64)> {
        if !self.range.contains(port) {
            return None;
        }
        let i = usize::from(port - self.range.low);
        Some((i / 64, 1u64 << (i % 64)))
    }

    /// Claim one port; false if it was already taken or is out of range.
    pub fn try_take(&self, port: u16) -> bool {
        let Some((w, bit)) = self.slot(port) else {
            return false;
        };
        let prev = self.words[w].fetch_or(bit, Ordering::AcqRel);
        if prev & bit == 0 {
            self.taken.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub fn release(&self, port: u16) {
        if let Some((w, bit)) = self.slot(port) {
            let prev = self.words[w].fetch_and(!bit, Ordering::AcqRel);
            if prev & bit != 0 {
                self.taken.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub fn is_taken(&self, port: u16) -> bool {
        self.slot(port)
            .is_some_and(|(w, bit)| self.words[w].load(Ordering::Acquire) & bit != 0)
    }

    /// Claim a free port picked at random (RFC 8656 §7.2 asks for
    /// unpredictable relay ports; §22.4 on port guessing), of the kind
    /// `choice` says. `None` when nothing fits: the caller answers 508.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R, choice: PortChoice) -> Option<u16> {
        let even = choice != PortChoice::Any;
        let pair = choice == PortChoice::EvenPair;
        let len = self.range.len();
        let start = rng.random_range(0..len);
        for k in 0..len {
            let port = self.range.low + ((start + k) % len) as u16;
            if even && !port.is_multiple_of(2) {
                continue;
            }
            if pair {
                if port == u16::MAX || !self.range.contains(port + 1) {
                    continue;
                }
                if self.try_take(port) {
                    if self.try_take(port + 1) {
                        return Some(port);
                    }
                    self.release(port);
                }
            } else if self.try_take(port) {
                return Some(port);
            }
        }
        None
    }
}

/// Which relay ports [`PortPool::pick`] may choose (RFC 8656 §7.2,
/// EVEN-PORT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortChoice {
    Any,
    /// An even port.
    Even,
    /// An even port whose successor is also free; both are claimed (the
    /// successor for a RESERVATION-TOKEN: EVEN-PORT with the R bit).
    EvenPair,
}

/// A port held for a later Allocate with RESERVATION-TOKEN (RFC 8656
/// §7.2: the port after an EVEN-PORT allocation with R=1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub port: u16,
    pub expires: Instant,
}

/// Shared among shards.
#[derive(Debug)]
pub struct Shared {
    pub ports4: PortPool,
    pub ports6: PortPool,
    /// Held ports by token, with the quota user each one is counted for.
    reservations: Mutex<HashMap<u64, (Reservation, String)>>,
    total: AtomicUsize,
    per_user: Mutex<HashMap<String, usize>>,
    /// Allocations with UDP clients, for direct delivery across shards.
    pub directory: super::directory::Directory,
    /// The per-source limit on unauthenticated UDP answers, one table for
    /// every shard ([`super::ratelimit`]).
    pub rate_limit: super::ratelimit::Limiter,
}

/// Why an allocation could not be counted against the quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaError {
    Total,
    PerUser,
}

impl Shared {
    pub fn new(ports: PortRange) -> Self {
        Shared {
            ports4: PortPool::new(ports),
            ports6: PortPool::new(ports),
            reservations: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            directory: super::directory::Directory::new(ports),
            rate_limit: super::ratelimit::Limiter::default(),
        }
    }

    /// Use `limiter` (the shell's: its table size, its hash key drawn from
    /// the OS) instead of the default table.
    pub fn with_rate_limit(mut self, limiter: super::ratelimit::Limiter) -> Self {
        self.rate_limit = limiter;
        self
    }

    pub fn pool(&self, family: Family) -> &PortPool {
        match family {
            Family::V4 => &self.ports4,
            Family::V6 => &self.ports6,
        }
    }

    /// Allocations alive across all shards.
    pub fn allocations(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Count one more allocation for `user`, unless a limit is reached
    /// (RFC 8656 §7.2 → 486 Allocation Quota Reached).
    pub fn acquire(
        &self,
        user: &str,
        max_total: usize,
        max_per_user: usize,
    ) -> Result<(), QuotaError> {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(QuotaError::Total);
        }
        let n = users.entry(user.to_string()).or_insert(0);
        if *n >= max_per_user {
            return Err(QuotaError::PerUser);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn release(&self, user: &str) {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hold `r` for `token`. The held port counts against `user`'s quota
    /// and the total like an allocation (issue 12: one user must not pin
    /// half the port range with EVEN-PORT): the caller has acquired that
    /// unit ([`Shared::acquire`]); it is released when the reservation is
    /// taken or expires.
    pub fn reserve(&self, token: u64, r: Reservation, user: &str) {
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, (r, user.to_string()));
    }

    /// Take a live reservation (the port stays claimed, now for the
    /// caller, who counts its own allocation; the reserving user's unit is
    /// released). An expired one gives `None` and is left for
    /// [`Shared::expire_reservation`], whose timer is due, so the port and
    /// whatever the shell holds for it are released in one place.
    pub fn take_reservation(&self, token: u64, now: Instant) -> Option<Reservation> {
        let mut map = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&token)?.0.expires <= now {
            return None;
        }
        let (r, user) = map.remove(&token)?;
        drop(map);
        self.release(&user);
        Some(r)
    }

    /// Drop a reservation if it has expired by `now`, releasing its port
    /// and its quota unit; the dropped reservation is returned (its held
    /// socket goes too).
    pub fn expire_reservation(&self, token: u64, now: Instant) -> Option<Reservation> {
        let mut map = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&token).is_some_and(|(r, _)| r.expires <= now) {
            let (r, user) = map.remove(&token).expect("just seen");
            drop(map);
            self.pool(Family::of_ip(r.ip)).release(r.port);
            self.release(&user);
            return Some(r);
        }
        None
    }

    pub fn reservations(&self) -> usize {
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn pool_exhausts_and_recovers() {
        let pool = PortPool::new(PortRange {
            low: 50000,
            high: 50003,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut got: Vec<u16> = (0..4)
            .map(|_| pool.pick(&mut rng, PortChoice::Any).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [50000, 50001, 50002, 50003]);
        assert_eq!(pool.pick(&mut rng, PortChoice::Any), None);
        pool.release(50002);
        assert_eq!(pool.pick(&mut rng, PortChoice::Any), Some(50002));
        assert_eq!(pool.taken(), 4);
    }

    #[test]
    fn even_pairs() {
        let pool = PortPool::new(PortRange {
            low: 50001,
            high: 50004,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert_eq!(pool.pick(&mut rng, PortChoice::EvenPair), Some(50002));
        assert!(pool.is_taken(50003));
        assert_eq!(
            pool.pick(&mut rng, PortChoice::EvenPair),
            None,
            "50004 has no successor in range"
        );
        assert_eq!(pool.pick(&mut rng, PortChoice::Even), Some(50004));
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "any instant will do as the test's starting point"
    )]
    fn an_expired_reservation_is_released_once_by_its_timer() {
        let s = Shared::new(PortRange {
            low: 50000,
            high: 50003,
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let port = s
            .pool(Family::V4)
            .pick(&mut rng, PortChoice::EvenPair)
            .unwrap();
        let t0 = Instant::now();
        let r = Reservation {
            ip: [127, 0, 0, 1].into(),
            port: port + 1,
            expires: t0 + std::time::Duration::from_secs(30),
        };
        // The held port is one of the user's quota units while held.
        s.acquire("u", 10, 10).unwrap();
        s.reserve(7, r, "u");
        assert_eq!(s.take_reservation(7, r.expires), None, "expired");
        assert!(
            s.pool(Family::V4).is_taken(port + 1),
            "left for the timer to release"
        );
        assert_eq!(s.allocations(), 1, "still counted");
        assert_eq!(s.expire_reservation(7, r.expires), Some(r));
        assert!(!s.pool(Family::V4).is_taken(port + 1));
        assert_eq!(s.allocations(), 0, "its quota unit released");
        assert_eq!(s.expire_reservation(7, r.expires), None, "only once");
        assert_eq!(s.allocations(), 0, "released once");
        s.acquire("u", 10, 10).unwrap();
        s.reserve(8, r, "u");
        assert_eq!(s.take_reservation(8, t0), Some(r), "live");
        assert_eq!(s.allocations(), 0, "the taker counts its own");
        assert_eq!(s.expire_reservation(8, r.expires), None, "taken already");
    }

    #[test]
    fn quotas() {
        let s = Shared::new(PortRange {
            low: 50000,
            high: 50010,
        });
        assert!(s.acquire("a", 3, 2).is_ok());
        assert!(s.acquire("a", 3, 2).is_ok());
        assert_eq!(s.acquire("a", 3, 2), Err(QuotaError::PerUser));
        assert!(s.acquire("b", 3, 2).is_ok());
        assert_eq!(s.acquire("c", 3, 2), Err(QuotaError::Total));
        s.release("a");
        assert!(s.acquire("c", 3, 2).is_ok());
        assert_eq!(s.allocations(), 3);
    }
}
