//! `MapPool`: a pool of reusable maps (and other collections) whose retained
//! memory is bounded by its configuration.
//!
//! Go's `sync.Pool` keeps whatever is put back: after one huge request, a map
//! that grew to a million slots stays in the pool, and every later small
//! request that reuses it pays to clear a million slots (Go's `fmt` refuses to
//! pool buffers over 64 KiB for this reason). A [`MapPool`] has a **capacity
//! ceiling**: an object coming back with a capacity over it is emptied and
//! shrunk (or dropped, if it cannot shrink), so no request is ever handed an
//! oversized object and the pool never holds more than
//! `max_idle` objects of at most `ceiling` capacity each.
//!
//! ```
//! use std::collections::HashMap;
//! use tiermap::pool::MapPool;
//!
//! let pool: MapPool<HashMap<u64, u64>> = MapPool::builder()
//!     .capacity_ceiling(1024)
//!     .max_idle(32)
//!     .build();
//!
//! // A huge request...
//! let mut big = pool.get();
//! big.extend((0..100_000).map(|k| (k, k)));
//! drop(big); // ...is shrunk on its way back.
//!
//! let small = pool.get();
//! assert!(small.is_empty());
//! assert!(small.capacity() <= pool.capacity_ceiling().unwrap());
//! assert_eq!(pool.stats().returns_shrunk, 1);
//! ```
//!
//! Any type can be pooled by implementing [`Recycle`] (std's `HashMap`,
//! `HashSet`, `Vec`, `VecDeque` and `String` already do). [`MapPool::get`]
//! returns a [`Pooled`] guard borrowing the pool; [`MapPool::get_owned`], on an
//! `Arc<MapPool<T>>`, returns an [`OwnedPooled`] that is `'static` and `Send`,
//! to hold across `.await`. Neither guard holds a lock.
//!
//! # What happens on return
//!
//! When a guard is dropped (or [`MapPool::put`] is called), outside any lock:
//!
//! 1. if the object's capacity is over the ceiling, it is emptied and shrunk
//!    with [`Recycle::reset_and_shrink`] (counted in
//!    [`PoolStats::returns_shrunk`]); if it is still over the ceiling, it is
//!    dropped;
//! 2. otherwise it is emptied with [`Recycle::reset`], whose cost is then
//!    bounded by the ceiling, whatever the object once held;
//! 3. it is stored if the pool holds fewer than `max_idle` objects, and dropped
//!    otherwise (counted in [`PoolStats::returns_dropped`]): in the returning
//!    thread's own cache if that is empty (see [per-thread
//!    caches](#per-thread-caches)), else in the shared stripes.
//!
//! # Choosing the ceiling
//!
//! The ceiling is a capacity in elements (slots), not bytes. Set it to the
//! size that your *ordinary* large requests need, such as the p99 (or p99.9)
//! of the number of entries a request puts in the map; measure it, or log
//! [`MapPool::stats`] and raise the ceiling while `returns_shrunk` is more
//! than a small fraction of `returns`. Requests above it still work: they grow
//! their object as usual and it is shrunk when it comes back, so the rare huge
//! request pays for its own memory instead of every later request paying to
//! clear it.
//!
//! Then check the memory budget. The most that idle objects can hold is
//!
//! ```text
//! retained bytes <= max_idle x ceiling x bytes per slot
//! ```
//!
//! For std's `HashMap<K, V>`, a slot costs `size_of::<(K, V)>() + 1` bytes (one
//! control byte), times up to 16/7 because the table keeps 1/8 of its buckets
//! free and rounds their number up to a power of two. A `HashMap<u64, u64>`
//! with a ceiling of 1024 holds 2048 buckets of 17 bytes, 34 KiB; 64 of them
//! idle hold 2.2 MiB. If that is too much, lower `max_idle` first (it only
//! costs allocations when more than `max_idle` objects are in use at once),
//! then the ceiling. [`PoolStats::retained_bytes`] shows what is held now.
//!
//! `capacity_ceiling(None)` turns the ceiling off: the pool then behaves like
//! Go's and keeps objects at whatever size they grew to. Only do that for
//! objects whose size is bounded by construction.
//!
//! # Defaults
//!
//! [`MapPool::new`] is `MapPool::builder().build()`, with:
//!
//! | setting | default | why |
//! |---|---|---|
//! | `initial_capacity` | 0 | a new object allocates on first use, like `HashMap::new`; pooled objects keep the capacity they grew to, so this only matters for misses |
//! | `prefill` | 0 | objects are created on demand |
//! | `max_idle` | 64 | enough for a burst of concurrent requests; bounds the memory with the ceiling |
//! | `capacity_ceiling` | `Some(1024)` | about 34 KiB for a `HashMap<u64, u64>`, so at most 2.2 MiB idle |
//! | `shards` | available parallelism, rounded up to a power of two, at most 64 and at most `max_idle` | one lock per core |
//!
//! # Per-thread caches
//!
//! Each thread that uses a pool gets, on its first `get` or return, a cache of
//! **one** object in that pool (while the pool has a free one: a pool has
//! `max_idle / 2` caches, at most 64). A round trip by a thread whose cache is
//! in use takes the cached object and puts it back there: no lock, no atomic
//! read-modify-write, no fence, and nothing written that another thread reads
//! except the thread's own counters. That is the fast path; everything else
//! (a thread holding two objects at once, threads beyond the caches) uses the
//! shared stripes below.
//!
//! * **`max_idle` stays exact.** A cache borrows one unit of `max_idle` from a
//!   stripe when its thread claims it (with one of the stripe's idle objects,
//!   if the stripe was full), and gives it back when the thread exits. So idle
//!   objects in the stripes plus cached objects never exceed `max_idle`, at
//!   every instant; a thread's cached object counts in [`PoolStats::idle`] and
//!   [`PoolStats::retained_bytes`] like any other. At least half of `max_idle`
//!   always stays with the stripes, for the threads without a cache.
//! * **A cached object is its thread's.** Other threads' gets do not see it (they
//!   may miss although it is idle), and [`MapPool::clear`] drops only the
//!   calling thread's cached object (and the stripes'). With a retention alarm
//!   installed, an object of at least a sixteenth of its threshold (the size
//!   the alarm checks at once) is never cached: it goes to the stripes, where
//!   `clear` from any thread reaches it.
//! * **Nothing is lost when a thread exits**: its cached object goes to the
//!   stripe that lent the unit (it always fits), from the thread-local
//!   destructor, so it is idle and reachable once the thread is joined.
//! * **Nothing outlives the pool**: dropping the pool drops every cached
//!   object too, including those of threads still running (on the dropping
//!   thread, before the drop returns); a thread that exits later finds the pool
//!   gone and touches nothing. Each object is dropped exactly once.
//! * Objects are kept boxed, so that the fast path moves a pointer, never the
//!   object (moving a map of a few words through the cache cost more than the
//!   rest of the round trip: the loads of the next `get` stall on the stores of
//!   the last return). Creating an object, or [`MapPool::put`] of an object
//!   that did not come from the pool, allocates that box; [`Pooled::detach`]
//!   frees it.
//!
//! # Shared stripes
//!
//! The other idle objects live in a few *stripes* (shards), each a
//! `Mutex<Vec<_>>` on its own cache lines, with `max_idle` (less the units lent
//! to caches) split between them exactly. Each thread gets a home stripe,
//! assigned round robin on its first use of any pool; `get` pops from the home
//! stripe (the most recently returned object, the warmest in cache), and if it
//! is empty, tries the other stripes that look non-empty with `try_lock`, then
//! creates a new object. A return goes to the home stripe, and if it is full,
//! to another one that looks non-full and is not locked, else the object is
//! dropped.
//!
//! The price of `try_lock` is that a `get` racing with another thread on a
//! foreign stripe may allocate although an idle object exists (a miss), and a
//! return may drop an object although some stripe has room; the bounds hold
//! either way. No user code (`reset`, `Drop`, `with_capacity`) runs while a
//! lock is held: the critical sections are a `Vec` push or pop that never
//! reallocates, or (when a thread claims or gives back its cache) a move of
//! one object.
//!
//! # Panics
//!
//! A panic while a guard is held gives the object back as usual when the
//! guard is dropped during unwinding. If the type's `reset` (or another
//! [`Recycle`] method) panics during a return, the object is dropped and
//! counted in `returns_dropped`, and the panic goes on (unless the thread was
//! already unwinding, in which case it is swallowed rather than aborting the
//! process). The pool's locks protect nothing that user code can interrupt, so
//! they are never poisoned in a way that matters, and poisoning is ignored.
//!
//! # Statistics
//!
//! [`MapPool::stats`] sums the stripes' and the per-thread caches' counters
//! into a [`PoolStats`]. The counters are relaxed atomics, read without
//! locking, each written by one thread at a time (a cache's by its thread, a
//! stripe's under its lock) with no read-modify-write: they are diagnostics,
//! exact once the threads using the pool are joined, and possibly a few
//! operations apart from each other while they run. `hits` is not counted but
//! derived (`gets - misses`). One more caveat on `idle` and `retained_bytes`:
//! an exiting thread moves its cached object to a stripe in its thread-local
//! destructor, which for a scoped thread may run after the scope has returned;
//! for that instant the object is counted in neither.
#![deny(unsafe_code)] // Allowed in `local` only: the per-thread caches' object slots.

