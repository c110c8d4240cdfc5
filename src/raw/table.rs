//! The hash table both tiers use: open addressing with linear probing over one contiguous array
//! of tagged 8-byte slots.
//!
//! A table is built while it is the dirty tier (only under the dirty lock) and frozen when it is
//! promoted to the read tier: from then on its slots never change, except for the `OWNED` tag
//! bit that a migration sets on entries it expunges (readers mask it off).
//!
//! **Slots.** A slot is one word: null (empty) or an entry pointer carrying, in the address
//! bits that user-space pointers leave zero, a 16-bit *tag* taken from the key's hash, and in
//! its lowest bit the `OWNED` mark. A probe compares tags without touching the entry, so a
//! lookup dereferences only the entry it is after (or, once in 65,536 probed slots, another
//! one, whose key `Eq` then tells apart). On 64-bit targets
//! the tag sits in the top 16 bits: x86-64 and AArch64 hand user space addresses below 2^48
//! unless a program asks for more with an explicit `mmap` hint, which no allocator does
//! ([`Entry::create`](super::entry::Entry::create) checks each entry's address and panics
//! rather than mistag one). Targets with narrower pointers store no tag (every slot matches,
//! and the entry's hash decides).
//!
//! **One allocation.** The slot array is one zeroed allocation: for large tables the allocator
//! maps fresh pages that the kernel zeroes on first touch, so creating the dirty table of a
//! million-entry map costs a system call, not megabytes of zeroing, and the pages are given
//! back whole (`munmap`) when the table is freed. v1 split tables into chunks allocated on
//! first write to get the same O(1) creation, at the price of one more dependent load (the
//! chunk directory) on every probe. A table also keeps a count of entries per group of
//! [`GROUP_SLOTS`] slots, so that migration, iteration and freeing skip empty groups without
//! reading their slots.
//!
//! A table never grows; the map grows by promoting a full dirty table and migrating into a
//! bigger one, a few slots per operation.
//!
//! While a table is the dirty tier it only gains entries (a removal leaves a deleted entry in
//! place), so lock-free readers may probe it concurrently with the lock holder's inserts: a slot
//! is published by a release store of its tagged entry pointer after the entry was written, and
//! readers load it with acquire, so they see a slot either empty or complete. Everything else
//! about a table (counters, the `OWNED` tag) is only read under the dirty lock, after
//! publication, or by the table's destructor (which runs after the epoch has synchronized with
//! every earlier access), so `Relaxed` accesses suffice there.

use std::ptr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::entry::{entry_bytes, Entry};
use super::filter::KeyFilter;
use super::hashbits::{home, tag16, MAX_SLOTS};
use crate::facade::{AtomicPtr, AtomicUsize, GROUP_SLOTS};

use super::zeroed::zeroed_slice;

/// Tag bit on a slot's entry pointer: this table is the last one to hold the entry (a migration
/// expunged it here), so the table's destructor frees it.
const OWNED: usize = 1;

/// Where the hash tag sits in a slot: the top 16 bits on 64-bit targets; nowhere (shift 0,
/// empty mask) on narrower ones.
#[cfg(target_pointer_width = "64")]
const TAG_SHIFT: u32 = 48;
#[cfg(target_pointer_width = "64")]
const TAG_MASK: usize = 0xFFFF << TAG_SHIFT;
#[cfg(not(target_pointer_width = "64"))]
const TAG_SHIFT: u32 = 0;
#[cfg(not(target_pointer_width = "64"))]
const TAG_MASK: usize = 0;

/// Whether `addr` leaves the tag bits free (checked for every entry when it is created).
#[inline]
pub(crate) fn fits_tag(addr: usize) -> bool {
    addr & TAG_MASK == 0
}

/// The slot tag of a (mixed) hash, in place: `hashbits::tag16`. The home slot comes from the
/// top bits (see `hashbits`), so the tag tells apart keys that share a probe neighbourhood.
#[inline]
fn tag_of(hash: u64) -> usize {
    (tag16(hash) as usize) << TAG_SHIFT & TAG_MASK
}

/// The tag a slot word carries (bits 32..48 of its entry's hash; 0 where slots carry none).
#[inline]
fn tag_in<K, V>(w: *mut Entry<K, V>) -> u16 {
    ((w.addr() & TAG_MASK) >> TAG_SHIFT) as u16
}

