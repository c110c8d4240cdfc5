//! Maintenance of the tiers, apart from the operations (`mod.rs`): the migration that fills a
//! dirty tier from the read tier a few slots per locked operation, promotion (the dirty tier
//! becomes the read tier), compaction (a migration that drops deleted entries), `clear`, the
//! snapshot that iteration starts from, and the retirement of what they replace.
//!
//! Every function here runs under the dirty lock (taking a `&mut LockedState`) or takes it,
//! except `reclaim` and `compact`, which loop over locked steps.

use std::ptr;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::entry::entry_bytes;
use super::grave::{self, Corpse, Item, Ownership};
use super::table::Table;
use super::{Gen, LockedState, Shard, Tier};
use super::{ARENA_FLOOR, DELETED_FLOOR, MIN_BUDGET, OBSERVE_EVERY, SLOTS_FLOOR, SNAPSHOT_STEP};
use crate::facade::{lock, try_lock, Guard, MutexGuard};

impl<K: Send + 'static, V: Send + 'static> Shard<K, V> {
    /// Does the slow-path maintenance if the lock is free right now (never waits for it).
    pub(super) fn maintain_if_free(&self, guard: &Guard) {
        if let Some(st) = try_lock(&self.dirty) {
            if st.frozen {
                // Split: nothing to maintain here (the successors maintain themselves).
                return;
            }
            self.unlock_and_maintain(st, guard);
        }
    }

    /// Runs `f` under the dirty lock of the shard that holds keys of hash `hash` (this one, or,
    /// if it was split, its successor for `hash`), then does the migration/promotion work every
    /// slow operation owes, releases the lock, and pushes any retired table to the global
    /// queue. `f` is handed the shard whose lock it holds, and must work on that one.
    pub(super) fn with_lock<'g, R>(
        &self,
        hash: u64,
        guard: &'g Guard,
        f: impl FnOnce(&Self, &mut LockedState<K, V>, &'g Guard) -> R,
    ) -> R {
        let mut shard = self;
        let mut st = lock(&shard.dirty);
        // A loop, not a recursive call: a recursive `with_lock` is not inlined into its callers.
        #[cfg(not(tiermap_mutation = "split_no_forward"))]
        while st.frozen {
            // Split since the caller picked this shard: the key's writes go to its successor,
            // which holds every key of its hashes that this shard held (the split copied them
            // under this lock) and takes those added since.
            let next = super::sharded::successor::<K, V>(st.successors, hash);
            drop(st);
            shard = next;
            st = lock(&shard.dirty);
        }
        let r = f(shard, &mut st, guard);
        shard.unlock_and_maintain(st, guard);
        r
    }

    /// The end of every critical section that may owe migration work: migrate, promote or
    /// compact as due, unlock, then flush retired tables and run the observer.
    pub(super) fn unlock_and_maintain(
        &self,
        mut st: MutexGuard<'_, LockedState<K, V>>,
        guard: &Guard,
    ) {
        self.maintain(&mut st, guard);
        let (budget, observe) = self.end_locked(&mut st, guard);
        drop(st);
        self.after_unlock(budget, observe, guard);
    }

    /// The last step under the lock of a critical section: the hints for the background
    /// reclaimer, and whether the observer is due. Returns the step budget and that decision
    /// for [`Shard::after_unlock`].
    pub(crate) fn end_locked(&self, st: &mut LockedState<K, V>, guard: &Guard) -> (usize, bool) {
        // Relaxed: hints for the background reclaimer's trim decision (a lost update of the peak
        // under a race only delays or skips a trim).
        let live = self.read(guard).gen.live();
        self.shared.live_hint.store(live, Relaxed);
        if live > self.shared.peak_live.load(Relaxed) {
            self.shared.peak_live.store(live, Relaxed);
        }
        let retired = std::mem::take(&mut st.retired);
        let budget = st.budget;
        st.locked_ops = st.locked_ops.wrapping_add(1);
        st.since_observed += 1;
        let observe = retired || st.since_observed >= OBSERVE_EVERY;
        if observe {
            st.since_observed = 0;
        }
        (budget, observe)
    }

