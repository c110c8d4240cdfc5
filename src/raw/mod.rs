//! The unsafe engine: two tiers, incremental migration, promotion, compaction and retirement,
//! in each shard of the map (`Shard`); `sharded.rs` puts the shards together (`RawMap`).
//!
//! `docs/DESIGN.md` is the narrative version of this module; the invariants it names are the
//! ones the `// SAFETY:` comments here rely on. In short:
//!
//! * **I1 (tiers).** `read` always points to a live, published [`Tier`]; it changes only under
//!   the dirty lock. A published tier's slots never change except for the `OWNED` tag.
//! * **I2 (one entry per key per table).** A table holds at most one entry per key. If the read
//!   and dirty tables both hold an entry for a key, it is the same entry, or the read one is
//!   expunged.
//! * **I3 (ownership).** Every entry reachable from the current tiers is owned by exactly one
//!   tier: the dirty tier owns all its entries; the read tier owns the entries it expunged
//!   (tagged `OWNED`) and those in slots at or after the migration cursor (not yet looked at).
//!   A retired tier frees exactly the entries it owns.
//! * **I4 (migration).** While a dirty tier exists, `cursor` slots of the read tier have been
//!   decided: each live entry there is also in the dirty tier, each deleted one is expunged and
//!   tagged (a migration that clones, `Table::clone_from`, copies it as a deleted entry
//!   instead). A dirty tier is promoted only when `cursor == read.capacity()`, so it then holds
//!   every key that is present.
//! * **I5 (capacity).** A dirty tier is created with room, at load factor 3/4, for every entry
//!   the read tier holds (live or deleted: a deleted one may be revived and copied) plus one
//!   fresh key per slow operation until the migration ends, so it cannot fill up before it can
//!   be promoted; and with twice the slots that the live entries and those fresh keys need
//!   (a migration that clones keeps the read table's capacity: at least the first bound, one
//!   and a half times the second's entries, and at most a quarter more than the second).
//! * **I6 (generations across shards).** A tier carries the generation it was created in, never
//!   newer than its shard's; `clear` bumps every shard's generation, holding every shard's lock,
//!   before it replaces any shard's tiers; a lookup in a map of several shards answers only from
//!   a read tier of its shard's current generation (`behind_clear`).
//! * **I7 (fresh keys).** A key that the dirty tier holds and for which the read tier holds no
//!   usable (unexpunged) entry was added by `insert_fresh`, which set its bit in the dirty
//!   tier's filter (`Tier::fresh`) under the lock: the dirty tier's other keys are the read
//!   tier's live entries, copied by the migration. Lock-free lookups (`surely_not_fresh`) and
//!   `locate` under the lock skip the dirty table when the bit is clear.

pub(crate) mod arena;
pub(crate) mod background;
pub(crate) mod batch;
pub(crate) mod entry;
mod filter;
pub(crate) mod grave;
mod guarded;
pub(crate) mod hashbits;
pub(crate) mod idle;
mod maintain;
#[cfg(feature = "rayon")]
pub(crate) mod par;
mod rmw;
mod sample;
mod sharded;
pub(crate) mod table;
#[cfg(all(test, not(tiermap_loom)))]
mod tests;
mod witness;
mod zeroed;

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::Arc;

use crate::facade::{
    lock, AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize, Guard, Mutex, Reclaimer,
};
use crate::outcome::GetOrInsert;
use crate::stats::MapStats;
use entry::{alloc_value, entry_bytes, free_value, take_value, Entry, State};
use grave::{empty_tier, free_tier, Graveyard};
use sample::{sample_absent_miss, sample_found_miss};
use table::Table;
use witness::Witness;
use zeroed::zeroed_slice;

pub use guarded::Ref;
pub(crate) use sharded::{MapIter, RawMap};

/// Least migration work (in slots) that each slow-path operation does while a dirty tier is
/// being filled.
const MIN_BUDGET: usize = 32;
/// Deleted entries that may be held regardless of the live count before compaction starts.
const DELETED_FLOOR: usize = 64;
/// Entry-block bytes that an empty map's deleted entries may keep before compaction starts.
const ARENA_FLOOR: usize = 16 << 10;
/// Table slots that may be held regardless of the live count before compaction starts.
const SLOTS_FLOOR: usize = 1024;
/// Migration work units per locked step of `snapshot` and `compact`.
const SNAPSHOT_STEP: usize = 1024;
/// Slow-path operations between two calls of the observer.
const OBSERVE_EVERY: u32 = 64;

/// A callback that watches the map's statistics (see `RawMap::observer`). It is handed a way
/// to take a snapshot rather than a snapshot, so that a watcher can take it under its own lock
/// and judge snapshots in the order they were taken (see `alarm::map::AlarmState::check`).
pub(crate) struct Observer(pub(crate) Box<dyn Fn(&Snapshot<'_>) + Send + Sync>);

/// Takes a statistics snapshot of the map (what an [`Observer`] is handed).
pub(crate) type Snapshot<'a> = dyn Fn() -> MapStats + 'a;

/// Counters of one generation of the map (a generation ends with `clear`). Operations that
/// raced with a `clear` update the old generation's counters, never the new one's.
pub(crate) struct Gen {
    pub(crate) id: u64,
    pub(crate) live: AtomicIsize,
    pub(crate) entries: AtomicIsize,
}

impl Gen {
    fn new(id: u64) -> Arc<Gen> {
        Arc::new(Gen {
            id,
            live: AtomicIsize::new(0),
            entries: AtomicIsize::new(0),
        })
    }

    #[inline]
    pub(crate) fn live(&self) -> usize {
        // Relaxed: a statistic; exact once the map is quiescent (every update happened before).
        self.live.load(Relaxed).max(0) as usize
    }

    #[inline]
    fn entries(&self) -> usize {
        self.entries.load(Relaxed).max(0) as usize
    }

    /// The live count as kept, possibly negative: after a split, a shard's count and the split
    /// shard's residual (`RawMap::len`) are exact only in sum.
    #[inline]
    pub(crate) fn raw_live(&self) -> isize {
        // Relaxed: as in `live`.
        self.live.load(Relaxed)
    }

    /// The entry count as kept, possibly negative (see `raw_live`).
    #[inline]
    pub(crate) fn raw_entries(&self) -> isize {
        // Relaxed: as in `live`.
        self.entries.load(Relaxed)
    }
}

/// A table plus what a reader needs to know about it.
pub(crate) struct Tier<K, V> {
    pub(crate) table: Table<K, V>,
    /// Set (under the dirty lock) while this tier is the read tier and the dirty tier holds keys
    /// that this one lacks. Readers that miss check it before taking the lock.
    pub(crate) amended: AtomicBool,
    /// While this tier is the dirty tier: a one-hash Bloom filter of the *fresh* keys inserted
    /// into it (`insert_fresh`), one bit per slot. A lock-free lookup that missed the read tier
    /// probes the dirty table only if its key's bit is set: the other keys of a dirty table are
    /// the read tier's live entries, which that lookup already found in the read tier. Absent
    /// keys are the common miss (bustle's ReadHeavy: three reads in four), and without the
    /// filter each of them probed both tables while new keys kept the read tier amended.
    fresh: Box<[AtomicUsize]>,
    pub(crate) gen: Arc<Gen>,
    /// `gen.id`, kept here so that a lookup compares it with its shard's generation without a
    /// load from `Gen` (whose counters every write updates).
    pub(crate) id: u64,
    /// Loom builds: lets the models see a read of the table's plain fields through a tier
    /// pointer published without release (see `raw::witness::Witness`).
    witness: Witness,
}

impl<K, V> Tier<K, V> {
    fn boxed(slots: usize, gen: Arc<Gen>) -> Box<Self> {
        let table = Table::new(slots);
        let bits = table.capacity().next_power_of_two();
        Box::new(Tier {
            fresh: zeroed_slice(bits.div_ceil(usize::BITS as usize)),
            table,
            amended: AtomicBool::new(false),
            id: gen.id,
            gen,
            witness: Witness::new(),
        })
    }

    /// Heap bytes of the tier: its header, its table and its filter.
    pub(crate) fn bytes(&self) -> usize {
        size_of::<Self>() + self.table.heap_bytes() + self.fresh.len() * size_of::<AtomicUsize>()
    }

    /// The filter bit of `hash`: (word, mask). Bits 0.. of the mixed hash, which nothing else
    /// uses (`hashbits`): every key this filter records is one `insert_fresh` hashed.
    #[inline]
    fn fresh_bit(&self, hash: u64) -> (usize, usize) {
        let bits = self.fresh.len() * usize::BITS as usize;
        let i = hash as usize & (bits - 1);
        (i / usize::BITS as usize, 1 << (i % usize::BITS as usize))
    }

    /// Records a fresh key of this (dirty) tier in the filter. Under the dirty lock, before
    /// the key's slot is published.
    ///
    /// Relaxed: a lookup needs the bit only if the insert happens-before it (through the
    /// release store of `amended`, or any other synchronization), and then write-read
    /// coherence makes the bit visible; a lookup concurrent with the insert may miss the key
    /// either way.
    fn note_fresh(&self, hash: u64) {
        if self.fresh.is_empty() {
            return;
        }
        let (w, m) = self.fresh_bit(hash);
        // A load and a store, not a read-modify-write: only the dirty lock's holder writes the
        // filter, so no bit can be lost, and the plain store skips a locked instruction.
        let word = &self.fresh[w];
        word.store(word.load(Relaxed) | m, Relaxed);
    }

    /// Hints the CPU to fetch the filter word of `hash` (see `prefetch_dirty`).
    #[inline]
    fn prefetch_fresh(&self, hash: u64) {
        if !self.fresh.is_empty() {
            let (w, _) = self.fresh_bit(hash);
            table::prefetch_line(self.fresh.as_ptr().wrapping_add(w));
        }
    }

    /// Whether this (dirty) tier may hold a fresh key of hash `hash` (false: it surely does
    /// not). Relaxed: see `note_fresh`.
    #[inline]
    fn may_hold_fresh(&self, hash: u64) -> bool {
        if self.fresh.is_empty() {
            return false;
        }
        let (w, m) = self.fresh_bit(hash);
        self.fresh[w].load(Relaxed) & m != 0
    }

    /// Loom builds: checks that this tier's creation happens-before the caller's access (a
    /// no-op otherwise). Every path that reaches a tier through `read` or `dirty_view` calls it.
    #[inline(always)]
    fn witness(&self) -> &Self {
        self.witness.check();
        self
    }
}

/// Map-lifetime counters, shared with deferred destructors (which may outlive the map). Std
/// atomics, not the facade's: statistics and hints that no decision of the algorithm depends on
/// (see `facade`).
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) retired_bytes: std::sync::atomic::AtomicUsize,
    /// Live entries as of the last slow operation: lets the background reclaimer tell a
    /// release (the map shrank: what it freed will not be reused by it) from churn (a
    /// promotion frees a table the size of the one that replaces it, reused at once).
    pub(crate) live_hint: std::sync::atomic::AtomicUsize,
    /// The most `live_hint` was since the background reclaimer last trimmed.
    pub(crate) peak_live: std::sync::atomic::AtomicUsize,
    /// The idle watch promoted a shard (`Shard::idle_step`): the table it retired is memory
    /// the map gave back, which the background reclaimer returns to the operating system once
    /// it is freed (`Reclaim::shrank`).
    pub(crate) idle_release: std::sync::atomic::AtomicBool,
    pub(crate) promotions: std::sync::atomic::AtomicU64,
    pub(crate) migrations: std::sync::atomic::AtomicU64,
    pub(crate) compactions: std::sync::atomic::AtomicU64,
    pub(crate) clones: std::sync::atomic::AtomicU64,
}

