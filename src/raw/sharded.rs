//! The map as `S` shards (a power of two, 1 to `MAX_SHARDS`): each [`Shard`] is a whole
//! two-tier engine (read tier, dirty tier, lock, miss clock, migration, promotion, compaction,
//! graveyard, entry arena) for the keys whose mixed hash has its index in bits 32.. (bits that
//! neither the table's home slot, which comes from the top bits, nor the slot tag, bits 16..32,
//! nor the fresh-key filter, the low bits, of a shard's tables depend on).
//!
//! An operation on one key is the operation of its shard, unchanged. What spans shards is
//! here: `clear` (linearizable across shards, I6 in `docs/DESIGN.md`), the counts, the
//! statistics and the observer, iteration (shard after shard), `reclaim`, and the exclusive
//! resets of `MapPool` and `into_iter`.

use std::borrow::Borrow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::entry::Entry;
use super::{background, Observer, RawIter, Replace, Shard};
use crate::facade::{Guard, Reclaimer};
use crate::outcome::{Computed, GetOrInsert, Op};
use crate::stats::MapStats;

/// Most shards a map has (so that a shard index fits the 6 hash bits 32..38).
pub(crate) const MAX_SHARDS: usize = 64;
/// A map built for fewer keys than this has one shard; a larger one at most one shard per this
/// many keys.
pub(crate) const KEYS_PER_SHARD: usize = 4096;
/// Shards per hardware thread for a map built large (see `shards_for`).
const SHARDS_PER_THREAD: usize = 4;

/// How many shards a map built for `capacity` keys gets: one below `2 * KEYS_PER_SHARD` keys (a
/// small or pooled map pays for one lock, one graveyard and one table pair, as a Go
/// `sync.Map` does); above, `SHARDS_PER_THREAD` per hardware thread, at most one per
/// `KEYS_PER_SHARD` keys and at most `MAX_SHARDS`. BENCHMARKS.md ("Shards") has the figures
/// behind the choice.
pub(crate) fn shards_for(capacity: usize) -> usize {
    if capacity < 2 * KEYS_PER_SHARD {
        return 1;
    }
    let by_size = prev_power_of_two(capacity / KEYS_PER_SHARD);
    let by_threads = (SHARDS_PER_THREAD * hardware_threads()).next_power_of_two();
    by_size.min(by_threads).min(MAX_SHARDS)
}

/// `shards` rounded to a power of two in `1..=MAX_SHARDS` (down when it is not one).
pub(crate) fn valid_shards(shards: usize) -> usize {
    prev_power_of_two(shards.clamp(1, MAX_SHARDS))
}

