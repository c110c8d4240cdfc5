//! The pool's per-thread fast path: one cached object per (thread, pool).
//!
//! # The pieces
//!
//! * A pool owns an array of **cells** ([`CacheCell`]), each able to hold one idle object, and a
//!   [`Link`]: a small reference-counted object, not generic over `T`, whose mutex guards the
//!   list of free cells, which stripe lent each claimed cell its unit of `max_idle`, and a
//!   type-erased pointer to the pool's cells and stripes (`None` once the pool is dropped).
//! * Each thread has a small thread-local table (`TABLE` and `LINKS`, `ENTRIES` entries) mapping a pool's
//!   id (unique for the life of the process, never reused) to the index of the cell it
//!   claimed in that pool, and holding a clone of that pool's `Link`.
//!
//! # Ownership of a cell
//!
//! A cell is **owned** by at most one thread at a time, and only its owner touches the object
//! slot ([`MyCell`]): no other thread reads or writes it while it is owned, so the owner needs
//! no atomic read-modify-write and no fence to take or store its object. Ownership moves only
//! under the link's mutex:
//!
//! 1. *claim* (`MapPool::claim`, on a thread's first use of the pool): pop a free cell index
//!    and borrow one unit of `max_idle` from a stripe (moving one of its idle objects into the
//!    cell if the stripe was full), then record (pool id, cell) in the thread's table;
//! 2. *release* ([`Link::release`], from the thread-local table's destructor when the thread
//!    exits): if the pool is alive, move the cell's object to the stripe that lent the unit
//!    (it always fits: the unit comes back with it), give the unit back, push the cell on the
//!    free list. If the pool was dropped, do nothing: the pool's drop dropped the object.
//! 3. *pool drop* ([`Shared`]'s `unlink`, dropped first): under the mutex, forget the
//!    pointer to the cells and stripes; the objects in the cells (and stripes) are then dropped
//!    with the pool's other fields, on the dropping thread.
//!
//! The mutex orders 2 and 3: a release either completes before the pool forgets the pointer
//! (then the object is in a stripe, dropped with it) or sees it gone (then the pool dropped the
//! object from the cell). Either way every object is dropped exactly once, by one thread, and
//! never after the pool's drop has returned. No user code runs under the mutex or a stripe lock
//! (a release only moves an object). A pool cannot be dropped while one of its operations runs
//! (they borrow it), so a cell's owner is never inside `get`/`put` of a pool being dropped.
//!
//! # Where the unsafe code is
//!
//! Only here: the cells' object slots ([`Slot`], an `UnsafeCell` reached only through
//! [`MyCell`], which [`Shared::my_cell`] builds from the calling thread's table), `Sync` for cells and
//! `Send` for the link state, and the type-erased release function.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, AtomicUsize as StdAtomicUsize};

use crate::facade::{lock, AtomicBool, AtomicUsize, Mutex};

use super::shard::{Padded, Shard};

/// The link's reference count: loom's `Arc` in model-checking builds, so that a model sees the
/// thread-local table and the pool hand the link over (and loom reports it if it leaks).
#[cfg(not(tiermap_loom))]
pub(crate) type LinkArc<T> = std::sync::Arc<T>;
#[cfg(tiermap_loom)]
pub(crate) type LinkArc<T> = loom::sync::Arc<T>;

/// Entries of a thread's table: the most pools one thread caches an object for at once. A
/// thread that uses more live pools at the same time uses the shared stripes for the others.
const ENTRIES: usize = 8;

/// A table entry of a pool in which the thread has no cell (all taken, or the pool has none).
pub(crate) const NO_CELL: u32 = u32::MAX;

/// Hands out pool ids: 1, 2, ... (0 marks an empty table entry). A process-wide counter, not
/// part of any modelled protocol (ids are only compared for equality), hence std's atomic.
static NEXT_ID: StdAtomicU64 = StdAtomicU64::new(1);

/// A new pool id, never handed out before in this process.
fn next_pool_id() -> u64 {
    // Relaxed: only uniqueness is needed, which the read-modify-write gives.
    NEXT_ID.fetch_add(1, Relaxed)
}

// ---------------------------------------------------------------------------------------------
// The object slot: std's `UnsafeCell`, or loom's (which checks every access for causality).

/// The object slot of a cell.
struct Slot<T>(
    #[cfg(not(tiermap_loom))] std::cell::UnsafeCell<Option<T>>,
    #[cfg(tiermap_loom)] loom::cell::UnsafeCell<Option<T>>,
);