/// The hash bits a table uses of the entry in slot word `w` (non-null): its tag and what the
/// entry keeps (`Entry::kept_hash`).
///
/// # Safety
/// `w`'s entry is alive (as for any slot the caller may read).
#[inline]
unsafe fn hash_in<K, V>(w: *mut Entry<K, V>) -> u64 {
    // SAFETY: per the caller.
    unsafe { &*untag(w) }.kept_hash(tag_in(w))
}

/// The entry pointer of a slot word, with tag and `OWNED` bit cleared (full provenance kept).
#[inline]
fn untag<K, V>(p: *mut Entry<K, V>) -> *mut Entry<K, V> {
    p.map_addr(|a| a & !(TAG_MASK | OWNED))
}

/// Smallest table, in slots.
pub(crate) const MIN_SLOTS: usize = 8;

/// A table of tagged entry pointers. See the module docs.
pub(crate) struct Table<K, V> {
    // Invariant: each slot is null or an entry pointer, tagged with `tag_of(hash)` (`hash` the
    // mixed hash of the entry's key) and
    // possibly with `OWNED`; `slots.len()` is the capacity.
    //
    // A raw pointer to the first of `cap` slots (a leaked `Box<[_]>`), not the box itself:
    // each slot access then makes a reference to that one slot, where indexing the box makes a
    // reference to the whole array, which Miri's Tree Borrows retags location by location
    // (fuzz_replay's retain test went from seconds to 6 minutes under Miri with the box).
    slots: *mut AtomicPtr<Entry<K, V>>,
    cap: usize,
    group_shift: u32,
    // Entries per group of `1 << group_shift` slots, to skip empty groups when migrating,
    // iterating and freeing. `used.len() * group_len == capacity`.
    used: Box<[AtomicUsize]>,
    len: AtomicUsize,
    // Groups that ever held an entry (slots are cleared only by `release_slots`, which
    // decrements this too).
    groups_used: AtomicUsize,
    // Invariant: holds the hash of every entry that `insert_unique` put in a slot, recorded
    // before the slot was published (`raw/filter.rs`).
    filter: KeyFilter,
}

impl<K, V> Table<K, V> {
    /// A table with room for at least `slots` slots (0 gives an empty table that allocates
    /// nothing but its header).
    pub(crate) fn new(slots: usize) -> Self {
        let cap = Self::capacity_for(slots);
        let group_len = cap.clamp(1, GROUP_SLOTS);
        Table {
            slots: Box::into_raw(zeroed_slice::<AtomicPtr<Entry<K, V>>>(cap)).cast(),
            cap,
            group_shift: group_len.trailing_zeros(),
            used: zeroed_slice(cap / group_len),
            len: AtomicUsize::new(0),
            groups_used: AtomicUsize::new(0),
            filter: KeyFilter::new(cap),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    #[inline]
    fn group_len(&self) -> usize {
        1 << self.group_shift
    }

    /// Groups of slots (the unit that migration skips when empty).
    pub(crate) fn groups(&self) -> usize {
        self.used.len()
    }

    /// Entries in the table (frozen once the table is the read tier).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// The most entries this table takes before the map promotes it (load factor 3/4).
    #[inline]
    pub(crate) fn max_len(&self) -> usize {
        self.capacity() / 4 * 3
    }

    /// Slots in groups that hold entries: how much of the table is in use (a table built with
    /// room to grow into has none).
    pub(crate) fn allocated_slots(&self) -> usize {
        self.groups_used.load(Relaxed) * self.group_len()
    }

    /// Heap bytes held by the table itself (slots, group counters and key filter).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.capacity() * size_of::<AtomicPtr<Entry<K, V>>>()
            + self.used.len() * size_of::<AtomicUsize>()
            + self.filter.heap_bytes()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        home(hash, self.capacity())
    }

    /// Hints the CPU to fetch what `insert_unique` of an entry of hash `hash` will touch first
    /// (the home slot and its group's counter), so that those cache misses overlap the
    /// caller's other work. Reads only the table's header; safe on any live table.
    #[inline]
    pub(crate) fn prefetch_home(&self, hash: u64) {
        if self.capacity() == 0 {
            return;
        }
        let i = self.home(hash);
        prefetch_line(self.slots.wrapping_add(i));
        prefetch_line(self.used.as_ptr().wrapping_add(i >> self.group_shift));
        if let Some(w) = self.filter.word_of(i) {
            prefetch_line(w);
        }
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.capacity() {
            0
        } else {
            i + 1
        }
    }

    #[inline]
    fn slot(&self, i: usize) -> &AtomicPtr<Entry<K, V>> {
        debug_assert!(i < self.capacity());
        // SAFETY: `slots` points to `cap` initialized slots that live as long as the table
        // (freed in `Drop`), and every caller passes an index below the capacity (`home` maps
        // into `0..capacity`, `next` wraps at it, and the scans stop at it).
        unsafe { &*self.slots.add(i) }
    }

    /// Finds the entry for `hash` whose key satisfies `eq`. Returns the entry and its slot index.
    /// A hash the key filter rejects ends here, without reading a slot.
    ///
    /// Safe to call on a published (frozen) table from any thread, or on the dirty table under
    /// the lock.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        mut eq: impl FnMut(&K) -> bool,
    ) -> Option<(&Entry<K, V>, usize)> {
        if self.capacity() == 0 {
            return None;
        }
        let mut i = self.home(hash);
        // SAFETY: `home` is below the capacity, for which the filter was made.
        if !unsafe { self.filter.may_contain(i, hash) } {
            return None;
        }
        let tag = tag_of(hash);
        loop {
            // Acquire pairs with the release store in `insert_unique`: the entry's hash and key
            // were written before.
            let e = self.slot(i).load(Acquire);
            if e.is_null() {
                return None;
            }
            if e.addr() & TAG_MASK == tag {
                // SAFETY: entries reachable from a table that the caller may read (published
                // and protected by the caller's guard, or dirty under the lock) are alive.
                let entry = unsafe { &*untag(e) }.witness();
                // The key alone: the tag already compared 16 bits of the hash, so a second
                // key is compared about once in 65,536 probes (comparing the entry's full hash
                // first cost a hit 4 instructions; keys equal by `Eq` have equal hashes).
                if eq(&entry.key) {
                    return Some((entry, i));
                }
            }
            i = self.next(i);
        }
    }

