//! The map as `S` shards (a power of two, 1 to `MAX_SHARDS`): each [`Shard`] is a whole
//! two-tier engine (read tier, dirty tier, lock, miss clock, migration, promotion, compaction,
//! graveyard, entry arena) for the keys whose mixed hash has its index in bits 32.. (the
//! lowest of the bits an entry keeps, which the tables' home slots, from the top bits, hardly
//! depend on; see `raw::hashbits`).
//!
//! An operation on one key is the operation of its shard, unchanged. What spans shards is
//! here: `clear` (linearizable across shards, I6 in `docs/DESIGN.md`), the counts, the
//! statistics and the observer, iteration (shard after shard), `reclaim`, and the exclusive
//! resets of `MapPool` and `into_iter`.

use std::borrow::Borrow;

use super::hashbits::shard_index;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use super::entry::Entry;
use super::idle::IdleWatch;
use super::{background, Gen, Observer, RawIter, Replace, Shard, Tier};
use crate::facade::{lock, AtomicPtr, Guard, Reclaimer};
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

/// Live keys at which a map built for fewer than `2 * KEYS_PER_SHARD` keys (one shard) is split
/// into `split_shards()` shards, at the first promotion that finds it that large: a map built
/// empty and grown (Go's usage) then gets the shards a map built large has, for its writers on
/// several threads. Small in Miri and loom builds, so that their tests and models reach it.
#[cfg(not(any(miri, tiermap_loom)))]
pub(crate) const SPLIT_AT: usize = 2 * KEYS_PER_SHARD;
#[cfg(miri)]
pub(crate) const SPLIT_AT: usize = 48;
/// Loom: off unless a model asks for it (`SyncMap::loom_split_at`), so that the other models
/// keep their state space.
#[cfg(all(tiermap_loom, not(miri)))]
pub(crate) const SPLIT_AT: usize = 0;
/// The split gives up on a shard that holds more than this many times `split_at` live keys
/// when it gets to it (a migration kept it from splitting at an earlier promotion): a split
/// copies every slot under the lock, and must stay a bounded step.
pub(crate) const SPLIT_MAX_FACTOR: usize = 4;

/// How many shards a split makes: as many as a map built large gets (`shards_for`), at least
/// two (loom models split into two).
fn split_shards() -> usize {
    if cfg!(tiermap_loom) {
        return 2;
    }
    (SHARDS_PER_THREAD * hardware_threads())
        .next_power_of_two()
        .clamp(2, MAX_SHARDS)
}

/// Low bits of a shard array's address: `Shard` is aligned to 128 bytes, so a tagged array
/// pointer keeps the array's `len - 1` (at most `MAX_SHARDS - 1`) there.
const MASK_BITS: usize = 127;
const _: () =
    assert!(MAX_SHARDS - 1 <= MASK_BITS && std::mem::align_of::<Shard<u8, u8>>() > MASK_BITS);

/// A shard array as a thin pointer to its first shard, with `len - 1` in the low bits.
fn tag_array<K, V>(shards: Box<[Shard<K, V>]>) -> *mut Shard<K, V> {
    let mask = shards.len() - 1;
    debug_assert!(shards.len().is_power_of_two() && mask <= MASK_BITS);
    Box::into_raw(shards)
        .cast::<Shard<K, V>>()
        .map_addr(|a| a | mask)
}

/// The first shard and the mask of a tagged shard array.
#[inline(always)]
fn untag_array<K, V>(p: *mut Shard<K, V>) -> (*mut Shard<K, V>, usize) {
    (p.map_addr(|a| a & !MASK_BITS), p.addr() & MASK_BITS)
}

/// The shard for `hash` in the tagged shard array `array` (a split shard's successors).
///
/// The returned reference is unbounded: every shard array a map ever published lives until the
/// map is dropped (`RawMap::frozen`), which its borrowers prevent; callers tie it to a shard
/// of the same map.
pub(crate) fn successor<'a, K, V>(array: *mut Shard<K, V>, hash: u64) -> &'a Shard<K, V> {
    let shards = array_slice(array);
    &shards[shard_index(hash, shards.len() - 1)]
}

