//! One stripe of the pool: a `Mutex<Vec<_>>` of idle objects, its share of `max_idle` and its
//! counters.
//!
//! Counters come in two kinds, and a counter is never of both kinds:
//!
//! * *locked* counters (`gets`, `returns`, `returns_shrunk`, `idle`,
//!   `retained_bytes`) and the stripe's `limit` are written only by the holder of the shard's
//!   lock, through [`Locked`], with a relaxed load and a relaxed store: the lock
//!   serializes the writers, so no update is lost and no read-modify-write
//!   instruction is needed on the hot path;
//! * *cold* counters (`misses`, `returns_dropped`, `detached`, in
//!   [`ColdCounters`]) are bumped with a relaxed `fetch_add` outside any lock,
//!   on paths that allocate or free memory anyway.
//!
//! (Hits are not counted: `hits = gets - misses`, see `MapPool::stats`.) The per-thread caches
//! (`local`) keep counters of the same kind, written only by their owner thread.
//!
//! Readers (`MapPool::stats`) load all of them with `Relaxed` and no lock. That
//! is enough: the counters are diagnostics, nothing is published through them,
//! and the objects themselves are handed over under the shard's `Mutex`, which
//! gives the happens-before edges. A snapshot taken while other threads work
//! may mix slightly older and newer values; once those threads are joined (a
//! synchronizing operation), the values are exact.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{PoisonError, TryLockError};

use crate::facade::{AtomicU64, AtomicUsize, Mutex, MutexGuard};

/// Aligns its content to 128 bytes (two 64-byte lines, as adjacent-line
/// prefetchers pair them) so that shards do not share cache lines.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// An idle object and the heap bytes it was counted with when it was stored.
struct Idle<T> {
    value: T,
    bytes: usize,
}

/// One stripe of idle objects.
pub(crate) struct Shard<T> {
    // Invariant: `slots.len() <= limit <= slots.capacity()`, and `slots` never
    // reallocates (its capacity is the stripe's share of `max_idle` from the
    // start, and `limit` never exceeds it), so no push runs the allocator while
    // the lock is held.
    slots: Mutex<Vec<Idle<T>>>,
    // The stripe's share of `max_idle`, less the units lent to per-thread
    // caches (`Locked::lend_unit`, `Locked::take_unit_back`). Written under the
    // lock; read without it as a hint.
    limit: AtomicUsize,
    // The stripe's share of `max_idle`, fixed at build time.
    share: usize,
    gets: AtomicU64,
    returns: AtomicU64,
    returns_shrunk: AtomicU64,
    // Invariant (whenever the lock is free): `idle == slots.len()` and
    // `retained_bytes` is the sum of `bytes` over `slots`.
    idle: AtomicUsize,
    retained_bytes: AtomicUsize,
}

/// Counters bumped outside any lock (see the module docs).
#[derive(Default)]
pub(crate) struct ColdCounters {
    pub(crate) misses: AtomicU64,
    pub(crate) returns_dropped: AtomicU64,
    pub(crate) detached: AtomicU64,
}

impl ColdCounters {
    /// Adds one to a cold counter.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        // Relaxed: an independent statistic; atomicity alone keeps it exact.
        counter.fetch_add(1, Relaxed);
    }
}

/// A snapshot of one shard's locked counters.
#[derive(Default, Clone, Copy)]
pub(crate) struct ShardCounts {
    pub(crate) gets: u64,
    pub(crate) returns: u64,
    pub(crate) returns_shrunk: u64,
    pub(crate) idle: usize,
    pub(crate) retained_bytes: usize,
}

impl<T> Shard<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Shard {
            slots: Mutex::new(Vec::with_capacity(limit)),
            limit: AtomicUsize::new(limit),
            share: limit,
            gets: AtomicU64::new(0),
            returns: AtomicU64::new(0),
            returns_shrunk: AtomicU64::new(0),
            idle: AtomicUsize::new(0),
            retained_bytes: AtomicUsize::new(0),
        }
    }

    /// Locks the shard, waiting if needed. The lock is only ever held for a
    /// `Vec` push or pop and counter updates: no user code runs under it, so
    /// poisoning cannot leave the data inconsistent and is ignored.
    pub(crate) fn lock(&self) -> Locked<'_, T> {
        Locked {
            slots: self.slots.lock().unwrap_or_else(PoisonError::into_inner),
            shard: self,
        }
    }

    /// Locks the shard if nobody holds it.
    pub(crate) fn try_lock(&self) -> Option<Locked<'_, T>> {
        let slots = match self.slots.try_lock() {
            Ok(slots) => slots,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(Locked { slots, shard: self })
    }

    /// A hint of how many objects the shard may keep now, read without the lock
    /// (see [`Shard::idle_hint`]); the lock holder's view is exact.
    pub(crate) fn limit_hint(&self) -> usize {
        // Relaxed: a hint, as `idle_hint`; `push` checks the limit under the
        // lock.
        self.limit.load(Relaxed)
    }

    /// The most objects the shard can ever hold: its share of `max_idle`.
    pub(crate) fn share(&self) -> usize {
        self.share
    }

    /// A hint of the number of idle objects, read without the lock.
    pub(crate) fn idle_hint(&self) -> usize {
        // Relaxed: only a hint to skip shards that look empty (or full). A
        // stale value costs one needless lock or one missed object (an extra
        // allocation or drop, counted as such); decisions that matter are
        // taken under the lock.
        self.idle.load(Relaxed)
    }

    /// Reads the locked counters (see the module docs for why `Relaxed`).
    pub(crate) fn counts(&self) -> ShardCounts {
        // Relaxed: statistics, read without the lock; see the module docs.
        ShardCounts {
            gets: self.gets.load(Relaxed),
            returns: self.returns.load(Relaxed),
            returns_shrunk: self.returns_shrunk.load(Relaxed),
            idle: self.idle.load(Relaxed),
            retained_bytes: self.retained_bytes.load(Relaxed),
        }
    }
}

