//! Process-wide control of how freed memory comes back: the background reclaimer thread and
//! the return of free pages to the operating system.
//!
//! **What happens by default.** Everything a map retires (a removed or replaced value, a
//! superseded table after a promotion or compaction, the whole old map after
//! [`SyncMap::clear`](crate::SyncMap::clear)) is freed **without any further call on the map**:
//! a background thread named `tiermap-reclaim`, started by the first map that retires
//! something, frees it within about 20 ms (two 10 ms ticks) once every epoch guard
//! ([`Ref`](crate::Ref), [`Pinned`](crate::Pinned), an iteration) pinned before the retirement
//! is dropped. The thread parks, without timed wake-ups, while no map has anything to free.
//! After freeing at least 1 MiB (in a tick, a [`SyncMap::clear_and_release`](crate::SyncMap::clear_and_release),
//! a [`SyncMap::reclaim`](crate::SyncMap::reclaim) or the drop of a map) the crate asks the
//! allocator to give free pages back to the operating system, so that the process's resident
//! memory falls, not only the allocator's books.
//!
//! **A map left alone.** The same thread promotes the dirty tier of a map that no operation has
//! written to for a second (Go's `sync.Map` waits for as many misses as the dirty map has keys,
//! which a map nobody reads never makes), so that a map filled and then left idle gives back its
//! older table: about 19% of a 1M-entry `u64 -> u64` map (46.8 to 38.0 bytes per entry held,
//! RSS growth 45.2 to 36.4 MiB, where a `DashMap` of the same entries adds about 40). Maps whose tables are under 64 KiB are left as they are.
//!
//! **Allocators.** The return to the OS calls glibc's `malloc_trim(0)`, which releases every
//! free page of every arena (not only the top of the heap, which is all glibc gives back by
//! itself). With another C library, or on another OS, it does nothing. With jemalloc or
//! mimalloc as the global allocator it is harmless (it trims glibc's own, nearly empty, heap),
//! and those allocators decide on their own when freed pages go back: jemalloc after its
//! `dirty_decay_ms` (10 s by default), mimalloc lazily, during later allocator activity.
//! Measured with mimalloc 0.1 (`cargo run --release --example rss_mimalloc`, 1M `u64 -> u64`,
//! each case in its own process): neither a std `HashMap`'s drop nor tiermap's
//! `clear_and_release`, drop or remove-all lowered RSS within 200 ms with no further
//! allocation (0% returned, as for the `HashMap`); the memory is free inside mimalloc and
//! reused by the next allocations. A program that wants it back at once calls mimalloc's
//! `mi_collect(true)` (from `libmimalloc-sys`).
//!
//! **Opting out.** A program that must not start threads sets `TIERMAP_BACKGROUND_RECLAIM=0` in
//! its environment, or calls [`set_background_reclaim`]`(false)` before its first map retires
//! anything (an idle map then keeps its two tables until misses promote it, as in Go). Maps
//! then start the grace period of what they retire from their own operations
//! and free it a bounded step per later write of the map (and at once with
//! [`SyncMap::reclaim`](crate::SyncMap::reclaim), `clear_and_release` and drop).
//! `TIERMAP_RETURN_TO_OS=0` or [`set_return_to_os`]`(false)` turns `malloc_trim` off.
//!
//! ```
//! // A service that forbids background threads, and manages RSS itself:
//! let was = tiermap::memory::set_background_reclaim(false);
//! let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
//! map.clear();
//! assert_eq!(map.reclaim(), 0); // freed now, on this thread
//! tiermap::memory::set_background_reclaim(was);
//! ```

use crate::raw::background;

/// Turns the background reclaimer on or off for the whole process; returns the previous
/// setting. Off: the thread is not started, and a running one exits at its next wake-up (it
/// first finishes the tick it is in). The initial setting is on, unless the environment has
/// `TIERMAP_BACKGROUND_RECLAIM=0` (or `false`).
///
/// ```
/// let was = tiermap::memory::set_background_reclaim(false);
/// assert!(!tiermap::memory::set_background_reclaim(was));
/// ```
pub fn set_background_reclaim(enabled: bool) -> bool {
    background::set_enabled(enabled)
}

/// Turns the return of freed memory to the operating system (`malloc_trim(0)` on glibc) on or
/// off; returns the previous setting. The initial setting is on, unless the environment has
/// `TIERMAP_RETURN_TO_OS=0` (or `false`).
///
/// ```
/// let was = tiermap::memory::set_return_to_os(false);
/// tiermap::memory::set_return_to_os(was);
/// ```
pub fn set_return_to_os(enabled: bool) -> bool {
    background::set_trim(enabled)
}

/// Asks the allocator to return free memory to the operating system now (glibc's
/// `malloc_trim(0)`); whether it could (`false` with another C library, or when turned off by
/// [`set_return_to_os`]). The crate does this by itself after freeing 1 MiB or more.
///
/// ```
/// let _done: bool = tiermap::memory::return_to_os();
/// ```
pub fn return_to_os() -> bool {
    background::return_to_os()
}

/// What the background reclaimer is doing.
///
/// ```
/// let s = tiermap::memory::background_reclaim_status();
/// assert!(s.starts >= usize::from(s.running));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimStatus {
    /// The thread exists (started, not exited).
    pub running: bool,
    /// The thread waits for work with no timed wake-ups (no map has anything to free).
    pub parked: bool,
    /// How many times a thread was started in this process.
    pub starts: usize,
}

/// The background reclaimer's state (see [`ReclaimStatus`]).
///
/// ```
/// let map = tiermap::SyncMap::new();
/// map.insert(1u64, String::from("one"));
/// map.remove(&1);
/// let s = tiermap::memory::background_reclaim_status();
/// println!("running: {}, parked: {}", s.running, s.parked);
/// ```
pub fn background_reclaim_status() -> ReclaimStatus {
    let (running, starts, parked) = background::status();
    ReclaimStatus {
        running,
        parked,
        starts,
    }
}
