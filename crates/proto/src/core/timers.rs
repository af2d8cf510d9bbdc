//! The deadline structure: a min-heap of (deadline, what) with lazy
//! deletion. The next deadline is the heap's top, O(1) to read. Each
//! allocation has at most one live entry (its earliest deadline); an entry
//! whose allocation has moved on is skipped when it surfaces. No task or
//! timer exists per permission or channel.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// Allocation in slot `slot`, if still at `generation`.
    Allocation { slot: u32, generation: u32 },
    /// An EVEN-PORT reservation token.
    Reservation(u64),
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Due)>>,
}

impl Timers {
    pub(super) fn push(&mut self, at: Instant, due: Due) {
        self.heap.push(Reverse((at, due)));
    }

    /// The earliest deadline, stale entries included (waking early for a
    /// stale entry is harmless: it is skipped).
    #[inline]
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pop the earliest entry if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Due)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(x)| x),
            _ => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}
