//! The one place where std and loom primitives are switched.
//!
//! Every atomic, lock and epoch pin of the algorithm comes from here. Three kinds of state use
//! std types on purpose: statistics counters that no decision of the algorithm reads
//! (`raw::Shared`; as loom atomics they would only multiply the executions loom explores), the
//! background reclaimer's process-wide state (`raw::background`: statics need `const`
//! construction, and loom builds never start that thread), and the graveyard's `registered`
//! flag, which only the reclaimer's protocol uses. A normal build uses `std`
//! and crossbeam-epoch's global collector; a model-checking build (`--cfg tiermap_loom` with the
//! `loom` feature and `--cfg crossbeam_loom`) uses loom's types and a per-map
//! [`crossbeam_epoch::Collector`], so that loom sees every atomic access of the real algorithm,
//! crossbeam-epoch's own included, and so that a model can observe garbage being freed when the
//! map is dropped. The algorithm above this module is the same in both builds.

#[cfg(not(tiermap_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(not(tiermap_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(tiermap_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicIsize, AtomicPtr, AtomicU64, AtomicUsize};
#[cfg(tiermap_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

pub(crate) use crossbeam_epoch::Guard;

/// Slots per counted group of a table (the unit that migration, iteration and freeing skip
/// when it holds no entry). 256 slots of 8 bytes are half a 4 KiB page; loom models use tiny
/// groups so that the skipping is exercised in tables of a handful of slots.
#[cfg(not(tiermap_loom))]
pub(crate) const GROUP_SLOTS: usize = 256;
#[cfg(tiermap_loom)]
pub(crate) const GROUP_SLOTS: usize = 4;

/// Locks `mutex`, ignoring poisoning.
///
/// Every critical section of the crate leaves the dirty tier consistent at each point where user
/// code (`Eq`) can panic, so a poisoned lock carries no broken invariant and must not make later
/// calls fail.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Locks `mutex` if it is free right now, ignoring poisoning (see [`lock`]).
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The source of epoch guards for one map.
///
/// Normal builds pin crossbeam-epoch's global collector: a pin is a thread-local counter update
/// and allocates nothing. Loom builds own a collector per map (crossbeam's global one would
/// outlive a model execution), register a participant per pin, and free all remaining garbage
/// when the map is dropped.
pub(crate) struct Reclaimer {
    #[cfg(tiermap_loom)]
    collector: crossbeam_epoch::Collector,
    /// Collection rounds run since the last ordinary pin (loom builds; see `collect`). A plain
    /// std counter: bookkeeping of the model harness, not part of the modelled algorithm.
    #[cfg(tiermap_loom)]
    idle_rounds: std::sync::atomic::AtomicUsize,
}

/// Loom builds: most collection rounds in a row with no ordinary pin in between. One more than
/// the three rounds that free this thread's garbage when no guard is in the way.
#[cfg(tiermap_loom)]
const LOOM_MAX_IDLE_ROUNDS: usize = 4;

impl Reclaimer {
    pub(crate) fn new() -> Self {
        Reclaimer {
            #[cfg(tiermap_loom)]
            collector: crossbeam_epoch::Collector::new(),
            #[cfg(tiermap_loom)]
            idle_rounds: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Loom builds: a reclaimer of another map that uses this one's collector, as every map
    /// shares crossbeam's global collector in normal builds (the loom model of a map dropped
    /// while another map's operations run its deferred closures).
    #[cfg(tiermap_loom)]
    pub(crate) fn share(&self) -> Reclaimer {
        Reclaimer {
            collector: self.collector.clone(),
            idle_rounds: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A reclaimer for another shard of the same map: it pins the same collector (crossbeam's
    /// global one in normal builds, this one's in loom builds), so that one guard protects what
    /// any shard hands out.
    pub(crate) fn sibling(&self) -> Reclaimer {
        #[cfg(tiermap_loom)]
        {
            self.share()
        }
        #[cfg(not(tiermap_loom))]
        {
            Reclaimer::new()
        }
    }

    /// Pins the current thread.
    #[inline]
    pub(crate) fn pin(&self) -> Guard {
        #[cfg(not(tiermap_loom))]
        {
            crossbeam_epoch::pin()
        }
        #[cfg(tiermap_loom)]
        {
            self.idle_rounds
                .store(0, std::sync::atomic::Ordering::Relaxed);
            self.collector.register().pin()
        }
    }

    /// Moves this thread's deferred frees to the global queue and runs a collection, `rounds`
    /// times, each with a fresh pin so that the epoch can advance between rounds.
    ///
    /// Three rounds are enough for garbage retired by this thread to become reclaimable when no
    /// other participant is pinned in an older epoch (an object is freed two epoch advances after
    /// it was sealed); more rounds let a collection work through a longer global queue.
    ///
    /// Loom builds run at most `LOOM_MAX_IDLE_ROUNDS` rounds in a row with no ordinary pin in
    /// between and skip the rest: while another thread holds a guard, `SyncMap::reclaim` would
    /// otherwise register 64 participants that all fail to advance the epoch, which multiplies
    /// the executions loom must explore (and each one's length) without exploring anything new.
    pub(crate) fn collect(&self, rounds: usize) {
        for _ in 0..rounds {
            #[cfg(tiermap_loom)]
            {
                use std::sync::atomic::Ordering::Relaxed;
                if self.idle_rounds.load(Relaxed) >= LOOM_MAX_IDLE_ROUNDS {
                    return;
                }
                let guard = self.collector.register().pin();
                self.idle_rounds.fetch_add(1, Relaxed);
                guard.flush();
            }
            #[cfg(not(tiermap_loom))]
            {
                let guard = self.pin();
                guard.flush();
            }
        }
    }
}

impl std::fmt::Debug for Reclaimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reclaimer")
    }
}