pub(crate) mod alarm;
mod guard;
mod local;
#[cfg(feature = "metrics")]
mod metrics;
mod recycle;
mod shard;
mod stats;
#[cfg(test)]
mod tests;

pub use guard::{OwnedPooled, Pooled};
pub use recycle::Recycle;
pub use stats::PoolStats;

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;

use local::{Core, MyCell, Shared};
use shard::{ColdCounters, Padded, Shard};

const DEFAULT_MAX_IDLE: usize = 64;
const DEFAULT_CAPACITY_CEILING: usize = 1024;
const MAX_SHARDS: usize = 64;
/// Most per-thread caches (cells) of one pool; a pool has `min(max_idle / 2, MAX_CELLS)`.
const MAX_CELLS: usize = 64;

/// A pool of reusable objects (maps, sets, vectors, or any [`Recycle`] type)
/// whose retained memory is bounded by `max_idle` objects of at most the
/// capacity ceiling each. See the [module documentation](self) for the
/// behaviour, the defaults and how to choose the ceiling.
///
/// `MapPool<T>` is `Send` and `Sync` when `T: Send`. Share it by reference, in
/// a `static` (see [`PoolBuilder`]'s note) or in an `Arc` (needed for
/// [`get_owned`](MapPool::get_owned)).
///
/// ```
/// use std::collections::HashSet;
/// use tiermap::pool::MapPool;
///
/// let pool: MapPool<HashSet<u32>> = MapPool::new();
/// std::thread::scope(|s| {
///     for t in 0..2 {
///         let pool = &pool;
///         s.spawn(move || {
///             let mut seen = pool.get();
///             seen.insert(t);
///             assert_eq!(seen.len(), 1);
///         });
///     }
/// });
/// assert_eq!(pool.stats().gets, 2);
/// ```
pub struct MapPool<T: Recycle> {
    // The stripes and the per-thread cells (see `local`), and the link that
    // the thread-local tables use to give cells back. Invariants:
    // `core().shards.len()` is a power of two, at most `MAX_SHARDS`; the
    // stripes' limits plus the claimed cells add up to `max_idle`, and each
    // claimed cell holds at most one object.
    shared: Shared<Box<T>>,
    // `core.shards.len() - 1`.
    mask: usize,
    cold: Padded<ColdCounters>,
    // Invariant: at most `ceiling.requested` when there is a ceiling.
    initial_capacity: usize,
    ceiling: Option<Ceiling>,
    max_idle: usize,
    /// The retention alarm and metrics publisher (`alarm`), checked after returns.
    pub(crate) hook: alarm::PoolHooks,
    /// Loom builds: how many gets stole from and returns spilled to a stripe
    /// other than the thread's home, so that a model can check it ran them.
    #[cfg(tiermap_loom)]
    loom_moves: LoomMoves,
}

