//! Entry slots carved from large blocks: one allocation per block instead of one `malloc` per
//! entry.
//!
//! Every entry of a map lives in a slot of its arena. A slot is allocated under the dirty lock
//! (`Entry::create` runs only there) and freed by whoever frees the entry: a graveyard step on
//! any thread, after the entry's grace period, or the owner of the map with exclusive access.
//! Compared with `malloc` per entry this saves the allocator's header and size-class rounding
//! (a 32-byte entry took a 48-byte glibc chunk) and most of the allocation's instructions (a
//! bump or a free-list pop instead of glibc's `_int_malloc`, which a growing map reaches on
//! every insert because its thread cache is empty).
//!
//! * **Allocation** (under the arena's mutex, taken inside the dirty lock): take a slot of the
//!   current block (its free list, else its never-used end); when it has none, collect the
//!   freed slots and move on to the next block with room, in address order; when no block has
//!   room, allocate a new one about the size of all the others (the arena doubles), from
//!   [`FIRST_SLOTS`] slots up to [`MAX_BLOCK`] bytes.
//! * **Freeing in batches** (a retired table's entries, freed one after another by a graveyard
//!   step or a dropped map): [`Arena::free_batch`] files 64 slots at a time on their blocks'
//!   free lists under the arena's mutex (`entry::FreeBatch` gathers them). Through the stack
//!   below, each slot would be one more cache miss when the lock holder walks the stack, one
//!   after the other.
//! * **Single frees** (lock-free, any thread): push the slot on the shared `freed` stack (its
//!   first word links to the next). Pushers never pop, and the only pop takes the whole stack, so the
//!   stack has no ABA problem. A freed slot still counts as used in its block until the lock
//!   holder *collects* it (finds its block by address, moves it to the block's free list).
//! * **Release**: [`Arena::release_unused`] collects and gives back every block none of whose
//!   slots is in use. The graveyard calls it after each step that freed entries, so that the
//!   blocks of an emptied map, and of a map whose older entries were removed (a cache that
//!   drops its oldest keys), go back without another operation of the map; a dropped map
//!   releases its blocks before `drop` returns.
//!
//! A block in which some entry is still alive stays (its free slots are reused by the map's
//! next inserts, not by other maps): entries cannot move, since readers hold pointers to them.
//! A map whose removals leave one live entry in every block keeps its blocks; `malloc` keeps
//! the pages of such a map too (a page is returned only when every chunk in it is free).
//!
//! Loom builds give every entry its own allocation ([`Arena::for_entries`]): the models explore
//! the map's algorithm, to which an entry's address is opaque. The arena's own race (frees on
//! other threads while the lock holder collects) is checked by Miri's data-race detector on
//! `tests::frees_from_other_threads_come_back` (in `.ci/run`): with the push's CAS or the
//! collecting swap weakened to `Relaxed`, Miri reports a race on the slot's link.

use std::alloc::{self, Layout};
use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::facade::{lock, AtomicPtr, Mutex};

/// Slots in a map's first block: a small map pays for a few entries, not a page.
const FIRST_SLOTS: usize = 16;
/// Largest block, in bytes: 2,730 entries of 24 bytes (`u64 -> u64`). A larger block would cost fewer
/// allocations, but a block stays as long as one of its slots holds an entry, so the block size
/// bounds what a few surviving entries can keep (the background reclaimer's `malloc_trim`
/// returns the pages of released blocks to the operating system).
const MAX_BLOCK: usize = 64 << 10;

/// Slots a shard reserves from its arena at a time (see [`SlotCache`]).
const CACHE_SLOTS: usize = 16;

/// Slots reserved from an arena for a shard's next new entries, kept under the shard's dirty
/// lock (where every entry is created), so that a new key takes its slot without the arena's
/// own mutex: one lock per [`CACHE_SLOTS`] new keys instead of one per key (two locked
/// instructions and about 35 others less per new key; `BENCHMARKS.md`, "Engine v2, the ninth
/// stop").
///
/// A reserved slot counts as used in its block, so a block with reserved slots is not given
/// back. The shard returns its cache ([`Arena::unreserve`]) whenever it may be emptying or
/// shrinking: when a compaction starts, in `clear`, and when its tiers are taken away
/// (`drop`, `into_iter`, a pool's reset). A cache refilled later reserves from one block
/// only (the current one, or the next with room), so a live map pins at most that block's
/// spare slots, which its next inserts use.
pub(crate) struct SlotCache {
    slots: [*mut u8; CACHE_SLOTS],
    len: usize,
}