impl<T> Slot<T> {
    fn new() -> Self {
        #[cfg(not(tiermap_loom))]
        {
            Slot(std::cell::UnsafeCell::new(None))
        }
        #[cfg(tiermap_loom)]
        {
            Slot(loom::cell::UnsafeCell::new(None))
        }
    }

    /// Runs `f` on the slot's content.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the slot for the duration of the call: it owns the
    /// cell (see the module docs), or no thread owns it and the caller holds the link's mutex,
    /// or the caller is dropping the pool. `f` must not reach the same slot again (it runs no
    /// user code: it only moves objects in or out).
    unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut Option<T>) -> R) -> R {
        #[cfg(not(tiermap_loom))]
        {
            // SAFETY: exclusive access, as the caller guarantees.
            f(unsafe { &mut *self.0.get() })
        }
        #[cfg(tiermap_loom)]
        {
            // SAFETY: as above; loom checks the claim.
            self.0.with_mut(|slot| f(unsafe { &mut *slot }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cells.

/// One per-thread cache slot of a pool: an idle object, and the counters of its owner's
/// operations.
///
/// The counters are std atomics (as `raw::Shared`'s statistics; loom need not explore them):
/// only the owner writes them, with a relaxed load and a relaxed store (no read-modify-write),
/// and `MapPool::stats` reads them with relaxed loads. They are cumulative: a cell's next owner
/// goes on counting from where the last one stopped (the link's mutex orders the two owners).
pub(crate) struct CacheCell<T> {
    slot: Slot<T>,
    /// 0 when the slot is empty, else 1 + the heap bytes the object was stored with: the
    /// cell's share of `PoolStats::idle` and `retained_bytes`.
    held: StdAtomicUsize,
    gets: StdAtomicU64,
    returns: StdAtomicU64,
    returns_shrunk: StdAtomicU64,
}

// SAFETY: the slot is only accessed by one thread at a time (its owner, or the holder of the
// link's mutex when it has none, or the pool's drop), as a `Mutex<T>` would be; sharing a cell
// therefore only ever moves a `T` between threads, which `T: Send` allows. The other fields are
// atomics.
unsafe impl<T: Send> Sync for CacheCell<T> {}

/// A snapshot of a cell's counters.
#[derive(Clone, Copy, Default)]
pub(crate) struct CellCounts {
    pub(crate) gets: u64,
    pub(crate) returns: u64,
    pub(crate) returns_shrunk: u64,
    /// Whether the cell holds an object.
    pub(crate) idle: bool,
    pub(crate) retained_bytes: usize,
}

/// Adds one to an owner-written counter.
#[inline]
fn bump(counter: &StdAtomicU64) {
    // Relaxed load and store, no read-modify-write: the owner is the only writer, and readers
    // (`stats`) tolerate a stale value.
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

impl<T> CacheCell<T> {
    pub(crate) fn new() -> Self {
        CacheCell {
            slot: Slot::new(),
            held: StdAtomicUsize::new(0),
            gets: StdAtomicU64::new(0),
            returns: StdAtomicU64::new(0),
            returns_shrunk: StdAtomicU64::new(0),
        }
    }

    /// Reads the counters (relaxed; see the type's docs).
    pub(crate) fn counts(&self) -> CellCounts {
        // Relaxed: statistics, as the stripes' counters (`shard`'s module docs).
        let held = self.held.load(Relaxed);
        CellCounts {
            gets: self.gets.load(Relaxed),
            returns: self.returns.load(Relaxed),
            returns_shrunk: self.returns_shrunk.load(Relaxed),
            idle: held != 0,
            retained_bytes: held.saturating_sub(1),
        }
    }

    /// Takes the object out.
    ///
    /// # Safety
    ///
    /// As [`Slot::with_mut`]: the caller has exclusive access to the slot.
    unsafe fn take_object(&self) -> Option<(T, usize)> {
        // SAFETY: exclusive access, as the caller guarantees.
        let value = unsafe { self.slot.with_mut(Option::take) }?;
        // Relaxed load and store (no read-modify-write): an owner-written gauge (see `bump`).
        let bytes = self.held.load(Relaxed).saturating_sub(1);
        self.held.store(0, Relaxed);
        Some((value, bytes))
    }

    /// Stores `value` counted as `bytes` if the slot is empty, else gives it back.
    ///
    /// # Safety
    ///
    /// As [`Slot::with_mut`]: the caller has exclusive access to the slot.
    unsafe fn put_object(&self, value: T, bytes: usize) -> Result<(), T> {
        // SAFETY: exclusive access, as the caller guarantees. Nothing is dropped inside: a
        // full slot gives `value` back.
        unsafe {
            self.slot.with_mut(|slot| match slot {
                Some(_) => Err(value),
                None => {
                    *slot = Some(value);
                    Ok(())
                }
            })
        }?;
        // Relaxed: an owner-written gauge (see `bump`).
        self.held.store(bytes.saturating_add(1), Relaxed);
        Ok(())
    }
}

/// The calling thread's own cell of a pool: only [`Shared::my_cell`] makes one, from the thread's
/// table, and it cannot leave the thread (`!Send`) or outlive the borrow of the pool.
pub(crate) struct MyCell<'a, T> {
    cell: &'a CacheCell<T>,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T> MyCell<'a, T> {
    /// Takes the cached object, if any.
    #[inline]
    pub(crate) fn take(&self) -> Option<T> {
        // SAFETY: the calling thread owns the cell (`my_cell`'s contract), so nobody else
        // accesses the slot; the closure only moves the object out.
        unsafe { self.cell.take_object() }.map(|(value, _)| value)
    }

    /// Caches `value`, counted as `bytes`, unless the cell already holds an object.
    #[inline]
    pub(crate) fn put(&self, value: T, bytes: usize) -> Result<(), T> {
        // SAFETY: as in `take`.
        unsafe { self.cell.put_object(value, bytes) }
    }

    /// Counts a `get` by the owner.
    #[inline]
    pub(crate) fn note_get(&self) {
        bump(&self.cell.gets);
    }

    /// Counts a return by the owner.
    #[inline]
    pub(crate) fn note_return(&self, shrunk: bool) {
        bump(&self.cell.returns);
        if shrunk {
            bump(&self.cell.returns_shrunk);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The link between a pool and the thread-local tables.

/// What a thread-local table needs to give a cell back: a pointer to the pool's `Core<T>` and
/// the function that knows its `T`.
#[derive(Clone, Copy)]
struct Target {
    core: NonNull<()>,
    /// `release_cell::<T>`: moves cell `cell`'s object to stripe `stripe` and gives the
    /// stripe its unit back.
    release: unsafe fn(NonNull<()>, usize, usize),
}

/// The state guarded by a link's mutex.
struct LinkState {
    /// `None` once the pool is dropped (or being dropped).
    target: Option<Target>,
    /// Indexes of the cells nobody owns.
    free: Vec<u32>,
    /// For each cell, the stripe whose unit of `max_idle` it holds while owned.
    lender: Vec<u32>,
}

// SAFETY: `target.core` points to the pool's `Core<T>`, and is dereferenced only by
// `Link::release`, under the mutex, while `target` is `Some`, i.e. before the pool's drop (which
// clears it under the mutex first) frees the core. A link is shared between threads only when
// its pool is `Sync`, i.e. `T: Send`, and then moving the cell's `T` to a stripe from another
// thread is allowed. (A pool of a `!Send` `T` is neither `Send` nor `Sync`: only the thread that
// built it uses it, registers it in its table, and releases its cell.)
unsafe impl Send for LinkState {}

/// Shared by a pool (through [`Unlink`]) and the thread-local tables that have an entry for it.
pub(crate) struct Link {
    state: Mutex<LinkState>,
    /// How many cells are free: a hint, so that a thread without a cell retries a claim only
    /// when one may succeed. Written under the mutex.
    free_hint: AtomicUsize,
    /// Set (under the mutex, with the target cleared) when the pool is dropped; read without
    /// the mutex to reuse the table entries of dropped pools.
    dead: AtomicBool,
}

impl Link {
    /// A link for a pool of `cells` cells, whose target `Shared::new` sets.
    pub(crate) fn new(cells: usize) -> Self {
        let cells = u32::try_from(cells).expect("cell count fits in u32");
        Link {
            state: Mutex::new(LinkState {
                target: None,
                free: (0..cells).rev().collect(),
                lender: vec![0; cells as usize],
            }),
            free_hint: AtomicUsize::new(cells as usize),
            dead: AtomicBool::new(false),
        }
    }

    /// Whether a claim may find a free cell (a hint).
    #[inline]
    pub(crate) fn may_have_free_cell(&self) -> bool {
        // Relaxed: a hint; a stale value costs one needless claim attempt (under the mutex) or
        // one missed chance to get a cell, retried at the thread's next slow operation.
        self.free_hint.load(Relaxed) != 0
    }

    /// Takes a free cell of `cells` for the calling thread, if any, and returns its index.
    /// `lend` runs under the mutex: it must borrow a unit of `max_idle` from a stripe and
    /// return the stripe's index, with the idle object that moves to the cell with the unit
    /// (if the stripe was full), or `None` to give the cell up.
    fn claim<T>(
        &self,
        cells: &[Padded<CacheCell<T>>],
        lend: impl FnOnce() -> Option<(usize, Option<(T, usize)>)>,
    ) -> Option<u32> {
        let mut state = lock(&self.state);
        state.target?;
        #[cfg(not(tiermap_mutation = "pool_claim_shares_cell"))]
        let cell = state.free.pop()?;
        // Mutation: the claimed cell stays on the free list, so a second thread can claim it
        // while the first still owns it.
        #[cfg(tiermap_mutation = "pool_claim_shares_cell")]
        let cell = *state.free.last()?;
        let Some((stripe, moved)) = lend() else {
            #[cfg(not(tiermap_mutation = "pool_claim_shares_cell"))]
            state.free.push(cell);
            return None;
        };
        state.lender[cell as usize] = u32::try_from(stripe).expect("stripe index fits in u32");
        // Relaxed: a hint (see `may_have_free_cell`).
        self.free_hint.store(state.free.len(), Relaxed);
        let homeless = moved.and_then(|(value, bytes)| {
            // SAFETY: the cell was free (we took it off the free list under the mutex, which we
            // hold): no thread owns it, so we have exclusive access to its slot.
            unsafe { cells[cell as usize].0.put_object(value, bytes) }.err()
        });
        drop(state);
        // A free cell is always empty (`release` empties it first), so this never happens.
        debug_assert!(homeless.is_none(), "a free cell held an object");
        drop(homeless);
        Some(cell)
    }

    /// Gives the calling thread's cell `cell` back (from its table's destructor): if the pool
    /// is alive, its object goes to the stripe that lent the cell its unit.
    fn release(&self, cell: u32) {
        if cell == NO_CELL {
            return;
        }
        let mut state = lock(&self.state);
        let Some(target) = state.target else {
            // The pool is gone, and its drop dropped the cell's object.
            return;
        };
        let lender = state.lender[cell as usize] as usize;
        #[cfg(not(tiermap_mutation = "pool_release_free_first"))]
        {
            // SAFETY: `target` is `Some` and we hold the mutex, so the pool's drop has not
            // cleared it and cannot free the core until we unlock (`Shared`'s invariant: its
            // `unlink` drops, clearing the target under this mutex, before its `core`). The
            // calling thread owns cell `cell` (it was in its table until its `Links`
            // destructor, our caller, removed it), so it has exclusive access to the slot, and
            // `lender` is the stripe that lent the cell its unit; both are in range (set by
            // `claim` for this pool).
            unsafe { (target.release)(target.core, cell as usize, lender) };
            state.free.push(cell);
            // Relaxed: a hint (see `may_have_free_cell`).
            self.free_hint.store(state.free.len(), Relaxed);
        }
        #[cfg(tiermap_mutation = "pool_release_free_first")]
        {
            // Mutation: the cell goes back on the free list, and the mutex is unlocked, before
            // its object is moved out: another thread may claim the cell (and use its slot)
            // while this one still moves the object, or the pool may be dropped meanwhile.
            state.free.push(cell);
            // Relaxed: a hint (see `may_have_free_cell`).
            self.free_hint.store(state.free.len(), Relaxed);
            drop(state);
            // SAFETY: none: this is the seeded bug that the loom models must catch.
            unsafe { (target.release)(target.core, cell as usize, lender) };
        }
    }

    /// Loom builds: how many cells are free (under the mutex, so a model that sees a cell
    /// freed also sees the release that freed it).
    #[cfg(tiermap_loom)]
    pub(crate) fn free_cells(&self) -> usize {
        lock(&self.state).free.len()
    }

    /// Whether the pool of this link is gone (once true, forever).
    fn is_dead(&self) -> bool {
        // Relaxed: only decides whether a table entry may be reused; a dead pool's entry is
        // then forgotten without touching the pool (dropping the link's `Arc` synchronizes by
        // itself), and a stale `false` only keeps the entry one more time.
        self.dead.load(Relaxed)
    }
}

/// The pool's handle on its link; dropping it marks the pool gone for the thread-local tables,
/// under the link's mutex.
struct Unlink(LinkArc<Link>);

impl Drop for Unlink {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.target = None;
        // Relaxed: a hint for `is_dead`; what matters (`target`) is under the mutex.
        self.0.dead.store(true, Relaxed);
    }
}

/// The pool's cells and stripes.
pub(crate) struct Core<T> {
    pub(crate) shards: Box<[Padded<Shard<T>>]>,
    pub(crate) cells: Box<[Padded<CacheCell<T>>]>,
}

/// A pool's [`Core`] (at a fixed address, behind an `Arc` that only this holds) and its link.
///
/// Invariant: the link's target, while set, points to `core`. `unlink` is declared first, so
/// it drops first (fields drop in declaration order): the target is cleared, under the link's
/// mutex, before `core` and the objects in its cells and stripes are dropped. That is what
/// makes `Link::release` sound.
pub(crate) struct Shared<T> {
    /// The pool's key in the thread-local tables, unique in the process (never reused).
    id: u64,
    #[cfg(not(tiermap_mutation = "pool_unlink_late"))]
    unlink: Unlink,
    core: std::sync::Arc<Core<T>>,
    // Mutation: the link learns that the pool is gone only after the cells and stripes are
    // freed, so a thread exiting meanwhile releases its cell into freed memory.
    #[cfg(tiermap_mutation = "pool_unlink_late")]
    unlink: Unlink,
}

impl<T> Shared<T> {
    /// A pool's shared state over `shards` and `cells` cells.
    pub(crate) fn new(shards: Box<[Padded<Shard<T>>]>, cells: usize) -> Self {
        let link = LinkArc::new(Link::new(cells));
        let cells = (0..cells).map(|_| Padded(CacheCell::new())).collect();
        let core = std::sync::Arc::new(Core { shards, cells });
        let target = Target {
            core: NonNull::new(std::sync::Arc::as_ptr(&core).cast_mut())
                .expect("an Arc's pointer is not null")
                .cast(),
            release: release_cell::<T>,
        };
        lock(&link.state).target = Some(target);
        Shared {
            id: next_pool_id(),
            unlink: Unlink(link),
            core,
        }
    }

    /// The cells and stripes.
    #[inline]
    pub(crate) fn core(&self) -> &Core<T> {
        &self.core
    }

    /// The pool's link.
    #[inline]
    pub(crate) fn link(&self) -> &LinkArc<Link> {
        &self.unlink.0
    }

    /// See [`Link::claim`].
    pub(crate) fn claim(
        &self,
        lend: impl FnOnce() -> Option<(usize, Option<(T, usize)>)>,
    ) -> Option<u32> {
        self.unlink.0.claim(&self.core.cells, lend)
    }
}

/// Gives cell `cell` of the `Core<T>` at `core` back: moves its object (if any) to stripe
/// `stripe` and gives that stripe its lent unit back. Runs no user code.
///
/// # Safety
///
/// `core` points to a live `Core<T>`, `cell` and `stripe` are in range, and the caller has
/// exclusive access to the cell's slot (it is the owner, or the cell has no owner and the
/// caller holds the link's mutex).
unsafe fn release_cell<T>(core: NonNull<()>, cell: usize, stripe: usize) {
    // SAFETY: `core` points to a live `Core<T>` (the caller's contract).
    let core = unsafe { core.cast::<Core<T>>().as_ref() };
    // SAFETY: exclusive access to the slot (the caller's contract).
    let object = unsafe { core.cells[cell].0.take_object() };
    let mut locked = core.shards[stripe].0.lock();
    let homeless = locked.take_unit_back(object);
    drop(locked);
    // Never happens while the units balance (see `take_unit_back`); dropped outside the lock.
    drop(homeless);
}

// ---------------------------------------------------------------------------------------------
// The thread-local tables.
//
// Two thread-locals: `TABLE` (pool id -> cell), read on every operation, has no destructor, so
// std reaches it without the "is the destructor registered" check; `LINKS` (the links, and the
// cells again) has the destructor that gives the cells back when the thread exits. An entry is
// written in both at registration; the destructor clears the `TABLE` entry before releasing
// the cell, so a guard dropped by another thread-local's destructor after that finds no cell.

/// The lookup half of a thread's table.
struct Table {
    /// Pool ids; 0 marks a free entry.
    ids: [Cell<u64>; ENTRIES],
    /// The cell owned in each pool, or [`NO_CELL`].
    cells: [Cell<u32>; ENTRIES],
}

impl Table {
    const fn new() -> Self {
        Table {
            ids: [const { Cell::new(0) }; ENTRIES],
            cells: [const { Cell::new(NO_CELL) }; ENTRIES],
        }
    }

    #[inline]
    fn find(&self, id: u64) -> Option<u32> {
        (0..ENTRIES)
            .find(|&i| self.ids[i].get() == id)
            .map(|i| self.cells[i].get())
    }
}

/// An entry of [`Links`]: a pool's link, and the cell the thread owns there (or [`NO_CELL`]).
type LinkEntry = Option<(LinkArc<Link>, u32)>;

/// The owning half of a thread's table: entry `i` holds the link and the cell of the pool in
/// `Table` entry `i`.
struct Links {
    entries: [Cell<LinkEntry>; ENTRIES],
}

impl Links {
    const fn new() -> Self {
        Links {
            entries: [const { Cell::new(None) }; ENTRIES],
        }
    }

    /// Whether entry `i` is free, or belongs to a pool that is gone (then it is freed).
    fn free_or_dead(&self, table: &Table, i: usize) -> bool {
        let entry = self.entries[i].take();
        let dead = entry.as_ref().is_none_or(|(link, _)| link.is_dead());
        if dead {
            // The pool is gone (its drop dropped the cell's object): forget the entry.
            table.ids[i].set(0);
            table.cells[i].set(NO_CELL);
            drop(entry);
        } else {
            self.entries[i].set(entry);
        }
        dead
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for i in 0..ENTRIES {
            let Some((link, cell)) = self.entries[i].take() else {
                continue;
            };
            // Forget the cell first: from now on this thread does not own it.
            let _ = TABLE.try_with(|table| {
                table.ids[i].set(0);
                table.cells[i].set(NO_CELL);
            });
            #[cfg(not(tiermap_mutation = "pool_exit_keeps_cell"))]
            link.release(cell);
            // Mutation: a thread that exits keeps its cell (and object): the cell is never
            // free again, and its object stays idle out of every other thread's reach.
            #[cfg(tiermap_mutation = "pool_exit_keeps_cell")]
            let _ = (link, cell);
        }
    }
}

#[cfg(not(tiermap_loom))]
std::thread_local! {
    static TABLE: Table = const { Table::new() };
    static LINKS: Links = const { Links::new() };
}
#[cfg(tiermap_loom)]
loom::thread_local! {
    static TABLE: Table = Table::new();
    static LINKS: Links = Links::new();
}

impl<T> Shared<T> {
    /// The calling thread's cell in this pool: `Ok` of its cell, or of `None` if it has an
    /// entry for the pool but no cell; `Err` if it has no entry (or cannot use its table,
    /// during thread-local destruction).
    #[inline]
    pub(crate) fn my_cell(&self) -> Result<Option<MyCell<'_, T>>, ()> {
        let found = TABLE.try_with(|table| table.find(self.id)).ok().flatten();
        match found {
            None => Err(()),
            Some(cell) => Ok(self.core.cells.get(cell as usize).map(|cell| MyCell {
                // The calling thread owns this cell: its table maps this pool's id (unique in
                // the process) to it only after this thread claimed it (`register`), and the
                // cell is freed only by `Link::release`, from this thread's `Links`
                // destructor, which removes the mapping first. (`NO_CELL` is out of range.)
                cell: &cell.0,
                _not_send: PhantomData,
            })),
        }
    }

    /// Records this pool in the calling thread's table, with the cell `claim` returns (called
    /// only once the table has room, so that a claimed cell is always recorded, and released
    /// when the thread exits), and returns that cell. `None` if the table is full of live pools
    /// or cannot be used (during thread-local destruction).
    pub(crate) fn register(&self, claim: impl FnOnce() -> Option<u32>) -> Option<u32> {
        register(self.id, &self.unlink.0, claim)
    }
}

/// See [`Shared::register`].
fn register(id: u64, link: &LinkArc<Link>, claim: impl FnOnce() -> Option<u32>) -> Option<u32> {
    let registered = LINKS.try_with(|links| {
        TABLE
            .try_with(|table| {
                let i = match (0..ENTRIES).find(|&i| table.ids[i].get() == id) {
                    Some(i) => i,
                    None => (0..ENTRIES).find(|&i| links.free_or_dead(table, i))?,
                };
                let cell = claim().unwrap_or(NO_CELL);
                table.ids[i].set(id);
                table.cells[i].set(cell);
                links.entries[i].set(Some((LinkArc::clone(link), cell)));
                Some(cell)
            })
            .ok()
            .flatten()
    });
    registered.ok().flatten()
}
