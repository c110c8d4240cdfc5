//! Retired tiers past their grace period, freed a bounded number of slots at a time.
//!
//! A promotion or `clear` retires a whole tier: its table and every entry it owns (I3). Freeing
//! that inside the epoch's deferred closure would run O(capacity) work, a full table scan plus
//! one `free` per owned entry, inside whatever operation of whatever thread next collects (a
//! 3.3 ms stall at the 99.99th percentile of a 100,000-key churn, `BENCHMARKS.md`). So a large
//! tier's deferred closure only moves it here (O(1)), and the map's own slow operations free
//! [`BUDGET`] slots' worth each, outside the dirty lock, group by group (entries come back as
//! the cursor passes, the slot array when it reaches the end). `SyncMap::reclaim` and `clear_and_release` empty the graveyard at once, and a
//! dropped map frees what is left.
//!
//! The graveyard also holds sealed batches of removed values (`batch`), so that everything a
//! map retired is reachable from the map: the background reclaimer frees it without waiting
//! for the map's own operations, and a dropped map frees it all before `drop` returns, grace
//! period or not (no reference into a map outlives it). Deferred closures never free anything
//! themselves: they only move items from *pending* to *ready* (O(items), no user code).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::{Arc, Weak};

use super::arena::Arena;
use super::background::{self, Reclaim};
use super::batch::{OpenBatch, Sealed, BATCH};
use super::entry::{free_value, Entry, FreeBatch};
use super::table::prefetch;
use super::{Shared, Tier};
use crate::facade::{lock, AtomicUsize, Guard, Mutex};

/// Slots freed per slow operation while one corpse is queued; doubled for each further corpse
/// (up to 64 times), and never less than the operation's migration budget, so that the graveyard
/// drains faster than promotions can fill it.
///
/// 64 slots cost about a microsecond (the owned entries among them are cache misses). Measured
/// along a 100,000-key churn (`LAT_CLOCK=wall cargo bench --bench latency`, `BENCHMARKS.md`):
/// 256 slots per step put the p99 step at 6.1-6.6 µs, 64 at 4.0-4.4 µs (3.3 µs when the whole
/// tier was freed at once, with its 4-6 ms stalls).
#[cfg(not(tiermap_loom))]
pub(crate) const BUDGET: usize = 64;
/// Loom: half a 4-slot group, so that the models also stop and resume inside a group.
#[cfg(tiermap_loom)]
pub(crate) const BUDGET: usize = 2;

/// The least a slow operation frees, given its migration budget: twice that budget, so that
/// the graveyard (fed by promotions) drains at least twice as fast as migrations retire tables.
/// Loom builds use only [`BUDGET`], so that the models see a tier freed over several steps (the
/// migration budget, at least 32 slots, covers a whole model table).
#[inline]
pub(crate) fn step_floor(migration_budget: usize) -> usize {
    if cfg!(tiermap_loom) {
        0
    } else {
        migration_budget.saturating_mul(2)
    }
}

/// Which entries a retired tier owns (I3), and so how its corpse finds them.
pub(crate) enum Ownership<K, V> {
    /// Its tagged entries and the untagged ones at slots `>= upto` (a dirty tier: `upto` 0):
    /// found by scanning its slots.
    Scan { upto: usize },
    /// Exactly these entries, listed as a migration tagged them (a read tier retired by a
    /// promotion): freed from the list; the slots are not scanned.
    Listed(Vec<*mut Entry<K, V>>),
}

/// A retired tier that no guard can reach any more, being freed.
pub(crate) struct Corpse<K, V> {
    tier: *mut Tier<K, V>,
    /// I3: the entries the tier owns.
    owned: Ownership<K, V>,
    /// Next slot to free (with `Ownership::Scan`).
    next: usize,
    /// What `Shared::retired_bytes` counts for this corpse, subtracted when it is gone.
    bytes: usize,
}

impl<K, V> Corpse<K, V> {
    /// # Safety
    /// `tier` came from `Box::into_raw` and is unpublished: no reader can reach it by the time
    /// the corpse frees anything (either no guard can, or the corpse goes to the graveyard,
    /// which frees it only after the grace period of a deferral made after this call); it owns
    /// the entries `owned` says (I3), and it is handed over exactly once.
    pub(crate) unsafe fn new(tier: *mut Tier<K, V>, owned: Ownership<K, V>, bytes: usize) -> Self {
        // Not under Miri: each check walks the table, and the fuzz replay promotes small tables
        // thousands of times (the list is checked in every other debug build).
        #[cfg(all(debug_assertions, not(miri)))]
        if let Ownership::Listed(list) = &owned {
            // SAFETY: per the caller, the tier is alive (only the corpse frees it) and
            // unpublished, so its slots no longer change (readers that still probe it only
            // load them); small tables only, so that debug builds' promotions stay cheap.
            let table = unsafe { &(*tier).table };
            if table.capacity() <= 1 << 12 {
                debug_assert_eq!(table.owned_count(), list.len(), "listed owned entries");
            }
        }
        Corpse {
            tier,
            owned,
            next: 0,
            bytes,
        }
    }