/// The dirty tier's owning pointer (null when there is none).
///
/// A raw pointer rather than a `Box`: lock-free readers hold pointers to the same tier (through
/// `Shard::dirty_view`), which a `Box`'s uniqueness would forbid. The tier is freed only by
/// whoever takes it out of the slot (`take`), through the epoch or with exclusive access.
pub(crate) struct TierSlot<K, V>(*mut Tier<K, V>);

impl<K, V> TierSlot<K, V> {
    fn new(tier: Option<Box<Tier<K, V>>>) -> Self {
        TierSlot(tier.map_or(ptr::null_mut(), Box::into_raw))
    }

    pub(crate) fn is_some(&self) -> bool {
        !self.0.is_null()
    }

    pub(crate) fn is_none(&self) -> bool {
        self.0.is_null()
    }

    pub(crate) fn as_deref(&self) -> Option<&Tier<K, V>> {
        // SAFETY: a non-null slot points to a live tier that the slot owns; it is freed only
        // after being taken out, which needs `&mut self`.
        unsafe { self.0.as_ref() }
    }

    fn ptr(&self) -> *mut Tier<K, V> {
        self.0
    }

    /// Takes the tier out (null if none); the caller now owns it.
    fn take(&mut self) -> *mut Tier<K, V> {
        std::mem::replace(&mut self.0, ptr::null_mut())
    }
}

/// State under the dirty lock.
pub(crate) struct LockedState<K, V> {
    pub(crate) tier: TierSlot<K, V>,
    /// Slots of the read tier decided by the migration (I4). 0 when there is no dirty tier.
    pub(crate) cursor: usize,
    /// Work units per slow operation for the running migration.
    pub(crate) budget: usize,
    /// Entries expunged (and tagged) in the read tier by the running migration: when the
    /// migration completes, exactly the entries the read tier owns (I3), so that retiring it
    /// after the promotion frees them from this list instead of scanning its slots.
    expunged: Vec<*mut Entry<K, V>>,
    /// A tier was retired in this critical section (flush the epoch bag after unlocking).
    retired: bool,
    /// Slow operations since the observer last ran.
    since_observed: u32,
    /// The running migration was started to compact: promote as soon as it completes.
    pub(crate) compacting: bool,
    /// The running migration copies slots to the same index of a dirty table of the read
    /// table's capacity (`Table::clone_from`) instead of rehashing each entry.
    pub(crate) cloning: bool,
    /// While `cloning`: the copy has not yet met an empty slot of the read table, so an entry
    /// may sit in a probe sequence that wrapped around the table's end (`Table::clone_from`).
    wrap_run: bool,
    /// The shard was split (`RawMap::split`): its keys live in the shards of `successors`,
    /// and it only serves the lock-free lookups and writes of operations that loaded the map's
    /// shards before the split (its read tier is the full table the split copied, retired
    /// through the graveyard). Anything that takes its lock goes to the key's successor.
    pub(crate) frozen: bool,
    /// When `frozen`: the shards that replaced it (the map's shard array, tagged with its
    /// `log2` length; see `sharded::ShardPtr`). They live as long as the map.
    pub(crate) successors: *mut Shard<K, V>,
    /// Entry slots reserved from the arena for the next new keys (see `arena::SlotCache`):
    /// given back when a compaction starts, in `clear`, and when the tiers are taken away.
    pub(crate) slots: arena::SlotCache,
    /// Locked operations of the map's own that ended here (`end_locked`), wrapping: the idle
    /// watch (`Shard::idle_step`) compares it between two looks to tell a quiet shard.
    locked_ops: u32,
    /// What the idle watch remembers of this shard between its looks.
    watch: idle::WatchState,
}

impl<K, V> LockedState<K, V> {
    /// The state of a shard whose dirty tier is `tier` (none running a migration).
    fn new(tier: TierSlot<K, V>) -> Self {
        LockedState {
            tier,
            cursor: 0,
            budget: MIN_BUDGET,
            expunged: Vec::new(),
            retired: false,
            since_observed: 0,
            compacting: false,
            cloning: false,
            wrap_run: false,
            frozen: false,
            successors: ptr::null_mut(),
            slots: arena::SlotCache::new(),
            locked_ops: 0,
            watch: idle::WatchState::default(),
        }
    }
}

/// Where a key was found under the lock. The pointers stay valid while the caller's guard is
/// pinned: removing an entry from a tier retires it through the epoch.
enum Place<K, V> {
    Read(*const Entry<K, V>),
    Dirty(*const Entry<K, V>),
    Absent,
}

impl<K, V> Place<K, V> {
    /// The entry, as a reference that lives as long as the guard.
    ///
    /// # Safety
    /// The place was found while `_guard` was pinned.
    unsafe fn entry<'g>(&self, _guard: &'g Guard) -> Option<&'g Entry<K, V>> {
        match *self {
            // SAFETY: per the caller, and I3: a found entry is freed only after being unlinked
            // and retired through the epoch, which waits for `_guard`.
            Place::Read(e) | Place::Dirty(e) => Some(unsafe { &*e }),
            Place::Absent => None,
        }
    }
}

/// A value allocation not yet published: freed on drop (so a panic in user code between
/// allocating and publishing leaks nothing).
struct Pending<V>(*mut V);