    /// What follows a critical section, outside the lock: starts the grace period of what it
    /// retired, frees a step of what is past it (user `Drop`s run, and may call the map), and
    /// flags the observer as due if `observe` (`RawMap` runs it when the operation returns).
    pub(crate) fn after_unlock(&self, budget: usize, observe: bool, guard: &Guard) {
        // Outside the lock: start the grace period of what this operation retired (flushed to
        // the global queue, so that any thread's next collection, the background reclaimer's
        // included, can end it), then free a step of what is past it; freeing runs the keys'
        // and values' `Drop`, which may call the map.
        self.grave.service(guard, grave::step_floor(budget));
        if observe {
            // Relaxed: a hint (see `Shard::observe_due`).
            self.observe_due.store(true, Relaxed);
        }
    }

    /// Starts filling a dirty tier from the read tier (Go's `dirtyLocked`, spread over later
    /// operations instead of copying everything now).
    pub(super) fn start_migration(
        &self,
        st: &mut LockedState<K, V>,
        read: &Tier<K, V>,
        compacting: bool,
    ) {
        debug_assert!(st.tier.is_none());
        let t = &read.table;
        let work = Self::migration_work(t);
        let budget = Self::migration_budget(t, read.gen.live());
        // I5: room at load factor 3/4 for every read entry (a deleted one may be revived and
        // copied) plus one fresh key per operation of the migration; and growth room, load
        // factor 1/2 for the live entries and those fresh keys. Sized by the live entries, not
        // the occupied slots, so that deleted entries the migration drops take no room.
        let ops = work.div_ceil(budget) + 1;
        let live = read.gen.live().min(t.len());
        let room = (t.len() + ops) * 4 / 3 + 4;
        let grown = 2 * (live + ops);
        // A copy to the same index (`Table::clone_from`: no entry is read, so no cache miss
        // per entry) when the read table already has the room I5 asks for (the hard term,
        // and growth room of half the live entries), is at most a quarter larger than the
        // table a rehash would make (so a clone never holds much more memory), and holds few
        // deleted entries (a clone keeps them, as deleted entries of the dirty tier; a
        // migration that rehashes drops them). Never to compact, which exists to drop them.
        let cloning = !compacting
            && t.len() - live <= live / 8
            && t.capacity() >= room.max(3 * (live + ops) / 2)
            && t.capacity() <= grown + grown / 4;
        let slots = if cloning {
            t.capacity()
        } else {
            grown.max(room)
        };
        self.set_dirty(st, Some(Tier::boxed(slots, read.gen.clone())));
        debug_assert!(
            !cloning
                || st
                    .tier
                    .as_deref()
                    .is_some_and(|d| d.table.capacity() == t.capacity()),
            "a cloning migration's dirty table has the read table's capacity"
        );
        st.cloning = cloning;
        st.wrap_run = true;
        st.cursor = 0;
        st.budget = budget;
        st.expunged.clear();
        st.compacting = compacting;
        // The map observes the shard when this operation returns, and so lists its idle
        // watch (`raw::idle`), which promotes the new tier if the shard goes quiet.
        // Relaxed: a hint (see `Shard::observe_due`).
        self.observe_due.store(true, Relaxed);
        self.shared.migrations.fetch_add(1, Relaxed);
        if cloning {
            self.shared.clones.fetch_add(1, Relaxed);
        }
        if compacting {
            self.shared.compactions.fetch_add(1, Relaxed);
            // The map shrinks: its reserved slots must not keep a block that the compaction
            // would give back (a map emptied by removals compacts, then releases its blocks).
            self.grave.arena.unreserve(&mut st.slots);
        }
    }

    /// Work units of a whole migration of `t`: occupied slots, groups, and empty slots at 1/16.
    pub(super) fn migration_work(t: &Table<K, V>) -> usize {
        t.len() + t.groups() + t.capacity() / 16 + 1
    }

    /// Work units per slow operation for a migration of `t` with `live` entries present: enough
    /// to finish before half of the live entries can be removed (so a compaction keeps up), and
    /// never less than `MIN_BUDGET`.
    pub(super) fn migration_budget(t: &Table<K, V>, live: usize) -> usize {
        (2 * Self::migration_work(t))
            .div_ceil(live.max(1))
            .max(MIN_BUDGET)
    }