/// See `MapPool::loom_moves`. Plain std counters of the model harness.
#[cfg(tiermap_loom)]
#[derive(Default)]
struct LoomMoves {
    steals: std::sync::atomic::AtomicUsize,
    spills: std::sync::atomic::AtomicUsize,
}

#[cfg(tiermap_loom)]
impl<T: Recycle> MapPool<T> {
    /// Loom builds only: (gets served by stealing from another stripe, returns
    /// spilled to another stripe) so far.
    #[doc(hidden)]
    pub fn loom_steals_and_spills(&self) -> (usize, usize) {
        // Relaxed: counters read after the model's threads are joined.
        (
            self.loom_moves.steals.load(Relaxed),
            self.loom_moves.spills.load(Relaxed),
        )
    }

    /// Loom builds only: how many per-thread caches are free. Loom's `join` returns before
    /// the joined thread's thread-local destructors have run (as std's scoped threads do), so a
    /// model waits on this to see an exited thread's cache given back.
    #[doc(hidden)]
    pub fn loom_free_caches(&self) -> usize {
        self.shared.link().free_cells()
    }
}

/// The capacity ceiling as configured, and as `T` rounds it.
#[derive(Clone, Copy, Debug)]
struct Ceiling {
    /// What the user asked for; passed to `reset_and_shrink`.
    requested: usize,
    /// `max(requested, T::rounded_capacity(requested))`; compared with
    /// `capacity()`.
    effective: usize,
}

impl<T: Recycle> MapPool<T> {
    /// A pool with the default settings (see the
    /// [module documentation](self#defaults)): no prefill, at most 64 idle
    /// objects, a capacity ceiling of 1024.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<HashMap<String, u64>> = MapPool::new();
    /// assert_eq!(pool.max_idle(), 64);
    /// assert!(pool.capacity_ceiling().unwrap() >= 1024);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to configure a pool.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::builder()
    ///     .initial_capacity(4096)
    ///     .prefill(8)
    ///     .max_idle(16)
    ///     .capacity_ceiling(64 * 1024)
    ///     .build();
    /// assert_eq!(pool.stats().idle, 8);
    /// ```
    #[must_use]
    pub fn builder() -> PoolBuilder<T> {
        PoolBuilder::new()
    }