impl<V> Pending<V> {
    /// Allocates `value` outside any entry; for a `V` stored inline, first records in the
    /// shard's `cells` flag that an entry may come to own such a value (see `Shard::cells`).
    fn new(value: V, cells: &std::sync::atomic::AtomicBool) -> Self {
        // Relaxed: read only by the shard's drop, with exclusive access, which every operation
        // that set it happens before.
        if entry::inline::<V>() && !cells.load(Relaxed) {
            cells.store(true, Relaxed);
        }
        Pending(alloc_value(value))
    }

    /// The allocation in `slot`, made from `value` the first time.
    fn boxed(
        slot: &mut Option<Pending<V>>,
        value: &mut Option<V>,
        cells: &std::sync::atomic::AtomicBool,
    ) -> *mut V {
        slot.get_or_insert_with(|| Pending::new(value.take().expect("value moved once"), cells))
            .0
    }
    fn publish(self) -> *mut V {
        let p = self.0;
        std::mem::forget(self);
        p
    }
}

impl<V> Drop for Pending<V> {
    fn drop(&mut self) {
        // SAFETY: the allocation was never published, so this is its only owner.
        unsafe { free_value(self.0) };
    }
}

/// One shard of the map (`sharded.rs` picks it by hash bits): a read tier and a dirty tier
/// with their own lock, miss clock, migration, promotion, compaction, graveyard and entry
/// arena. Everything in this module is about one shard; only `clear` spans them (I6).
///
/// Aligned to 128 bytes (two cache lines, the unit the adjacent-line prefetcher pulls): writers
/// of two shards on two cores do not share a line, and picking a shard is a shift, not a
/// multiplication. Laid out in order (`repr(C)`): what a lookup reads comes first, in the first
/// cache line, which only promotions, `clear` and observations write; the dirty lock starts a
/// line of its own, followed by the miss clock (both written by the slow paths).
#[repr(C, align(128))]
pub(crate) struct Shard<K, V> {
    // Invariant I1.
    read: AtomicPtr<Tier<K, V>>,
    /// Id of the current generation (bumped by `clear`, in every shard before any shard's
    /// tiers are replaced: I6); iterators stop when it changes, and a lookup that loaded a
    /// read tier older than it finds nothing (`behind_clear`). Next to `read`: the lookup that
    /// loads one loads the other.
    generation: AtomicU64,
    /// The map has other shards (a `clear` may be halfway through them): lookups check their
    /// tier against `generation`. A one-shard map needs no check (its `read` is replaced in
    /// one store), and its loom models then explore exactly the v1 state space.
    sharded: bool,
    /// A slow operation decided that the observer is due (every `OBSERVE_EVERY` slow
    /// operations, and after each one that retired something): the map runs it, outside the
    /// lock, when the operation returns (`RawMap::observe_due`). A std atomic: a hint that no
    /// decision of the algorithm depends on.
    pub(crate) observe_due: std::sync::atomic::AtomicBool,
    /// Some entry may own a value outside its slot although `V` is stored inline (a replaced,
    /// swapped or revived value: the entry's own slot held its first one). Set once, before the
    /// first such value is allocated (`Pending::new`); while it is clear, `drop` gives the
    /// entry blocks back whole without visiting the entries. A std atomic: read only with
    /// exclusive access, and loom builds always visit the entries.
    cells: std::sync::atomic::AtomicBool,
    /// Live keys at which this shard, the only one of a map built for few keys, is split into
    /// several after a promotion (`RawMap::split`); 0: never (maps built with several shards,
    /// or with a shard count chosen by the user, and shards made by a split).
    pub(crate) split_at: usize,
    /// A promotion found the shard due for its split (see `split_at`); the map splits it when
    /// the operation returns, with `observe_due`. A std atomic: a hint, re-checked under the
    /// lock by the split.
    pub(crate) split_due: std::sync::atomic::AtomicBool,
    /// The shard shares its graveyard, entry arena and counters with the other shards of its
    /// map (it was made by a split): its `drop` frees its entries one by one (another shard's
    /// entries may share its blocks) and leaves the graveyard to the last shard dropped.
    pub(crate) shares_arena: bool,
    /// The dirty tier (`Dirty::tier`) published for lock-free lookups, or null. Changed only
    /// under the lock, always after `read` when both change (see `lookup`). A dirty table is
    /// insert-only (removals leave deleted entries), so probing it without the lock is safe.
    dirty_view: AtomicPtr<Tier<K, V>>,
    pub(crate) shared: Arc<Shared>,
    /// Large retired tiers past their grace period, freed a step per slow operation.
    pub(crate) grave: Arc<Graveyard<K, V>>,
    pub(crate) reclaimer: Reclaimer,
    dirty: OwnLine<Mutex<LockedState<K, V>>>,
    /// Lookups that missed the read tier and found their key in the dirty tier (sampled one
    /// in `FOUND_MISS_SAMPLE`, each sample weighing that many), plus one in
    /// `ABSENT_MISS_SAMPLE` of those that found it nowhere, since the last promotion (Go's
    /// promotion clock; see `lookup`).
    misses: AtomicUsize,
    /// Opts out of the auto traits; `Send`/`Sync` are implemented below with the bounds the
    /// algorithm needs.
    _owns: PhantomData<*mut (K, V)>,
}

/// A value that starts a cache line of its own (see `Shard`'s layout).
#[repr(align(64))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

// SAFETY: a map moved to another thread is used there by one owner; its keys and values are
// moved (dropped there, or by a deferred free on whichever thread collects), which `Send`
// permits.
unsafe impl<K: Send, V: Send> Send for Shard<K, V> {}
// SAFETY: a shared map hands `&K`/`&V` to several threads at once (`Sync`) and moves or drops
// them on any thread (`Send`); all shared mutation goes through atomics and the dirty mutex.
unsafe impl<K: Send + Sync, V: Send + Sync> Sync for Shard<K, V> {}