    /// Inserts an entry whose key the table does not hold, and whose key's mixed hash is
    /// `hash` (only the bits `hashbits::KEPT` matter: a migration passes what the entry and
    /// its slot keep). Dirty table only, under the lock.
    pub(crate) fn insert_unique(&self, entry: *mut Entry<K, V>, hash: u64) {
        debug_assert!(self.len() < self.capacity(), "table full");
        debug_assert!(fits_tag(entry.addr()));
        let tagged = entry.map_addr(|a| a | tag_of(hash));
        let mut i = self.home(hash);
        // Before the slot's release store: a reader that sees the slot sees the bits too.
        // SAFETY: `home` is below the capacity, for which the filter was made.
        #[cfg(not(tiermap_mutation = "filter_after_publish"))]
        unsafe {
            self.filter.insert(i, hash)
        };
        loop {
            let slot = self.slot(i);
            if slot.load(Relaxed).is_null() {
                // Release publishes the entry to lock-free readers (see the module docs).
                #[cfg(not(tiermap_mutation = "relaxed_slot_publish"))]
                slot.store(tagged, Release);
                // Deliberately too weak for the loom models; never built otherwise.
                #[cfg(tiermap_mutation = "relaxed_slot_publish")]
                slot.store(tagged, Relaxed);
                // The bits after the slot's store, for the loom models: harmless, as every
                // lock-free lookup reads the filter before the slot (`loom-tests/README.md`);
                // never built otherwise.
                #[cfg(tiermap_mutation = "filter_after_publish")]
                // SAFETY: as above.
                unsafe {
                    self.filter.insert(self.home(hash), hash)
                };
                // Load and store, not read-modify-writes: only the lock holder writes these
                // counters (readers never read them), so no update can be lost, and a plain
                // store skips the locked instruction.
                let used = &self.used[i >> self.group_shift];
                let n = used.load(Relaxed);
                used.store(n + 1, Relaxed);
                if n == 0 {
                    self.groups_used
                        .store(self.groups_used.load(Relaxed) + 1, Relaxed);
                }
                self.len.store(self.len.load(Relaxed) + 1, Relaxed);
                return;
            }
            i = self.next(i);
        }
    }

