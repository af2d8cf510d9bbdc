//! A global allocator that counts allocations per thread, for tests that
//! prove a path allocates nothing: install [`CountingAlloc`] with
//! `#[global_allocator]` and wrap the code under test in [`allocations`].
//! The counter is per thread, so tests running in parallel on other
//! threads do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // `try_with`: the allocator may run while this thread's locals are
    // being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// The system allocator, counting every `alloc`, `alloc_zeroed` and
/// `realloc` of the calling thread.
pub struct CountingAlloc;

/// Allocations this thread made so far (with [`CountingAlloc`] installed).
pub fn thread_allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Run `f` and return how many allocations it made on this thread.
pub fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = thread_allocations();
    let r = f();
    (thread_allocations() - before, r)
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged, so the system allocator's guarantees hold; the
// counter is a const-initialised thread-local `Cell`, which never
// allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Hand the allocator's free memory back to the kernel: glibc keeps the
/// memory of freed blocks in its arenas (one per thread that allocated),
/// so after a burst (a connection flood the limits turned away, a wave of
/// allocations that ended) the process's RSS would stay at the burst's
/// level. `malloc_trim(0)` releases every arena's free pages; what is in
/// use stays. A no-op with other C libraries.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and only reorganises the
    // allocator's own free lists, under each arena's lock: it is safe to
    // call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the allocator holds, summed over every arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes in blocks the program holds.
    pub in_use: u64,
    /// Bytes in free blocks the allocator keeps (what fragmentation or a
    /// burst leaves behind; `release_free_memory` returns the whole free
    /// pages among them).
    pub free: u64,
}

/// The allocator's totals (`mallinfo2`), or `None` with other C libraries.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a struct by
        // value; it walks the arenas under their locks.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            in_use: (m.uordblks + m.hblkhd) as u64,
            free: m.fordblks as u64,
        })
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_stats_see_a_live_block() {
        let before = heap_stats().expect("glibc");
        let block = vec![7u8; 4 << 20];
        let during = heap_stats().expect("glibc");
        assert!(
            during.in_use >= before.in_use + (4 << 20),
            "{before:?} -> {during:?}"
        );
        drop(block);
    }
}