/// Outcome of a conditional replace.
pub(crate) enum Replace<'g, V> {
    /// Replaced this previous value.
    Done(&'g V),
    /// The key was absent.
    Absent(V),
    /// The current value did not satisfy the condition.
    Mismatch(&'g V, V),
}

impl<K, V> Shard<K, V> {
    /// A shard sized for `capacity` keys. `sharded`: the map has other shards.
    pub(crate) fn new(capacity: usize, reclaimer: Reclaimer, sharded: bool) -> Self {
        let gen = Gen::new(0);
        let read = Tier::boxed(0, gen.clone());
        let dirty = (capacity > 0).then(|| Tier::boxed(capacity.saturating_mul(2), gen));
        let dirty = TierSlot::new(dirty);
        let view = dirty.ptr();
        let shared = Arc::new(Shared::default());
        Shard {
            read: AtomicPtr::new(Box::into_raw(read)),
            dirty_view: AtomicPtr::new(view),
            misses: AtomicUsize::new(0),
            dirty: OwnLine(Mutex::new(LockedState::new(dirty))),
            shared: shared.clone(),
            grave: Arc::new(Graveyard::new(shared)),
            generation: AtomicU64::new(0),
            sharded,
            observe_due: std::sync::atomic::AtomicBool::new(false),
            cells: std::sync::atomic::AtomicBool::new(false),
            split_at: 0,
            split_due: std::sync::atomic::AtomicBool::new(false),
            shares_arena: false,
            reclaimer,
            _owns: PhantomData,
        }
    }

    /// One of the shards that replace `self` in a split (`RawMap::split`): its read tier is
    /// `read` (built by the split from `self`'s entries, which it owns now), it has no dirty
    /// tier, and it shares `self`'s graveyard, entry arena and counters, and its generation.
    pub(crate) fn split_part(&self, read: Box<Tier<K, V>>, reclaimer: Reclaimer) -> Self {
        Shard {
            read: AtomicPtr::new(Box::into_raw(read)),
            dirty_view: AtomicPtr::new(ptr::null_mut()),
            misses: AtomicUsize::new(0),
            dirty: OwnLine(Mutex::new(LockedState::new(TierSlot::new(None)))),
            shared: self.shared.clone(),
            grave: self.grave.clone(),
            // Relaxed: the split holds `self`'s lock, under which a `clear` changes it.
            generation: AtomicU64::new(self.generation.load(Relaxed)),
            sharded: true,
            observe_due: std::sync::atomic::AtomicBool::new(false),
            // Relaxed: as for `cells` (an entry of `self` may hold a cell).
            cells: std::sync::atomic::AtomicBool::new(self.cells.load(Relaxed)),
            split_at: 0,
            split_due: std::sync::atomic::AtomicBool::new(false),
            shares_arena: true,
            reclaimer,
            _owns: PhantomData,
        }
    }
    /// Loom builds: makes this shard use `other`'s epoch collector (see `Reclaimer::share`).
    /// Only for a shard that never pinned yet.
    #[cfg(tiermap_loom)]
    pub(crate) fn share_collector<K2, V2>(&mut self, other: &Shard<K2, V2>) {
        self.reclaimer = other.reclaimer.share();
    }

    /// The current read tier.
    ///
    /// `Acquire` pairs with the `Release`/`AcqRel` publication in `promote` and `clear`, so the
    /// tier's slots, written before publication, are visible.
    #[inline]
    pub(crate) fn read<'g>(&self, _guard: &'g Guard) -> &'g Tier<K, V> {
        // SAFETY: I1: the pointer is always a live tier; a tier replaced after this load is
        // retired through the epoch, and `_guard` was pinned before the load, so it stays alive
        // for `'g`.
        unsafe { &*self.read.load(Acquire) }.witness()
    }
    /// Whether an iterator over a tier of generation `id` is still current.
    #[inline]
    pub(crate) fn generation_is(&self, id: u64) -> bool {
        // Acquire pairs with the release store in `clear`: an iterator that sees the new id
        // stops; one that sees the old id may show values from before the clear, which is the
        // iteration contract for concurrent changes.
        self.generation.load(Acquire) == id
    }
    /// What the tiers, entries and live values take (`MapStats::held_bytes`).
    fn held_bytes(&self, st: &LockedState<K, V>, read: &Tier<K, V>) -> usize {
        let tier_bytes = |t: &Tier<K, V>| t.bytes();
        let (entries, live) = (read.gen.entries(), read.gen.live());
        tier_bytes(read)
            + st.tier.as_deref().map_or(0, tier_bytes)
            + live * entry_bytes::<K, V>(true)
            + entries.saturating_sub(live) * entry_bytes::<K, V>(false)
    }

    /// Where the map's memory is. Takes the dirty lock briefly.
    pub(crate) fn stats(&self, guard: &Guard) -> MapStats {
        let st = self.dirty();
        let read = self.read(guard);
        let dirty = st.tier.as_deref();
        let live = read.gen.live();
        let entries = read.gen.entries();
        let held_bytes = self.held_bytes(&st, read);
        MapStats {
            len: live,
            deleted: entries.saturating_sub(live),
            read_capacity: read.table.capacity(),
            dirty_capacity: dirty.map_or(0, |d| d.table.capacity()),
            migrating: dirty.is_some() && st.cursor < read.table.capacity(),
            misses: self.misses.load(Relaxed),
            held_bytes,
            spare_bytes: self.grave.arena.spare_bytes(),
            retired_bytes: self.shared.retired_bytes.load(Relaxed),
            promotions: self.shared.promotions.load(Relaxed),
            migrations: self.shared.migrations.load(Relaxed),
            compactions: self.shared.compactions.load(Relaxed),
            clones: self.shared.clones.load(Relaxed),
        }
    }
    /// Locks the dirty state (for statistics).
    pub(crate) fn dirty(&self) -> crate::facade::MutexGuard<'_, LockedState<K, V>> {
        lock(&self.dirty)
    }
    /// Moves every present key and value out of the map.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<(K, V)>) {
        let (read, dirty, upto) = self.take_tiers();
        for (t, upto) in [(read, upto), (dirty, 0)] {
            if t.is_null() {
                continue;
            }
            // SAFETY: `&mut self`: no reader; the tiers own what I3 says.
            unsafe {
                let tier = Box::from_raw(t);
                tier.table.for_each_raw(|i, e, owned, _| {
                    if owned || i >= upto {
                        if let (key, Some(value)) = Entry::into_parts(e, &self.grave.arena) {
                            out.push((key, value));
                        }
                    }
                });
            }
        }
        // The blocks go back if nothing retired still waits for its grace period.
        self.grave.arena.release_unused();
    }
    /// Empties a map the caller owns exclusively, freeing everything now (no epoch deferral:
    /// `&mut self` means no guard can reach the tiers), and gives it an empty dirty tier of
    /// `slots` slots.
    pub(crate) fn reset_exclusive(&mut self, slots: usize) {
        // SAFETY: `&mut self`: no guard can reach anything the map retired, and no operation
        // of the map runs.
        unsafe { self.grave.free_all_exclusive() };
        let (read, dirty, upto) = self.take_tiers();
        // A pooled map is reset after every use: it keeps a table of the size asked for, with
        // its slots emptied in place (work for the groups that held entries, no allocation),
        // and frees the other.
        let want = Table::<K, V>::capacity_for(slots);
        // SAFETY: `take_tiers` returned non-null tiers that only this map held.
        let fits = |t: *mut Tier<K, V>| !t.is_null() && unsafe { (*t).table.capacity() } == want;
        // SAFETY (all three branches): as in `Drop`: exclusive access, and I3 says what each
        // tier owns; each tier is handed over once.
        let arena = &self.grave.arena;
        let kept = unsafe {
            if want > 0 && fits(dirty) {
                free_tier(read, upto, arena);
                Some(empty_tier(dirty, 0, arena))
            } else if want > 0 && fits(read) {
                if !dirty.is_null() {
                    free_tier(dirty, 0, arena);
                }
                Some(empty_tier(read, upto, arena))
            } else {
                free_tiers(read, upto, dirty, arena);
                None
            }
        };
        // The map is empty: its entry blocks go back (a pooled map allocates a small first
        // block again when it is next used).
        arena.release_unused();
        let id = self.generation.load(Relaxed) + 1;
        let gen = Gen::new(id);
        let fresh = Box::into_raw(Tier::boxed(0, gen.clone()));
        let empty = self.read.swap(fresh, AcqRel);
        // SAFETY: the empty tier `take_tiers` installed; nobody else can see it.
        drop(unsafe { Box::from_raw(empty) });
        self.generation.store(id, Release);
        let mut st = lock(&self.dirty);
        let next = match kept {
            Some(mut tier) => {
                tier.gen = gen;
                for w in tier.fresh.iter() {
                    // Relaxed: the tier is ours alone; `set_dirty` publishes it with release.
                    w.store(0, Relaxed);
                }
                // Relaxed: the tier is ours alone; `set_dirty` publishes it with release.
                tier.amended.store(false, Relaxed);
                Some(tier)
            }
            None => (slots > 0).then(|| Tier::boxed(slots, gen)),
        };
        self.set_dirty(&mut st, next);
        st.cursor = 0;
        self.misses.store(0, Relaxed);
        st.expunged.clear();
        st.compacting = false;
        st.cloning = false;
    }
    /// Unlinks both tiers, leaving an empty read tier and no dirty tier.
    fn take_tiers(&mut self) -> (*mut Tier<K, V>, *mut Tier<K, V>, usize) {
        // Of the current generation: the map stays usable (`drain_into`), and a lookup in it
        // must not take it for a tier a `clear` is about to replace.
        let id = self.generation.load(Relaxed);
        let empty = Box::into_raw(Tier::boxed(0, Gen::new(id)));
        let read = self.read.swap(empty, AcqRel);
        let mut st = lock(&self.dirty);
        let dirty = self.set_dirty(&mut st, None);
        let upto = if dirty.is_null() { 0 } else { st.cursor };
        st.cursor = 0;
        // The map is being emptied or dropped: its reserved slots must not keep a block.
        self.grave.arena.unreserve(&mut st.slots);
        (read, dirty, upto)
    }
    /// Replaces the dirty tier (under the lock) and publishes it for lock-free lookups,
    /// returning the old one. Callers that also swap `read` do that first (see `lookup`).
    fn set_dirty(
        &self,
        st: &mut LockedState<K, V>,
        tier: Option<Box<Tier<K, V>>>,
    ) -> *mut Tier<K, V> {
        let tier = TierSlot::new(tier);
        let view = tier.ptr();
        let old = std::mem::replace(&mut st.tier, tier).take();
        // Release: a lookup that loads the pointer sees the tier's slots written so far (and
        // each later slot is published by its own release store in `Table::insert_unique`).
        #[cfg(not(any(
            tiermap_mutation = "relaxed_dirty_view",
            tiermap_mutation = "relaxed_dirty_publish"
        )))]
        self.dirty_view.store(view, Release);
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(any(
            tiermap_mutation = "relaxed_dirty_view",
            tiermap_mutation = "relaxed_dirty_publish"
        ))]
        self.dirty_view.store(view, Relaxed);
        old
    }
}