fn prev_power_of_two(n: usize) -> usize {
    debug_assert!(n > 0);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// `std::thread::available_parallelism`, asked once per process (it reads cgroup files).
fn hardware_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The engine behind `SyncMap`: its shards, and the observer they share.
pub(crate) struct RawMap<K, V> {
    shards: Box<[Shard<K, V>]>,
    /// `shards.len() - 1`.
    mask: usize,
    /// A handle on the collector every shard pins (see `Reclaimer::sibling`), here so that a
    /// pin does not touch the shard array.
    reclaimer: Reclaimer,
    /// Called with a statistics snapshot of the whole map when a shard says it is due (every
    /// `OBSERVE_EVERY` slow operations of that shard, and after each one that retired a
    /// table), outside every lock, when the operation returns (the retention alarm and the
    /// metrics publisher hook in here). Read hits look only at their shard's flag.
    observer: arc_swap::ArcSwapOption<Observer>,
}

impl<K, V> RawMap<K, V> {
    /// A map for `capacity` keys, with `shards_for(capacity)` shards.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_shards(capacity, shards_for(capacity))
    }

    /// A map for `capacity` keys (spread evenly) with `valid_shards(shards)` shards.
    pub(crate) fn with_shards(capacity: usize, shards: usize) -> Self {
        let n = valid_shards(shards);
        let first = Reclaimer::new();
        let shards: Box<[Shard<K, V>]> = (0..n)
            .map(|_| Shard::new(capacity.div_ceil(n), first.sibling(), n > 1))
            .collect();
        RawMap {
            mask: n - 1,
            reclaimer: first.sibling(),
            shards,
            observer: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Loom builds: makes every shard use `other`'s epoch collector (see
    /// `Reclaimer::share`). Only for a map that never pinned yet.
    #[cfg(tiermap_loom)]
    pub(crate) fn share_collector<K2, V2>(&mut self, other: &RawMap<K2, V2>) {
        for s in self.shards.iter_mut() {
            s.share_collector(&other.shards[0]);
        }
        self.reclaimer = other.reclaimer.sibling();
    }

    /// The shards, in index order.
    pub(crate) fn shards(&self) -> &[Shard<K, V>] {
        &self.shards
    }

    /// The shard of a mixed hash.
    #[inline]
    pub(crate) fn shard(&self, hash: u64) -> &Shard<K, V> {
        let i = (hash >> 32) as usize & self.mask;
        debug_assert!(i < self.shards.len());
        // SAFETY: `mask` is `shards.len() - 1` and `shards.len()` a power of two (`with_shards`;
        // the array is never resized), so `i < shards.len()`.
        unsafe { self.shards.get_unchecked(i) }
    }

    /// Pins the current thread for this map's epoch (every operation's first step).
    #[inline]
    pub(crate) fn pin(&self) -> Guard {
        self.reclaimer.pin()
    }

    /// The hash the engine uses for a user hash: spread so that weak hashers still fill the
    /// tables and the shards evenly (see `table::mix`).
    #[inline]
    pub(crate) fn mix(hash: u64) -> u64 {
        super::table::mix(hash)
    }

    /// Keys present: the sum of the shards' counts (each exact when no write is in flight).
    pub(crate) fn len(&self, guard: &Guard) -> usize {
        self.shards.iter().map(|s| s.read(guard).gen.live()).sum()
    }

    /// Where the map's memory is: the shards' statistics, summed (each shard's taken under its
    /// lock, one after the other).
    pub(crate) fn stats(&self, guard: &Guard) -> MapStats {
        let mut total = MapStats::default();
        for s in self.shards.iter() {
            let st = s.stats(guard);
            total.len += st.len;
            total.deleted += st.deleted;
            total.read_capacity += st.read_capacity;
            total.dirty_capacity += st.dirty_capacity;
            total.migrating |= st.migrating;
            total.misses += st.misses;
            total.held_bytes += st.held_bytes;
            total.spare_bytes += st.spare_bytes;
            total.retired_bytes += st.retired_bytes;
            total.promotions += st.promotions;
            total.migrations += st.migrations;
            total.compactions += st.compactions;
        }
        total.held_bytes += self.header_bytes();
        total
    }

    /// What the shard array takes beyond its first shard: a one-shard map's `held_bytes` stays
    /// what it was when its one engine was inline in the `SyncMap` (tables, entries, values).
    fn header_bytes(&self) -> usize {
        (self.shards.len() - 1) * std::mem::size_of::<Shard<K, V>>()
    }

    /// Runs the observer if `shard`'s last slow operation said it is due. After every
    /// operation, outside every lock.
    #[inline]
    fn observe_due(&self, shard: &Shard<K, V>, guard: &Guard) {
        // Relaxed: a hint (see `Shard::observe_due`); a lost or doubled call only moves an
        // observation by one operation.
        if shard.observe_due.load(Relaxed) {
            self.observe_now(shard, guard);
        }
    }

    /// Runs the observer once if any shard says it is due (after an operation that worked on
    /// several shards, such as the snapshots of a parallel iteration).
    #[cfg(feature = "rayon")]
    pub(crate) fn observe_any_due(&self, guard: &Guard) {
        let mut due = false;
        for s in self.shards.iter() {
            // Relaxed: as in `observe_due`.
            due |= s.observe_due.swap(false, Relaxed);
        }
        if due {
            self.observe(guard);
        }
    }

    #[cold]
    #[inline(never)]
    fn observe_now(&self, shard: &Shard<K, V>, guard: &Guard) {
        shard.observe_due.store(false, Relaxed);
        self.observe(guard);
    }

    /// Runs the observer, if any, with a way to take a fresh snapshot. Never called with a
    /// lock held (taking a snapshot takes each shard's).
    pub(crate) fn observe(&self, guard: &Guard) {
        if let Some(observer) = self.observer.load_full() {
            (observer.0)(&|| self.stats(guard));
        }
    }

    /// Installs (or removes) the observer (the retention alarm's and the metrics publisher's
    /// hook).
    pub(crate) fn set_observer(&self, observer: Option<Observer>) {
        self.observer.store(observer.map(Arc::new));
    }

    /// Moves every present key and value out of the map.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<(K, V)>) {
        for s in self.shards.iter_mut() {
            s.drain_into(out);
        }
    }

    /// Empties a map the caller owns exclusively, freeing everything now, and gives it empty
    /// dirty tiers of `slots` slots in all (see `Shard::reset_exclusive`).
    pub(crate) fn reset_exclusive(&mut self, slots: usize) {
        let per_shard = slots.div_ceil(self.shards.len());
        for s in self.shards.iter_mut() {
            s.reset_exclusive(per_shard);
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> RawMap<K, V> {
    /// Runs `op` on the shard of `hash`, then the observer if that shard says it is due.
    /// Always inlined: a read hit is `op` plus two loads (measured: out of line, `on` cost a
    /// read hit 45 instructions more).
    #[inline(always)]
    fn on<R>(&self, hash: u64, guard: &Guard, op: impl FnOnce(&Shard<K, V>) -> R) -> R {
        let shard = self.shard(hash);
        let r = op(shard);
        self.observe_due(shard, guard);
        r
    }

    /// The value of `key` (see `Shard::get`).
    #[inline]
    pub(crate) fn get<'g, Q>(&self, hash: u64, key: &Q, guard: &'g Guard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let shard = self.shard(hash);
        match shard.get_read(hash, key, guard) {
            // Answered by the read tier: no slow work, so no observation became due here (one
            // that another operation made due is run by that operation).
            Ok(v) => v,
            Err(slow) => {
                let v = shard.get_slow(slow, hash, key, guard);
                self.observe_due(shard, guard);
                v
            }
        }
    }

    /// Inserts or replaces; returns the previous value.
    pub(crate) fn insert<'g>(&self, hash: u64, key: K, value: V, guard: &'g Guard) -> Option<&'g V>
    where
        K: Eq,
    {
        self.on(hash, guard, |s| s.insert(hash, key, value, guard))
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove<'g, Q>(&self, hash: u64, key: &Q, guard: &'g Guard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.on(hash, guard, |s| s.remove(hash, key, guard))
    }

    /// Go's `LoadOrStore`, with the value computed only when the key is absent.
    pub(crate) fn get_or_insert_with<'g>(
        &self,
        hash: u64,
        key: K,
        f: impl FnOnce() -> V,
        guard: &'g Guard,
    ) -> GetOrInsert<&'g V>
    where
        K: Eq,
    {
        self.on(hash, guard, |s| s.get_or_insert_with(hash, key, f, guard))
    }

    /// Replaces the value if `pred` holds for the current one.
    pub(crate) fn replace_if<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        pred: impl FnMut(&V) -> bool,
        new: V,
        guard: &'g Guard,
    ) -> Replace<'g, V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.on(hash, guard, |s| s.replace_if(hash, key, pred, new, guard))
    }

    /// Removes the key if `pred` holds for its value.
    pub(crate) fn remove_if<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        pred: impl FnMut(&V) -> bool,
        guard: &'g Guard,
    ) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.on(hash, guard, |s| s.remove_if(hash, key, pred, guard))
    }

    /// Replaces the value by `f(current)` if the key is present.
    pub(crate) fn update<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        f: impl FnMut(&V) -> V,
        guard: &'g Guard,
    ) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.on(hash, guard, |s| s.update(hash, key, f, guard))
    }

    /// Replaces the value by `f(current)`, or inserts `make()` if the key is absent.
    pub(crate) fn update_or_insert_with<'g>(
        &self,
        hash: u64,
        key: K,
        f: impl FnMut(&V) -> V,
        make: impl FnOnce() -> V,
        guard: &'g Guard,
    ) -> &'g V
    where
        K: Eq,
    {
        self.on(hash, guard, |s| {
            s.update_or_insert_with(hash, key, f, make, guard)
        })
    }

    /// Reads, decides and writes in one atomic step.
    pub(crate) fn compute<'g>(
        &self,
        hash: u64,
        key: K,
        f: impl FnMut(Option<&V>, Option<V>) -> Op<V>,
        guard: &'g Guard,
    ) -> Computed<&'g V>
    where
        K: Eq,
    {
        self.on(hash, guard, |s| s.compute(hash, key, f, guard))
    }

    /// Empties the map, linearizably across shards (I6): takes every shard's lock in index
    /// order, begins the next generation in every shard, then replaces each shard's tiers
    /// (from the last shard to the first) and unlocks it; the old tiers, entries and values are
    /// retired as one unit per shard. A map that holds nothing is left as it is: clearing it
    /// allocates nothing. What follows each critical section (freeing a step of retired
    /// memory, which runs user `Drop`s that may call the map) runs once every lock is released.
    pub(crate) fn clear(&self, guard: &Guard) {
        let mut budgets = [0usize; MAX_SHARDS];
        if self.clear_from(0, None, true, &mut budgets, guard) {
            for (s, &budget) in self.shards.iter().zip(budgets.iter()) {
                s.after_unlock(budget, false, guard);
            }
            // Once for the whole map: every shard retired its tiers.
            self.observe(guard);
        }
    }

    /// Locks shard `i`, then (recursively) the shards after it; once all are locked, begins
    /// the new generation in each (or, if every shard is bare, does nothing); then, unwinding,
    /// replaces shard `i`'s tiers and unlocks it, leaving in `budgets[i]` the step budget for
    /// its `after_unlock`. `bare`: the shards before `i` are bare. Returns whether it cleared.
    fn clear_from(
        &self,
        i: usize,
        id: Option<u64>,
        bare: bool,
        budgets: &mut [usize; MAX_SHARDS],
        guard: &Guard,
    ) -> bool {
        let shard = &self.shards[i];
        let mut st = shard.dirty();
        // Every shard has the same generation outside a `clear`, and this one holds shard 0.
        let id = id.unwrap_or_else(|| shard.next_generation());
        let bare = bare && shard.is_bare(&st, guard);
        let cleared = if i + 1 < self.shards.len() {
            self.clear_from(i + 1, Some(id), bare, budgets, guard)
        } else {
            // Every shard is locked (this one by `st`, the others by the frames above).
            if bare {
                return false;
            }
            #[cfg(not(tiermap_mutation = "clear_shard_by_shard"))]
            for s in self.shards.iter() {
                s.begin_clear(id);
            }
            true
        };
        if cleared {
            // Seeded bug for the loom models (never built otherwise): each shard begins the
            // generation only as its tiers are replaced, so a lookup can see one shard
            // cleared and a later one not.
            #[cfg(tiermap_mutation = "clear_shard_by_shard")]
            shard.begin_clear(id);
            budgets[i] = shard.clear_locked(&mut st, id, guard).0;
        }
        cleared
    }

    /// Rebuilds every shard's tiers so that they hold only live entries.
    pub(crate) fn compact(&self, guard: &Guard) {
        for s in self.shards.iter() {
            s.compact(guard);
            self.observe_due(s, guard);
        }
    }

    /// Keeps only the entries for which `f` returns `true`, shard after shard (see
    /// `SyncMap::retain`). Stops if a `clear` intervenes.
    pub(crate) fn retain(&self, guard: &Guard, mut f: impl FnMut(&K, &V) -> bool) {
        let mut gen = None;
        for s in self.shards.iter() {
            let tier = s.snapshot(guard);
            if *gen.get_or_insert(tier.id) != tier.id {
                break;
            }
            let mut removed = 0;
            for (e, v, p) in RawIter::new(tier, guard) {
                if !s.generation_is(tier.id) {
                    break;
                }
                if !f(&e.key, v) && s.remove_exact(e, p, tier, guard) {
                    removed += 1;
                }
            }
            s.compact_after_bulk_removal(guard, removed);
            self.observe_due(s, guard);
        }
    }

    /// Frees what the map retired and is past its grace period, now: seals every shard's batch
    /// of removed values, starts the grace period of everything retired, and runs collections
    /// until every shard's retired memory is freed or a guard pinned before it holds it (at most
    /// 64 rounds). Returns the retired bytes still waiting.
    pub(crate) fn reclaim(&self) -> usize {
        {
            let guard = self.pin();
            for s in self.shards.iter() {
                s.grave.seal_values(&guard);
                s.grave.defer(&guard);
            }
        }
        let pending = || -> usize {
            self.shards
                .iter()
                .map(|s| s.shared.retired_bytes.load(Relaxed))
                .sum()
        };
        let mut freed = 0;
        for round in 0..64 {
            if round >= 3 && pending() == 0 {
                break;
            }
            self.reclaimer.collect(1);
            for s in self.shards.iter() {
                freed += s.grave.drain(usize::MAX);
            }
            if round >= 8 && !cfg!(tiermap_loom) {
                // Still pending: some thread is pinned (a user's guard, or another thread in
                // the middle of an operation, the background reclaimer's tick included, perhaps
                // descheduled). Let it run before the next try; at most about 1.5 ms in all.
                std::thread::sleep(std::time::Duration::from_micros(25));
            }
        }
        // Blocks emptied by the frees above, or by a background step that finished an item
        // after this thread's last drain looked (it releases them too, but perhaps only after
        // this call returns).
        for s in self.shards.iter() {
            freed += s.grave.arena.release_unused();
        }
        background::freed(freed);
        pending()
    }
}