/// What `RawMap::clear_from` did.
enum Cleared {
    /// Began this new generation and replaced every shard's tiers.
    Yes(u64),
    /// Nothing: every shard was bare.
    Bare,
    /// Nothing: the shard array was split since the caller loaded it.
    Split,
}

/// The shards of a tagged shard array (a split shard's successors), with the same unbounded
/// lifetime as [`successor`] (every array a map published lives until the map is dropped).
pub(crate) fn array_slice<'a, K, V>(array: *mut Shard<K, V>) -> &'a [Shard<K, V>] {
    let (first, mask) = untag_array(array);
    // SAFETY: `array` is a published shard array of the caller's map, alive while the map is;
    // it holds `mask + 1` shards (`tag_array`).
    unsafe { std::slice::from_raw_parts(first, mask + 1) }
}

/// A shard and the snapshot of it an iteration walks.
pub(crate) type ShardSnapshot<'g, K, V> = (&'g Shard<K, V>, &'g Tier<K, V>);

/// Shard `at` of `*shards` and its snapshot (`Shard::snapshot`). If that shard was split
/// (only the one shard of a one-shard array ever is, so `at` is 0 and nothing of it was
/// iterated yet), `*shards` becomes the array that replaced it and the snapshot is of its
/// first shard. `None` past the end.
pub(crate) fn snapshot_at<'g, K: Send + 'static, V: Send + 'static>(
    shards: &mut &'g [Shard<K, V>],
    at: usize,
    guard: &'g Guard,
) -> Option<ShardSnapshot<'g, K, V>> {
    loop {
        let s = shards.get(at)?;
        match s.snapshot(guard) {
            Ok(tier) => return Some((s, tier)),
            Err(successors) => {
                debug_assert_eq!(at, 0, "only a one-shard array is split");
                *shards = array_slice(successors);
            }
        }
    }
}

/// The engine behind `SyncMap`: its shards, and the observer they share.
pub(crate) struct RawMap<K, V> {
    /// The shard array (a power of two, 1 to `MAX_SHARDS` shards; see `tag_array`). Changes
    /// once at most: when the one shard of a map built small is split (`split`).
    root: AtomicPtr<Shard<K, V>>,
    /// `root` can never change (the map was built with more than one shard, or with a shard
    /// count of the user's): loom builds then load it without a synchronization point.
    fixed: bool,
    /// The shard array a split replaced (tagged), or null: operations that loaded it before
    /// the split may still be using it, so it is freed with the map. A std atomic: written
    /// once, under the split shard's lock, and read only by `drop`.
    frozen: std::sync::atomic::AtomicPtr<Shard<K, V>>,
    /// The live and entry counts of the split shard's generation left over by the split
    /// (operations that found their entry through the split shard count there): part of
    /// `len` while that generation is current (see `split`).
    residual: std::sync::OnceLock<Arc<Gen>>,
    /// A handle on the collector every shard pins (see `Reclaimer::sibling`), here so that a
    /// pin does not touch the shard array.
    reclaimer: Reclaimer,
    /// Called with a statistics snapshot of the whole map when a shard says it is due (every
    /// `OBSERVE_EVERY` slow operations of that shard, and after each one that retired a
    /// table), outside every lock, when the operation returns (the retention alarm and the
    /// metrics publisher hook in here). Read hits look only at their shard's flag.
    observer: arc_swap::ArcSwapOption<Observer>,
    /// The map's handle for the background reclaimer's idle watch (`raw::idle`): listed when
    /// an operation observes a shard worth watching (`Shard::worth_watching`); detached before
    /// any exclusive use of the shards.
    idle: Arc<IdleWatch<K, V>>,
    /// Owns the shard arrays (`root`, `frozen`).
    _owns: PhantomData<Box<[Shard<K, V>]>>,
}

// SAFETY: as for `Shard` (the map is its shards, whose arrays it owns through `root` and
// `frozen`).
unsafe impl<K: Send, V: Send> Send for RawMap<K, V> {}
// SAFETY: as for `Shard`; `root` and `frozen` are atomics, and the arrays they point to are
// shared only as `&Shard`.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for RawMap<K, V> {}