    /// Copies up to `budget` units of the read tier into the dirty tier (I4).
    pub(super) fn migrate(&self, st: &mut LockedState<K, V>, budget: usize, guard: &Guard) {
        let read = self.read(guard);
        let Some(d) = st.tier.as_deref() else { return };
        if st.cloning {
            st.cursor = d
                .table
                .clone_from(&read.table, st.cursor, budget, &mut st.wrap_run);
            return;
        }
        let expunged = &mut st.expunged;
        st.cursor = read.table.scan(st.cursor, budget, |i, e, tag| {
            // SAFETY: entries reachable from the read tier are alive while we hold the lock and
            // `guard` (I3: only retirement through the epoch frees them).
            if unsafe { &*e }.expunge_if_deleted() {
                read.table.mark_owned(i);
                expunged.push(e);
            } else {
                // The stored pointer itself, not one derived from a reference: the dirty tier
                // may be the one that frees the entry later.
                // SAFETY: as above.
                let hash = unsafe { &*e }.kept_hash(tag);
                d.table.insert_unique(e, hash);
                // Deliberately wrong for the loom models (the new table's key filter loses
                // the migrated keys, so once it is promoted their lookups miss); never built
                // otherwise.
                #[cfg(tiermap_mutation = "filter_skips_copies")]
                d.table.forget_in_filter(hash);
            }
        });
    }

    /// Makes the (complete) dirty tier the read tier and retires the old read tier.
    pub(super) fn promote(&self, st: &mut LockedState<K, V>, guard: &Guard) {
        let new = st.tier.take();
        assert!(!new.is_null(), "dirty tier to promote");
        // Deliberately wrong order for the loom models (never built otherwise): a lookup that
        // sees the null view can re-load the old read tier and report a present key absent.
        #[cfg(tiermap_mutation = "clear_view_before_swap")]
        self.dirty_view.store(ptr::null_mut(), Release);
        // `dirty_view` still points at `new`, which stays alive as the read tier; it is cleared
        // after `read` is swapped (the order `lookup` relies on).
        #[cfg(tiermap_mutation = "retire_before_publish")]
        let old = {
            let old = self.read.load(Acquire);
            // SAFETY: deliberately wrong order for the loom models; never built otherwise.
            unsafe {
                let owned = std::mem::take(&mut st.expunged);
                let n = owned.len();
                self.retire_tiers(old, Ownership::Listed(owned), n, ptr::null_mut(), guard)
            };
            self.read.store(new, Release);
            old
        };
        #[cfg(not(tiermap_mutation = "retire_before_publish"))]
        let old = {
            // AcqRel: release publishes the new tier's slots to readers; acquire is for the
            // old pointer we free later (written by an earlier lock holder, also ordered by the
            // mutex).
            #[cfg(not(tiermap_mutation = "relaxed_promote_publish"))]
            let publish = AcqRel;
            // Deliberately too weak for the loom models; never built otherwise.
            #[cfg(tiermap_mutation = "relaxed_promote_publish")]
            let publish = Acquire;
            self.read.swap(new, publish)
        };
        let expunged = st.expunged.len();
        // SAFETY: `old` is unpublished now; I4 with `cursor == capacity` means it owns exactly
        // its tagged entries (I3), which the migration listed in `st.expunged` as it tagged them.
        #[cfg(not(tiermap_mutation = "retire_before_publish"))]
        unsafe {
            let owned = std::mem::take(&mut st.expunged);
            self.retire_tiers(
                old,
                Ownership::Listed(owned),
                expunged,
                ptr::null_mut(),
                guard,
            )
        };
        let _ = old;
        // SAFETY: `new` is the tier we just published; it is alive while we hold the lock.
        let gen = unsafe { &(*new).gen };
        // A load and a store: `entries` changes only under the dirty lock (see `insert_fresh`).
        gen.entries
            .store(gen.entries.load(Relaxed) - expunged as isize, Relaxed);
        // Release pairs with the acquire in `lookup` (see there).
        #[cfg(not(tiermap_mutation = "clear_view_before_swap"))]
        self.dirty_view.store(ptr::null_mut(), Release);
        st.cursor = 0;
        self.misses.store(0, Relaxed);
        st.expunged.clear();
        st.compacting = false;
        st.cloning = false;
        st.retired = true;
        self.shared.promotions.fetch_add(1, Relaxed);
        let live = gen.live();
        // A shard past `SPLIT_MAX_FACTOR * split_at` never splits: no flag, so that its later
        // promotions do not take the lock again for a split that would decline.
        if self.split_at > 0
            && (self.split_at..=super::sharded::SPLIT_MAX_FACTOR * self.split_at).contains(&live)
        {
            // Relaxed: a hint; the split re-checks under the lock. `retired` makes the
            // observation due, which is where the map looks at this flag.
            self.split_due.store(true, Relaxed);
        }
    }