/// Iterates the present entries of a map, shard after shard, each shard from the snapshot
/// (`Shard::snapshot`) taken when the iteration reaches it. Ends early if a `clear` begins a
/// new generation (as iteration of one tier always did).
pub(crate) struct MapIter<'g, K, V> {
    raw: &'g RawMap<K, V>,
    guard: &'g Guard,
    /// The generation of the first shard's snapshot.
    gen: Option<u64>,
    /// The shard `inner` walks.
    at: usize,
    inner: Option<RawIter<'g, K, V>>,
}

impl<'g, K: Send + 'static, V: Send + 'static> MapIter<'g, K, V> {
    /// Iterates `raw` under `guard`.
    pub(crate) fn new(raw: &'g RawMap<K, V>, guard: &'g Guard) -> Self {
        let mut it = MapIter {
            raw,
            guard,
            gen: None,
            at: 0,
            inner: None,
        };
        // The first shard's snapshot now, as one tier's was before shards: an iteration
        // started before a `clear` shows no key inserted after it.
        it.open(0);
        it
    }

    fn open(&mut self, at: usize) {
        self.at = at;
        self.inner = self.raw.shards.get(at).and_then(|s| {
            let tier = s.snapshot(self.guard);
            self.raw.observe_due(s, self.guard);
            (*self.gen.get_or_insert(tier.id) == tier.id).then(|| RawIter::new(tier, self.guard))
        });
    }
}

impl<'g, K: Send + 'static, V: Send + 'static> Iterator for MapIter<'g, K, V> {
    type Item = (&'g K, &'g V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let inner = self.inner.as_mut()?;
            if !self.raw.shards[self.at].generation_is(inner.tier().id) {
                self.inner = None;
                return None;
            }
            if let Some((e, v, _)) = inner.next() {
                let e: &'g Entry<K, V> = e;
                return Some((&e.key, v));
            }
            self.open(self.at + 1);
        }
    }
}