    /// Frees the entries the tier owns until `budget` slots (or listed entries) were looked
    /// at; then frees the tier itself. Returns whether it is gone (its `bytes` are then the
    /// caller's to uncount). Panic-safe: if a key's or value's `Drop` panics, the entries
    /// already handed out are not seen again.
    fn free_some(&mut self, budget: &mut usize, arena: &Arena) -> bool {
        if !self.free_entries(budget, arena) {
            return false;
        }
        // SAFETY: `new`'s contract; every owned entry is freed, so this frees the slot array,
        // the group counters and the tier header only.
        drop(unsafe { Box::from_raw(self.tier) });
        true
    }

    /// The first half of `free_some`: frees the owned entries, until `budget` units were
    /// spent (returns `false`) or every owned entry is freed (`true`). With
    /// `Ownership::Scan`, every slot is emptied on the way (`empty_tier` reuses the table).
    fn free_entries(&mut self, budget: &mut usize, arena: &Arena) -> bool {
        let upto = match &mut self.owned {
            Ownership::Scan { upto } => *upto,
            Ownership::Listed(list) => return free_listed(list, budget, arena),
        };
        // SAFETY: `new`'s contract: the tier is ours alone until it is freed.
        let tier = unsafe { &mut *self.tier };
        let slots = tier.table.capacity();
        let mut batch = FreeBatch::new(arena);
        while self.next < slots {
            if *budget == 0 {
                return false;
            }
            let (next, looked) = tier.table.release_slots(self.next, *budget, |i, e, owned| {
                if owned || i >= upto {
                    // SAFETY: I3: this tier is the entry's only owner, and `release_slots`
                    // cleared the slot first, so it is destroyed once; the map's entries come
                    // from its arena (the batch's).
                    unsafe { Entry::destroy(e, &mut batch) };
                }
            });
            self.next = next;
            // A group without entries costs one unit: its counter is still read.
            *budget = budget.saturating_sub(looked.max(1));
        }
        tier.table.emptied();
        true
    }

    /// Frees everything now.
    fn free_all(mut self, arena: &Arena) {
        let mut unlimited = usize::MAX;
        let done = self.free_some(&mut unlimited, arena);
        debug_assert!(done);
    }
}

/// Frees listed entries from the end of `list` until `budget` of them were freed (`false`) or
/// none is left (`true`). Each is popped before it is freed, so a panicking `Drop` does not
/// see it again; they are prefetched a run at a time (each is a cache miss).
fn free_listed<K, V>(list: &mut Vec<*mut Entry<K, V>>, budget: &mut usize, arena: &Arena) -> bool {
    const RUN: usize = 16;
    let mut batch = FreeBatch::new(arena);
    while !list.is_empty() {
        if *budget == 0 {
            return false;
        }
        let run = list.len().min(RUN).min(*budget);
        for &e in &list[list.len() - run..] {
            prefetch(e);
        }
        for _ in 0..run {
            let e = list.pop().expect("run within the list");
            *budget -= 1;
            // SAFETY: `Corpse::new`'s contract: the retired tier owned exactly the listed
            // entries (I3), each listed once; popped first, so it is destroyed once; the map's
            // entries come from its arena (the batch's).
            unsafe { Entry::destroy(e, &mut batch) };
        }
    }
    true
}

/// Frees a tier and the entries it owns (I3: its tagged entries and the untagged ones at slots
/// `>= upto`) now, in one go: for tiers that are small, or that nobody else can reach because
/// the caller has the map exclusively.
///
/// # Safety
/// As for [`Corpse::new`]; the tier's entries came from `arena`.
pub(crate) unsafe fn free_tier<K, V>(tier: *mut Tier<K, V>, upto: usize, arena: &Arena) {
    // SAFETY: per the caller; nothing is counted in `retired_bytes` for it here.
    unsafe { Corpse::new(tier, Ownership::Scan { upto }, 0) }.free_all(arena);
}

/// Frees the entries a tier owns (as [`free_tier`]) now and hands the tier back with every
/// slot empty, so that its table can be used again (a pooled map's reset keeps its table).
///
/// # Safety
/// As for [`Corpse::new`]; the tier's entries came from `arena`; the returned tier is the
/// caller's, reachable by no one else.
pub(crate) unsafe fn empty_tier<K, V>(
    tier: *mut Tier<K, V>,
    upto: usize,
    arena: &Arena,
) -> Box<Tier<K, V>> {
    // SAFETY: per the caller.
    let mut corpse = unsafe { Corpse::new(tier, Ownership::Scan { upto }, 0) };
    let mut unlimited = usize::MAX;
    let done = corpse.free_entries(&mut unlimited, arena);
    debug_assert!(done);
    // SAFETY: per the caller, `tier` came from `Box::into_raw` and is handed over once; the
    // corpse that borrowed it is gone.
    unsafe { Box::from_raw(corpse.tier) }
}

/// Something retired: a tier (with the entries it owns) or a sealed batch of values.
pub(crate) enum Item<K, V> {
    Tier(Corpse<K, V>),
    Values(Sealed<V>),
}