    /// Copies the entries of slots `start..` of `src` (the read table, of the same capacity as
    /// this dirty table) into this table **at the same index**, without reading them, up to
    /// `budget` work units, counted as [`Table::scan`] counts them (a step ends at the end of
    /// a group of slots): a clone takes as many operations as a rehash of the same table, so
    /// that the graveyard, which frees a step per operation scaled by the migration budget
    /// (`grave::step_floor`), keeps pace with the tables that promotions retire. (Counting an
    /// occupied slot at a quarter made clones end four times sooner, and the sliding-window
    /// churn of `tests/memory.rs` once exceeded its bound with 166 KiB of retired tables
    /// pending.) Returns the index to continue from. Under the lock.
    ///
    /// Why the same index is where `insert_unique` would put the entry: with equal capacities
    /// an entry has the same home slot in both tables, and every slot between its home and its
    /// index in `src` is occupied there, so it was visited before it (the copy goes in index
    /// order) and is occupied here too (by its own entry, or by a fresh key, which then moved
    /// that entry further on; slots are never emptied). If the slot here is taken, the entry
    /// goes through `insert_unique`. Two cases break the "visited before": an entry whose probe
    /// wrapped from the end of the table to its start, and the slots this table's fresh keys
    /// took out of order. The first is why `*wrap_run` (true at the start of the copy) sends
    /// every entry through `insert_unique` until the copy has met an empty slot of `src` (no
    /// probe sequence runs across an empty slot, so none after it wraps); the second is the
    /// "slot taken" case above.
    ///
    /// The key filter's words for the visited home slots are merged before any slot of the
    /// group is published, so a reader that sees a slot sees its key's bits (as in
    /// `insert_unique`).
    pub(crate) fn clone_from(
        &self,
        src: &Table<K, V>,
        start: usize,
        budget: usize,
        wrap_run: &mut bool,
    ) -> usize {
        debug_assert_eq!(self.capacity(), src.capacity(), "clone of another capacity");
        let mut work = 0usize;
        let budget = budget.saturating_mul(16);
        let cap = src.capacity();
        let mut i = start;
        // Whole groups (the last one may overrun the budget by one group): the counters are
        // updated once per group, and the loop over a group's slots does nothing else.
        while i < cap && work < budget {
            let c = i >> src.group_shift;
            let end = ((c + 1) << src.group_shift).min(cap);
            let occupied = src.used[c].load(Relaxed);
            if occupied == 0 {
                *wrap_run = false;
                i = end;
                work += 16;
                continue;
            }
            work += 16 * occupied + (end - i).saturating_sub(occupied);
            self.filter.or_from(&src.filter, i, end);
            let mut placed = 0;
            for j in i..end {
                let e = src.slot(j).load(Relaxed);
                if e.is_null() {
                    *wrap_run = false;
                    continue;
                }
                // Deliberately wrong for the loom models (a cloned table loses every other entry
                // it copies to the same index, so once it is promoted their keys are missing);
                // never built otherwise.
                #[cfg(tiermap_mutation = "clone_drops_entry")]
                if !*wrap_run && j % 2 == 1 {
                    continue;
                }
                if !*wrap_run {
                    let slot = self.slot(j);
                    if slot.load(Relaxed).is_null() {
                        let tagged = e.map_addr(|a| a & !OWNED);
                        // Release publishes the entry to lock-free readers (as in
                        // `insert_unique`).
                        #[cfg(not(tiermap_mutation = "relaxed_slot_publish"))]
                        slot.store(tagged, Release);
                        // Deliberately too weak for the loom models; never built otherwise.
                        #[cfg(tiermap_mutation = "relaxed_slot_publish")]
                        slot.store(tagged, Relaxed);
                        placed += 1;
                        continue;
                    }
                }
                // SAFETY: `src`'s entries are alive while the caller holds the lock and a guard.
                self.insert_unique(untag(e), unsafe { hash_in(e) });
            }
            if placed > 0 {
                // Load and store, as in `insert_unique` (only the lock holder writes these).
                let used = &self.used[c];
                let n = used.load(Relaxed);
                used.store(n + placed, Relaxed);
                if n == 0 {
                    self.groups_used
                        .store(self.groups_used.load(Relaxed) + 1, Relaxed);
                }
                self.len.store(self.len.load(Relaxed) + placed, Relaxed);
            }
            i = end;
        }
        i
    }

    /// Clears the key filter's bits of `entry` (and of whatever shares them): the loom
    /// mutation `filter_skips_copies` only.
    #[cfg(tiermap_mutation = "filter_skips_copies")]
    pub(crate) fn forget_in_filter(&self, hash: u64) {
        self.filter.forget(self.home(hash), hash);
    }