/// A locked shard: the only way to change its slots and locked counters.
pub(crate) struct Locked<'a, T> {
    slots: MutexGuard<'a, Vec<Idle<T>>>,
    shard: &'a Shard<T>,
}

/// Adds `n` to a locked counter.
#[inline]
fn add_u64(counter: &AtomicU64, n: u64) {
    // Relaxed load and store, no read-modify-write: the caller holds the shard
    // lock, the only writer; readers tolerate a stale value.
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl<T> Locked<'_, T> {
    /// Counts a `get` whose home is this shard.
    pub(crate) fn note_get(&mut self) {
        add_u64(&self.shard.gets, 1);
    }

    /// Counts an object coming back to a pool whose home is this shard.
    pub(crate) fn note_return(&mut self, shrunk: bool) {
        add_u64(&self.shard.returns, 1);
        if shrunk {
            add_u64(&self.shard.returns_shrunk, 1);
        }
    }

    /// Takes the most recently stored object (the warmest in cache).
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.pop_idle().map(|idle| idle.value)
    }

    /// Takes the most recently stored object with its counted bytes.
    fn pop_idle(&mut self) -> Option<Idle<T>> {
        let idle = self.slots.pop()?;
        self.publish_len();
        // Relaxed: a locked counter (see `add_u64`).
        let bytes = self.shard.retained_bytes.load(Relaxed);
        self.shard
            .retained_bytes
            .store(bytes.wrapping_sub(idle.bytes), Relaxed);
        Some(idle)
    }

    /// Stores an object counted as `bytes`, or gives it back if the shard is
    /// full.
    pub(crate) fn push(&mut self, value: T, bytes: usize) -> Result<(), T> {
        if self.slots.len() >= self.limit() {
            return Err(value);
        }
        self.slots.push(Idle { value, bytes });
        self.publish_len();
        // Relaxed: a locked counter (see `add_u64`).
        let total = self.shard.retained_bytes.load(Relaxed);
        self.shard
            .retained_bytes
            .store(total.wrapping_add(bytes), Relaxed);
        Ok(())
    }

    /// Mutation `pool_spill_trusts_hint`: stores without checking the limit
    /// under the lock (the caller trusted the unlocked hint).
    #[cfg(tiermap_mutation = "pool_spill_trusts_hint")]
    pub(crate) fn push_unchecked(&mut self, value: T, bytes: usize) {
        self.slots.push(Idle { value, bytes });
        self.publish_len();
        // Relaxed: a locked counter (see `add_u64`).
        let total = self.shard.retained_bytes.load(Relaxed);
        self.shard
            .retained_bytes
            .store(total.wrapping_add(bytes), Relaxed);
    }

    /// The stripe's limit now (exact: the caller holds the lock).
    fn limit(&self) -> usize {
        // Relaxed: written only under this lock, which we hold.
        self.shard.limit.load(Relaxed)
    }

    fn set_limit(&mut self, limit: usize) {
        debug_assert!(limit <= self.shard.share && self.slots.len() <= limit);
        // Relaxed: a locked value (see `add_u64`), also read as a hint.
        self.shard.limit.store(limit, Relaxed);
    }

    /// Lends one unit of the stripe's share of `max_idle` to a per-thread cache:
    /// `None` if the stripe has none left, else `Some` of the idle object (and its
    /// bytes) that must move to the cache with the unit, if the stripe was full.
    /// Either way the stripe's idle objects plus the lent units never exceed its
    /// share.
    pub(crate) fn lend_unit(&mut self) -> Option<Option<(T, usize)>> {
        let limit = self.limit();
        if limit == 0 {
            return None;
        }
        let moved = if self.slots.len() == limit {
            self.pop_idle().map(|idle| (idle.value, idle.bytes))
        } else {
            None
        };
        self.set_limit(limit - 1);
        Some(moved)
    }

    /// Takes back a unit lent by [`lend_unit`](Self::lend_unit), with the
    /// cache's object if it held one, which then always fits. (Were the units
    /// ever unbalanced, the object would be given back, for the caller to drop
    /// after unlocking.)
    pub(crate) fn take_unit_back(&mut self, object: Option<(T, usize)>) -> Option<T> {
        let limit = self.limit() + 1;
        self.set_limit(limit.min(self.shard.share));
        let (value, bytes) = object?;
        let pushed = self.push(value, bytes);
        debug_assert!(pushed.is_ok(), "a unit taken back had no room");
        pushed.err()
    }

    /// Moves every idle object into `out` (whose capacity must be at least the
    /// shard's limit, so that nothing allocates under the lock).
    pub(crate) fn drain_into(&mut self, out: &mut Vec<T>) {
        debug_assert!(out.capacity() - out.len() >= self.slots.len());
        out.extend(self.slots.drain(..).map(|idle| idle.value));
        self.publish_len();
        // Relaxed: a locked counter (see `add_u64`).
        self.shard.retained_bytes.store(0, Relaxed);
    }

    fn publish_len(&self) {
        // Relaxed: a locked counter (see `add_u64`), also read as a hint.
        self.shard.idle.store(self.slots.len(), Relaxed);
    }
}