impl<K, V> Item<K, V> {
    fn bytes(&self) -> usize {
        match self {
            Item::Tier(c) => c.bytes,
            Item::Values(s) => s.bytes(),
        }
    }

    /// Frees up to `budget` units (slots or values); whether it is gone.
    ///
    /// # Safety
    /// The item's grace period is over, or the caller owns the map exclusively; a tier's
    /// entries came from `arena`.
    unsafe fn free_some(&mut self, budget: &mut usize, arena: &Arena) -> bool {
        match self {
            Item::Tier(c) => c.free_some(budget, arena),
            // SAFETY: per the caller.
            Item::Values(s) => unsafe { s.free_some(budget) },
        }
    }
}

/// Everything a map retired and has not freed yet: its open batch of removed values, the items
/// waiting for their grace period (*pending*), and those past it (*ready*), freed a bounded
/// step per slow operation of the map, by the background reclaimer, or at once by `reclaim` and
/// when the map is dropped. Shared, through an `Arc`, with the epoch's deferred closures and the
/// background reclaimer, which may outlive the map (they find the yard closed).
pub(crate) struct Graveyard<K, V> {
    yard: Mutex<Yard<K, V>>,
    /// How many items are ready: lets slow operations skip the lock when there are none.
    queued: AtomicUsize,
    /// How many items are pending and not yet deferred: lets `service` skip the lock.
    undeferred: AtomicUsize,
    /// Items popped from *ready* and being freed (by `drain`): `close` waits for them, so that
    /// a map dropped while the background reclaimer frees one of its items returns only after
    /// every value is dropped.
    in_flight: AtomicUsize,
    /// Removed values not yet sealed into an item.
    values: OpenBatch<V>,
    /// Whether the background reclaimer has this graveyard on its list (see `unregister`).
    registered: std::sync::atomic::AtomicBool,
    shared: Arc<Shared>,
    /// The slots of the map's entries. Here rather than in the map: the graveyard frees
    /// entries, also after the map is gone (see `Graveyard::requeue`).
    pub(crate) arena: Arena,
}

struct Yard<K, V> {
    /// Cleared when the map is dropped: nothing is queued after that.
    open: bool,
    /// Retired, grace period not known to be over: deferred items first, in stamp order, then
    /// the `undeferred` newest ones (stamp 0), whose deferral is still to be made.
    pending: VecDeque<(u64, Item<K, V>)>,
    undeferred: usize,
    /// Stamp of the next deferral (starts at 1; 0 means "not deferred").
    next_stamp: u64,
    /// Past their grace period, waiting to be freed.
    ready: Vec<Item<K, V>>,
}

// SAFETY: the graveyard owns retired keys and values and drops them on whichever thread frees
// them (`K, V: Send`); it never hands out references to them, and every shared access goes
// through its mutex or atomics.
unsafe impl<K: Send, V: Send> Send for Graveyard<K, V> {}
// SAFETY: as above: `&Graveyard` only moves items between queues and frees them.
unsafe impl<K: Send, V: Send> Sync for Graveyard<K, V> {}

/// Sealed value batches that may wait undeferred while the background reclaimer runs: the
/// remover that seals the next one defers them all in one epoch deferral.
const UNDEFERRED_BATCHES: usize = 4;

impl<K, V> Graveyard<K, V> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Graveyard {
            yard: Mutex::new(Yard {
                open: true,
                pending: VecDeque::new(),
                undeferred: 0,
                next_stamp: 1,
                ready: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            undeferred: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            values: OpenBatch::new(),
            registered: std::sync::atomic::AtomicBool::new(false),
            shared,
            arena: Entry::<K, V>::arena(),
        }
    }

    /// Queues a retired item; its grace period starts with the next [`Graveyard::defer`].
    ///
    /// # Safety
    /// The item is unreachable for guards pinned from now on (unlinked), is handed over once,
    /// and owns what it frees (I3 for tiers).
    pub(crate) unsafe fn retire(&self, item: Item<K, V>) {
        let mut yard = lock(&self.yard);
        debug_assert!(yard.open, "retiring into a dropped map's graveyard");
        // SAFETY: per the caller.
        unsafe { self.queue(&mut yard, item) };
    }

    /// [`Graveyard::retire`] with the yard's lock held.
    ///
    /// # Safety
    /// As for [`Graveyard::retire`].
    unsafe fn queue(&self, yard: &mut Yard<K, V>, item: Item<K, V>) {
        // Relaxed: a statistic.
        self.shared.retired_bytes.fetch_add(item.bytes(), Relaxed);
        // Seeded bug for the loom models: skip the grace period, so that the next slow operation
        // frees an item that a reader pinned before the retirement may still be using.
        if cfg!(tiermap_mutation = "bury_without_grace") {
            yard.ready.push(item);
            self.queued.fetch_add(1, Relaxed);
            return;
        }
        yard.pending.push_back((0, item));
        yard.undeferred += 1;
        // SeqCst: ordered before the retirer's `registered` check (see `unregister`).
        self.undeferred.fetch_add(1, SeqCst);
    }