    /// Marks the entry at slot `i` as owned by this table (it was expunged here).
    ///
    /// Under the dirty lock only. A plain load and store suffice: the lock holder is the only
    /// writer of a published table's slots, and concurrent readers mask the tag off.
    pub(crate) fn mark_owned(&self, i: usize) {
        let slot = self.slot(i);
        let e = slot.load(Relaxed);
        slot.store(e.map_addr(|a| a | OWNED), Relaxed);
    }

    /// How many slots carry the `OWNED` tag (a debug check of a migration's list).
    #[cfg(all(debug_assertions, not(miri)))]
    pub(crate) fn owned_count(&self) -> usize {
        let mut n = 0;
        self.for_each_raw(|_, _, owned, _| n += usize::from(owned));
        n
    }

    /// Visits slots from `start`, calling `f(index, entry, tag)` for each occupied one (with the
    /// entry pointer as stored, untagged, so that it keeps the allocation's full provenance, and
    /// the slot's tag for `Entry::kept_hash`),
    /// and stops after about `budget` units of work (an occupied slot or a skipped empty group
    /// costs one unit, an empty slot in a used group a sixteenth). Returns the index to resume
    /// from (`capacity()` when done).
    pub(crate) fn scan(
        &self,
        start: usize,
        budget: usize,
        mut f: impl FnMut(usize, *mut Entry<K, V>, u16),
    ) -> usize {
        /// How far ahead of the visited slot its entry is prefetched.
        #[cfg(not(tiermap_loom))]
        const AHEAD: usize = 16;
        let mut work = 0usize;
        let budget = budget.saturating_mul(16);
        let cap = self.capacity();
        let mut i = start;
        while i < cap && work < budget {
            let c = i >> self.group_shift;
            let end = ((c + 1) << self.group_shift).min(cap);
            if self.used[c].load(Relaxed) == 0 {
                i = end;
                work += 16;
                continue;
            }
            // The rest of the group, with one look at its counter.
            while i < end && work < budget {
                // `f` reads each entry, a cache miss (entries sit in insertion order, slots in
                // hash order): ask for the one `AHEAD` slots on now, so that the misses overlap.
                // (Not in loom builds: the extra slot load would be one more atomic access for
                // the models to explore, for a hint.)
                #[cfg(not(tiermap_loom))]
                if i + AHEAD < end {
                    let ahead = self.slot(i + AHEAD).load(Relaxed);
                    if !ahead.is_null() {
                        prefetch(untag(ahead));
                    }
                }
                let e = self.slot(i).load(Relaxed);
                if e.is_null() {
                    work += 1;
                } else {
                    f(i, untag(e), tag_in(e));
                    work += 16;
                }
                i += 1;
            }
        }
        i
    }

    /// Iterates occupied slots in index order, yielding `(index, entry, owned_tag, tag)` (`tag`
    /// for `Entry::kept_hash`).
    pub(crate) fn for_each_raw(&self, mut f: impl FnMut(usize, *mut Entry<K, V>, bool, u16)) {
        let glen = self.group_len();
        for (c, used) in self.used.iter().enumerate() {
            if used.load(Relaxed) == 0 {
                continue;
            }
            for i in c * glen..(c + 1) * glen {
                let e = self.slot(i).load(Relaxed);
                if !e.is_null() {
                    f(i, untag(e), e.addr() & OWNED != 0, tag_in(e));
                }
            }
        }
    }

