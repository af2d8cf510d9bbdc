//! Allocation storage: a vector of fixed-size chunks. Indexing costs one
//! extra (cached) pointer hop over a plain `Vec`, but growing never copies
//! allocations around and never over-reserves more than one chunk — a
//! doubling `Vec` of 10,000 allocations would hold up to twice their
//! memory.

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
