//! The hash table both tiers use: open addressing with linear probing over lazily allocated
//! chunks.
//!
//! A table is built while it is the dirty tier (only under the dirty lock) and frozen when it is
//! promoted to the read tier: from then on its slots never change, except for the `OWNED` tag
//! bit that a migration sets on entries it expunges (readers mask it off). Slots hold the mixed
//! hash and an entry pointer, so a probe compares hashes without touching entries.
//!
//! The table is split into chunks of [`CHUNK_SLOTS`] slots, allocated on first write, so that
//! creating a table for a million entries costs a directory of pointers, not megabytes of
//! zeroing: this is what keeps the first new-key insert after a read-only phase in microseconds.
//! A table never grows; the map grows by promoting a full dirty table and migrating into a
//! bigger one, a few slots per operation.
//!
//! While a table is the dirty tier it only gains entries (a removal leaves a deleted entry in
//! place), so lock-free readers may probe it concurrently with the lock holder's inserts: a slot
//! is published by a release store of its entry pointer after its hash, and a chunk by a release
//! store of its directory pointer after it was zeroed; readers load both with acquire, so they
//! see a slot either empty or complete. Everything else about a table (counters, the `OWNED`
//! tag) is only read under the dirty lock, after publication, or by the table's destructor
//! (which runs after the epoch has synchronized with every earlier access), so `Relaxed`
//! accesses suffice there.

use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::entry::Entry;
use crate::facade::{zeroed_slice, AtomicPtr, AtomicU64, AtomicUsize, ZeroInit, CHUNK_SLOTS};

/// Tag bit on a slot's entry pointer: this table is the last one to hold the entry (a migration
/// expunged it here), so the table's destructor frees it.
const OWNED: usize = 1;

/// Smallest table, in slots.
pub(crate) const MIN_SLOTS: usize = 8;

pub(crate) struct Slot<K, V> {
    hash: AtomicU64,
    // Invariant: null (empty) or an entry pointer, possibly tagged with `OWNED`.
    entry: AtomicPtr<Entry<K, V>>,
}

