//! Open connections counted in total and by source, for the caps of every
//! listener that takes connections from strangers: the HTTP(S) API
//! (`http.max_connections*`) and TURN over TCP and TLS
//! (`limits.max_connections*`).
//!
//! The per-source count is by IPv4 address, or by the /64 of an IPv6 one
//! (a subscriber usually holds a whole /64), so one client cannot take
//! every slot. The table's size is bounded by the open connections: an
//! entry goes when its source's last connection closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Where a connection comes from, as the per-source cap counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The total cap was reached.
    Total,
    /// Its source's cap was reached.
    PerSource,
}

/// The caps a new connection is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub total: usize,
    pub per_source: usize,
}

/// Open connections, in total and by source.
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// A connection's place in the [`ConnTable`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<ConnTable>,
    source: Source,
}

impl ConnTable {
    /// Take a slot for a connection from `ip`, or say which cap is full.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr, caps: Caps) -> Result<Slot, Refusal> {
        let source = Source::of(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= caps.total {
            return Err(Refusal::Total);
        }
        if c.by_source.get(&source).copied().unwrap_or(0) >= caps.per_source {
            return Err(Refusal::PerSource);
        }
        *c.by_source.entry(source).or_insert(0) += 1;
        c.total += 1;
        Ok(Slot {
            table: self.clone(),
            source,
        })
    }

    /// Connections holding a slot.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_source
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(total: usize, per_source: usize) -> Caps {
        Caps { total, per_source }
    }

    #[test]
    fn caps_count_in_total_and_per_source_and_free_on_drop() {
        let t = Arc::new(ConnTable::default());
        let l = caps(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let a1 = t.try_acquire(a, l).unwrap();
        let _a2 = t.try_acquire(a, l).unwrap();
        assert_eq!(t.try_acquire(a, l).unwrap_err(), Refusal::PerSource);
        let _b1 = t.try_acquire(b, l).unwrap();
        assert_eq!(t.try_acquire(c, l).unwrap_err(), Refusal::Total);
        drop(a1);
        let _c1 = t.try_acquire(c, l).unwrap();
        assert_eq!(t.try_acquire(a, l).unwrap_err(), Refusal::Total);
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn table_forgets_a_source_whose_last_connection_closed() {
        let t = Arc::new(ConnTable::default());
        let l = caps(10, 10);
        let slots: Vec<_> = (0..5u8)
            .map(|i| t.try_acquire(IpAddr::from([198, 51, 100, i]), l).unwrap())
            .collect();
        assert_eq!(t.sources(), 5);
        drop(slots);
        assert_eq!((t.open(), t.sources()), (0, 0));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_ipv4_is_ipv4() {
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(x), Source::of(y));
        assert_ne!(Source::of(x), Source::of(z));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("192.0.2.1".parse().unwrap()));
    }
}
