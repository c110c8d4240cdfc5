//! Removed values, gathered in batches that the map owns until they are freed.
//!
//! A value unlinked by `insert`, `remove` or a compare operation cannot be freed at once: a
//! reader pinned before the unlink may still hold `&V`. crossbeam-epoch's own answer (one
//! deferred function per value, in the retiring thread's bag) hides the value in a thread-local
//! bag that nothing but that thread's later pins can reach: a map dropped on another thread
//! cannot drop it, and an idle thread keeps it indefinitely. So values are gathered here
//! instead: each map has one *open* [`Batch`] of [`BATCH`] slots that writers fill without a lock
//! (a `fetch_add` reserves a slot), and a full batch is *sealed* and handed to the map's
//! graveyard, which defers it through the epoch as one unit and frees it once the grace period
//! is over (or at once when the map is dropped). The background reclaimer also seals a batch
//! that stays partly filled, so that no removed value waits for later removals.
//!
//! The open batch protocol:
//!
//! * `Batch::len` counts reserved slots; a reservation `i < BATCH` owns slot `i` and stores its
//!   value pointer there (release). Whoever moves `len` from below [`BATCH`] to [`BATCH`] or
//!   more *seals* the batch: the writer that reserved the last slot (after storing it), or a
//!   sealer of a partial batch (`seal_partial`, which adds [`BATCH`] to `len`), and only one of
//!   them can. The sealer unhooks the batch from `open` (if still there) and passes it on with
//!   the count of reserved slots.
//! * A writer that reserves past the end installs a fresh batch holding its value (CAS on
//!   `open`), or retries on the batch another writer installed.
//! * Every reservation is made while pinned, and happens before the seal (the `AcqRel` chain on
//!   `len`); the sealed batch is deferred after the seal, so its deferred free runs only after
//!   every writer that reserved a slot in it has stored its value and unpinned.

use std::ptr;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};

use super::entry::{free_value, value_size};
use crate::facade::{AtomicPtr, AtomicUsize};

/// Values per batch. 64 keeps a batch at about half a KiB of pointers and makes the sealing
/// work (a lock of the graveyard, an epoch deferral) one per 64 removals.
#[cfg(not(tiermap_loom))]
pub(crate) const BATCH: usize = 64;
/// Loom models use tiny batches, so that sealing and the installation race run in them.
#[cfg(tiermap_loom)]
pub(crate) const BATCH: usize = 2;

/// A fixed array of value pointers, filled by reservation (see the module docs).
pub(crate) struct Batch<V> {
    /// Reserved slots; [`BATCH`] or more once sealed.
    len: AtomicUsize,
    slots: [AtomicPtr<V>; BATCH],
}

impl<V> Batch<V> {
    /// A batch whose first slot holds `first` (or an empty one if `first` is null).
    fn boxed(first: *mut V) -> *mut Batch<V> {
        let slots = std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut()));
        let b = Box::new(Batch {
            len: AtomicUsize::new(usize::from(!first.is_null())),
            slots,
        });
        // Relaxed: the batch is not shared yet; its publication (a CAS with release) orders it.
        b.slots[0].store(first, Relaxed);
        Box::into_raw(b)
    }
}

/// A sealed batch: `n` reserved slots, each holding a value pointer once the grace period is
/// over (or once the map is exclusively owned).
pub(crate) struct Sealed<V> {
    batch: *mut Batch<V>,
    n: usize,
    /// Next slot to free.
    next: usize,
}

impl<V> Sealed<V> {
    /// Bytes of the values this batch holds (for `MapStats::retired_bytes`).
    pub(crate) fn bytes(&self) -> usize {
        self.n * value_size::<V>() + size_of::<Batch<V>>()
    }

    /// Frees values until `budget` is spent (one unit each) or the batch is empty; then frees
    /// the batch itself. Returns whether it is gone. Panic-safe: a value whose `Drop` panics is
    /// not seen again (the cursor moves past it first).
    ///
    /// # Safety
    /// The grace period of the batch is over (or the caller owns the map exclusively), so every
    /// reserved slot holds its value and no reader can reach any of them; this is the batch's
    /// only owner.
    pub(crate) unsafe fn free_some(&mut self, budget: &mut usize) -> bool {
        // SAFETY: per the caller, the batch is alive and ours.
        let b = unsafe { &*self.batch };
        while self.next < self.n {
            if *budget == 0 {
                return false;
            }
            *budget -= 1;
            // Relaxed: every store into the slot happened before (grace period or exclusive
            // access), which is what orders it.
            let p = b.slots[self.next].load(Relaxed);
            self.next += 1;
            debug_assert!(!p.is_null(), "a reserved slot holds its value");
            if !p.is_null() {
                // SAFETY: a value unlinked by its remover and retired once, into this slot; no
                // reader can reach it (per the caller).
                unsafe { free_value(p) };
            }
        }
        // SAFETY: the batch came from `Batch::boxed` and every value in it is freed.
        drop(unsafe { Box::from_raw(self.batch) });
        true
    }
}

/// The open batch of one map.
pub(crate) struct OpenBatch<V> {
    open: AtomicPtr<Batch<V>>,
}