    /// Adds a value its remover unlinked to the open batch; a batch it fills is queued, and
    /// deferred now unless the background reclaimer will do it (up to `UNDEFERRED_BATCHES`).
    ///
    /// # Safety
    /// `p` came from `alloc_value`, was unlinked by the caller, and is retired once; `guard` is
    /// the caller's pin, held since before the unlink.
    pub(crate) unsafe fn retire_value(self: &Arc<Self>, p: *mut V, guard: &Guard)
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        if cfg!(tiermap_mutation = "free_without_defer") {
            // SAFETY: deliberately unsound mutation for the loom models; never built otherwise.
            unsafe { free_value(p) };
            return;
        }
        // SAFETY: per the caller (pinned; the sealed batch goes to `retire`).
        if let Some(sealed) = unsafe { self.values.push(p) } {
            // SAFETY: a sealed batch is unreachable from the open slot and handed over once.
            unsafe { self.retire(Item::Values(sealed)) };
            if !background::running() {
                // No reclaimer: this remover starts the batch's grace period and frees what is
                // past it, two batches' worth (more than it adds), so that removals and
                // replacements alone keep the garbage bounded.
                self.defer(guard);
                self.drain(2 * BATCH);
            // Relaxed: a hint; `defer` re-reads the count under the lock.
            } else if self.undeferred.load(Relaxed) >= UNDEFERRED_BATCHES {
                self.defer(guard);
            }
        }
        self.register();
    }

    /// Starts the grace period of every undeferred item: one epoch deferral that, once every
    /// guard pinned before it is gone, moves them (and anything deferred earlier) to `ready`.
    /// Flushes this thread's epoch bag so that any thread's next collection (the background
    /// reclaimer's within a tick) can run it.
    /// Returns whether it deferred anything.
    pub(crate) fn defer(self: &Arc<Self>, guard: &Guard) -> bool
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        // Relaxed: a hint; re-checked under the lock.
        if self.undeferred.load(Relaxed) == 0 {
            return false;
        }
        let stamp = {
            let mut yard = lock(&self.yard);
            if yard.undeferred == 0 || !yard.open {
                return false;
            }
            let stamp = yard.next_stamp;
            yard.next_stamp += 1;
            let from = yard.pending.len() - yard.undeferred;
            for (s, _) in yard.pending.range_mut(from..) {
                *s = stamp;
            }
            yard.undeferred = 0;
            self.undeferred.store(0, Relaxed);
            stamp
        };
        #[cfg(not(tiermap_mutation = "expire_borrows_yard"))]
        let grave = self.clone();
        // SAFETY: the closure only moves items between the graveyard's queues (no user code, no
        // freeing), after the epoch's grace period for everything pending when it was made;
        // `K, V: Send + 'static`, so the graveyard may be touched from any thread at any time;
        // the closure owns a reference count, so the graveyard outlives the map if need be.
        #[cfg(not(tiermap_mutation = "expire_borrows_yard"))]
        unsafe {
            guard.defer_unchecked(move || grave.expire(stamp))
        };
        // Seeded bug for the loom models (never built otherwise): the closure borrows the
        // graveyard instead of owning a count, and runs after the map (and it) are gone.
        #[cfg(tiermap_mutation = "expire_borrows_yard")]
        {
            let grave = Arc::as_ptr(self).expose_provenance();
            // SAFETY: none; deliberately unsound (see above).
            unsafe {
                guard.defer_unchecked(move || {
                    (*std::ptr::with_exposed_provenance::<Self>(grave)).expire(stamp)
                })
            };
        }
        guard.flush();
        true
    }

    /// The grace period of deferral `stamp` is over: every item deferred at or before it is
    /// ready (a later deferral's grace period covers the earlier ones', so the order in which
    /// the epoch runs deferred closures does not matter).
    fn expire(&self, stamp: u64) {
        let mut yard = lock(&self.yard);
        if !yard.open {
            return;
        }
        let mut moved = 0;
        while let Some(&(s, _)) = yard.pending.front() {
            // Items deferred later (`s > stamp`) and items not deferred yet (`s == 0`) were
            // retired after this deferral was made: a guard pinned since may still use them.
            #[cfg(not(tiermap_mutation = "expire_all"))]
            let later = s == 0 || s > stamp;
            // Seeded bug (never built otherwise): one grace period frees everything pending.
            #[cfg(tiermap_mutation = "expire_all")]
            let later = {
                let _ = (s, stamp);
                false
            };
            if later {
                break;
            }
            let (_, item) = yard.pending.pop_front().expect("front exists");
            yard.ready.push(item);
            moved += 1;
        }
        // Relaxed: a hint; `drain` re-checks under the lock.
        self.queued.fetch_add(moved, Relaxed);
    }

    /// Seals the open value batch if it holds any value (so that removed values do not wait
    /// for later removals) and queues it.
    pub(crate) fn seal_values(&self, _guard: &Guard) {
        // The lock is held until the sealed batch is queued: a `close` (the map's drop, on
        // another thread than the background reclaimer calling this) must find it in the yard,
        // not in this thread's hands.
        let mut yard = lock(&self.yard);
        if !yard.open {
            return;
        }
        // SAFETY: pinned (`_guard`); the yard's lock keeps `close` from freeing the batch
        // meanwhile.
        if let Some(sealed) = unsafe { self.values.seal_partial() } {
            // SAFETY: as in `retire_value`: the sealed batch is unreachable from the open slot
            // and handed over once.
            unsafe { self.queue(&mut yard, Item::Values(sealed)) };
        }
    }

    /// What a slow operation of the map owes, after it released the dirty lock: defer what it
    /// (or earlier removals) retired, then free one step of ready items (see [`Graveyard::drain`]).
    #[inline]
    pub(crate) fn service(self: &Arc<Self>, guard: &Guard, floor: usize)
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        // The common case, nothing retired and nothing ready, without the two calls (Relaxed:
        // the same hints `defer` and `drain` start with; what they miss, a later operation or
        // the background reclaimer handles).
        if self.undeferred.load(Relaxed) == 0 && self.is_empty() {
            return;
        }
        self.service_some(guard, floor);
    }

    /// `service` when something may be retired or ready.
    #[inline(never)]
    fn service_some(self: &Arc<Self>, guard: &Guard, floor: usize)
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        // Only a map with work goes on the reclaimer's list (listing takes its lock and may
        // wake it: not for every slow operation).
        if self.defer(guard) || !self.is_empty() {
            self.register();
        }
        self.drain(floor);
    }

    /// Whether any item is ready (a hint: one may become ready concurrently).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        // Relaxed: a hint; an item missed here is freed by a later operation.
        self.queued.load(Relaxed) == 0
    }

    /// Whether nothing is retired and not freed, and no removed value waits in the open batch.
    pub(crate) fn is_idle(&self) -> bool {
        let yard = lock(&self.yard);
        // SAFETY: we hold the yard's lock, which every path to freeing a batch loaded from the
        // open slot goes through (`retire` of the sealed batch, or `take_all`).
        yard.pending.is_empty() && yard.ready.is_empty() && !unsafe { self.values.has_values() }
    }

    /// Frees one step's worth of ready items: at least `floor` units (the caller's migration
    /// budget, so that freeing keeps pace with the migrations that retire tiers), at least
    /// [`BUDGET`], doubled per further ready item up to 64 times that; `usize::MAX` frees
    /// everything. Runs user `Drop` code: call it without the dirty lock. Returns the bytes of
    /// the items it finished.
    pub(crate) fn drain(&self, floor: usize) -> usize {
        if self.is_empty() {
            return 0;
        }
        let queued = self.queued.load(Relaxed).max(1);
        let mut budget = floor.max(BUDGET << (queued - 1).min(6));
        let mut freed = 0;
        while budget > 0 {
            let item = {
                let mut yard = lock(&self.yard);
                match yard.ready.pop() {
                    Some(c) => {
                        self.queued.fetch_sub(1, Relaxed);
                        // Relaxed: under the yard's lock, which `close` takes before it reads
                        // the count.
                        self.in_flight.fetch_add(1, Relaxed);
                        c
                    }
                    None => break,
                }
            };
            // Put the item back if a `Drop` panics, so that the rest is still freed; then (also
            // on unwinding) let `close` know this thread is done with it.
            let _landed = Landed(&self.in_flight);
            let mut held = Requeue {
                yard: self,
                item: Some(item),
            };
            // SAFETY: a ready item is past its grace period.
            let done = unsafe {
                held.item
                    .as_mut()
                    .expect("set above")
                    .free_some(&mut budget, &self.arena)
            };
            let item = held.item.take().expect("set above");
            if done {
                freed += item.bytes();
                self.uncount(&item);
            } else {
                self.requeue(item);
            }
        }
        if freed > 0 {
            // The last entries of an emptied map may just have been freed.
            freed += self.arena.release_unused();
        }
        background::note_freed(freed);
        freed
    }

    /// Frees everything retired, pending or ready, and the open batch, and makes later
    /// deferred closures do nothing (the map is being dropped). Returns the bytes freed.
    ///
    /// # Safety
    /// The caller owns the map exclusively: no guard can reach any retired item (every
    /// reference handed out borrows the map), and no operation of the map is running.
    pub(crate) unsafe fn close(&self) -> usize {
        self.take_all(false)
    }

    /// Frees everything retired and the open batch now, keeping the graveyard open (a map
    /// reset with exclusive access). Returns the bytes freed.
    ///
    /// # Safety
    /// As for [`Graveyard::close`].
    pub(crate) unsafe fn free_all_exclusive(&self) -> usize {
        self.take_all(true)
    }

    fn take_all(&self, keep_open: bool) -> usize {
        let freed = self.take_queued(keep_open);
        // An item popped by another thread (the background reclaimer: no operation of the map
        // runs, per the callers' contract) before the yard was emptied is being freed there;
        // wait for it, so that the caller returns only once every value is dropped.
        // Acquire pairs with the release decrement in `Landed`: its frees happen before.
        while self.in_flight.load(Acquire) != 0 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        // Every retired entry is freed: if the map holds none either, its blocks go back.
        freed + self.arena.release_unused()
    }

    fn take_queued(&self, keep_open: bool) -> usize {
        let items = {
            let mut yard = lock(&self.yard);
            yard.open = keep_open;
            self.queued.store(0, Relaxed);
            self.undeferred.store(0, Relaxed);
            yard.undeferred = 0;
            let mut items: Vec<Item<K, V>> = std::mem::take(&mut yard.pending)
                .into_iter()
                .map(|(_, item)| item)
                .collect();
            items.append(&mut yard.ready);
            // SAFETY: the callers own the map exclusively (no push can run), and we hold the
            // yard's lock (the background reclaimer cannot be sealing the batch).
            if let Some(sealed) = unsafe { self.values.take_unshared() } {
                let item = Item::Values(sealed);
                // Relaxed: a statistic; counted like a retired item, so that freeing it below
                // uncounts what was counted.
                self.shared.retired_bytes.fetch_add(item.bytes(), Relaxed);
                items.push(item);
            }
            items
        };
        // SAFETY: exclusive access (the callers' contract): no guard can reach these items.
        unsafe { self.free_items(items) }
    }

    /// Frees `items` completely, uncounting each. A panicking `Drop` does not stop the others:
    /// the first panic is re-raised once everything is freed. Returns the bytes freed.
    ///
    /// # Safety
    /// Every item is past its grace period, or the caller owns the map exclusively.
    unsafe fn free_items(&self, mut items: Vec<Item<K, V>>) -> usize {
        let mut freed = 0;
        let mut panic = None;
        while let Some(item) = items.last_mut() {
            let mut unlimited = usize::MAX;
            // A `Drop` that panics leaves the item's cursor past the value or entry it was
            // dropping (never seen again); the loop then resumes with the same item.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // SAFETY: per the caller.
                unsafe { item.free_some(&mut unlimited, &self.arena) }
            }));
            match step {
                Ok(done) => {
                    debug_assert!(done, "an unlimited step frees the whole item");
                    let item = items.pop().expect("last exists");
                    freed += item.bytes();
                    self.uncount(&item);
                }
                Err(payload) => {
                    panic.get_or_insert(payload);
                }
            }
        }
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        freed
    }

    /// Re-queues an item that is not finished (its step budget ran out, or a `Drop` panicked).
    fn requeue(&self, item: Item<K, V>) {
        let mut yard = lock(&self.yard);
        if yard.open {
            yard.ready.push(item);
            self.queued.fetch_add(1, Relaxed);
        } else {
            drop(yard);
            // The map was dropped while this thread was freeing the item (a background or
            // late drain): free the rest now; it is past its grace period.
            // SAFETY: a ready item is past its grace period.
            unsafe { self.free_items(vec![item]) };
        }
    }

    /// Uncounts an item that `free_some` finished.
    fn uncount(&self, item: &Item<K, V>) {
        // Relaxed: a statistic.
        self.shared.retired_bytes.fetch_sub(item.bytes(), Relaxed);
    }
}