    /// Empties up to `max` slots of a table nobody else can reach, from slot `from` to at most
    /// the end of its group: each occupied slot is cleared, then passed to `f` as `(index,
    /// entry, owned_tag)`. Returns the index to continue from and the slots looked at (0 for a
    /// group without entries, which is skipped whole). `max` must be at least 1. The slot array
    /// itself is freed with the table.
    ///
    /// A slot is cleared before `f` sees it, so if `f` panics, calling this again from the
    /// same `from` skips the entries already handed out.
    pub(crate) fn release_slots(
        &mut self,
        from: usize,
        max: usize,
        mut f: impl FnMut(usize, *mut Entry<K, V>, bool),
    ) -> (usize, usize) {
        debug_assert!(max >= 1 && from < self.capacity());
        let c = from >> self.group_shift;
        let group_end = (c + 1) << self.group_shift;
        // Relaxed throughout: `&mut self` means this thread is the only one touching the table
        // (the epoch's grace period ordered every reader's accesses before this call).
        if self.used[c].load(Relaxed) == 0 {
            return (group_end, 0);
        }
        let to = group_end.min(from.saturating_add(max));
        // In runs: take the run's entries out of their slots and prefetch them, then hand them
        // out. Entries sit in their blocks in insertion order and slots in hash order, so each
        // one is a cache miss (`free` reads it: its state, its key and value's drop); prefetching
        // a run overlaps those misses (`drop` of 1M entries, when entries were still one malloc
        // each: 140-170 ms -> 118-125 ms, BENCHMARKS.md section 4b).
        const RUN: usize = 16;
        let mut i = from;
        while i < to {
            let end = to.min(i + RUN);
            for j in i..end {
                let e = self.slot(j).load(Relaxed);
                if !e.is_null() {
                    prefetch(untag(e));
                }
            }
            for j in i..end {
                let slot = self.slot(j);
                let e = slot.load(Relaxed);
                if !e.is_null() {
                    // Cleared before `f` runs: a panicking `f` never sees this entry again, and
                    // the entries after it stay in their slots for the retry.
                    slot.store(ptr::null_mut(), Relaxed);
                    f(j, untag(e), e.addr() & OWNED != 0);
                }
            }
            i = end;
        }
        if to == group_end {
            self.used[c].store(0, Relaxed);
            self.groups_used.fetch_sub(1, Relaxed);
        }
        (to, to - from)
    }

    /// Resets the entry count after `release_slots` emptied every slot (the table can then be
    /// filled again).
    pub(crate) fn emptied(&mut self) {
        debug_assert_eq!(self.groups_used.load(Relaxed), 0);
        self.len.store(0, Relaxed);
        self.filter.clear();
    }

    /// The capacity `Table::new(slots)` gives.
    pub(crate) fn capacity_for(slots: usize) -> usize {
        if slots == 0 {
            0
        } else if slots <= GROUP_SLOTS {
            slots.max(MIN_SLOTS.min(GROUP_SLOTS)).next_power_of_two()
        } else {
            let cap = slots.div_ceil(GROUP_SLOTS) * GROUP_SLOTS;
            assert!(
                cap <= MAX_SLOTS,
                "tiermap: capacity overflow ({cap} slots in one table)"
            );
            cap
        }
    }

    /// Slot `i`'s entry, if any (for iteration by index over a published table).
    #[inline]
    pub(crate) fn entry_at(&self, i: usize) -> Option<&Entry<K, V>> {
        let e = self.slot(i).load(Relaxed);
        if e.is_null() {
            None
        } else {
            // SAFETY: as in `find`.
            Some(unsafe { &*untag(e) }.witness())
        }
    }

    /// The first index at or after `i` whose group holds entries (to skip empty groups).
    #[inline]
    pub(crate) fn skip_empty(&self, mut i: usize) -> usize {
        let cap = self.capacity();
        while i < cap {
            let c = i >> self.group_shift;
            if self.used[c].load(Relaxed) != 0 {
                return i;
            }
            i = (c + 1) << self.group_shift;
        }
        i
    }
}

impl<K, V> Drop for Table<K, V> {
    fn drop(&mut self) {
        // SAFETY: `slots` came from `Box::into_raw` of a boxed slice of `cap` slots in `new`
        // and is freed once, here.
        drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(self.slots, self.cap)) });
    }
}

// SAFETY: the table owns its slot array as a `Box<[AtomicPtr<_>]>` would (the raw pointer only
// changes how slots are reached), and that box is `Send` and `Sync` for any `K`, `V`: a slot is
// an atomic pointer. What the pointers lead to is the map's to guard (`Shard`'s bounds).
unsafe impl<K, V> Send for Table<K, V> {}
// SAFETY: as above.
unsafe impl<K, V> Sync for Table<K, V> {}

/// Hints the CPU to fetch the cache line of `p`, without waiting. A no-op where unsupported
/// (and under Miri).
#[inline(always)]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: prefetching never faults, whatever the address (it is only a hint); SSE is
        // part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    {
        let _ = p;
    }
}

/// Hints the CPU to fetch the cache lines of the entry at `e` (its slot: the entry and its
/// inline value): the first, and the last if the slot spans two. A no-op where unsupported
/// (and under Miri).
#[inline(always)]
pub(crate) fn prefetch<K, V>(e: *const Entry<K, V>) {
    let first = e.addr();
    let last = first + entry_bytes::<K, V>(false) - 1;
    prefetch_line(e);
    if last / 64 != first / 64 {
        prefetch_line(e.cast::<u8>().wrapping_add(last - first));
    }
}