impl SlotCache {
    /// An empty cache.
    pub(crate) const fn new() -> Self {
        SlotCache {
            slots: [ptr::null_mut(); CACHE_SLOTS],
            len: 0,
        }
    }

    /// Slots reserved and not yet taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The slots of one map's entries.
pub(crate) struct Arena {
    /// One slot: the entry's layout, its size rounded up to its alignment and to a pointer
    /// (a free slot holds the link to the next).
    slot: Layout,
    /// Loom builds: every slot is its own allocation (see the module docs).
    passthrough: bool,
    blocks: Mutex<Blocks>,
    /// Slots freed since the lock holder last collected them: a stack linked through the
    /// slots' first word. Each still counts as used in its block until collected.
    freed: AtomicPtr<u8>,
    /// Bytes of the blocks held (statistics). Std atomic: no decision depends on it.
    held: std::sync::atomic::AtomicUsize,
}

/// One block of slots.
struct Block {
    start: *mut u8,
    bytes: usize,
    /// Slots handed out and not collected back.
    used: usize,
    /// Offset of the first slot never handed out.
    bump: usize,
    /// Collected free slots of this block, linked through their first word.
    free: *mut u8,
}

impl Block {
    /// A slot of this block, if it has one.
    #[inline]
    fn take(&mut self, slot: usize) -> Option<*mut u8> {
        let p = if !self.free.is_null() {
            let p = self.free;
            // SAFETY: a collected free slot's first word holds the link `collect` wrote into
            // it, under the lock the caller holds.
            self.free = unsafe { p.cast::<*mut u8>().read() };
            p
        } else if self.bump + slot <= self.bytes {
            // SAFETY: `bump + slot <= bytes`: the slot lies inside the block.
            let p = unsafe { self.start.add(self.bump) };
            self.bump += slot;
            p
        } else {
            return None;
        };
        self.used += 1;
        Some(p)
    }

    /// Whether `p` points into this block.
    #[inline]
    fn contains(&self, p: *mut u8) -> bool {
        p.addr().wrapping_sub(self.start.addr()) < self.bytes
    }