impl<K: Send + 'static, V: Send + 'static> Graveyard<K, V> {
    /// Keeps this graveyard off the background reclaimer's list for good (tests that count
    /// the steps of a map's own operations).
    #[cfg(test)]
    pub(crate) fn keep_from_background(&self) {
        self.registered.store(true, SeqCst);
    }

    /// Puts this graveyard on the background reclaimer's list if it has work and is not there
    /// yet (and the reclaimer is enabled).
    #[inline]
    pub(crate) fn register(self: &Arc<Self>) {
        // SeqCst: see `unregister`.
        if self.registered.load(SeqCst) || !background::enabled() {
            return;
        }
        if !self.registered.swap(true, SeqCst) {
            let weak: Weak<dyn Reclaim> = Arc::downgrade(&(self.clone() as Arc<dyn Reclaim>));
            background::register(weak);
        }
    }
}

impl<K: Send + 'static, V: Send + 'static> Reclaim for Graveyard<K, V> {
    fn seal_and_defer(self: Arc<Self>, guard: &Guard) {
        self.seal_values(guard);
        self.defer(guard);
    }

    fn free_ready(&self) -> usize {
        self.drain(usize::MAX)
    }

    fn shrank(&self) -> bool {
        // Relaxed: hints (see `Shared::live_hint`).
        let live = self.shared.live_hint.load(Relaxed);
        let peak = self.shared.peak_live.load(Relaxed);
        // Relaxed: a hint, as above.
        let idle = self.shared.idle_release.swap(false, Relaxed);
        (peak > 0 && 2 * live <= peak) || idle
    }