    /// Takes an idle object (the calling thread's cached one first, see
    /// [per-thread caches](self#per-thread-caches)), or creates one with
    /// `T::with_capacity(initial_capacity)` if none is idle. The object is
    /// empty, and its capacity is at most the ceiling. It goes back to the pool
    /// when the guard is dropped.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<HashMap<u64, &str>> = MapPool::new();
    /// let mut map = pool.get();
    /// map.insert(1, "one");
    /// assert_eq!(map.get(&1), Some(&"one"));
    /// ```
    #[must_use = "the object goes straight back to the pool if the guard is not used"]
    pub fn get(&self) -> Pooled<'_, T> {
        Pooled::new(self, self.take())
    }

    /// Like [`get`](MapPool::get), but the guard holds a clone of the `Arc`
    /// instead of a borrow, so it can be moved to other threads and held
    /// across `.await` (it is `Send + 'static` when `T: Send`). It costs one
    /// increment and one decrement of the `Arc`'s shared count more than
    /// `get`, so prefer `get` when a borrow will do.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tiermap::pool::{MapPool, OwnedPooled};
    ///
    /// let pool: Arc<MapPool<Vec<u64>>> = Arc::new(MapPool::new());
    /// let mut buf: OwnedPooled<Vec<u64>> = pool.get_owned();
    /// buf.push(1);
    /// std::thread::spawn(move || drop(buf)).join().unwrap();
    /// assert_eq!(pool.stats().idle, 1);
    /// ```
    #[must_use = "the object goes straight back to the pool if the guard is not used"]
    pub fn get_owned(self: &Arc<Self>) -> OwnedPooled<T> {
        OwnedPooled::new(Arc::clone(self), self.take())
    }

    /// Gives an object to the pool, as dropping a guard does: it is reset,
    /// checked against the ceiling and kept if there is room. Use it for
    /// objects that were detached, or created elsewhere.
    ///
    /// ```
    /// use tiermap::pool::{MapPool, Pooled};
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::new();
    /// let buf = Pooled::detach(pool.get());
    /// // ... hand `buf` to code that wants a plain `Vec` ...
    /// pool.put(buf);
    /// assert_eq!(pool.stats().idle, 1);
    /// ```
    pub fn put(&self, value: T) {
        self.give_back(Box::new(value));
    }

    /// A snapshot of the pool's counters; see [`PoolStats`].
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u64>> = MapPool::builder().capacity_ceiling(100).build();
    /// let mut v = pool.get();
    /// v.extend(0..1000);
    /// drop(v);
    /// let stats = pool.stats();
    /// assert_eq!(stats.returns_shrunk, 1);
    /// assert_eq!(stats.retained_bytes, 100 * 8);
    /// ```
    #[must_use]
    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats::default();
        for shard in self.core().shards.iter() {
            let counts = shard.0.counts();
            stats.gets += counts.gets;
            stats.returns += counts.returns;
            stats.returns_shrunk += counts.returns_shrunk;
            stats.idle += counts.idle;
            stats.retained_bytes += counts.retained_bytes;
        }
        for cell in self.core().cells.iter() {
            let counts = cell.0.counts();
            stats.gets += counts.gets;
            stats.returns += counts.returns;
            stats.returns_shrunk += counts.returns_shrunk;
            stats.idle += usize::from(counts.idle);
            stats.retained_bytes += counts.retained_bytes;
        }
        let cold = &self.cold.0;
        // Relaxed: statistics only (see `shard`'s module docs).
        stats.misses = cold.misses.load(Relaxed);
        stats.returns_dropped = cold.returns_dropped.load(Relaxed);
        stats.detached = cold.detached.load(Relaxed);
        // Every get is a hit or a miss, and only misses are counted (off the
        // hot path). Saturating: while other threads work, a miss may be
        // counted before its get is.
        stats.hits = stats.gets.saturating_sub(stats.misses);
        stats
    }

    /// Drops every idle object in the shared stripes and the calling thread's
    /// cached object, giving their memory back, and returns how many it
    /// dropped. Objects in use are not affected and still come back later.
    ///
    /// An object cached by another thread that is still running (at most one
    /// per thread, of at most the ceiling; see [per-thread
    /// caches](self#per-thread-caches)) is not dropped: that thread uses it
    /// again, or it goes to the stripes when that thread exits.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::builder().prefill(3).build();
    /// assert_eq!(pool.clear(), 3);
    /// assert_eq!(pool.stats().retained_bytes, 0);
    /// ```
    pub fn clear(&self) -> usize {
        let mut dropped = 0;
        // The calling thread's own cached object (other threads' caches are
        // theirs alone: see the module docs).
        if let Ok(Some(cell)) = self.shared.my_cell() {
            if let Some(value) = cell.take() {
                dropped += 1;
                drop(value);
            }
        }
        for shard in self.core().shards.iter() {
            // Allocated before locking, dropped after: nothing allocates,
            // frees or runs `Drop` under the lock.
            let mut idle = Vec::with_capacity(shard.0.share());
            shard.0.lock().drain_into(&mut idle);
            dropped += idle.len();
            drop(idle);
        }
        self.hook.check_now(|| self.stats());
        dropped
    }

    /// The capacity ceiling in force, rounded up to what `T` really allocates
    /// for the configured one (see [`Recycle::rounded_capacity`]), or `None`
    /// if there is none.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::builder().capacity_ceiling(1000).build();
    /// assert_eq!(pool.capacity_ceiling(), Some(1000));
    /// // A std hash table rounds 1000 slots up to 1792 (2048 buckets at 7/8).
    /// let maps: MapPool<HashMap<u64, u64>> = MapPool::builder().capacity_ceiling(1000).build();
    /// assert_eq!(maps.capacity_ceiling(), Some(HashMap::<u64, u64>::with_capacity(1000).capacity()));
    /// let off: MapPool<Vec<u8>> = MapPool::builder().capacity_ceiling(None).build();
    /// assert_eq!(off.capacity_ceiling(), None);
    /// ```
    #[must_use]
    pub fn capacity_ceiling(&self) -> Option<usize> {
        self.ceiling.map(|ceiling| ceiling.effective)
    }

    /// The most objects the pool keeps idle, in its stripes and per-thread
    /// caches together.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<String> = MapPool::builder().max_idle(5).build();
    /// assert_eq!(pool.max_idle(), 5);
    /// ```
    #[must_use]
    pub fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// The capacity that new objects are created with (clamped to the
    /// ceiling).
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<String> = MapPool::builder()
    ///     .initial_capacity(5000)
    ///     .capacity_ceiling(4096)
    ///     .build();
    /// assert_eq!(pool.initial_capacity(), 4096);
    /// ```
    #[must_use]
    pub fn initial_capacity(&self) -> usize {
        self.initial_capacity
    }

    /// The cells and stripes.
    #[inline]
    fn core(&self) -> &Core<Box<T>> {
        self.shared.core()
    }

    /// The index of the calling thread's home shard.
    fn home(&self) -> usize {
        thread_slot() & self.mask
    }

    /// The calling thread's cell (per-thread cache) in this pool, if it has
    /// one; on the thread's first use of the pool (or when a cell may have
    /// been freed since it found none), claims one.
    #[inline]
    fn my_cell(&self) -> Option<MyCell<'_, Box<T>>> {
        match self.shared.my_cell() {
            Ok(Some(cell)) => Some(cell),
            // Registered without a cell: retry only if one may be free.
            Ok(None) if !self.shared.link().may_have_free_cell() => None,
            _ => self.register(),
        }
    }

    /// Registers the pool in the calling thread's table, with a cell if one
    /// can be claimed (see `local`).
    #[cold]
    #[inline(never)]
    fn register(&self) -> Option<MyCell<'_, Box<T>>> {
        if self.core().cells.is_empty() {
            return None;
        }
        self.shared.register(|| self.claim())?;
        self.shared.my_cell().ok().flatten()
    }

    /// Claims a free cell for the calling thread, borrowing a unit of
    /// `max_idle` for it from a stripe (the home stripe first). If that stripe
    /// is full, one of its idle objects moves to the cell with the unit.
    fn claim(&self) -> Option<u32> {
        let home = self.home();
        self.shared.claim(|| {
            (0..self.core().shards.len()).find_map(|step| {
                let stripe = (home + step) & self.mask;
                let moved = self.core().shards[stripe].0.lock().lend_unit()?;
                Some((stripe, moved))
            })
        })
    }

    /// Takes an idle object or makes a new one: the calling thread's cached
    /// object if it has one (no lock, no atomic read-modify-write), else one
    /// from the stripes.
    #[inline]
    fn take(&self) -> Box<T> {
        if let Ok(Some(cell)) = self.shared.my_cell() {
            cell.note_get();
            if let Some(value) = cell.take() {
                return value;
            }
            return self.take_shared(false);
        }
        self.take_uncached()
    }

    /// `take` for a thread that has no cell yet (or none at all).
    #[cold]
    #[inline(never)]
    fn take_uncached(&self) -> Box<T> {
        match self.my_cell() {
            Some(cell) => {
                cell.note_get();
                match cell.take() {
                    Some(value) => value,
                    None => self.take_shared(false),
                }
            }
            None => self.take_shared(true),
        }
    }

    /// Takes an object from the stripes (home first, then the others), or makes
    /// a new one; counts the get on the home stripe if `count` (the caller did
    /// not count it in its cell).
    #[inline(never)]
    fn take_shared(&self, count: bool) -> Box<T> {
        let home = self.home();
        {
            let mut locked = self.core().shards[home].0.lock();
            if count {
                locked.note_get();
            }
            if let Some(value) = locked.pop() {
                return value;
            }
        }
        if let Some(value) = self.steal(home) {
            return value;
        }
        ColdCounters::bump(&self.cold.0.misses);
        Box::new(T::with_capacity(self.initial_capacity))
    }

    /// Pops an object from a shard other than `home`, skipping shards that
    /// look empty or are locked.
    fn steal(&self, home: usize) -> Option<Box<T>> {
        for step in 1..self.core().shards.len() {
            let shard = &self.core().shards[(home + step) & self.mask].0;
            if shard.idle_hint() == 0 {
                continue;
            }
            if let Some(value) = shard.try_lock().and_then(|mut locked| locked.pop()) {
                #[cfg(tiermap_loom)]
                self.loom_moves.steals.fetch_add(1, Relaxed);
                return Some(value);
            }
        }
        None
    }

    /// Stores `value` in a shard other than `home`, skipping shards that look
    /// full or are locked; gives it back if none took it.
    fn spill(&self, home: usize, mut value: Box<T>, bytes: usize) -> Result<(), Box<T>> {
        for step in 1..self.core().shards.len() {
            let shard = &self.core().shards[(home + step) & self.mask].0;
            if shard.idle_hint() >= shard.limit_hint() {
                continue;
            }
            if let Some(mut locked) = shard.try_lock() {
                // Mutation: the hint read above is trusted, the limit not checked
                // again under the lock.
                #[cfg(tiermap_mutation = "pool_spill_trusts_hint")]
                {
                    locked.push_unchecked(value, bytes);
                    return Ok(());
                }
                #[cfg(not(tiermap_mutation = "pool_spill_trusts_hint"))]
                match locked.push(value, bytes) {
                    Ok(()) => {
                        #[cfg(tiermap_loom)]
                        self.loom_moves.spills.fetch_add(1, Relaxed);
                        return Ok(());
                    }
                    Err(back) => value = back,
                }
            }
        }
        Err(value)
    }

    /// Empties `value` and brings it under the ceiling. Returns whether it had
    /// to be shrunk, and its heap bytes if it may be kept.
    #[inline]
    fn prepare(&self, value: &mut T) -> (bool, Option<usize>) {
        match self.ceiling {
            Some(ceiling) if value.capacity() > ceiling.effective => {
                value.reset_and_shrink(ceiling.requested);
                if value.capacity() > ceiling.effective {
                    return (true, None);
                }
                (true, Some(value.heap_bytes()))
            }
            _ => {
                value.reset();
                (false, Some(value.heap_bytes()))
            }
        }
    }

    /// Takes an object back: from a guard's `drop`, or `put`. It goes to the
    /// calling thread's cell if that is empty (no lock, no atomic
    /// read-modify-write), else to the stripes.
    #[inline]
    pub(crate) fn give_back(&self, value: Box<T>) {
        match self.shared.my_cell() {
            Ok(Some(cell)) => self.give_back_to(Some(cell), value),
            _ => self.give_back_uncached(value),
        }
    }

    /// `give_back` for a thread that has no cell yet (or none at all).
    #[cold]
    #[inline(never)]
    fn give_back_uncached(&self, value: Box<T>) {
        let cell = self.my_cell();
        self.give_back_to(cell, value);
    }

    /// Prepares `value` (reset, shrink) and keeps it: in `cell` if given and
    /// empty, else in the stripes; or drops it.
    #[inline]
    fn give_back_to(&self, cell: Option<MyCell<'_, Box<T>>>, mut value: Box<T>) {
        // User code runs here, before any lock is taken. A panic in it is
        // caught so that the counters stay consistent and, if the thread is
        // already unwinding, the process does not abort.
        let prepared = panic::catch_unwind(AssertUnwindSafe(|| self.prepare(&mut value)));
        let (shrunk, keep, payload) = match prepared {
            Ok((shrunk, keep)) => (shrunk, keep, None),
            Err(payload) => (false, None, Some(payload)),
        };
        let kept = match &cell {
            Some(cell) => {
                cell.note_return(shrunk);
                match keep {
                    // An object big enough for the retention alarm's at-once
                    // check goes to the stripes, where `clear` reaches it.
                    Some(bytes) if bytes < self.hook.cache_limit() => {
                        match cell.put(value, bytes) {
                            Ok(()) => bytes,
                            // The cell is full (two objects out at once).
                            Err(value) => self.store_shared(value, keep, None, None),
                        }
                    }
                    _ => self.store_shared(value, keep, payload, None),
                }
            }
            None => self.store_shared(value, keep, payload, Some(shrunk)),
        };
        self.hook.after_return(kept, || self.stats());
    }

    /// Stores a returned, prepared object in the stripes (home first, then the
    /// others), or drops it if `keep` is `None` (with the panic `payload` of
    /// its `Recycle` method, if any) or no stripe has room. Counts the return
    /// on the home stripe if `count` is `Some(shrunk)`. Returns the bytes kept.
    #[inline(never)]
    fn store_shared(
        &self,
        value: Box<T>,
        keep: Option<usize>,
        payload: Option<Box<dyn Any + Send>>,
        count: Option<bool>,
    ) -> usize {
        let home = self.home();
        let Some(bytes) = keep else {
            if let Some(shrunk) = count {
                self.core().shards[home].0.lock().note_return(shrunk);
            }
            self.drop_returned(value, payload);
            return 0;
        };
        let mut locked = self.core().shards[home].0.lock();
        if let Some(shrunk) = count {
            locked.note_return(shrunk);
        }
        if let Err(value) = locked.push(value, bytes) {
            drop(locked);
            if let Err(value) = self.spill(home, value, bytes) {
                self.drop_returned(value, None);
                return 0;
            }
        }
        bytes
    }

    /// Drops an object that the pool will not keep, counting it. `panic` is
    /// the payload of a panic raised by `value`'s `Recycle` methods, resumed
    /// once the object is gone, unless the thread is already unwinding.
    fn drop_returned(&self, value: Box<T>, panic: Option<Box<dyn Any + Send>>) {
        ColdCounters::bump(&self.cold.0.returns_dropped);
        if panic.is_none() && !thread::panicking() {
            // An ordinary drop: a panic in `T`'s `Drop` propagates to the
            // caller, after the bookkeeping is done.
            drop(value);
            return;
        }
        // A second panic from `Drop` must neither replace the first one nor,
        // while unwinding, escape (that aborts). Catching a panic raised
        // during unwinding is allowed since Rust 1.71 (rust-lang/rust#110975).
        drop_quietly(value);
        if let Some(payload) = panic {
            if thread::panicking() {
                drop_quietly(payload);
            } else {
                panic::resume_unwind(payload);
            }
        }
    }

    /// Counts a detached guard.
    pub(crate) fn note_detach(&self) {
        ColdCounters::bump(&self.cold.0.detached);
    }
}