    /// Whether a slot can be taken.
    fn has_room(&self, slot: usize) -> bool {
        !self.free.is_null() || self.bump + slot <= self.bytes
    }
}

/// What the lock holder owns.
struct Blocks {
    /// Every block, by address.
    list: Vec<Block>,
    /// The block that allocation tries first.
    cur: usize,
    /// Slots handed out and not collected back, over all blocks.
    used: usize,
    /// A collection left some block with no slot in use since the last release looked (lets
    /// `release_unused` skip its walk over the blocks).
    emptied: bool,
}

// SAFETY: the raw pointers are the arena's own blocks; `Blocks` is only reached through the
// mutex, and `freed` is an atomic stack whose nodes are slots no one else uses while they are
// free.
unsafe impl Send for Arena {}
// SAFETY: as above: every shared access goes through the mutex or the atomics.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of slots of `layout` (an entry's).
    pub(crate) fn new(layout: Layout) -> Self {
        let word = Layout::new::<*mut u8>();
        let size = layout.size().max(word.size());
        let align = layout.align().max(word.align());
        let slot = Layout::from_size_align(size, align)
            .expect("slot layout")
            .pad_to_align();
        Arena {
            slot,
            passthrough: false,
            blocks: Mutex::new(Blocks {
                list: Vec::new(),
                cur: 0,
                used: 0,
                emptied: false,
            }),
            freed: AtomicPtr::new(ptr::null_mut()),
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The arena a map's entries use: [`Arena::new`], or in loom builds one that gives each
    /// slot its own allocation.
    pub(crate) fn for_entries(layout: Layout) -> Self {
        let mut arena = Arena::new(layout);
        arena.passthrough = cfg!(tiermap_loom);
        arena
    }

    /// Bytes of the blocks the arena holds (0 in loom builds, whose slots are counted by the
    /// map as entries).
    pub(crate) fn held_bytes(&self) -> usize {
        // Relaxed: a statistic.
        self.held.load(Relaxed)
    }

    /// Bytes of the blocks that no slot in use occupies: free slots and never-used ends of
    /// blocks (statistics; takes the arena's lock briefly).
    pub(crate) fn spare_bytes(&self) -> usize {
        if self.passthrough {
            return 0;
        }
        let mut b = lock(&self.blocks);
        self.collect(&mut b);
        self.held_bytes()
            .saturating_sub(b.used.saturating_mul(self.slot.size()))
    }

    /// A slot, uninitialized, aligned for the entry; never null. Called under the dirty lock
    /// (the arena's own lock makes it safe anyway).
    ///
    /// # Panics
    /// If a new block's address does not leave the table's tag bits free (see
    /// `table::fits_tag`), before anything is shared; aborts through `handle_alloc_error` if
    /// the allocator fails.
    pub(crate) fn alloc(&self) -> *mut u8 {
        if self.passthrough {
            // SAFETY: a slot has a non-zero size (at least a pointer).
            let p = unsafe { alloc::alloc(self.slot) };
            if p.is_null() {
                alloc::handle_alloc_error(self.slot);
            }
            return p;
        }
        let size = self.slot.size();
        let mut b = lock(&self.blocks);
        let b = &mut *b;
        let cur = b.cur;
        let p = match b.list.get_mut(cur).and_then(|block| block.take(size)) {
            Some(p) => p,
            None => self.alloc_elsewhere(b),
        };
        b.used += 1;
        p
    }

    /// A slot for a new entry from `cache`, refilled under the arena's lock when it is empty
    /// (in loom builds, a slot of its own, as [`Arena::alloc`]). Panics and aborts as
    /// [`Arena::alloc`].
    #[inline]
    pub(crate) fn alloc_cached(&self, cache: &mut SlotCache) -> *mut u8 {
        if cache.len == 0 {
            if self.passthrough {
                return self.alloc();
            }
            self.refill(cache);
        }
        cache.len -= 1;
        cache.slots[cache.len]
    }

    /// Reserves up to [`CACHE_SLOTS`] slots into an empty `cache`: the first as
    /// [`Arena::alloc`] takes it (moving on to another block, or growing, when the current one
    /// is full), the others from that same block only, so that a refill never allocates a
    /// block that an uncached allocation would not have.
    #[cold]
    #[inline(never)]
    fn refill(&self, cache: &mut SlotCache) {
        debug_assert_eq!(cache.len, 0);
        let size = self.slot.size();
        let mut b = lock(&self.blocks);
        let b = &mut *b;
        let first = match b.list.get_mut(b.cur).and_then(|block| block.take(size)) {
            Some(p) => p,
            None => self.alloc_elsewhere(b),
        };
        let block = &mut b.list[b.cur];
        let mut taken = [ptr::null_mut(); CACHE_SLOTS];
        taken[0] = first;
        let mut n = 1;
        while n < CACHE_SLOTS {
            match block.take(size) {
                Some(p) => {
                    taken[n] = p;
                    n += 1;
                }
                None => break,
            }
        }
        b.used += n;
        // Popped from the end: hand them out in the order they were taken (a fresh block's
        // slots in address order, as uncached allocation did).
        for (k, &p) in taken[..n].iter().rev().enumerate() {
            cache.slots[k] = p;
        }
        cache.len = n;
    }

    /// Gives `cache`'s reserved slots back to their blocks' free lists (under the arena's
    /// lock), leaving it empty.
    pub(crate) fn unreserve(&self, cache: &mut SlotCache) {
        let n = std::mem::take(&mut cache.len);
        // SAFETY: reserved slots came from this arena's `refill`, were never handed to an
        // entry (a taken slot leaves the cache), and are given back once (`len` is now 0).
        unsafe { self.free_batch(&cache.slots[..n]) };
    }

    /// [`Arena::alloc`] when the current block is full: collects the freed slots, then takes
    /// the next block with room (in address order, from the current one), or a new block.
    #[cold]
    fn alloc_elsewhere(&self, b: &mut Blocks) -> *mut u8 {
        let size = self.slot.size();
        self.collect(b);
        let n = b.list.len();
        for k in 0..n {
            let i = (b.cur + k) % n;
            if b.list[i].has_room(size) {
                b.cur = i;
                return b.list[i].take(size).expect("the block has room");
            }
        }
        let i = self.grow(b);
        b.cur = i;
        b.list[i].take(size).expect("a new block has room")
    }

    /// Moves the slots freed since the last collection to their blocks' free lists. Under the
    /// lock.
    fn collect(&self, b: &mut Blocks) {
        // Relaxed first: most calls find nothing, and then need no synchronization.
        if self.freed.load(Relaxed).is_null() {
            return;
        }
        // Acquire pairs with the release CAS of each push: the links written before are
        // visible.
        let mut p = self.freed.swap(ptr::null_mut(), Acquire);
        // The block of the previous slot: slots freed together (a table's entries) often share
        // one, and checking it first skips the binary search.
        let mut i = 0;
        while !p.is_null() {
            // SAFETY: a slot on the freed stack holds its link in its first word (see above);
            // it stays counted as used in its block, so the block is alive.
            let next = unsafe { p.cast::<*mut u8>().read() };
            // SAFETY: collected from the freed stack: freed once, by its contract.
            unsafe { Self::file(b, p, &mut i) };
            p = next;
        }
    }

    /// Puts a freed slot on its block's free list (`i`: the block of the previous slot filed,
    /// tried first). Under the lock.
    ///
    /// # Safety
    /// `p` came from this arena's [`Arena::alloc`], is freed once, and nothing uses its
    /// contents any more.
    #[inline]
    unsafe fn file(b: &mut Blocks, p: *mut u8, i: &mut usize) {
        if !b.list[*i].contains(p) {
            *i = b.list.partition_point(|block| block.start <= p) - 1;
        }
        let block = &mut b.list[*i];
        debug_assert!(block.contains(p), "a foreign slot");
        // SAFETY: per the caller, the slot is free and ours, aligned for a pointer.
        unsafe { p.cast::<*mut u8>().write(block.free) };
        block.free = p;
        block.used -= 1;
        if block.used == 0 {
            b.emptied = true;
        }
        b.used -= 1;
    }

    /// Adds a block, about the size of all the others together (the arena doubles), from
    /// [`FIRST_SLOTS`] slots up to [`MAX_BLOCK`] bytes (at least one slot). Returns its
    /// index.
    fn grow(&self, b: &mut Blocks) -> usize {
        let size = self.slot.size();
        let bytes = self
            .held_bytes()
            .clamp(FIRST_SLOTS * size, MAX_BLOCK.max(size));
        let bytes = bytes / size * size;
        let layout = self.block_layout(bytes);
        // SAFETY: `bytes` is at least one slot, so non-zero.
        let p = unsafe { alloc::alloc(layout) };
        if p.is_null() {
            alloc::handle_alloc_error(layout);
        }
        if !super::table::fits_tag(p.addr() + bytes) {
            // SAFETY: just allocated with `layout`; nothing in it is used.
            unsafe { alloc::dealloc(p, layout) };
            panic!("tiermap: the allocator returned an address above 2^48; slots cannot be tagged");
        }
        let i = b.list.partition_point(|block| block.start < p);
        b.list.insert(
            i,
            Block {
                start: p,
                bytes,
                used: 0,
                bump: 0,
                free: ptr::null_mut(),
            },
        );
        // Relaxed: a statistic.
        self.held.fetch_add(bytes, Relaxed);
        i
    }

    /// A block of `bytes`, aligned to a cache line (64 bytes) at least: a slot whose size
    /// divides 64 then never spans two lines (with 16, about one `u64 -> u64` entry in five had
    /// its value on the line after its key).
    fn block_layout(&self, bytes: usize) -> Layout {
        Layout::from_size_align(bytes, self.slot.align().max(64)).expect("block layout")
    }

    /// Gives a slot back. Lock-free: the slot is pushed on the freed stack, and reaches its
    /// block's free list at the lock holder's next collection.
    ///
    /// # Safety
    /// `p` came from this arena's [`Arena::alloc`], is freed once, and nothing (no reader, no
    /// drop glue) uses its contents any more.
    pub(crate) unsafe fn free(&self, p: *mut u8) {
        if self.passthrough {
            // SAFETY: per the caller; passthrough slots are allocations of `self.slot`.
            unsafe { alloc::dealloc(p, self.slot) };
            return;
        }
        // Relaxed: the CAS below publishes the link; a failed CAS only retries.
        let mut head = self.freed.load(Relaxed);
        loop {
            // SAFETY: per the caller, the slot is ours and aligned for a pointer.
            unsafe { p.cast::<*mut u8>().write(head) };
            // Release: the link (and everything the freer did to the slot) happens-before the
            // lock holder's acquire swap that collects the stack. After the CAS the freer
            // touches nothing of the arena's, so a block whose slots are all collected back
            // can be freed.
            match self.freed.compare_exchange_weak(head, p, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Gives slots back together, under the arena's lock, straight to their blocks' free lists.
    /// For the many frees of one step (a retired table's entries, a dropped map's): through
    /// the freed stack, each would be a cache miss again when the lock holder collects it, one
    /// after the other (the stack is a linked list), which made dropping a map of 1M entries
    /// take 250 ms.
    ///
    /// # Safety
    /// As for [`Arena::free`], for each slot.
    pub(crate) unsafe fn free_batch(&self, slots: &[*mut u8]) {
        if slots.is_empty() {
            return;
        }
        if self.passthrough {
            for &p in slots {
                // SAFETY: per the caller; passthrough slots are allocations of `self.slot`.
                unsafe { alloc::dealloc(p, self.slot) };
            }
            return;
        }
        let mut b = lock(&self.blocks);
        let mut i = 0;
        for &p in slots {
            // SAFETY: per the caller.
            unsafe { Self::file(&mut b, p, &mut i) };
        }
    }

    /// Collects the freed slots and gives every block that holds no slot in use back to the
    /// allocator. Returns the bytes released. The graveyard calls it after each step that freed
    /// entries, so that the blocks of an emptied map, and of a map whose older entries were
    /// removed, go back without another operation of the map.
    pub(crate) fn release_unused(&self) -> usize {
        if self.passthrough || self.held_bytes() == 0 {
            return 0;
        }
        let mut b = lock(&self.blocks);
        self.collect(&mut b);
        if !std::mem::take(&mut b.emptied) {
            return 0;
        }
        let mut released = 0;
        b.list.retain(|block| {
            if block.used > 0 {
                return true;
            }
            // SAFETY: no slot of the block is in use or on the freed stack (all were
            // collected: `used == 0`), so nothing reads or writes it any more; it came from
            // `grow` with this layout and is freed once (dropped from the list).
            unsafe { alloc::dealloc(block.start, self.block_layout(block.bytes)) };
            released += block.bytes;
            false
        });
        if released > 0 {
            b.cur = 0;
            // Relaxed: a statistic.
            self.held.fetch_sub(released, Relaxed);
        }
        released
    }
}

impl Arena {
    /// Whether [`Arena::release_all`] can give the slots back (not in loom builds, whose
    /// slots are separate allocations).
    pub(crate) fn can_release_all(&self) -> bool {
        !self.passthrough
    }

    /// Gives every block back to the allocator, whatever its slots hold, and leaves the arena
    /// empty, as new. For a dropped map whose entries own nothing outside their slots (no drop
    /// glue, no value cell): freeing them one by one would only file each slot on its block's
    /// free list (a cache miss per entry) before the blocks go anyway. Returns the bytes
    /// released.
    ///
    /// # Safety
    /// [`Arena::can_release_all`]; no slot handed out is used again: nothing reads, writes,
    /// drops or frees any of them after this call (what they hold needs no drop), and no
    /// thread is in [`Arena::free`] meanwhile.
    pub(crate) unsafe fn release_all(&self) -> usize {
        debug_assert!(self.can_release_all());
        let mut b = lock(&self.blocks);
        // Slots on the freed stack lie in the blocks given back below: forget them. Acquire
        // pairs with the release CAS of each push: its write of the link happens before the
        // block is freed.
        self.freed.swap(ptr::null_mut(), Acquire);
        let mut released = 0;
        for block in b.list.drain(..) {
            // SAFETY: per the caller, nothing uses any slot of the block again; it came from
            // `grow` with this layout and is freed once (drained from the list).
            unsafe { alloc::dealloc(block.start, self.block_layout(block.bytes)) };
            released += block.bytes;
        }
        b.cur = 0;
        b.used = 0;
        b.emptied = false;
        // Relaxed: a statistic.
        self.held.fetch_sub(released, Relaxed);
        released
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // Whoever drops the arena (the last owner of the map's graveyard) has freed every entry
        // or leaked it on purpose (a leaked map leaks its arena too, so this does not run).
        if self.passthrough {
            // No blocks; and in loom builds no lock to take (a synchronization point the
            // models would have to explore for nothing).
            return;
        }
        let mut b = lock(&self.blocks);
        self.collect(&mut b);
        debug_assert!(
            b.used == 0 || std::thread::panicking(),
            "an arena dropped with entries still allocated"
        );
        for block in b.list.drain(..) {
            // SAFETY: the arena is going away and (per the above) no slot is in use; each block
            // came from `grow` with this layout and is freed once.
            unsafe { alloc::dealloc(block.start, self.block_layout(block.bytes)) };
        }
    }
}

#[cfg(all(test, not(tiermap_loom)))]
mod tests {
    use super::*;

    const SLOT: usize = 32;

    fn arena() -> Arena {
        Arena::new(Layout::new::<[u64; SLOT / 8]>())
    }

    /// Allocates `n` slots and writes each one's index into it.
    fn fill(arena: &Arena, n: usize) -> Vec<*mut u8> {
        (0..n)
            .map(|i| {
                let p = arena.alloc();
                // SAFETY: a fresh slot of `SLOT` bytes, aligned for `u64`.
                unsafe { p.cast::<[u64; SLOT / 8]>().write([i as u64; SLOT / 8]) };
                p
            })
            .collect()
    }

    /// Checks that the slots still hold what `fill` wrote (nothing else wrote over them).
    fn check(slots: &[*mut u8], from: usize) {
        for (k, &p) in slots.iter().enumerate() {
            // SAFETY: a slot in use, written by `fill`.
            let v = unsafe { p.cast::<[u64; SLOT / 8]>().read() };
            assert_eq!(
                v,
                [(from + k) as u64; SLOT / 8],
                "slot {} overwritten",
                from + k
            );
        }
    }

    /// Frees each slot.
    fn free_all(arena: &Arena, slots: &[*mut u8]) {
        for &p in slots {
            // SAFETY: each came from `alloc` and is freed once.
            unsafe { arena.free(p) };
        }
    }

    #[test]
    fn slots_are_distinct_aligned_and_all_released_when_free() {
        let arena = arena();
        let n = if cfg!(miri) { 300 } else { 20_000 };
        let slots = fill(&arena, n);
        let mut sorted = slots.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), n, "a slot was handed out twice");
        assert!(slots.iter().all(|p| p.addr() % 8 == 0));
        let held = arena.held_bytes();
        assert!(
            held >= n * SLOT && held <= 2 * n * SLOT + MAX_BLOCK,
            "held {held}"
        );
        check(&slots, 0);
        assert_eq!(arena.release_unused(), 0, "every block has slots in use");
        free_all(&arena, &slots);
        assert_eq!(arena.release_unused(), held);
        assert_eq!(arena.held_bytes(), 0);
        // Usable after a release.
        let again = fill(&arena, 10);
        free_all(&arena, &again);
    }

    #[test]
    fn freed_slots_are_reused_before_new_blocks() {
        let arena = arena();
        let n = if cfg!(miri) { 300 } else { 20_000 };
        let slots = fill(&arena, n);
        let held = arena.held_bytes();
        // Free every other slot: no block empties, so nothing can be released...
        let (freed, kept): (Vec<_>, Vec<_>) =
            slots.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let freed: Vec<*mut u8> = freed.into_iter().map(|(_, &p)| p).collect();
        let kept: Vec<*mut u8> = kept.into_iter().map(|(_, &p)| p).collect();
        free_all(&arena, &freed);
        assert_eq!(arena.release_unused(), 0);
        assert_eq!(arena.spare_bytes(), held - kept.len() * SLOT);
        // ...and the freed half is enough for as many new slots: no new block.
        let more = fill(&arena, freed.len());
        assert_eq!(arena.held_bytes(), held, "a freed slot was not reused");
        for (k, &p) in kept.iter().enumerate() {
            // SAFETY: a slot in use, written by `fill` with its index `2k + 1`.
            let v = unsafe { p.cast::<[u64; SLOT / 8]>().read() };
            assert_eq!(
                v,
                [(2 * k + 1) as u64; SLOT / 8],
                "a kept slot was handed out again"
            );
        }
        check(&more, 0);
        free_all(&arena, &kept);
        free_all(&arena, &more);
        assert_eq!(arena.release_unused(), held);
    }

    #[test]
    fn blocks_emptied_by_removing_the_oldest_slots_go_back() {
        let arena = arena();
        let n = if cfg!(miri) { 300 } else { 100_000 };
        let slots = fill(&arena, n);
        let held = arena.held_bytes();
        // A cache that drops its oldest 90 %: the blocks that held them go back, the rest
        // stay intact.
        let cut = n * 9 / 10;
        free_all(&arena, &slots[..cut]);
        let released = arena.release_unused();
        assert!(released >= held / 2, "released {released} of {held}");
        assert_eq!(arena.held_bytes(), held - released);
        check(&slots[cut..], cut);
        free_all(&arena, &slots[cut..]);
        assert_eq!(arena.release_unused(), held - released);
    }

    /// A slot handed to another thread to free.
    struct Slot(*mut u8);
    // SAFETY: a test's slot, used by one thread at a time.
    unsafe impl Send for Slot {}

    #[test]
    fn batched_frees_go_to_their_blocks_and_mix_with_single_ones() {
        let arena = arena();
        // Several blocks (16, 16, 32, ... slots), freed in an order that jumps between them.
        let n = if cfg!(miri) { 600 } else { 3000 };
        let slots = fill(&arena, n);
        let (mut odd, even): (Vec<_>, Vec<_>) = (0..slots.len()).partition(|i| i % 2 == 1);
        odd.reverse();
        let batch: Vec<*mut u8> = odd.iter().map(|&i| slots[i]).collect();
        // SAFETY: allocated above; each slot freed once (odd ones in a batch, even ones alone).
        unsafe { arena.free_batch(&batch) };
        let spare = arena.spare_bytes();
        assert_eq!(
            spare,
            arena.held_bytes() - n / 2 * SLOT,
            "the batch came back"
        );
        // The slots still in use are untouched, and the freed ones are reused first.
        for &i in &even {
            check(&slots[i..i + 1], i);
        }
        let again = fill(&arena, n / 2);
        assert_eq!(
            arena.spare_bytes(),
            spare - n / 2 * SLOT,
            "reused, no new block"
        );
        check(&again, 0);
        for &i in &even {
            // SAFETY: as above.
            unsafe { arena.free(slots[i]) };
        }
        // SAFETY: as above.
        unsafe { arena.free_batch(&again) };
        assert!(arena.release_unused() > 0);
        assert_eq!(arena.held_bytes(), 0, "every block went back");
    }

    #[test]
    fn frees_from_other_threads_come_back() {
        let arena = arena();
        let rounds = if cfg!(miri) { 3 } else { 20 };
        for _ in 0..rounds {
            let mut slots: Vec<Slot> = fill(&arena, 500).into_iter().map(Slot).collect();
            let b = slots.split_off(250);
            std::thread::scope(|s| {
                for half in [std::mem::take(&mut slots), b] {
                    let arena = &arena;
                    s.spawn(move || {
                        for p in half {
                            // SAFETY: allocated above, freed once (each half by one thread).
                            unsafe { arena.free(p.0) };
                        }
                    });
                }
                // Allocation goes on while the other threads free.
                let more = fill(&arena, 100);
                check(&more, 0);
                free_all(&arena, &more);
            });
            assert!(arena.release_unused() > 0, "every slot was freed");
            assert_eq!(arena.held_bytes(), 0);
        }
    }

    #[test]
    fn release_all_gives_every_block_back_whatever_is_in_use() {
        let arena = arena();
        let n = if cfg!(miri) { 300 } else { 20_000 };
        let slots = fill(&arena, n);
        let held = arena.held_bytes();
        assert!(held >= n * SLOT, "held {held}");
        // Some slots freed in a batch, some on the freed stack, the rest still in use.
        // SAFETY: each came from `alloc` and is freed once.
        unsafe { arena.free_batch(&slots[..n / 3]) };
        free_all(&arena, &slots[n / 3..n / 2]);
        assert!(arena.can_release_all());
        // SAFETY: no slot is used again below.
        assert_eq!(unsafe { arena.release_all() }, held);
        assert_eq!(arena.held_bytes(), 0);
        assert_eq!(arena.spare_bytes(), 0);
        // The arena is as new: slots come from a new first block, and it can be dropped.
        let again = fill(&arena, 10);
        check(&again, 0);
        assert_eq!(arena.held_bytes(), FIRST_SLOTS * SLOT);
        free_all(&arena, &again);
        assert_eq!(arena.release_unused(), FIRST_SLOTS * SLOT);
    }

    #[test]
    fn reserved_slots_come_from_one_block_and_go_back_whole() {
        let arena = arena();
        let mut cache = SlotCache::new();
        // The first refill takes the whole first block (FIRST_SLOTS slots), in address order.
        let first: Vec<*mut u8> = (0..FIRST_SLOTS)
            .map(|_| arena.alloc_cached(&mut cache))
            .collect();
        assert_eq!(cache.len(), 0);
        assert_eq!(arena.held_bytes(), FIRST_SLOTS * SLOT);
        assert!(
            first.windows(2).all(|w| w[0] < w[1]),
            "not in address order"
        );
        // A refill never allocates a block that uncached allocation would not: the next slot
        // needs the second block, and the refill stops at that block's end.
        let one = arena.alloc_cached(&mut cache);
        let held = arena.held_bytes();
        assert_eq!(
            held,
            2 * FIRST_SLOTS * SLOT,
            "one new block, the size of the first"
        );
        assert_eq!(cache.len(), CACHE_SLOTS - 1);
        // Reserved slots count as used: the second block stays while they are cached...
        free_all(&arena, &[one]);
        assert_eq!(
            arena.release_unused(),
            0,
            "a block with reserved slots went back"
        );
        assert_eq!(
            arena.spare_bytes(),
            held - FIRST_SLOTS * SLOT - (CACHE_SLOTS - 1) * SLOT
        );
        // Given back, they are handed out again before any new block...
        arena.unreserve(&mut cache);
        assert_eq!(cache.len(), 0);
        let again: Vec<*mut u8> = (0..4).map(|_| arena.alloc_cached(&mut cache)).collect();
        assert_eq!(arena.held_bytes(), held, "a new block despite free slots");
        // (`one` was the second block's first slot.)
        let second = one.addr()..one.addr() + FIRST_SLOTS * SLOT;
        assert!(
            again.iter().all(|p| second.contains(&p.addr())),
            "not from the second block"
        );
        // ...and once every slot is free and the cache given back, the blocks go back whole.
        free_all(&arena, &again);
        assert_eq!(
            arena.release_unused(),
            0,
            "a block with reserved slots went back"
        );
        arena.unreserve(&mut cache);
        assert_eq!(arena.release_unused(), held - FIRST_SLOTS * SLOT);
        free_all(&arena, &first);
        assert_eq!(arena.release_unused(), FIRST_SLOTS * SLOT);
    }
}