    fn reset_peak(&self) {
        // Relaxed: as in `shrank`.
        self.shared
            .peak_live
            .store(self.shared.live_hint.load(Relaxed), Relaxed);
    }

    fn unregister(&self) -> bool {
        // SeqCst, with the SeqCst reservation or installation in `OpenBatch::push`, the SeqCst
        // count in `retire` and the SeqCst load in `register`: either the idleness check below
        // sees a retirer's new work, or that retirer sees the flag cleared and lists the
        // graveyard again. No work is left with nobody to free it.
        self.registered.store(false, SeqCst);
        if self.is_idle() {
            return true;
        }
        // Work came in: stay listed, unless a retirer has listed the graveyard again already
        // (then its new entry replaces this one).
        self.registered.swap(true, SeqCst)
    }
}

/// Marks the end of a `drain` step's work on an item (see `Graveyard::in_flight`).
struct Landed<'a>(&'a AtomicUsize);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        // Release: the frees of this step happen before `close` sees the count fall.
        self.0.fetch_sub(1, Release);
    }
}

/// Re-queues an item whose freeing was interrupted by a panic.
struct Requeue<'a, K, V> {
    yard: &'a Graveyard<K, V>,
    item: Option<Item<K, V>>,
}

impl<K, V> Drop for Requeue<'_, K, V> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.yard.requeue(item);
        }
    }
}