impl<K: Send + 'static, V: Send + 'static> Shard<K, V> {
    /// The read tier again, under the lock.
    #[inline]
    fn read_locked<'g>(&self, stale: &'g Tier<K, V>, guard: &'g Guard) -> &'g Tier<K, V> {
        #[cfg(tiermap_mutation = "no_recheck")]
        {
            let _ = guard;
            stale
        }
        #[cfg(not(tiermap_mutation = "no_recheck"))]
        {
            let _ = stale;
            self.read(guard)
        }
    }

    /// Finds `key` under the lock: in the read tier `read` (re-loaded under the lock), then in
    /// the dirty tier if its fresh-key filter has the key's bit (I7). `missed` is the read tier in which the caller's lock-free lookup found
    /// no usable entry for the key (loaded before that lookup), if any: if `read` is still that
    /// tier, its probe is skipped. A published read table gains no entries, and an entry that was
    /// expunged stays so, so the probe under the lock would miss too. (A read pointer never
    /// comes back to an older tier, and while the caller is pinned, no tier it loaded is freed
    /// and its address reused: equal pointers mean the same tier, the one the lookup probed.)
    fn locate<Q>(
        &self,
        st: &LockedState<K, V>,
        read: &Tier<K, V>,
        missed: Option<&Tier<K, V>>,
        hash: u64,
        key: &Q,
    ) -> Place<K, V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        #[cfg(not(tiermap_mutation = "skip_read_probe_unchecked"))]
        let probe_read = !missed.is_some_and(|m| ptr::eq(m, read));
        // Seeded bug for the loom models (never built otherwise): skip the probe even when a
        // promotion replaced the tier the lookup missed in.
        #[cfg(tiermap_mutation = "skip_read_probe_unchecked")]
        let probe_read = missed.is_none();
        if let Some((e, _)) = probe_read
            .then(|| read.table.find(hash, |k| k.borrow() == key))
            .flatten()
        {
            #[cfg(not(tiermap_mutation = "skip_expunged_check"))]
            let usable = !e.is_expunged();
            #[cfg(tiermap_mutation = "skip_expunged_check")]
            let usable = true;
            if usable {
                return Place::Read(e);
            }
        }
        if let Some(d) = st.tier.as_deref() {
            // The read tier holds no usable entry for the key, so the dirty tier holds it only
            // as a fresh key (I7), whose filter bit `insert_fresh` set under this lock: a clear
            // bit spares the probe of the dirty table (about 28 instructions per new key; no
            // cache miss, as the probed line is the one `insert_fresh` writes next).
            if d.may_hold_fresh(hash) {
                if let Some((e, _)) = d.table.find(hash, |k| k.borrow() == key) {
                    return Place::Dirty(e);
                }
            }
        }
        Place::Absent
    }

    /// Finds the entry for `key` without the lock: in the read tier, then, if the dirty tier
    /// holds keys that the read tier lacks (`amended`), in the dirty tier. A dirty table only
    /// ever gains slots while it is the dirty tier (removals leave deleted entries behind), so a
    /// lock-free probe of it sees each slot empty or complete.
    ///
    /// Returns the entry with the generation it belongs to: a removal through it must update
    /// that generation's counters, which are not the current ones if a `clear` (perhaps run by
    /// user code called in between) intervened. With `count_miss`, a probe of the dirty tier
    /// counts a miss (Go's promotion clock) and, once misses reach the dirty tier's size, helps
    /// the migration and promotion along if the lock is free.
    #[inline]
    pub(crate) fn lookup<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
        count_miss: bool,
    ) -> Option<(&'g Entry<K, V>, &'g Gen)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let read = self.read(guard);
        if self.behind_clear(read) {
            return if self.clear_reached(guard) {
                self.lookup(hash, key, guard, count_miss)
            } else {
                None
            };
        }
        if let Some((e, _)) = read.table.find(hash, |k| k.borrow() == key) {
            if !e.is_expunged() {
                return Some((e, &*read.gen));
            }
        }
        // Acquire pairs with the release store that set `amended` after the fresh key's slot
        // was written.
        if !read.amended.load(Acquire) {
            return None;
        }
        if count_miss && self.surely_not_fresh(read, hash, guard) {
            return None;
        }
        self.lookup_amended(read, hash, key, guard, count_miss)
    }

    /// `lookup`'s lock-free probe of the read tier `read` alone: a usable (not expunged) entry
    /// for `key`, or `None`, also when `read` is behind a `clear` (I6): the caller then takes
    /// the lock, under which no `clear` is halfway through this shard.
    #[inline]
    fn lookup_read<'g, Q>(
        &self,
        read: &'g Tier<K, V>,
        hash: u64,
        key: &Q,
    ) -> Option<(&'g Entry<K, V>, &'g Gen)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        if self.behind_clear(read) {
            return None;
        }
        let (e, _) = read.table.find(hash, |k| k.borrow() == key)?;
        (!e.is_expunged()).then_some((e, &*read.gen))
    }

    /// Whether `read`, just loaded from this shard, belongs to a generation that a `clear` has
    /// ended (I6). Then that `clear` either replaced this shard's tiers after the load, or has
    /// not reached this shard yet; the lookup must not answer from `read` in either case (a
    /// thread that saw another shard cleared would then see this one as before the clear).
    ///
    /// The generation's load is ordered after the load of `read` (acquire), and a `clear`
    /// bumps every shard's generation before it replaces any shard's tiers (release swaps): a
    /// lookup that saw any shard's new tier, before or in this lookup, sees the bump here.
    #[inline]
    fn behind_clear(&self, read: &Tier<K, V>) -> bool {
        // Acquire: see above (and `begin_clear`).
        #[cfg(not(tiermap_mutation = "no_clear_check"))]
        return self.sharded && read.id != self.generation.load(Acquire);
        // Seeded bug for the loom models (never built otherwise): trust any read tier.
        #[cfg(tiermap_mutation = "no_clear_check")]
        {
            let _ = read;
            false
        }
    }

    /// After `behind_clear`: whether the shard's read tier is now of the generation `clear`
    /// began (or a later one), for the lookup to start over on it. `false` if the shard still
    /// shows an older tier: the `clear` that began the generation holds this shard's lock from
    /// before its bump until after it replaces the tiers, so no write can have reached the new
    /// generation here, and the shard holds nothing until it is done. The lookup then finds
    /// nothing, linearized at this load (after the `clear`'s bump, before its replacement of
    /// this shard's tiers).
    #[cold]
    #[inline(never)]
    fn clear_reached(&self, guard: &Guard) -> bool {
        // Acquire: as in `behind_clear`; loaded before `read` so that a tier of this
        // generation or later is the clear's own or newer.
        let gen = self.generation.load(Acquire);
        self.read(guard).id >= gen
    }

    /// Whether the dirty tier that goes with `read` (amended) surely holds no fresh key of
    /// hash `hash`, by its filter (`Tier::fresh`); counts the absent-key miss if so. `false`
    /// when unsure (the filter's bit is set, or `read` was just replaced): the caller then
    /// probes with `lookup_amended`. Inline, so that most absent-key lookups end here.
    #[inline]
    fn surely_not_fresh(&self, read: &Tier<K, V>, hash: u64, guard: &Guard) -> bool {
        // Acquire: as in `lookup_amended`, whose argument this is.
        let d = self.dirty_view.load(Acquire);
        #[cfg(not(tiermap_mutation = "filter_no_recheck"))]
        if d.is_null() || !ptr::eq(self.read.load(Acquire), read) {
            return false;
        }
        // Deliberately wrong for the loom models (consults the filter of a dirty tier that
        // may belong to a newer read tier, which this lookup did not probe); never built
        // otherwise.
        #[cfg(tiermap_mutation = "filter_no_recheck")]
        if d.is_null() {
            return false;
        }
        // SAFETY: as in `lookup_amended`: `d` goes with `read`, under `guard`.
        let dirty = unsafe { &*d }.witness();
        if dirty.may_hold_fresh(hash) {
            return false;
        }
        if sample_absent_miss(hash) {
            self.count_miss(dirty, 1, guard);
        }
        true
    }

    /// `weight` more misses on the promotion clock (see `lookup_amended`).
    #[inline(never)]
    fn count_miss(&self, dirty: &Tier<K, V>, weight: usize, guard: &Guard) {
        // Relaxed: a heuristic clock; promotion re-checks everything under the lock.
        let misses = self.misses.fetch_add(weight, Relaxed) + weight;
        if misses >= dirty.table.len() {
            self.maintain_if_free(guard);
        }
    }

    /// The rest of `lookup` once the read tier `read` missed (or held the key expunged) and is
    /// amended: the lock-free probe of the dirty tier. Out of line, so that the read-tier path
    /// that every hit takes is short enough to inline.
    #[inline(never)]
    fn lookup_amended<'g, Q>(
        &self,
        read: &'g Tier<K, V>,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
        count_miss: bool,
    ) -> Option<(&'g Entry<K, V>, &'g Gen)>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // Acquire pairs with the release stores in `set_dirty`. `promote` and `clear` swap
        // `read` before they change `dirty_view`, so if this load sees their change, the
        // re-load of `read` below sees the new read tier and `lookup` starts over; if not,
        // `d` is the dirty tier that goes with `read` (alive: tiers are retired through the
        // epoch, and a promoted one lives on as the read tier).
        let d = self.dirty_view.load(Acquire);
        if !ptr::eq(self.read.load(Acquire), read) {
            // Start over on the new read tier.
            return self.lookup(hash, key, guard, count_miss);
        }
        if d.is_null() {
            debug_assert!(false, "amended read tier without a dirty tier");
            return None;
        }
        // SAFETY: see above; `guard` was pinned before the load.
        let dirty = unsafe { &*d }.witness();
        // The read tier missed, so only a fresh key of the dirty tier can match.
        let found = if dirty.may_hold_fresh(hash) {
            dirty.table.find(hash, |k| k.borrow() == key)
        } else {
            None
        };
        // Go's promotion clock counts every lookup that missed the read tier. Here a miss
        // that found the key in the dirty tier counts as one in expectation (promoting makes
        // that key's later reads one probe, as in Go), sampled one in `FOUND_MISS_SAMPLE` by
        // a per-thread counter with that weight, so that reading threads rarely write the
        // shared clock; a miss for a key that no tier holds counts one
        // time in `ABSENT_MISS_SAMPLE`, by a per-thread counter (not by hash bits: the mixed
        // hash's low bits are zero for a whole family of keys under an identity or Fx-style
        // hasher, which then never, or always, count). Such a lookup costs one lock-free probe more while
        // `amended` is set, and under a steady trickle of new keys a promotion cannot save
        // even that (the next new key sets `amended` again) while it costs a migration of
        // the whole read tier: counting every absent-key miss made bustle's ReadHeavy
        // promote over and over (DESIGN.md, "Promotion, misses and compaction", has the
        // figures). Sampled, a read-only phase of absent-key lookups still ends in a
        // promotion, which frees the second table.
        if count_miss {
            let weight = if found.is_some() {
                sample_found_miss()
            } else {
                usize::from(sample_absent_miss(hash))
            };
            if weight > 0 {
                self.count_miss(dirty, weight, guard);
            }
        }
        found.map(|(e, _)| (e, &*read.gen))
    }

    #[inline]
    pub(crate) fn get<'g, Q>(&self, hash: u64, key: &Q, guard: &'g Guard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.get_read(hash, key, guard) {
            Ok(v) => v,
            Err(slow) => self.get_slow(slow, hash, key, guard),
        }
    }

    /// `get`'s answer from the read tier alone, when it has one: a lookup that ends here did
    /// no slow work (no lock, no maintenance, no miss counted), so it cannot have made an
    /// observation due, and `RawMap::get` skips that check. `Err(Some(read))`: the read tier
    /// missed and is amended; `Err(None)`: a `clear` was running (`behind_clear`).
    #[inline]
    pub(crate) fn get_read<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
    ) -> Result<Option<&'g V>, Option<&'g Tier<K, V>>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        // `lookup`'s read-tier path with the entry's state loaded once: a hit is this much.
        let read = self.read(guard);
        if self.behind_clear(read) {
            return Err(None);
        }
        if let Some((e, _)) = read.table.find(hash, |k| k.borrow() == key) {
            match e.load() {
                // SAFETY: a live value pointer loaded under `guard` stays allocated until the
                // guard is dropped (values are retired through the epoch).
                State::Live(p) => return Ok(Some(unsafe { &*p })),
                State::Deleted => return Ok(None),
                // The key may have been stored again as a fresh entry of the dirty tier.
                State::Expunged => {}
            }
        }
        // Acquire: as in `lookup`.
        if !read.amended.load(Acquire) {
            return Ok(None);
        }
        Err(Some(read))
    }

    /// The rest of `get` after `get_read` (see there). Always inlined, as `get_read`: out of
    /// line, its call cost bustle's ReadHeavy 15 instructions per operation (most of its reads
    /// are of absent keys, which end in the inline `surely_not_fresh`).
    #[inline(always)]
    pub(crate) fn get_slow<'g, Q>(
        &self,
        slow: Option<&'g Tier<K, V>>,
        hash: u64,
        key: &Q,
        guard: &'g Guard,
    ) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let Some(read) = slow else {
            // Behind a running `clear`: once it has reached this shard, start over.
            return if self.clear_reached(guard) {
                self.get(hash, key, guard)
            } else {
                None
            };
        };
        if self.surely_not_fresh(read, hash, guard) {
            return None;
        }
        match self.lookup_amended(read, hash, key, guard, true)?.0.load() {
            // SAFETY: as in `get_read`.
            State::Live(p) => Some(unsafe { &*p }),
            State::Deleted | State::Expunged => None,
        }
    }

    /// Inserts or replaces. Returns the previous value.
    ///
    /// The value is moved to its own allocation only if it replaces or revives the value of an
    /// existing entry; a new key gets an entry that holds its first value (inline when `V` has
    /// no drop glue).
    pub(crate) fn insert<'g>(&self, hash: u64, key: K, value: V, guard: &'g Guard) -> Option<&'g V>
    where
        K: Eq,
    {
        let mut value = Some(value);
        let mut new: Option<Pending<V>> = None;
        self.prefetch_dirty(hash, guard);
        let read = self.read(guard);
        // Only the read tier is probed without the lock (Go's `Store` does the same): a key that
        // only the dirty tier holds is found by `locate` under the lock, which an insert of a
        // new key takes anyway, so its lock-free probe of the dirty table (one more cache miss
        // per new key) would be wasted.
        let found = self.lookup_read(read, hash, &key);
        let missed = found.is_none().then_some(read);
        if let Some((e, gen)) = found {
            if let Ok(old) = e.try_store(Pending::boxed(&mut new, &mut value, &self.cells)) {
                let _ = new.take().map(Pending::publish);
                return self.after_store(e, gen, old, guard);
            }
        }
        self.with_lock(hash, guard, |this, st, guard| {
            let read = this.read_locked(read, guard);
            let place = this.locate(st, read, missed, hash, &key);
            // SAFETY: found while `guard` is pinned.
            match unsafe { place.entry(guard) } {
                Some(e) => {
                    // Not expunged: a read entry was checked under the lock (only migration,
                    // under the lock, expunges) and a dirty entry never is.
                    let old = e
                        .try_store(Pending::boxed(&mut new, &mut value, &self.cells))
                        .expect("entry under lock is not expunged");
                    let _ = new.take().map(Pending::publish);
                    this.after_store(e, &read.gen, old, guard)
                }
                None => {
                    let v = match new.take() {
                        // SAFETY: never published; we own it.
                        Some(p) => unsafe { take_value(p.publish()) },
                        None => value.take().expect("value moved once"),
                    };
                    this.insert_fresh(st, hash, key, v, guard);
                    None
                }
            }
        })
    }

    /// Hints the CPU to fetch the lines of the dirty tier that adding a key of hash `hash`
    /// touches (the filter word, the home slot and its group counter), at the start of an
    /// operation that may add one: the probe of the read tier, the lock and `insert_fresh`
    /// then wait for one cache miss at a time less (measured: BENCHMARKS.md, "Engine v2, the
    /// sixth stop"). A key that turns out present wastes the hint.
    ///
    /// Not in loom builds: the hint's load of `dirty_view` is an atomic access the models
    /// would interleave, for reads that decide nothing.
    #[inline(always)]
    pub(super) fn prefetch_dirty(&self, hash: u64, guard: &Guard) {
        #[cfg(not(tiermap_loom))]
        {
            let _ = guard;
            // Acquire pairs with the release stores in `set_dirty`: the tier's header (its
            // table's slot pointer and capacity, its filter), written before the tier was
            // published, is visible.
            let d = self.dirty_view.load(Acquire);
            if !d.is_null() {
                // SAFETY: a tier loaded from `dirty_view` under `guard` (pinned by the caller
                // before this load) stays allocated until the guard is dropped: tiers are
                // retired through the epoch (as in `lookup_amended`). Only its header is read.
                let dirty = unsafe { &*d };
                dirty.prefetch_fresh(hash);
                dirty.table.prefetch_home(hash);
            }
        }
        #[cfg(tiermap_loom)]
        let _ = (hash, guard);
    }

    /// Retires the value an insert replaced, or counts a revived key in `gen` (the generation
    /// of the entry that was written).
    fn after_store<'g>(
        &self,
        e: &Entry<K, V>,
        gen: &Gen,
        old: Option<*mut V>,
        guard: &'g Guard,
    ) -> Option<&'g V> {
        match old {
            Some(old) => {
                // SAFETY: we unlinked `old` from `e` with our CAS; it is retired once, here.
                unsafe { self.retire_value(e, old, guard) };
                // SAFETY: retired values outlive the guard that was pinned when they were
                // unlinked.
                Some(unsafe { &*old })
            }
            None => {
                // Relaxed: a counter; see `Gen::live`.
                gen.live.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Adds a key that no tier holds (or whose read entry is expunged) to the dirty tier.
    /// Returns the new entry's value pointer.
    fn insert_fresh(
        &self,
        st: &mut LockedState<K, V>,
        hash: u64,
        key: K,
        value: V,
        guard: &Guard,
    ) -> *const V {
        let mut read = self.read(guard);
        match st.tier.as_deref() {
            None => self.start_migration(st, read, false),
            Some(d) if d.table.len() >= d.table.max_len() => {
                if st.cursor < read.table.capacity() {
                    // Unreachable by I5; stay correct anyway by finishing the migration now.
                    debug_assert!(false, "dirty tier filled before its migration ended");
                    self.migrate(st, usize::MAX / 32, guard);
                }
                self.promote(st, guard);
                read = self.read(guard);
                self.start_migration(st, read, false);
            }
            Some(_) => {}
        }
        let d = st.tier.as_deref().expect("dirty tier exists");
        let e = Entry::create(hash, key, value, &self.grave.arena, &mut st.slots);
        // SAFETY: just created; not yet shared.
        let v = match unsafe { &*e }.load() {
            State::Live(v) => v,
            State::Deleted | State::Expunged => unreachable!("a new entry is live"),
        };
        d.note_fresh(hash);
        d.table.insert_unique(e, hash);
        // Relaxed: counters; see `Gen::live`. `entries` changes only under the dirty lock (here
        // and in `promote`), so a load and a store suffice; `live` also falls lock-free.
        d.gen.live.fetch_add(1, Relaxed);
        d.gen
            .entries
            .store(d.gen.entries.load(Relaxed) + 1, Relaxed);
        // Release pairs with the acquire in `lookup`: a reader that sees `amended` finds the
        // key's slot in the dirty table (published by `insert_unique` before this store).
        // Stored only when not yet set: `amended` shares a cache line with what every lookup
        // of the read tier loads, and a store per new key would take that line away from every
        // reading core. Skipping it changes nothing a reader can see: `amended` only goes from
        // false to true while this tier is the read tier, and a reader that loads `true` from an
        // earlier store still finds this key's slot by the acquire load of the slot itself
        // whenever this insert happens-before its lookup.
        #[cfg(not(tiermap_mutation = "relaxed_dirty_publish"))]
        if !read.amended.load(Relaxed) {
            read.amended.store(true, Release);
        }
        // Deliberately too weak for the loom models (with `dirty_view` relaxed too); never
        // built otherwise.
        #[cfg(tiermap_mutation = "relaxed_dirty_publish")]
        read.amended.store(true, Relaxed);
        v
    }

    /// After a lock-free delete: help or start a compaction if deleted entries pile up.
    fn after_delete(&self, read: &Tier<K, V>, hash: u64, guard: &Guard) {
        if self.needs_compaction(read) {
            self.with_lock(hash, guard, |_, _, _| ());
        }
    }

    /// Removes `key`, returning its value. Lock-free: a dirty-tier entry is deleted in place
    /// (Go unlinks it from the dirty map; here the next migration expunges it, so that dirty
    /// tables stay insert-only for lock-free readers).
    pub(crate) fn remove<'g, Q>(&self, hash: u64, key: &Q, guard: &'g Guard) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (e, gen) = self.lookup(hash, key, guard, true)?;
        let old = e.try_delete()?;
        Some(self.after_remove(e, gen, old, hash, guard))
    }

    /// Retires a value the caller unlinked with its CAS and counts the key as gone in `gen`,
    /// the generation of the entry it was unlinked from.
    fn unlinked<'g>(&self, e: &Entry<K, V>, gen: &Gen, old: *mut V, guard: &'g Guard) -> &'g V {
        // SAFETY: the caller unlinked `old` from `e` with its CAS; it is retired once, here.
        unsafe { self.retire_value(e, old, guard) };
        // Relaxed: a counter; see `Gen::live`.
        gen.live.fetch_sub(1, Relaxed);
        // SAFETY: retired values outlive the guard pinned when they were unlinked.
        unsafe { &*old }
    }

    fn after_remove<'g>(
        &self,
        e: &Entry<K, V>,
        gen: &Gen,
        old: *mut V,
        hash: u64,
        guard: &'g Guard,
    ) -> &'g V {
        let v = self.unlinked(e, gen, old, guard);
        self.after_delete(self.read(guard), hash, guard);
        v
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
        // The value, computed at most once; moved to a heap cell (`boxed`) only when an entry
        // is revived with it (a fresh entry takes it by value: inline, for types without drop
        // glue, with no allocation but the entry's).
        let mut f = Some(f);
        let mut value: Option<V> = None;
        let mut boxed: Option<Pending<V>> = None;
        let mut cell = |value: &mut Option<V>, boxed: &mut Option<Pending<V>>| -> *mut V {
            if value.is_none() && boxed.is_none() {
                *value = Some((f.take().expect("value computed once"))());
            }
            Pending::boxed(boxed, value, &self.cells)
        };
        self.prefetch_dirty(hash, guard);
        let read = self.read(guard);
        let found = self.lookup(hash, &key, guard, true);
        let missed = found.is_none().then_some(read);
        if let Some((e, gen)) = found {
            loop {
                match e.load() {
                    // SAFETY: live pointers loaded under the guard outlive it.
                    State::Live(p) => return GetOrInsert::Loaded(unsafe { &*p }),
                    State::Expunged => break,
                    State::Deleted => {
                        let v = cell(&mut value, &mut boxed);
                        match e.try_revive(v) {
                            Ok(()) => {
                                let _ = boxed.take().map(Pending::publish);
                                gen.live.fetch_add(1, Relaxed);
                                // SAFETY: just published under the guard.
                                return GetOrInsert::Inserted(unsafe { &*v });
                            }
                            // SAFETY: as above.
                            Err(State::Live(p)) => return GetOrInsert::Loaded(unsafe { &*p }),
                            Err(State::Expunged) => break,
                            Err(State::Deleted) => continue,
                        }
                    }
                }
            }
        }
        // The lock-free lookup saw the key absent (or expunged, which is absent too): build the
        // value now, outside the lock, so that the locked pass below usually runs once, and
        // the closure never runs under the lock (where it could call into the map, or panic).
        if value.is_none() && boxed.is_none() {
            value = Some((f.take().expect("value computed once"))());
        }
        self.with_lock(hash, guard, |this, st, guard| {
            let read = this.read_locked(read, guard);
            let place = this.locate(st, read, missed, hash, &key);
            if let Place::Dirty(..) = place {
                this.misses.fetch_add(1, Relaxed);
            }
            // SAFETY: found while `guard` is pinned.
            match unsafe { place.entry(guard) } {
                Some(e) => loop {
                    match e.load() {
                        // SAFETY: as above; the value is dropped (a cell freed) unpublished.
                        State::Live(p) => break GetOrInsert::Loaded(unsafe { &*p }),
                        State::Deleted => {
                            let v = Pending::boxed(&mut boxed, &mut value, &self.cells);
                            if e.try_revive(v).is_ok() {
                                let _ = boxed.take().map(Pending::publish);
                                read.gen.live.fetch_add(1, Relaxed);
                                // SAFETY: as above.
                                break GetOrInsert::Inserted(unsafe { &*v });
                            }
                        }
                        State::Expunged => unreachable!("entry under lock is not expunged"),
                    }
                },
                None => {
                    let v = match (value.take(), boxed.take()) {
                        (Some(v), _) => v,
                        // SAFETY: a cell never published (a revive failed); we own it.
                        (None, Some(b)) => unsafe { take_value(b.publish()) },
                        (None, None) => unreachable!("value computed before the locked pass"),
                    };
                    let v = this.insert_fresh(st, hash, key, v, guard);
                    // SAFETY: the value of the entry just published; it outlives the guard
                    // (values and entries are retired through the epoch).
                    GetOrInsert::Inserted(unsafe { &*v })
                }
            }
        })
    }

    /// Replaces the value if `pred` accepts the current one (Go's `CompareAndSwap`).
    pub(crate) fn replace_if<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        mut pred: impl FnMut(&V) -> bool,
        new: V,
        guard: &'g Guard,
    ) -> Replace<'g, V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let Some((e, _)) = self.lookup(hash, key, guard, true) else {
            return Replace::Absent(new);
        };
        // The value is moved to its own allocation only once the comparison succeeded, so a
        // failing compare-exchange allocates nothing.
        let mut value = Some(new);
        let mut boxed: Option<Pending<V>> = None;
        let give_back = |value: Option<V>, boxed: Option<Pending<V>>| match boxed {
            // SAFETY: never published; we own it.
            Some(b) => unsafe { take_value(b.publish()) },
            None => value.expect("value kept until published"),
        };
        loop {
            match e.load() {
                State::Live(p) => {
                    // SAFETY: live pointers loaded under the guard outlive it.
                    let cur = unsafe { &*p };
                    if !pred(cur) {
                        return Replace::Mismatch(cur, give_back(value, boxed));
                    }
                    let newp = Pending::boxed(&mut boxed, &mut value, &self.cells);
                    if e.replace_exact(p, newp).is_ok() {
                        let _ = boxed.take().map(Pending::publish);
                        // SAFETY: we unlinked `p` with our CAS; retired once, here.
                        unsafe { self.retire_value(e, p, guard) };
                        return Replace::Done(cur);
                    }
                }
                State::Deleted | State::Expunged => {
                    return Replace::Absent(give_back(value, boxed))
                }
            }
        }
    }

    /// Removes the value if `pred` accepts it (Go's `CompareAndDelete`).
    pub(crate) fn remove_if<'g, Q>(
        &self,
        hash: u64,
        key: &Q,
        mut pred: impl FnMut(&V) -> bool,
        guard: &'g Guard,
    ) -> Option<&'g V>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let (e, gen) = self.lookup(hash, key, guard, true)?;
        loop {
            match e.load() {
                State::Live(p) => {
                    // SAFETY: live pointers loaded under the guard outlive it.
                    if !pred(unsafe { &*p }) {
                        return None;
                    }
                    if e.replace_exact(p, ptr::null_mut()).is_ok() {
                        return Some(self.after_remove(e, gen, p, hash, guard));
                    }
                }
                State::Deleted | State::Expunged => return None,
            }
        }
    }

    /// Removes the value of `e` if it is still `p` (used by `retain`).
    pub(crate) fn remove_exact(
        &self,
        e: &Entry<K, V>,
        p: *mut V,
        tier: &Tier<K, V>,
        guard: &Guard,
    ) -> bool {
        let removed = e.replace_exact(p, ptr::null_mut()).is_ok();
        if removed {
            self.unlinked(e, &tier.gen, p, guard);
        }
        removed
    }

    /// Retires a value that the caller unlinked from `e` with its CAS (an inline value needs
    /// nothing: it has no drop glue and lives as long as the entry).
    ///
    /// # Safety
    /// The caller unlinked `p` from `e` with its CAS while `guard` was pinned, and retires it
    /// once.
    #[inline]
    unsafe fn retire_value(&self, e: &Entry<K, V>, p: *mut V, guard: &Guard) {
        if e.owns_cell(p) {
            // SAFETY: per the caller; `p` came from `alloc_value` (not inline).
            unsafe { self.grave.retire_value(p, guard) };
        }
    }
}