impl<T: Recycle> Default for MapPool<T> {
    /// Same as [`MapPool::new`].
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = Default::default();
    /// assert_eq!(pool.max_idle(), 64);
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Recycle> fmt::Debug for MapPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapPool")
            .field("capacity_ceiling", &self.capacity_ceiling())
            .field("max_idle", &self.max_idle)
            .field("initial_capacity", &self.initial_capacity)
            .field("shards", &self.core().shards.len())
            .field("thread_caches", &self.core().cells.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Configures and builds a [`MapPool`]; from [`MapPool::builder`].
///
/// A pool cannot be built in a `const` context; for a global pool, build it
/// on first use with `std::sync::OnceLock`.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::OnceLock;
/// use tiermap::pool::MapPool;
///
/// fn scratch_maps() -> &'static MapPool<HashMap<u64, u64>> {
///     static POOL: OnceLock<MapPool<HashMap<u64, u64>>> = OnceLock::new();
///     POOL.get_or_init(|| MapPool::builder().initial_capacity(16).capacity_ceiling(4096).build())
/// }
///
/// let mut map = scratch_maps().get();
/// map.insert(1, 1);
/// assert!(map.capacity() >= 16);
/// ```
pub struct PoolBuilder<T: Recycle> {
    initial_capacity: usize,
    prefill: usize,
    max_idle: usize,
    ceiling: Option<usize>,
    shards: Option<usize>,
    // `fn() -> T`: the builder holds no `T`, so it is `Send + Sync` for any
    // `T`.
    _marker: PhantomData<fn() -> T>,
}

impl<T: Recycle> PoolBuilder<T> {
    /// A builder with the defaults of [`MapPool::new`].
    ///
    /// ```
    /// use tiermap::pool::{MapPool, PoolBuilder};
    ///
    /// let pool: MapPool<Vec<u8>> = PoolBuilder::new().build();
    /// assert_eq!(pool.capacity_ceiling(), Some(1024));
    /// ```
    #[must_use]
    pub fn new() -> Self {
        PoolBuilder {
            initial_capacity: 0,
            prefill: 0,
            max_idle: DEFAULT_MAX_IDLE,
            ceiling: Some(DEFAULT_CAPACITY_CEILING),
            shards: None,
            _marker: PhantomData,
        }
    }

    /// The capacity of newly created objects (default 0). Clamped to the
    /// ceiling.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u64>> = MapPool::builder().initial_capacity(32).build();
    /// assert_eq!(pool.get().capacity(), 32);
    /// ```
    #[must_use = "a builder does nothing until `build` is called"]
    pub fn initial_capacity(mut self, capacity: usize) -> Self {
        self.initial_capacity = capacity;
        self
    }

    /// How many objects to create when the pool is built (default 0). Clamped
    /// to `max_idle`.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u64>> = MapPool::builder().prefill(4).build();
    /// drop(pool.get());
    /// assert_eq!(pool.stats().misses, 0);
    /// ```
    #[must_use = "a builder does nothing until `build` is called"]
    pub fn prefill(mut self, count: usize) -> Self {
        self.prefill = count;
        self
    }

    /// The most objects kept idle (default 64); further returns are dropped.
    /// 0 makes a pool that keeps nothing. Half of it (at most 64) can be lent
    /// to per-thread caches of one object each (see [per-thread
    /// caches](self#per-thread-caches)); the bound counts them.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u64>> = MapPool::builder().max_idle(1).build();
    /// let (a, b) = (pool.get(), pool.get());
    /// drop((a, b));
    /// let stats = pool.stats();
    /// assert_eq!((stats.idle, stats.returns_dropped), (1, 1));
    /// ```
    #[must_use = "a builder does nothing until `build` is called"]
    pub fn max_idle(mut self, count: usize) -> Self {
        self.max_idle = count;
        self
    }

    /// The capacity ceiling in elements (default `Some(1024)`): objects
    /// returned with a larger capacity are shrunk, or dropped if they cannot
    /// be. `None` turns it off, so objects are kept at any size (Go's
    /// `sync.Pool` behaviour; see the
    /// [module documentation](self#choosing-the-ceiling)).
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let bounded: MapPool<Vec<u8>> = MapPool::builder().capacity_ceiling(4096).build();
    /// let unbounded: MapPool<Vec<u8>> = MapPool::builder().capacity_ceiling(None).build();
    /// for pool in [&bounded, &unbounded] {
    ///     let mut v = pool.get();
    ///     v.resize(1 << 20, 0);
    /// }
    /// assert_eq!(bounded.stats().retained_bytes, 4096);
    /// assert_eq!(unbounded.stats().retained_bytes, 1 << 20);
    /// ```
    #[must_use = "a builder does nothing until `build` is called"]
    pub fn capacity_ceiling(mut self, ceiling: impl Into<Option<usize>>) -> Self {
        self.ceiling = ceiling.into();
        self
    }

    /// How many shards (locks) to spread idle objects over, rounded up to a
    /// power of two, at most 64 and at most `max_idle`. The default is the
    /// available parallelism. One shard makes the pool a plain
    /// `Mutex<Vec<T>>`, with strict LIFO reuse.
    ///
    /// ```
    /// use tiermap::pool::MapPool;
    ///
    /// let pool: MapPool<Vec<u8>> = MapPool::builder().shards(1).build();
    /// drop(pool.get());
    /// assert_eq!(pool.stats().idle, 1);
    /// ```
    #[must_use = "a builder does nothing until `build` is called"]
    pub fn shards(mut self, count: usize) -> Self {
        self.shards = Some(count);
        self
    }

    /// Builds the pool, creating the `prefill` objects.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiermap::pool::MapPool;
    ///
    /// let pool = MapPool::<HashMap<u32, u32>>::builder().prefill(2).build();
    /// assert_eq!(pool.stats().idle, 2);
    /// ```
    #[must_use]
    pub fn build(self) -> MapPool<T> {
        let ceiling = self.ceiling.map(|requested| Ceiling {
            requested,
            effective: requested.max(T::rounded_capacity(requested)),
        });
        let initial_capacity = match self.ceiling {
            Some(ceiling) => self.initial_capacity.min(ceiling),
            None => self.initial_capacity,
        };
        let max_idle = self.max_idle;
        let wanted = self.shards.unwrap_or_else(|| {
            thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let mut count = wanted.clamp(1, MAX_SHARDS).next_power_of_two();
        while count > 1 && count > max_idle {
            count /= 2;
        }
        // Split `max_idle` exactly: the first `max_idle % count` shards take
        // one more.
        let shards = (0..count)
            .map(|i| {
                Padded(Shard::new(
                    max_idle / count + usize::from(i < max_idle % count),
                ))
            })
            .collect();
        // At most half of `max_idle` can be lent to per-thread caches, so the
        // stripes always keep at least half for the threads without one.
        let cell_count = (max_idle / 2).min(MAX_CELLS);
        let pool = MapPool {
            shared: Shared::new(shards, cell_count),
            mask: count - 1,
            cold: Padded(ColdCounters::default()),
            initial_capacity,
            ceiling,
            max_idle,
            hook: Default::default(),
            #[cfg(tiermap_loom)]
            loom_moves: LoomMoves::default(),
        };
        // Round robin fits: shard `i` receives `prefill / count` objects, plus
        // one if `i < prefill % count`, never more than its limit.
        for i in 0..self.prefill.min(max_idle) {
            let value = Box::new(T::with_capacity(initial_capacity));
            let bytes = value.heap_bytes();
            let pushed = pool.core().shards[i & pool.mask]
                .0
                .lock()
                .push(value, bytes);
            debug_assert!(pushed.is_ok(), "prefill overflowed shard {i}");
        }
        pool
    }
}

impl<T: Recycle> Default for PoolBuilder<T> {
    /// Same as [`PoolBuilder::new`].
    ///
    /// ```
    /// use tiermap::pool::{MapPool, PoolBuilder};
    ///
    /// let pool: MapPool<Vec<u8>> = PoolBuilder::default().max_idle(2).build();
    /// assert_eq!(pool.max_idle(), 2);
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Recycle> Clone for PoolBuilder<T> {
    fn clone(&self) -> Self {
        PoolBuilder {
            initial_capacity: self.initial_capacity,
            prefill: self.prefill,
            max_idle: self.max_idle,
            ceiling: self.ceiling,
            shards: self.shards,
            _marker: PhantomData,
        }
    }
}

impl<T: Recycle> fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("initial_capacity", &self.initial_capacity)
            .field("prefill", &self.prefill)
            .field("max_idle", &self.max_idle)
            .field("capacity_ceiling", &self.ceiling)
            .field("shards", &self.shards)
            .finish()
    }
}

/// Drops `value`, swallowing a panic from its destructor. The payload of
/// that panic is leaked rather than dropped: dropping it could panic again.
fn drop_quietly<V>(value: V) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(move || drop(value))) {
        std::mem::forget(payload);
    }
}

/// This thread's slot number, assigned round robin on first use, so that
/// threads spread evenly over any pool's shards.
#[cfg(not(tiermap_loom))]
#[inline]
fn thread_slot() -> usize {
    // std's atomic, not the facade's: a process-wide round-robin hint that no model checks
    // (loom's atomics cannot live in a static).
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.try_with(|slot| {
        let mut index = slot.get();
        if index == usize::MAX {
            // Relaxed: only distinct-ish numbers are needed; nothing is
            // published through this counter.
            index = NEXT.fetch_add(1, Relaxed) & (usize::MAX >> 1);
            slot.set(index);
        }
        index
    })
    // During thread-local destruction (a guard dropped by another
    // thread-local's destructor) any shard will do.
    .unwrap_or(0)
}

/// Loom builds: the same, per model thread and per execution (loom runs every model thread on
/// one OS thread, so std's thread-local would give them all one home; and the counter restarts
/// with each execution, so that replays are deterministic).
#[cfg(tiermap_loom)]
fn thread_slot() -> usize {
    loom::lazy_static! {
        static ref NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    }
    loom::thread_local! {
        static SLOT: Cell<usize> = Cell::new(usize::MAX);
    }
    SLOT.try_with(|slot| {
        let mut index = slot.get();
        if index == usize::MAX {
            // Relaxed: as above (a plain counter of the model harness).
            index = NEXT.fetch_add(1, Relaxed);
            slot.set(index);
        }
        index
    })
    .unwrap_or(0)
}