    /// Whether the held tables or deleted entries are out of proportion to the live entries.
    ///
    /// Only the read tier's allocated slots count: a dirty tier is sized from the read tier
    /// (I5) or by `with_capacity`, and becomes the read tier when promoted.
    ///
    /// An empty map whose deleted entries keep entry blocks of more than [`ARENA_FLOOR`] bytes
    /// compacts too, however few the entries: each of them keeps its whole block (see
    /// `arena`), and the compaction frees them all, so that the blocks go back.
    #[inline(always)]
    pub(super) fn needs_compaction(&self, read: &Tier<K, V>) -> bool {
        let live = read.gen.live();
        let deleted = read.gen.entries().saturating_sub(live);
        deleted > live / 2 + DELETED_FLOOR
            || read.table.allocated_slots() > 8 * live + SLOTS_FLOOR
            || (live == 0 && deleted > 0 && self.empty_map_keeps_blocks())
    }

    /// Whether the entry blocks of a map that has no live entry exceed [`ARENA_FLOOR`] (out of
    /// line: the common removal does not get here).
    #[cold]
    #[inline(never)]
    fn empty_map_keeps_blocks(&self) -> bool {
        self.grave.arena.held_bytes() > ARENA_FLOOR
    }

    /// The work every slow operation owes: migrate, promote when due, start a compaction when
    /// the map holds too much.
    pub(super) fn maintain(&self, st: &mut LockedState<K, V>, guard: &Guard) {
        // Every path to here skips a split shard (`with_lock` forwards, the others check).
        debug_assert!(!st.frozen, "maintenance of a split shard");
        if st.tier.is_some() {
            let read = self.read(guard);
            if st.cursor < read.table.capacity() {
                // Re-derive the budget from the live count now: if removals shrank it since the
                // migration started, finish sooner (a compaction must not lag the removals).
                let budget = Self::migration_budget(&read.table, read.gen.live()).max(st.budget);
                st.budget = budget;
                self.migrate(st, budget, guard);
            }
            if st.cursor >= read.table.capacity() {
                let d = st.tier.as_deref().expect("dirty tier");
                let due = st.compacting
                    || self.misses.load(Relaxed) >= d.table.len()
                    || d.table.len() >= d.table.max_len()
                    || self.needs_compaction(read);
                if due {
                    self.promote(st, guard);
                }
            }
        }
        if st.tier.is_none() {
            let read = self.read(guard);
            if self.needs_compaction(read) {
                self.start_migration(st, read, true);
                self.migrate(st, st.budget, guard);
                if st.cursor >= read.table.capacity() {
                    self.promote(st, guard);
                }
            }
        }
    }

    /// After a bulk removal (`retain`) of `removed` entries: if that made a compaction due, run
    /// it to the end now, in steps with the lock released between them. A bulk removal already
    /// paid O(n) to scan the map, so it pays for the compaction it causes instead of leaving
    /// deleted entries to later operations (which, if they are all reads, never come).
    pub(crate) fn compact_after_bulk_removal(&self, guard: &Guard, removed: usize) {
        if removed > 0 && self.needs_compaction(self.read(guard)) {
            self.compact(guard);
        }
    }