impl<K, V> Drop for Shard<K, V> {
    fn drop(&mut self) {
        if lock(&self.dirty).frozen {
            // A split shard owns nothing: its entries are its successors', its read tier was
            // handed to the (shared) graveyard at the split, and it never had a dirty tier
            // since. The successors are dropped first (`RawMap`'s drop) and free the rest.
            return;
        }
        let held = {
            let guard = self.reclaimer.pin();
            self.stats(&guard).held_bytes
        };
        // Everything retired, past its grace period or not, is freed now: `&mut self` means no
        // guard can reach it (every reference handed out borrows the map). Deferred closures
        // that run later find the graveyard closed.
        // SAFETY: as said; no operation of the map runs.
        let retired = unsafe { self.grave.close() };
        let (read, dirty, upto) = self.take_tiers();
        let arena = &self.grave.arena;
        // Shards that share an arena (made by a split) walk their entries: giving the blocks
        // back whole would free the entries of the shards not dropped yet.
        let plain =
            !entry::entries_need_drop::<K, V>() && !*self.cells.get_mut() && !self.shares_arena;
        if plain && arena.can_release_all() {
            // The entries own nothing but their slots (no drop glue, every value in its
            // entry's own slot): the tables go, then the arena's blocks whole, without a walk
            // over the slots (dropping 1M `u64 -> u64` took 52-76 ms with the walk).
            // SAFETY: `&mut self`: no guard can reach the tiers or their entries; `close` above
            // freed every retired item and waited for any the background reclaimer was freeing,
            // so no thread frees a slot meanwhile; each tier came from `Box::into_raw` and is
            // freed once; the entries need no drop (checked above: no drop glue, and `cells`
            // clear, so no entry holds a value outside its slot).
            unsafe {
                drop(Box::from_raw(read));
                if !dirty.is_null() {
                    drop(Box::from_raw(dirty));
                }
                arena.release_all();
                drop(Box::from_raw(self.read.load(Relaxed)));
            }
        } else {
            // SAFETY: `&mut self`: no guard can reach the tiers, so they are freed now; I3 says
            // what each owns.
            unsafe {
                free_tiers(read, upto, dirty, arena);
                drop(Box::from_raw(self.read.load(Relaxed)));
            }
        }
        // Every entry is freed: the blocks go back now, not when the graveyard (which deferred
        // closures may keep alive) is dropped.
        self.grave.arena.release_unused();
        background::freed(held + retired);
    }
}