impl<K, V> RawMap<K, V> {
    /// A map for `capacity` keys, with `shards_for(capacity)` shards; one that starts with a
    /// single shard is split when it grows (`SPLIT_AT`).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = shards_for(capacity);
        let mut map = Self::with_shards(capacity, n);
        if n == 1 && SPLIT_AT > 0 {
            map.set_split_at(SPLIT_AT);
        }
        map
    }

    /// A map for `capacity` keys (spread evenly) with `valid_shards(shards)` shards, never
    /// split.
    pub(crate) fn with_shards(capacity: usize, shards: usize) -> Self {
        let n = valid_shards(shards);
        let first = Reclaimer::new();
        let shards: Box<[Shard<K, V>]> = (0..n)
            .map(|_| Shard::new(capacity.div_ceil(n), first.sibling(), n > 1))
            .collect();
        let root = tag_array(shards);
        RawMap {
            root: AtomicPtr::new(root),
            idle: IdleWatch::new(root),
            fixed: true,
            frozen: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            residual: std::sync::OnceLock::new(),
            reclaimer: first.sibling(),
            observer: arc_swap::ArcSwapOption::empty(),
            _owns: PhantomData,
        }
    }

    /// Makes a one-shard map split when its shard holds `at` live keys at a promotion (0:
    /// never). Before the map is shared.
    pub(crate) fn set_split_at(&mut self, at: usize) {
        let shards = self.shards_mut();
        if shards.len() == 1 {
            shards[0].split_at = at;
            self.fixed = at == 0;
        }
        self.reattach_idle();
    }

    /// Loom builds: what the background reclaimer's idle watch does to a quiet map (which loom
    /// builds never start): every shard looked at twice with no wait (the first look starts the
    /// quiet period, the second finishes the migration and promotes), whatever the read tier's
    /// size. Shards whose lock is busy are skipped.
    #[cfg(tiermap_loom)]
    pub(crate) fn idle_steps(&self, guard: &Guard)
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let rule = super::idle::Rule {
            quiet: std::time::Duration::ZERO,
            min_bytes: 0,
        };
        for _ in 0..2 {
            for s in self.shards() {
                let now = std::time::Instant::now();
                // Loom's maps finish a migration in the operation that starts it: the look
                // promotes without a migration step to time.
                let _ = s.idle_step(guard, rule, now, now);
            }
        }
    }

    /// Loom builds: makes every shard use `other`'s epoch collector (see
    /// `Reclaimer::share`). Only for a map that never pinned yet.
    #[cfg(tiermap_loom)]
    pub(crate) fn share_collector<K2, V2>(&mut self, other: &RawMap<K2, V2>) {
        let first = &other.shards()[0];
        for s in self.shards_mut() {
            s.share_collector(first);
        }
        self.reattach_idle();
        self.reclaimer = other.reclaimer.sibling();
    }

    /// The tagged shard array, with the synchronization its readers need.
    #[inline(always)]
    fn root(&self) -> *mut Shard<K, V> {
        #[cfg(tiermap_loom)]
        if self.fixed {
            // SAFETY: `root` is never stored to after construction (see `fixed`), so this
            // load races with no store.
            return unsafe { self.root.unsync_load() };
        }
        // Acquire pairs with the release store of a split: the new shards, built before it,
        // are visible.
        #[cfg(not(tiermap_mutation = "split_relaxed_root"))]
        return self.root.load(Acquire);
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(tiermap_mutation = "split_relaxed_root")]
        return self.root.load(Relaxed);
    }

    /// The shards, in index order (the current array: a split may replace it by a larger one
    /// right after this returns; the one returned stays usable while `self` is borrowed).
    pub(crate) fn shards(&self) -> &[Shard<K, V>] {
        let (first, mask) = untag_array(self.root());
        // SAFETY: `root` always holds a published shard array of `mask + 1` shards, freed only
        // by `drop` (a replaced one is kept in `frozen` until then), which `&self` excludes.
        unsafe { std::slice::from_raw_parts(first, mask + 1) }
    }

    /// The shards, with exclusive access. Detaches the idle watch first (the background
    /// reclaimer's thread may be working on a shard: this waits for its step to end); callers
    /// that keep the map give it back with `reattach_idle`.
    fn shards_mut(&mut self) -> &mut [Shard<K, V>] {
        self.idle.detach();
        // Relaxed: `&mut self` (whatever gave us exclusive access ordered every store before).
        let (first, mask) = untag_array(self.root.load(Relaxed));
        // SAFETY: as in `shards`; `&mut self`: no other reference to the array exists.
        unsafe { std::slice::from_raw_parts_mut(first, mask + 1) }
    }

    /// The shard of a mixed hash.
    #[inline]
    pub(crate) fn shard(&self, hash: u64) -> &Shard<K, V> {
        let (first, mask) = untag_array(self.root());
        let i = shard_index(hash, mask);
        // SAFETY: `root` holds a published array of `mask + 1` shards (a power of two, see
        // `tag_array`), alive while `self` is borrowed (see `shards`); `i <= mask`.
        unsafe { &*first.add(i) }
    }

    /// Pins the current thread for this map's epoch (every operation's first step).
    #[inline]
    pub(crate) fn pin(&self) -> Guard {
        self.reclaimer.pin()
    }

    /// The hash the engine uses for a user hash: spread so that weak hashers still fill the
    /// tables and the shards evenly (see `hashbits::mix`).
    #[inline]
    pub(crate) fn mix(hash: u64) -> u64 {
        super::hashbits::mix(hash)
    }

    /// Keys present: the sum of the shards' counts (each exact when no write is in flight), and
    /// of what a split left in the split shard's generation (see `split`).
    pub(crate) fn len(&self, guard: &Guard) -> usize {
        let shards = self.shards();
        let mut live: isize = shards.iter().map(|s| s.read(guard).gen.raw_live()).sum();
        if let Some(r) = self.residual(shards, guard) {
            live += r.raw_live();
        }
        live.max(0) as usize
    }

    /// The counts a split left in the split shard's generation, while that generation is the
    /// map's current one (a `clear` ends it, and with it everything it counted).
    fn residual(&self, shards: &[Shard<K, V>], guard: &Guard) -> Option<&Gen> {
        let r = self.residual.get()?;
        (shards[0].read(guard).gen.id == r.id).then_some(&**r)
    }

    /// Where the map's memory is: the shards' statistics, summed (each shard's taken under its
    /// lock, one after the other). The shards a split made share one graveyard, entry arena
    /// and set of counters: those figures are taken once.
    pub(crate) fn stats(&self, guard: &Guard) -> MapStats {
        let shards = self.shards();
        let shared = shards[0].shares_arena;
        let mut total = MapStats::default();
        for (i, s) in shards.iter().enumerate() {
            let st = s.stats(guard);
            total.len += st.len;
            total.deleted += st.deleted;
            total.read_capacity += st.read_capacity;
            total.dirty_capacity += st.dirty_capacity;
            total.migrating |= st.migrating;
            total.misses += st.misses;
            total.held_bytes += st.held_bytes;
            if i == 0 || !shared {
                total.spare_bytes += st.spare_bytes;
                total.retired_bytes += st.retired_bytes;
                total.promotions += st.promotions;
                total.migrations += st.migrations;
                total.compactions += st.compactions;
                total.clones += st.clones;
            }
        }
        if let Some(r) = self.residual(shards, guard) {
            let (live, entries) = (r.raw_live(), r.raw_entries());
            let deleted = entries - live;
            total.len = (total.len as isize + live).max(0) as usize;
            total.deleted = (total.deleted as isize + deleted).max(0) as usize;
            let bytes = live * super::entry::entry_bytes::<K, V>(true) as isize
                + deleted * super::entry::entry_bytes::<K, V>(false) as isize;
            total.held_bytes = (total.held_bytes as isize + bytes).max(0) as usize;
        }
        total.held_bytes += self.header_bytes(shards);
        total
    }

    /// What the shard arrays take beyond one shard: a one-shard map's `held_bytes` stays what
    /// it was when its one engine was inline in the `SyncMap` (tables, entries, values); a
    /// split map also keeps the array it replaced.
    fn header_bytes(&self, shards: &[Shard<K, V>]) -> usize {
        // Relaxed: a statistic.
        let kept = usize::from(!self.frozen.load(Relaxed).is_null());
        (shards.len() - 1 + kept) * std::mem::size_of::<Shard<K, V>>()
    }

    /// Runs the observer once if any shard says it is due (after an operation that worked on
    /// several shards, such as the snapshots of a parallel iteration).
    #[cfg(feature = "rayon")]
    pub(crate) fn observe_any_due(&self, guard: &Guard) {
        let mut due = false;
        for s in self.shards() {
            // Relaxed: as in `observe_due`.
            due |= s.observe_due.swap(false, Relaxed);
        }
        if due {
            self.observe(guard);
        }
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
        for s in self.shards_mut() {
            s.drain_into(out);
        }
        self.reattach_idle();
    }

    /// Empties a map the caller owns exclusively, freeing everything now, and gives it empty
    /// dirty tiers of `slots` slots in all (see `Shard::reset_exclusive`).
    pub(crate) fn reset_exclusive(&mut self, slots: usize) {
        let shards = self.shards_mut();
        let per_shard = slots.div_ceil(shards.len());
        for s in shards {
            s.reset_exclusive(per_shard);
        }
        self.reattach_idle();
    }

    /// The map's idle watch (white-box tests).
    #[cfg(test)]
    pub(crate) fn idle_watch(&self) -> Arc<IdleWatch<K, V>> {
        self.idle.clone()
    }

    /// Gives the idle watch the shard array again after an exclusive use (`shards_mut`
    /// detached it).
    fn reattach_idle(&mut self) {
        // Relaxed: `&mut self` (as in `shards_mut`).
        self.idle.attach(self.root.load(Relaxed));
    }
}