impl<V> OpenBatch<V> {
    pub(crate) fn new() -> Self {
        OpenBatch {
            open: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Adds an unlinked value. Returns the batch this push sealed, if it filled one.
    ///
    /// # Safety
    /// `p` came from `alloc_value`, was unlinked by the caller, and is retired once. The caller
    /// is pinned (the batch it loads stays allocated while it works on it: a sealed batch is
    /// freed only after its grace period) and hands a returned batch to the graveyard.
    #[inline]
    pub(crate) unsafe fn push(&self, p: *mut V) -> Option<Sealed<V>> {
        let mut spare: *mut Batch<V> = ptr::null_mut();
        loop {
            // Acquire pairs with the release CAS that installed the batch.
            let b = self.open.load(Acquire);
            if b.is_null() {
                // No open batch: install one that holds `p`.
                let fresh = Self::fresh(&mut spare, p);
                // SeqCst on success: the installation is the work that `Graveyard::unregister`
                // must see (see `has_values`).
                match self
                    .open
                    .compare_exchange(ptr::null_mut(), fresh, SeqCst, Acquire)
                {
                    Ok(_) => return None,
                    Err(_) => {
                        spare = fresh;
                        continue;
                    }
                }
            }
            // SAFETY: loaded while pinned; a batch is freed only after its grace period.
            let batch = unsafe { &*b };
            // AcqRel: the chain of reservations orders every writer's pin (and its reservation)
            // before the sealer's deferral (module docs). SeqCst: the background reclaimer's
            // registration check (`Graveyard::unregister`) needs this reservation and its own
            // flag store in one total order.
            let i = batch.len.fetch_add(1, SeqCst);
            if i < BATCH {
                // Release: the value pointer is read after the grace period; the epoch's
                // synchronization already orders it, this keeps the store self-evidently ordered.
                batch.slots[i].store(p, Release);
                if !spare.is_null() {
                    Self::discard(spare);
                }
                if i == BATCH - 1 {
                    return Some(self.unhook(b, BATCH));
                }
                return None;
            }
            // Full (sealed): install a fresh batch holding `p` in place of this one.
            let fresh = Self::fresh(&mut spare, p);
            // SeqCst on success: as above.
            match self.open.compare_exchange(b, fresh, SeqCst, Acquire) {
                Ok(_) => return None,
                Err(_) => spare = fresh,
            }
        }
    }

    /// Seals the open batch if it holds any value (the background reclaimer, `reclaim`).
    ///
    /// # Safety
    /// As for [`OpenBatch::push`]: the caller is pinned and hands the batch to the graveyard.
    pub(crate) unsafe fn seal_partial(&self) -> Option<Sealed<V>> {
        // Acquire: as in `push`.
        let b = self.open.load(Acquire);
        if b.is_null() {
            return None;
        }
        // SAFETY: as in `push`.
        let batch = unsafe { &*b };
        // Relaxed pre-check: an empty batch stays open (nothing to seal).
        if batch.len.load(Relaxed) == 0 {
            return None;
        }
        // SeqCst/AcqRel: as in `push`; moving `len` to `BATCH` or more seals the batch.
        let n = batch.len.fetch_add(BATCH, SeqCst);
        if n >= BATCH {
            return None; // sealed by someone else
        }
        Some(self.unhook(b, n))
    }

    /// Whether a value waits in the open batch, not yet sealed (a batch past `BATCH` is being
    /// handed to the graveyard by its sealer).
    ///
    /// # Safety
    /// The caller holds the graveyard's lock, through which every path to freeing a batch
    /// loaded from the open slot goes (a sealed batch is queued under it first).
    pub(crate) unsafe fn has_values(&self) -> bool {
        // SeqCst pairs with the reservation in `push` (see `Graveyard::unregister`).
        let b = self.open.load(SeqCst);
        if b.is_null() {
            return false;
        }
        // SAFETY: per the caller, a loaded batch stays allocated.
        let len = unsafe { &*b }.len.load(SeqCst);
        len > 0 && len < BATCH
    }

    /// Takes the open batch (the map is being dropped or reset).
    ///
    /// # Safety
    /// No `push` or `seal_partial` runs concurrently, and none that ran is unfinished.
    pub(crate) unsafe fn take_unshared(&self) -> Option<Sealed<V>> {
        // Relaxed: the caller's exclusive access orders everything.
        let b = self.open.swap(ptr::null_mut(), Relaxed);
        if b.is_null() {
            return None;
        }
        // SAFETY: per the caller, nobody else can reach the batch.
        let n = unsafe { &*b }.len.load(Relaxed).min(BATCH);
        Some(Sealed {
            batch: b,
            n,
            next: 0,
        })
    }

    /// Unhooks sealed batch `b` (if still open) and wraps it with its `n` reserved slots.
    fn unhook(&self, b: *mut Batch<V>, n: usize) -> Sealed<V> {
        // Relaxed failure: if another writer already installed a fresh batch, nothing to undo.
        // AcqRel success: release orders the seal before a later installer's load.
        let _ = self
            .open
            .compare_exchange(b, ptr::null_mut(), AcqRel, Relaxed);
        Sealed {
            batch: b,
            n,
            next: 0,
        }
    }

    /// A batch holding only `p`: the spare one from a lost race, or a new one.
    fn fresh(spare: &mut *mut Batch<V>, p: *mut V) -> *mut Batch<V> {
        let b = std::mem::replace(spare, ptr::null_mut());
        if b.is_null() {
            return Batch::boxed(p);
        }
        // SAFETY: `b` is our unpublished spare (lost its CAS), so no one else sees it.
        let batch = unsafe { &*b };
        // Relaxed: unpublished.
        batch.len.store(1, Relaxed);
        batch.slots[0].store(p, Relaxed);
        b
    }

    /// Frees an unpublished spare batch (its slot 0 held a value that went elsewhere).
    fn discard(b: *mut Batch<V>) {
        // SAFETY: `b` came from `Batch::boxed` and was never published.
        drop(unsafe { Box::from_raw(b) });
    }
}