/// Frees a retired read tier (owning what I3 says with `upto`) and the dirty tier, if not null,
/// now.
///
/// # Safety
/// As for [`grave::free_tier`], for each tier.
unsafe fn free_tiers<K, V>(
    read: *mut Tier<K, V>,
    upto: usize,
    dirty: *mut Tier<K, V>,
    arena: &arena::Arena,
) {
    // SAFETY: per the caller.
    unsafe {
        free_tier(read, upto, arena);
        if !dirty.is_null() {
            free_tier(dirty, 0, arena);
        }
    }
}

/// Iterates the present entries of one tier, in slot order, under a guard: yields each entry,
/// its value as a reference that lives as long as the guard's borrow, and the value pointer
/// (for `remove_exact`).
pub(crate) struct RawIter<'g, K, V> {
    tier: &'g Tier<K, V>,
    idx: usize,
}

impl<'g, K, V> RawIter<'g, K, V> {
    /// Iterates `tier`, which was loaded under `_guard` (a published tier, or a snapshot).
    pub(crate) fn new(tier: &'g Tier<K, V>, _guard: &'g Guard) -> Self {
        RawIter { tier, idx: 0 }
    }

    /// The tier this walks.
    pub(crate) fn tier(&self) -> &'g Tier<K, V> {
        self.tier
    }
}

impl<'g, K, V> Iterator for RawIter<'g, K, V> {
    type Item = (&'g Entry<K, V>, &'g V, *mut V);

    fn next(&mut self) -> Option<Self::Item> {
        let table = &self.tier.table;
        loop {
            self.idx = table.skip_empty(self.idx);
            if self.idx >= table.capacity() {
                return None;
            }
            let i = self.idx;
            self.idx += 1;
            if let Some(e) = table.entry_at(i) {
                if let State::Live(p) = e.load() {
                    // SAFETY: a live value pointer loaded under the guard that `'g` borrows
                    // stays allocated until that guard is dropped (values are retired through
                    // the epoch).
                    return Some((e, unsafe { &*p }, p));
                }
            }
        }
    }
}