impl<K: Send + 'static, V: Send + 'static> RawMap<K, V> {
    /// Splits `old`, the one shard of a map built small, into `split_shards()` shards, if it is
    /// still due: under its lock, with at most `SPLIT_MAX_FACTOR * split_at` live keys (the
    /// split is one bounded step; a shard that grew past that without a chance to split stays
    /// one).
    ///
    /// Every key of the shard is in exactly one of: the read tier's untagged slots at or after
    /// the migration cursor, and the dirty tier (which holds the live entries of the slots
    /// before the cursor, copied, and the fresh keys; the deleted entries before it are
    /// expunged, tagged and listed in `expunged`, I3/I4); without a dirty tier, the read tier
    /// alone. The split copies those slots, by the hash bits that pick a shard, into one read
    /// table per new shard, which then owns them (the same entry pointers: no entry moves, and
    /// a value written through either table is the same), publishes the new array, and
    /// freezes `old`: its tiers stay, holding every key it had, for the lookups and lock-free
    /// writes of operations that loaded the old array before (they work on the shared
    /// entries), and are retired through the graveyard (the read tier owning its expunged
    /// entries, the dirty tier none) so that they outlive those operations; anything that
    /// takes `old`'s lock after this goes to the key's new shard (`Shard::with_lock`), and an
    /// iteration that reaches it goes over the new shards (`snapshot_at`). The new shards share
    /// `old`'s graveyard, entry arena and counters. Each counts the entries it got (live and
    /// in all); those counts are taken out of the split shard's generation, which keeps what
    /// operations on the old array change later (`residual`, part of `len`).
    #[cold]
    #[inline(never)]
    fn split(&self, old: &Shard<K, V>, guard: &Guard) {
        let mut st = old.dirty();
        let read = old.read(guard);
        let live = read.gen.live();
        if st.frozen
            || old.split_at == 0
            || live < old.split_at
            || live > SPLIT_MAX_FACTOR * old.split_at
            || self.shards().len() != 1
        {
            return;
        }
        let n = split_shards();
        let mask = n - 1;
        // Each entry with the hash bits its tables use (what the entry and its slot keep).
        let mut parts: Vec<Vec<(*mut super::entry::Entry<K, V>, u64)>> = vec![Vec::new(); n];
        let mut counts = vec![(0isize, 0isize); n];
        let mut take = |e: *mut super::entry::Entry<K, V>, tag: u16| {
            // SAFETY: entries reachable from the tiers are alive while we hold the lock and
            // `guard` (I3).
            let entry = unsafe { &*e };
            let hash = entry.kept_hash(tag);
            let i = shard_index(hash, mask);
            counts[i].1 += 1;
            if matches!(entry.load(), super::entry::State::Live(_)) {
                counts[i].0 += 1;
            }
            parts[i].push((e, hash));
        };
        let dirty = st.tier.as_deref();
        let cursor = if dirty.is_some() { st.cursor } else { 0 };
        read.table.for_each_raw(|i, e, owned, tag| {
            // Before the cursor: copied to the dirty tier (live) or expunged (tagged).
            if !owned && i >= cursor {
                take(e, tag);
            }
        });
        // Seeded bug for the loom models (never built otherwise): leave the dirty tier's keys
        // out of a split made while a migration runs.
        #[cfg(tiermap_mutation = "split_skips_dirty")]
        let dirty = dirty.filter(|_| false);
        if let Some(d) = dirty {
            d.table.for_each_raw(|_, e, owned, tag| {
                debug_assert!(!owned, "a dirty tier tags nothing");
                take(e, tag);
            });
        }
        let id = read.gen.id;
        let shards: Box<[Shard<K, V>]> = parts
            .into_iter()
            .zip(counts.iter())
            .map(|(entries, &(live, total))| {
                let gen = Arc::new(Gen {
                    id,
                    live: crate::facade::AtomicIsize::new(live),
                    entries: crate::facade::AtomicIsize::new(total),
                });
                let tier = Tier::boxed(entries.len() * 4 / 3 + 1, gen);
                for (e, hash) in entries {
                    tier.table.insert_unique(e, hash);
                }
                old.split_part(tier, self.reclaimer.sibling())
            })
            .collect();
        // What the new shards count leaves the split shard's generation.
        let (moved_live, moved) = counts
            .iter()
            .fold((0, 0), |(l, t), &(live, total)| (l + live, t + total));
        // Relaxed: counters (see `Gen::live`); `entries` changes only under the lock we hold.
        read.gen.live.fetch_sub(moved_live, Relaxed);
        read.gen.entries.fetch_sub(moved, Relaxed);
        // Seeded bug for the loom models (never built otherwise): forget what operations on
        // the old array count after the split, so that `len` misses their changes.
        #[cfg(not(tiermap_mutation = "split_no_residual"))]
        let _ = self.residual.set(read.gen.clone());
        let array = tag_array(shards);
        // The array being replaced, recorded before the new one is published, so that whoever
        // sees the new one (a `clear`) sees this too. Relaxed: only splits store `root`, under
        // the lock we hold. Relaxed store of `frozen`: ordered before the release below.
        let previous = self.root.load(Relaxed);
        self.frozen.store(previous, Relaxed);
        // Release: the new shards, their tables and counts, built above, are visible to
        // whoever loads the array (`root`).
        #[cfg(not(tiermap_mutation = "split_relaxed_root"))]
        self.root.store(array, Release);
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(tiermap_mutation = "split_relaxed_root")]
        self.root.store(array, Relaxed);
        st.frozen = true;
        st.successors = array;
        // A frozen shard takes no new entry: its reserved slots go back to the arena.
        old.grave.arena.unreserve(&mut st.slots);
        // SAFETY: `old`'s tiers stay published in it, but it is frozen: nothing replaces or
        // frees them but this retirement, whose grace period covers every operation that
        // loaded the old array (they were pinned before the swap above). Their entries are
        // the new shards' now, but for the read tier's expunged ones.
        unsafe { old.retire_frozen(&mut st, guard) };
        drop(st);
        old.after_unlock(0, false, guard);
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