// SAFETY: a slot is two atomics; all-zero bytes are hash 0 and a null (empty) entry.
unsafe impl<K, V> ZeroInit for Slot<K, V> {
    fn zero() -> Self {
        Slot {
            hash: AtomicU64::new(0),
            entry: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

#[inline]
fn untag<K, V>(p: *mut Entry<K, V>) -> *mut Entry<K, V> {
    p.map_addr(|a| a & !OWNED)
}

/// Spreads a user hash so that weak hashers (identity hashes of small integers) still fill the
/// table evenly: the slot index is taken from the high bits of the product.
#[inline]
pub(crate) fn mix(hash: u64) -> u64 {
    let h = hash ^ (hash >> 32);
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A table of entry pointers. See the module docs.
pub(crate) struct Table<K, V> {
    cap: usize,
    chunk_shift: u32,
    // Invariant: `dir.len() * chunk_len == cap`; each pointer is null or a chunk of
    // `chunk_len` slots allocated by `alloc_chunk`.
    dir: Box<[AtomicPtr<Slot<K, V>>]>,
    // Entries per chunk, to skip empty chunks when migrating and dropping.
    used: Box<[AtomicUsize]>,
    len: AtomicUsize,
    chunks_allocated: AtomicUsize,
}

impl<K, V> Table<K, V> {
    /// A table with room for at least `slots` slots (0 gives an empty table that allocates
    /// nothing but its header).
    pub(crate) fn new(slots: usize) -> Self {
        let (cap, chunk_len) = if slots == 0 {
            (0, 1)
        } else if slots <= CHUNK_SLOTS {
            let c = slots.max(MIN_SLOTS.min(CHUNK_SLOTS)).next_power_of_two();
            (c, c)
        } else {
            (slots.div_ceil(CHUNK_SLOTS) * CHUNK_SLOTS, CHUNK_SLOTS)
        };
        let chunks = cap / chunk_len;
        Table {
            cap,
            chunk_shift: chunk_len.trailing_zeros(),
            dir: zeroed_slice(chunks),
            used: zeroed_slice(chunks),
            len: AtomicUsize::new(0),
            chunks_allocated: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    #[inline]
    fn chunk_len(&self) -> usize {
        1 << self.chunk_shift
    }

    pub(crate) fn chunks(&self) -> usize {
        self.dir.len()
    }

    /// Entries in the table (frozen once the table is the read tier).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// The most entries this table takes before the map promotes it (load factor 3/4).
    #[inline]
    pub(crate) fn max_len(&self) -> usize {
        self.cap / 4 * 3
    }

    /// Slots in allocated chunks.
    pub(crate) fn allocated_slots(&self) -> usize {
        self.chunks_allocated.load(Relaxed) * self.chunk_len()
    }

    /// Heap bytes held by the table itself (directory, counters and allocated chunks).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.dir.len() * (size_of::<AtomicPtr<Slot<K, V>>>() + size_of::<AtomicUsize>())
            + self.chunks_allocated.load(Relaxed) * self.chunk_len() * size_of::<Slot<K, V>>()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((hash as u128 * self.cap as u128) >> 64) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.cap {
            0
        } else {
            i + 1
        }
    }

    /// The slot at `i`, or `None` if its chunk was never allocated (all its slots are empty).
    #[inline]
    fn slot(&self, i: usize) -> Option<&Slot<K, V>> {
        // Acquire pairs with the release store in `slot_alloc` (the chunk's zeroing).
        let chunk = self.dir[i >> self.chunk_shift].load(Acquire);
        if chunk.is_null() {
            None
        } else {
            // SAFETY: a non-null directory pointer is a live chunk of `chunk_len` slots (dir
            // invariant), and `i & (chunk_len - 1)` is in bounds. Chunks are freed only when the
            // table is dropped, which outlives `&self`.
            Some(unsafe { &*chunk.add(i & (self.chunk_len() - 1)) })
        }
    }

    fn slot_alloc(&self, i: usize) -> &Slot<K, V> {
        let c = i >> self.chunk_shift;
        let mut chunk = self.dir[c].load(Relaxed);
        if chunk.is_null() {
            chunk = alloc_chunk::<K, V>(self.chunk_len());
            // Release: lock-free readers of a dirty table see the chunk zeroed.
            self.dir[c].store(chunk, Release);
            self.chunks_allocated.fetch_add(1, Relaxed);
        }
        // SAFETY: `chunk` is a live chunk of `chunk_len` slots owned by this table.
        unsafe { &*chunk.add(i & (self.chunk_len() - 1)) }
    }

    /// Finds the entry for `hash` whose key satisfies `eq`. Returns the entry and its slot index.
    ///
    /// Safe to call on a published (frozen) table from any thread, or on the dirty table under
    /// the lock.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        mut eq: impl FnMut(&K) -> bool,
    ) -> Option<(&Entry<K, V>, usize)> {
        if self.cap == 0 {
            return None;
        }
        let mut i = self.home(hash);
        loop {
            let slot = self.slot(i)?;
            // Acquire pairs with the release store in `insert_unique`: the slot's hash and the
            // entry's key were written before.
            let e = slot.entry.load(Acquire);
            if e.is_null() {
                return None;
            }
            if slot.hash.load(Relaxed) == hash {
                // SAFETY: entries reachable from a table that the caller may read (published
                // and protected by the caller's guard, or dirty under the lock) are alive.
                let entry = unsafe { &*untag(e) }.witness();
                if eq(&entry.key) {
                    return Some((entry, i));
                }
            }
            i = self.next(i);
        }
    }

    /// Inserts an entry whose key the table does not hold. Dirty table only, under the lock.
    pub(crate) fn insert_unique(&self, hash: u64, entry: *mut Entry<K, V>) {
        debug_assert!(self.len() < self.cap, "table full");
        let mut i = self.home(hash);
        loop {
            let slot = self.slot_alloc(i);
            if slot.entry.load(Relaxed).is_null() {
                slot.hash.store(hash, Relaxed);
                // Release publishes the hash and the entry to lock-free readers (see the
                // module docs).
                #[cfg(not(tiermap_mutation = "relaxed_slot_publish"))]
                slot.entry.store(entry, Release);
                // Deliberately too weak for the loom models; never built otherwise.
                #[cfg(tiermap_mutation = "relaxed_slot_publish")]
                slot.entry.store(entry, Relaxed);
                self.used[i >> self.chunk_shift].fetch_add(1, Relaxed);
                self.len.fetch_add(1, Relaxed);
                return;
            }
            i = self.next(i);
        }
    }

    /// Marks the entry at slot `i` as owned by this table (it was expunged here).
    ///
    /// Under the dirty lock only. A plain load and store suffice: the lock holder is the only
    /// writer of a published table's slots, and concurrent readers mask the tag off.
    pub(crate) fn mark_owned(&self, i: usize) {
        if let Some(slot) = self.slot(i) {
            let e = slot.entry.load(Relaxed);
            slot.entry.store(e.map_addr(|a| a | OWNED), Relaxed);
        }
    }

    /// Visits slots from `start`, calling `f(index, hash, entry)` for each occupied one (with the
    /// entry pointer as stored, so that it keeps the allocation's full provenance), and
    /// stops after about `budget` units of work (an occupied slot or a skipped empty chunk costs
    /// one unit, an empty slot in an allocated chunk a sixteenth). Returns the index to resume
    /// from (`capacity()` when done).
    pub(crate) fn scan(
        &self,
        start: usize,
        budget: usize,
        mut f: impl FnMut(usize, u64, *mut Entry<K, V>),
    ) -> usize {
        let mut work = 0usize;
        let budget = budget.saturating_mul(16);
        let mut i = start;
        while i < self.cap && work < budget {
            let c = i >> self.chunk_shift;
            let chunk_end = (c + 1) << self.chunk_shift;
            if self.used[c].load(Relaxed) == 0 {
                i = chunk_end;
                work += 16;
                continue;
            }
            match self.slot(i) {
                None => {
                    i = chunk_end;
                    work += 16;
                }
                Some(slot) => {
                    let e = slot.entry.load(Relaxed);
                    if e.is_null() {
                        work += 1;
                    } else {
                        f(i, slot.hash.load(Relaxed), untag(e));
                        work += 16;
                    }
                    i += 1;
                }
            }
        }
        i
    }

    /// Iterates occupied slots in index order, yielding `(index, entry, owned_tag)`.
    pub(crate) fn for_each_raw(&self, mut f: impl FnMut(usize, *mut Entry<K, V>, bool)) {
        for c in 0..self.dir.len() {
            let chunk = self.dir[c].load(Relaxed);
            if chunk.is_null() || self.used[c].load(Relaxed) == 0 {
                continue;
            }
            for j in 0..self.chunk_len() {
                // SAFETY: `chunk` is live (dir invariant) and `j < chunk_len`.
                let slot = unsafe { &*chunk.add(j) };
                let e = slot.entry.load(Relaxed);
                if !e.is_null() {
                    f((c << self.chunk_shift) + j, untag(e), e.addr() & OWNED != 0);
                }
            }
        }
    }

    /// Empties up to `max` slots of a table nobody else can reach, from slot `from` to at most
    /// the end of its chunk, freeing the chunk once its last slot is done: each occupied slot
    /// is cleared, then passed to `f` as `(index, entry, owned_tag)`. Returns the index to
    /// continue from and the slots looked at (0 for a chunk never allocated or without entries,
    /// which is skipped or freed whole). `max` must be at least 1.
    ///
    /// A slot is cleared before `f` sees it, so if `f` panics, calling this again from the
    /// same `from` skips the entries already handed out, and the chunk is still freed (here or
    /// by `Drop`).
    pub(crate) fn release_slots(
        &mut self,
        from: usize,
        max: usize,
        mut f: impl FnMut(usize, *mut Entry<K, V>, bool),
    ) -> (usize, usize) {
        debug_assert!(max >= 1 && from < self.cap);
        let len = self.chunk_len();
        let c = from >> self.chunk_shift;
        let chunk_end = (c + 1) << self.chunk_shift;
        // Relaxed throughout: `&mut self` means this thread is the only one touching the table
        // (the epoch's grace period ordered every reader's accesses before this call).
        let chunk = self.dir[c].load(Relaxed);
        if chunk.is_null() {
            return (chunk_end, 0);
        }
        // A chunk without entries is freed whole, at the cost of one slot.
        let empty = self.used[c].load(Relaxed) == 0;
        let to = if empty {
            chunk_end
        } else {
            chunk_end.min(from.saturating_add(max))
        };
        if !empty {
            // In groups: take the group's entries out of their slots and prefetch them, then
            // hand them out. Entries sit in the heap in insertion order and slots in hash order,
            // so each one is a cache miss (its header is read by `free`); prefetching a group
            // overlaps those misses (`drop` of 1M entries: 140-170 ms -> 118-125 ms,
            // BENCHMARKS.md section 4b).
            const GROUP: usize = 16;
            let mut i = from;
            while i < to {
                let end = to.min(i + GROUP);
                for j in i..end {
                    // SAFETY: `chunk` is live (dir invariant), the offset is below `len`, and
                    // `&mut self` means no other thread looks at it.
                    let e = unsafe { &*chunk.add(j & (len - 1)) }.entry.load(Relaxed);
                    if !e.is_null() {
                        prefetch(untag(e));
                    }
                }
                for j in i..end {
                    // SAFETY: as above.
                    let slot = unsafe { &*chunk.add(j & (len - 1)) };
                    let e = slot.entry.load(Relaxed);
                    if !e.is_null() {
                        // Cleared before `f` runs: a panicking `f` never sees this entry again,
                        // and the entries after it stay in their slots for the retry.
                        slot.entry.store(ptr::null_mut(), Relaxed);
                        f(j, untag(e), e.addr() & OWNED != 0);
                    }
                }
                i = end;
            }
        }
        if to == chunk_end {
            self.dir[c].store(ptr::null_mut(), Relaxed);
            self.chunks_allocated.fetch_sub(1, Relaxed);
            // SAFETY: allocated by `alloc_chunk(len)`; unlinked from the directory above, so
            // neither a later call nor `Drop` frees it again.
            unsafe { free_chunk(chunk, len) };
        }
        (to, if empty { 0 } else { to - from })
    }

    /// Slot `i`'s entry, if any (for iteration by index over a published table).
    #[inline]
    pub(crate) fn entry_at(&self, i: usize) -> Option<&Entry<K, V>> {
        let e = self.slot(i)?.entry.load(Relaxed);
        if e.is_null() {
            None
        } else {
            // SAFETY: as in `find`.
            Some(unsafe { &*untag(e) }.witness())
        }
    }

    /// The first index at or after `i` whose chunk holds entries (to skip empty chunks).
    #[inline]
    pub(crate) fn skip_empty(&self, mut i: usize) -> usize {
        while i < self.cap {
            let c = i >> self.chunk_shift;
            if self.used[c].load(Relaxed) != 0 && !self.dir[c].load(Relaxed).is_null() {
                return i;
            }
            i = (c + 1) << self.chunk_shift;
        }
        i
    }
}

impl<K, V> Drop for Table<K, V> {
    fn drop(&mut self) {
        let len = self.chunk_len();
        for c in self.dir.iter() {
            let chunk = c.load(Relaxed);
            if !chunk.is_null() {
                // SAFETY: allocated by `alloc_chunk(len)` and freed only here.
                unsafe { free_chunk(chunk, len) };
            }
        }
    }
}

fn alloc_chunk<K, V>(len: usize) -> *mut Slot<K, V> {
    let chunk: Box<[Slot<K, V>]> = zeroed_slice(len);
    Box::into_raw(chunk).cast()
}

/// # Safety
/// `chunk` came from `alloc_chunk(len)` and is freed once.
unsafe fn free_chunk<K, V>(chunk: *mut Slot<K, V>, len: usize) {
    // SAFETY: rebuilds the boxed slice that `alloc_chunk` leaked, with the same length.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(chunk, len)) });
}

/// Hints the CPU to fetch the cache lines of `e` and of its allocation header (which `free`
/// reads), without waiting. A no-op where unsupported (and under Miri).
#[inline(always)]
fn prefetch<T>(e: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = e.cast::<i8>();
        // SAFETY: prefetching never faults, whatever the address (it is only a hint); SSE is
        // part of the x86_64 baseline.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_sub(16));
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        let _ = e;
    }
}
