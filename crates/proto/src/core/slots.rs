//! Allocation storage: a vector of fixed-size chunks. Indexing costs one
//! extra (cached) pointer hop over a plain `Vec`, but growing never copies
//! allocations around and never over-reserves more than one chunk — a
//! doubling `Vec` of 10,000 allocations would hold up to twice their
//! memory.

use std::net::SocketAddr;
use std::ops::{Index, IndexMut};

const CHUNK: usize = 64;

/// Slots of `Option<T>`, addressed by index, growing a chunk at a time.
pub(crate) struct Slots<T> {
    chunks: Vec<Box<[Option<T>]>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Append an empty slot; returns its index.
    pub(super) fn push_empty(&mut self) -> usize {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push(
                (0..CHUNK)
                    .map(|_| None)
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
        }
        self.len += 1;
        self.len - 1
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&Option<T>> {
        if i >= self.len {
            return None;
        }
        Some(&self.chunks[i / CHUNK][i % CHUNK])
    }

    #[inline]
    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut Option<T>> {
        if i >= self.len {
            return None;
        }
        Some(&mut self.chunks[i / CHUNK][i % CHUNK])
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = Option<T>;
    fn index(&self, i: usize) -> &Option<T> {
        self.get(i).expect("slot index in range")
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, i: usize) -> &mut Option<T> {
        self.get_mut(i).expect("slot index in range")
    }
}

/// The allocations of one core by the relay address peers know them at
/// (XOR-RELAYED-ADDRESS): one cell per relay port and family, since a port
/// belongs to one allocation at a time in a family (see
/// [`super::shared::PortPool`]), so a lookup is an index, not a hash. A
/// cell holds a candidate; the caller compares the whole address. Zeroed
/// memory means "none", so only the pages of ports in use are touched.
pub(crate) struct ByPort {
    low: u16,
    /// Slot + 1 per port, 0 for none.
    v4: Box<[u32]>,
    v6: Box<[u32]>,
}

impl ByPort {
    pub(super) fn new(range: super::PortRange) -> Self {
        ByPort {
            low: range.low,
            v4: vec![0; range.len()].into_boxed_slice(),
            v6: vec![0; range.len()].into_boxed_slice(),
        }
    }

    fn cell(&mut self, addr: SocketAddr) -> Option<&mut u32> {
        let i = usize::from(addr.port().checked_sub(self.low)?);
        if addr.is_ipv4() {
            self.v4.get_mut(i)
        } else {
            self.v6.get_mut(i)
        }
    }

    pub(super) fn insert(&mut self, addr: SocketAddr, slot: u32) {
        if let Some(c) = self.cell(addr) {
            *c = slot + 1;
        }
    }

    /// Forget `slot` at `addr` (if it is still the one there).
    pub(super) fn remove(&mut self, addr: SocketAddr, slot: u32) {
        if let Some(c) = self.cell(addr) {
            if *c == slot + 1 {
                *c = 0;
            }
        }
    }

    /// The slot whose relay has `addr`'s port and family, if any.
    #[inline]
    pub(super) fn get(&self, addr: SocketAddr) -> Option<u32> {
        let i = usize::from(addr.port().checked_sub(self.low)?);
        let c = if addr.is_ipv4() {
            self.v4.get(i)
        } else {
            self.v6.get(i)
        };
        c.and_then(|&c| c.checked_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_chunks_and_indexes() {
        let mut s: Slots<u32> = Slots::default();
        for i in 0..200 {
            assert_eq!(s.push_empty(), i);
            s[i] = Some(i as u32);
        }
        assert_eq!(s.len(), 200);
        assert_eq!(s.chunks.len(), 4);
        assert_eq!(s.get(199), Some(&Some(199)));
        assert_eq!(s.get(200), None);
        assert_eq!(s.iter().flatten().sum::<u32>(), (0..200u32).sum::<u32>());
        s[5] = None;
        assert_eq!(s.iter().flatten().count(), 199);
    }
}