#[cfg(all(test, not(tiermap_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    use super::BUDGET;
    use crate::SyncMap;

    /// Slots of a table that the graveyard frees in many steps (fewer under Miri, which runs
    /// these tests about 1000x slower).
    const SMALL_SLOTS: usize = if cfg!(miri) { 512 } else { 4096 };
    /// Entries per map: enough for tables over `SMALL_SLOTS` slots.
    const SIZE: u64 = if cfg!(miri) { 400 } else { 10_000 };

    /// A value that counts its drops in the given counter, and panics in `drop` if told to.
    struct Counted {
        drops: &'static AtomicUsize,
        panic: bool,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, SeqCst);
            if self.panic {
                panic!("a panicking value destructor");
            }
        }
    }

    /// A map kept off the background reclaimer's list, so that only its own operations free
    /// what it retires (these tests count the steps). One shard, never split: these tests
    /// watch shard 0's graveyard.
    fn filled(n: u64, drops: &'static AtomicUsize, panic_at: Option<u64>) -> SyncMap<u64, Counted> {
        let map = SyncMap::with_capacity_shards_and_hasher(0, 1, Default::default());
        map.raw().shards()[0].grave.keep_from_background();
        for i in 0..n {
            let panic = panic_at == Some(i);
            map.insert(i, Counted { drops, panic });
        }
        map
    }

    /// Collects until the deferred closures of `map`'s retired tiers have run (other tests of
    /// this binary may pin the global epoch for a while).
    fn until_buried(map: &SyncMap<u64, Counted>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while map.raw().shards()[0].grave.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the retired tiers were never buried"
            );
            map.raw().shards()[0].reclaimer.collect(1);
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_large_retired_tier_is_freed_in_bounded_steps_by_slow_operations() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        const N: u64 = if cfg!(miri) { 800 } else { 20_000 };
        let map = filled(N, &DROPS, None);
        let slots = map.stats().read_capacity + map.stats().dirty_capacity;
        assert!(slots >= SMALL_SLOTS);
        map.clear();
        until_buried(&map);
        // Buried, not freed: the deferred closure did O(1) work.
        assert_eq!(DROPS.load(SeqCst), 0);
        assert!(map.stats().retired_bytes > 0);
        // Each slow operation (an insert of a new key) frees a bounded step: at most `BUDGET`
        // slots per queued corpse (two here, the read and the dirty tier), so at most that many
        // values are dropped.
        let mut steps = 0;
        let mut inserts = 0;
        let mut last = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !map.raw().shards()[0].grave.is_empty() {
            // Each step that finds something ready frees at least `BUDGET` slots (or skips a
            // whole unused group). A step that finds nothing ready and frees nothing is not
            // counted: the tiers wait for their grace period, which a guard pinned by another
            // test (this process's tests share the epoch) can hold back for as long as that
            // thread is descheduled.
            assert!(
                steps as usize <= slots.div_ceil(BUDGET) + 16,
                "graveyard not drained after {steps} slow operations ({slots} slots)"
            );
            assert!(
                Instant::now() < deadline,
                "the retired tiers never became ready"
            );
            let queued = map.raw().shards()[0].grave.queued.load(SeqCst);
            inserts += 1;
            map.insert(
                N + inserts,
                Counted {
                    drops: &DROPS,
                    panic: false,
                },
            );
            let now = DROPS.load(SeqCst);
            if queued > 0 || now > last {
                steps += 1;
            } else {
                map.raw().shards()[0].reclaimer.collect(1);
                std::thread::yield_now();
            }
            let floor = super::step_floor(map.raw().shards()[0].dirty().budget);
            // The step's doubling reads the ready count when it starts, after the insert's own
            // deferral: the small tiers the new keys outgrow may have become ready by then.
            let queued = queued.max(map.raw().shards()[0].grave.queued.load(SeqCst)) + 2;
            let budget = floor.max(BUDGET << (queued - 1).min(6));
            assert!(
                now - last <= budget,
                "one step dropped {} values",
                now - last
            );
            last = now;
        }
        assert_eq!(DROPS.load(SeqCst), N as usize);
        assert!(steps > 1, "freed in one step: not incremental");
        assert!(map.raw().shards()[0].grave.is_empty());
        // What is still retired is at most the small tiers the new inserts outgrew, waiting
        // for their grace period.
        let retired = map.stats().retired_bytes;
        assert!(retired < SMALL_SLOTS * 16, "{retired} bytes still retired");
        assert_eq!(map.len(), inserts as usize);
    }

    /// A deferral's grace period covers what was retired before it, nothing after: when the
    /// first deferral expires, the tiers retired and deferred later stay pending (a guard
    /// pinned between the two deferrals may still read them). Deterministic: the test runs the first deferral's expiry itself while its own pin
    /// keeps the epoch from running either closure. Catches the seeded mutation `expire_all`
    /// (`RUSTFLAGS='--cfg tiermap_mutation="expire_all"' cargo test --lib
    /// expiry_frees_only_what_was_retired_before_the_deferral`), which loom's eager
    /// per-pin collection cannot schedule (see loom-tests/README.md).
    #[test]
    fn expiry_frees_only_what_was_retired_before_the_deferral() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        const N: u64 = 64;
        let map = filled(N, &DROPS, None);
        let grave = &map.raw().shards()[0].grave;
        // Pinned first: no deferral made from now on can expire by itself in this test.
        let pin = map.pin();
        let first = super::lock(&grave.yard).next_stamp;
        // The tiers the fill outgrew were deferred before the pin, and their closures may not
        // have run yet (another test's guard can hold the global epoch back): no guard of this
        // test can reach them, so they are made ready here, and the first deferral below is
        // the front of the queue.
        grave.expire(first - 1);
        map.clear(); // the first generation's tiers, deferred with stamp `first`
        for i in 0..N {
            map.insert(i, counted(&DROPS));
        }
        map.clear(); // the second generation's tiers, deferred with stamp `first + 1`
        {
            let yard = super::lock(&grave.yard);
            assert_eq!(yard.pending.front().map(|p| p.0), Some(first));
            assert!(
                yard.pending.iter().any(|p| p.0 > first),
                "setup: the second clear deferred nothing"
            );
        }
        grave.expire(first);
        let yard = super::lock(&grave.yard);
        assert!(
            yard.pending.iter().all(|p| p.0 != first) && yard.pending.len() >= 2,
            "the first deferral's expiry moved items retired after it: {} still pending",
            yard.pending.len()
        );
        drop(yard);
        drop(pin);
    }

    fn counted(drops: &'static AtomicUsize) -> Counted {
        Counted {
            drops,
            panic: false,
        }
    }

    #[test]
    fn reclaim_empties_the_graveyard_at_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let map = filled(SIZE, &DROPS, None);
        map.clear();
        until_buried(&map);
        assert_eq!(map.reclaim(), 0);
        assert_eq!(DROPS.load(SeqCst), SIZE as usize);
        assert!(map.raw().shards()[0].grave.is_empty());
    }

    #[test]
    fn dropping_the_map_frees_queued_and_pending_tiers() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let map = filled(SIZE, &DROPS, None);
        map.clear();
        until_buried(&map);
        let second = filled(SIZE, &DROPS, None);
        // Retired, its grace period perhaps not over (a guard of this thread pins it): the
        // drop frees it all the same, before returning.
        let pin = second.pin();
        drop(pin);
        second.clear();
        second.insert(
            u64::MAX,
            Counted {
                drops: &DROPS,
                panic: false,
            },
        );
        second.remove(&u64::MAX);
        drop(second);
        assert_eq!(DROPS.load(SeqCst), SIZE as usize + 1);
        drop(map);
        assert_eq!(DROPS.load(SeqCst), 2 * SIZE as usize + 1);
    }

    /// A map of `u64 -> u64` (no drop glue: its drop gives the entry blocks back whole,
    /// `Arena::release_all`) dropped with a promoted read tier holding deleted entries, a
    /// migration under way, and the tiers its promotions retired not all freed yet.
    #[test]
    fn dropping_a_map_of_plain_entries_frees_its_blocks_whole() {
        let map: SyncMap<u64, u64> = SyncMap::new();
        let shard = &map.raw().shards()[0];
        shard.grave.keep_from_background();
        for i in 0..SIZE {
            map.insert(i, i);
        }
        let _ = map.pin().iter().count();
        for i in (0..SIZE).step_by(3) {
            map.remove(&i);
        }
        map.insert(SIZE, SIZE);
        let s = map.stats();
        assert!(s.migrating && s.deleted > 0, "{s}");
        assert!(shard.grave.arena.held_bytes() > 0);
        let grave = std::sync::Arc::clone(&shard.grave);
        drop(map);
        // The graveyard outlives the map here (as it may in a deferred closure): its arena is
        // empty.
        assert_eq!(grave.arena.held_bytes(), 0);
        assert!(grave.is_empty());
    }

    #[test]
    fn a_panicking_destructor_loses_nothing_else() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        const N: u64 = SIZE;
        let map = filled(N, &DROPS, Some(N / 2));
        map.clear();
        until_buried(&map);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| map.reclaim()));
        assert!(caught.is_err(), "the destructor's panic reaches the caller");
        // The rest is still queued and freed; the map still works.
        assert_eq!(map.reclaim(), 0);
        assert_eq!(DROPS.load(SeqCst), N as usize);
        assert!(map.raw().shards()[0].grave.is_empty());
        map.insert(
            1,
            Counted {
                drops: &DROPS,
                panic: false,
            },
        );
        assert_eq!(map.len(), 1);
    }
}