    #[cold]
    #[inline(never)]
    fn observe_now(&self, shard: &Shard<K, V>, guard: &Guard) {
        shard.observe_due.store(false, Relaxed);
        if shard.worth_watching(guard) {
            self.idle.arm();
        }
        // Relaxed: a hint (see `Shard::split_due`); `split` re-checks under the lock.
        if shard.split_due.load(Relaxed) {
            shard.split_due.store(false, Relaxed);
            self.split(shard, guard);
        }
        self.observe(guard);
    }

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
        loop {
            let shards = self.shards();
            match self.clear_from(shards, 0, None, true, &mut budgets, guard) {
                Cleared::Yes(id) => {
                    // A split shard's tiers are not cleared (operations that loaded it before
                    // the split linearize before this `clear`), but an iteration still walking
                    // them must stop, as on any shard the `clear` reached.
                    // Relaxed: the split stores it before its release store of the array whose
                    // shards this `clear` locked (so it is visible here), and never again.
                    let frozen = self.frozen.load(Relaxed);
                    if !frozen.is_null() {
                        for s in array_slice(frozen) {
                            s.begin_clear(id);
                        }
                    }
                    for (s, &budget) in shards.iter().zip(budgets.iter()) {
                        s.after_unlock(budget, false, guard);
                    }
                    // Once for the whole map: every shard retired its tiers.
                    self.observe(guard);
                    return;
                }
                Cleared::Bare => return,
                // Split since `shards` was loaded: clear the shards that replaced it.
                Cleared::Split => continue,
            }
        }
    }

    /// Locks shard `i` of `shards`, then (recursively) the shards after it; once all are
    /// locked, begins the new generation in each (or, if every shard is bare, does nothing;
    /// or, if the first was split meanwhile, nothing: the caller starts over on the new
    /// array, which the split published before it unlocked); then, unwinding, replaces shard
    /// `i`'s tiers and unlocks it, leaving in `budgets[i]` the step budget for its
    /// `after_unlock`. `bare`: the shards before `i` are bare.
    fn clear_from(
        &self,
        shards: &[Shard<K, V>],
        i: usize,
        id: Option<u64>,
        bare: bool,
        budgets: &mut [usize; MAX_SHARDS],
        guard: &Guard,
    ) -> Cleared {
        let shard = &shards[i];
        let mut st = shard.dirty();
        if st.frozen {
            // Only a one-shard array is ever split, so this is shard 0 and nothing else is
            // locked.
            debug_assert_eq!(i, 0);
            return Cleared::Split;
        }
        // Every shard has the same generation outside a `clear`, and this one holds shard 0.
        let id = id.unwrap_or_else(|| shard.next_generation());
        let bare = bare && shard.is_bare(&st, guard);
        let cleared = if i + 1 < shards.len() {
            self.clear_from(shards, i + 1, Some(id), bare, budgets, guard)
        } else {
            // Every shard is locked (this one by `st`, the others by the frames above).
            if bare {
                return Cleared::Bare;
            }
            #[cfg(not(tiermap_mutation = "clear_shard_by_shard"))]
            for s in shards.iter() {
                s.begin_clear(id);
            }
            Cleared::Yes(id)
        };
        if let Cleared::Yes(_) = cleared {
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
        for s in self.shards() {
            s.compact(guard);
            self.observe_due(s, guard);
        }
    }

    /// Keeps only the entries for which `f` returns `true`, shard after shard (see
    /// `SyncMap::retain`). Stops if a `clear` intervenes.
    pub(crate) fn retain(&self, guard: &Guard, mut f: impl FnMut(&K, &V) -> bool) {
        let mut gen = None;
        let mut shards = self.shards();
        let mut at = 0;
        while let Some((s, tier)) = snapshot_at(&mut shards, at, guard) {
            at += 1;
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
    /// until every shard's retired memory is freed or a guard pinned before it holds it (64
    /// rounds, more while the background reclaimer is in a tick: see `TICK_PATIENCE`). Returns
    /// the retired bytes still waiting.
    pub(crate) fn reclaim(&self) -> usize {
        /// How long `reclaim` waits for a tick of the background reclaimer in progress.
        const TICK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);
        // The graveyards: one per shard, or one for all the shards a split made.
        let shards = self.shards();
        let yards = if shards[0].shares_arena {
            &shards[..1]
        } else {
            shards
        };
        {
            let guard = self.pin();
            for s in yards {
                s.grave.seal_values(&guard);
                s.grave.defer(&guard);
            }
        }
        let pending = || -> usize {
            yards
                .iter()
                .map(|s| s.shared.retired_bytes.load(Relaxed))
                .sum()
        };
        let mut freed = 0;
        let start = std::time::Instant::now();
        // After 64 rounds (about 1.5 ms) a user's guard may be what holds the rest back: give
        // up. Unless the background reclaimer is in a tick, whose pin or popped item is about
        // to go (it can be descheduled meanwhile): then go on until 16 rounds after the tick
        // ended (the epoch must advance past its pin), up to `TICK_PATIENCE`, so that a map
        // nobody else pins comes back whole.
        let mut last_round = 64;
        for round in 0.. {
            if round >= 3 && pending() == 0 {
                break;
            }
            if !cfg!(tiermap_loom) && background::ticking() && start.elapsed() <= TICK_PATIENCE {
                last_round = last_round.max(round + 16);
            }
            if round >= last_round {
                break;
            }
            self.reclaimer.collect(1);
            for s in yards {
                freed += s.grave.drain(usize::MAX);
            }
            if round >= 8 && !cfg!(tiermap_loom) {
                // Still pending: some thread is pinned (a user's guard, or another thread in
                // the middle of an operation, the background reclaimer's tick included, perhaps
                // descheduled). Let it run before the next try; about 1.5 ms in all, or up to
                // `TICK_PATIENCE` while a tick runs.
                std::thread::sleep(std::time::Duration::from_micros(25));
            }
        }
        // Blocks emptied by the frees above, or by a background step that finished an item
        // after this thread's last drain looked (it releases them too, but perhaps only after
        // this call returns).
        for s in yards {
            freed += s.grave.arena.release_unused();
        }
        background::freed(freed);
        pending()
    }
}

impl<K, V> Drop for RawMap<K, V> {
    fn drop(&mut self) {
        // The current shards first: they own every entry, and the last of a split's shards to
        // go closes the graveyard they share (which frees the split shard's retired read
        // tier). Then the array a split replaced, whose frozen shard owns nothing.
        // Relaxed: `&mut self` (as in `shards_mut`).
        // The idle watch first: when `detach` returns, the reclaimer's thread is not working
        // on a shard, and it will not again (its `Weak` may outlive the map; the pointer is
        // null).
        self.idle.detach();
        let root = self.root.load(Relaxed);
        let frozen = *self.frozen.get_mut();
        // The shards of a split share one entry arena, so each walks its entries on drop
        // (another shard's entries share its blocks). When the whole map goes and its entries
        // own nothing outside their slots (no drop glue, no value cell in any shard), no shard
        // needs to: they are dropped here one after the other, and the path of a shard that
        // does not share frees its tables without reading an entry and gives the arena's
        // blocks back whole (the first shard gives them all, the others find none; the first
        // one's `close` of the shared graveyard frees every retired item before that). Dropping
        // 1M `u64 -> u64` of a map built empty took 47-67 ms with the walks, 5-9 ms without.
        if !root.is_null() {
            let shards = self.shards_mut();
            if shards[0].shares_arena
                && !super::entry::entries_need_drop::<K, V>()
                && shards.iter_mut().all(|s| !*s.cells.get_mut())
            {
                for s in shards {
                    // Each shard's reserved slots go back while the blocks are still there
                    // (a later shard's drop would give them back after the first one
                    // released every block).
                    let mut st = lock(&s.dirty);
                    s.grave.arena.unreserve(&mut st.slots);
                    drop(st);
                    s.shares_arena = false;
                }
            }
        }
        for array in [root, frozen] {
            if array.is_null() {
                continue;
            }
            let (first, mask) = untag_array(array);
            // SAFETY: `array` came from `tag_array` (a `Box<[Shard]>` of `mask + 1` shards)
            // and is freed once, here; `&mut self`: nothing else uses it any more.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(first, mask + 1)) });
        }
    }
}

/// Iterates the present entries of a map, shard after shard, each shard from the snapshot
/// (`Shard::snapshot`) taken when the iteration reaches it. Ends early if a `clear` begins a
/// new generation (as iteration of one tier always did).
pub(crate) struct MapIter<'g, K, V> {
    raw: &'g RawMap<K, V>,
    /// The shard array when the iteration began: a split meanwhile does not make it see a
    /// key twice (the split shard's snapshot holds every key the new shards got).
    shards: &'g [Shard<K, V>],
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
            shards: raw.shards(),
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
        self.inner = snapshot_at(&mut self.shards, at, self.guard).and_then(|(s, tier)| {
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
            if !self.shards[self.at].generation_is(inner.tier().id) {
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