    /// A read tier that holds every present key, for iteration: completes a running migration
    /// and promotes if the dirty tier holds keys the read tier lacks (Go's `Range` promotes
    /// too). The work is done in steps with the lock released between them.
    ///
    /// Bounded under any rate of concurrent inserts: it returns the first tier promoted (by
    /// anyone) after the call began, which holds every key present when it was promoted, even
    /// if new keys have amended it since (as Go's `Range` uses the read map it has just
    /// promoted). Each step either returns or migrates `SNAPSHOT_STEP` units of the one
    /// migration that must end before that promotion.
    ///
    /// `Err(successors)` if the shard was split (`RawMap::split`; the caller iterates the new
    /// shards, tagged array `successors`, instead): a split shard's tiers may lack the keys
    /// added to its successors since, and cannot be completed any more.
    pub(crate) fn snapshot<'g>(
        &self,
        guard: &'g Guard,
    ) -> Result<&'g Tier<K, V>, *mut Shard<K, V>> {
        let start = self.read(guard);
        // Acquire: as in `lookup`. (A read tier that is not amended holds every key of its
        // shard, also when the shard has been split since: its successors hold the same
        // entries, and the keys added to them since the split came after this call began.)
        if !start.amended.load(Acquire) {
            return Ok(start);
        }
        loop {
            #[cfg(test)]
            super::tests::SNAPSHOT_ROUNDS.with(|n| n.set(n.get() + 1));
            let mut st = lock(&self.dirty);
            if st.frozen {
                return Err(st.successors);
            }
            let read = self.read(guard);
            // `start` is alive (our guard), so a different pointer is a newer tier: one
            // promoted since the call began, or a `clear`'s empty one.
            if !ptr::eq(read, start) {
                self.unlock_and_maintain(st, guard);
                return Ok(read);
            }
            debug_assert!(st.tier.is_some(), "amended implies a dirty tier");
            self.migrate(&mut st, SNAPSHOT_STEP, guard);
            if st.cursor >= read.table.capacity() && st.tier.is_some() {
                self.promote(&mut st, guard);
                let promoted = self.read(guard);
                self.unlock_and_maintain(st, guard);
                return Ok(promoted);
            }
            self.unlock_and_maintain(st, guard);
        }
    }

    /// Whether this shard holds nothing that `clear` would retire: no entry, no table, no
    /// dirty tier. Under the lock.
    pub(crate) fn is_bare(&self, st: &LockedState<K, V>, guard: &Guard) -> bool {
        let read = self.read(guard);
        st.tier.is_none() && read.table.capacity() == 0 && read.gen.entries() == 0
    }

    /// The generation a `clear` starts next (every shard's is the same outside a `clear`).
    pub(crate) fn next_generation(&self) -> u64 {
        // Relaxed: read by the `clear` that holds every shard's lock; only a `clear` writes it.
        self.generation.load(Relaxed) + 1
    }

    /// A `clear`'s first step in this shard (I6), under the lock: generation `id` begins.
    /// `RawMap::clear` takes it in every shard before any shard's [`Shard::clear_locked`].
    pub(crate) fn begin_clear(&self, id: u64) {
        // Release pairs with the acquire in `generation_is`; `behind_clear` relies on the
        // release of the `read` swaps that follow in program order (I6).
        self.generation.store(id, Release);
    }

    /// A `clear`'s second step in this shard, under the lock: replaces the tiers by an empty
    /// read tier of generation `id` and retires the old tiers, entries and values as one unit.
    /// The caller unlocks, then calls `after_unlock` with what this returns.
    pub(crate) fn clear_locked(
        &self,
        st: &mut LockedState<K, V>,
        id: u64,
        guard: &Guard,
    ) -> (usize, bool) {
        let fresh = Tier::boxed(0, Gen::new(id));
        // AcqRel: as in `promote`.
        #[cfg(not(tiermap_mutation = "relaxed_clear_publish"))]
        let old = self.read.swap(Box::into_raw(fresh), AcqRel);
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(tiermap_mutation = "relaxed_clear_publish")]
        let old = self.read.swap(Box::into_raw(fresh), Acquire);
        let dirty = self.set_dirty(st, None);
        let upto = if dirty.is_null() { 0 } else { st.cursor };
        // SAFETY: `old` is unpublished; with the cursor (I3) it and `dirty` own every entry of
        // the generation exactly once.
        unsafe {
            let owned = (*old).gen.entries();
            self.retire_tiers(old, Ownership::Scan { upto }, owned, dirty, guard)
        };
        st.cursor = 0;
        self.misses.store(0, Relaxed);
        // The map is empty now: its reserved slots must not keep a block.
        self.grave.arena.unreserve(&mut st.slots);
        // The read tier's expunged entries are tagged in its slots, which its corpse scans.
        st.expunged.clear();
        st.compacting = false;
        st.cloning = false;
        st.retired = true;
        self.end_locked(st, guard)
    }

    /// Rebuilds the tiers now so that they hold only live entries, in steps with the lock
    /// released between them.
    pub(crate) fn compact(&self, guard: &Guard) {
        // A rebuild sizes its table from the read tier's entry count (I5), deleted ones
        // included; a second round right-sizes it once those are gone.
        for _ in 0..3 {
            self.compact_round(guard);
            let read = self.read(guard);
            let live = read.gen.live();
            let tight = read.table.len() == live && read.table.capacity() <= 4 * live + 16;
            if tight {
                break;
            }
        }
    }

    pub(super) fn compact_round(&self, guard: &Guard) {
        {
            let mut st = lock(&self.dirty);
            if st.frozen {
                // Split meanwhile: the successors hold its keys (the caller goes over the
                // shards it loaded before the split).
                return;
            }
            if st.tier.is_none() {
                let read = self.read(guard);
                self.start_migration(&mut st, read, true);
            } else {
                st.compacting = true;
            }
        }
        loop {
            let mut st = lock(&self.dirty);
            if st.tier.is_none() {
                break;
            }
            let read = self.read(guard);
            self.migrate(&mut st, SNAPSHOT_STEP, guard);
            if st.cursor >= read.table.capacity() {
                self.promote(&mut st, guard);
                self.unlock_and_maintain(st, guard);
                break;
            }
            self.unlock_and_maintain(st, guard);
        }
    }

    /// Retires the tiers of this shard, which a split has just frozen (`RawMap::split`): the
    /// read tier owning only the entries its migration expunged (listed in `expunged`), the
    /// dirty tier, if any, owning none (its entries are the new shards'); under the lock. The
    /// tiers stay published here (`read`, `dirty_view`) for the operations that loaded the
    /// shard before the split.
    ///
    /// # Safety
    /// The caller split this shard under the lock it holds (`st`), giving every entry of its
    /// tiers but the expunged ones to the new shards, and published the new shard array
    /// before this call, so that only operations pinned before then can reach this shard, and
    /// through it the tiers; the shard is frozen (nothing replaces or frees its tiers again,
    /// and its `drop` does not touch them).
    pub(crate) unsafe fn retire_frozen(&self, st: &mut LockedState<K, V>, guard: &Guard) {
        debug_assert!(st.frozen);
        let read = self.read.load(Relaxed);
        // Out of the locked state, without touching `dirty_view`: lookups of the old array
        // still probe it.
        let dirty = st.tier.take();
        st.cursor = 0;
        let expunged = std::mem::take(&mut st.expunged);
        let n = expunged.len();
        // SAFETY: per the caller: unreachable but by operations pinned before now, whose grace
        // period the graveyard waits for; the read tier owns exactly its expunged entries (I3,
        // the migration listed them as it tagged them), the dirty tier none; each is retired
        // once (the shard is frozen).
        unsafe {
            self.retire_tiers(read, Ownership::Listed(expunged), n, ptr::null_mut(), guard);
            if !dirty.is_null() {
                let bytes = (*dirty).bytes();
                self.grave.retire(Item::Tier(Corpse::new(
                    dirty,
                    Ownership::Listed(Vec::new()),
                    bytes,
                )));
            }
        }
        st.retired = true;
    }

    /// Retires an unpublished read tier (owning the entries `owned` says, `owned_entries` of
    /// them) and optionally a dirty tier (owning all its entries).
    ///
    /// # Safety
    /// `read` (and `dirty`, if not null) were unlinked by the caller under the lock, are
    /// retired once, and own the entries I3 says they own, which `owned` describes.
    /// `owned_entries` is for accounting.
    pub(super) unsafe fn retire_tiers(
        &self,
        read: *mut Tier<K, V>,
        owned: Ownership<K, V>,
        owned_entries: usize,
        dirty: *mut Tier<K, V>,
        _guard: &Guard,
    ) {
        // SAFETY: alive until the graveyard frees it.
        let mut bytes = unsafe { (*read).bytes() };
        bytes += owned_entries * entry_bytes::<K, V>(true);
        let mut dirty_bytes = 0;
        if !dirty.is_null() {
            // SAFETY: as above.
            dirty_bytes = unsafe { (*dirty).bytes() };
        }
        // SAFETY: the tiers are unpublished, so only guards pinned before now can reach them;
        // the graveyard frees them after the grace period of a deferral made after this call
        // (or when the map is dropped); they own what I3 says (`upto` for the read tier, all
        // for the dirty one).
        unsafe {
            self.grave
                .retire(Item::Tier(Corpse::new(read, owned, bytes)));
            if !dirty.is_null() {
                self.grave.retire(Item::Tier(Corpse::new(
                    dirty,
                    Ownership::Scan { upto: 0 },
                    dirty_bytes,
                )));
            }
        }
    }
}
