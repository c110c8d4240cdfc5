//! The [`Recycle`] trait and its implementations for std collections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::mem::size_of;

use crate::SyncMap;

/// A value that a [`MapPool`](super::MapPool) can create, empty and shrink.
///
/// The pool calls these methods, never while holding one of its locks:
///
/// * [`with_capacity`](Recycle::with_capacity) on a miss, for `prefill`, and once
///   when the pool is built to learn what a "ceiling-sized" object really holds;
/// * [`capacity`](Recycle::capacity) on every return, to compare with the ceiling;
/// * [`reset`](Recycle::reset) on every return of an object within the ceiling;
/// * [`reset_and_shrink`](Recycle::reset_and_shrink) on a return over the ceiling;
/// * [`heap_bytes`](Recycle::heap_bytes) on every return that is kept, for
///   [`PoolStats::retained_bytes`](super::PoolStats::retained_bytes).
///
/// Implement it for your own types to pool them. Every method should be cheap
/// except `reset_and_shrink`, which runs only on oversized objects. A method
/// that panics does not corrupt the pool: the object is dropped and counted in
/// [`PoolStats::returns_dropped`](super::PoolStats::returns_dropped).
///
/// # Example
///
/// ```
/// use tiermap::pool::{MapPool, Recycle};
///
/// /// A reusable line buffer.
/// struct Lines(Vec<String>);
///
/// impl Recycle for Lines {
///     fn with_capacity(capacity: usize) -> Self {
///         Lines(Vec::with_capacity(capacity))
///     }
///     fn reset(&mut self) {
///         self.0.clear();
///     }
///     fn capacity(&self) -> usize {
///         self.0.capacity()
///     }
///     fn heap_bytes(&self) -> usize {
///         // Shallow: the strings are gone once the object is reset.
///         self.0.capacity() * std::mem::size_of::<String>()
///     }
///     fn shrink_to(&mut self, capacity: usize) {
///         self.0.shrink_to(capacity);
///     }
/// }
///
/// let pool: MapPool<Lines> = MapPool::builder().capacity_ceiling(64).build();
/// let mut lines = pool.get();
/// lines.0.push("hello".to_owned());
/// drop(lines); // reset and kept
/// assert_eq!(pool.stats().idle, 1);
/// assert!(pool.get().0.is_empty());
/// ```
pub trait Recycle: Sized {
    /// Creates an empty value that can hold `capacity` elements without
    /// reallocating.
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let v = <Vec<u8> as Recycle>::with_capacity(10);
    /// assert!(v.is_empty() && v.capacity() >= 10);
    /// ```
    fn with_capacity(capacity: usize) -> Self;

    /// Empties the value and keeps its allocation, so that it is equivalent to a
    /// new value of the same capacity.
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let mut v = vec![1, 2, 3];
    /// Recycle::reset(&mut v);
    /// assert!(v.is_empty() && v.capacity() >= 3);
    /// ```
    fn reset(&mut self);

    /// How many elements the value can hold without reallocating, in the unit
    /// that the pool's capacity ceiling uses (elements or slots, not bytes).
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let v: Vec<u64> = Vec::with_capacity(8);
    /// assert_eq!(Recycle::capacity(&v), 8);
    /// ```
    fn capacity(&self) -> usize;

    /// Approximate heap bytes that the value holds itself (shallow: memory owned
    /// by its elements is not counted, as a reset value has no elements).
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let v: Vec<u64> = Vec::with_capacity(8);
    /// assert_eq!(v.heap_bytes(), 64);
    /// ```
    fn heap_bytes(&self) -> usize;

    /// Best-effort shrink to a capacity of at least `capacity` (and at least the
    /// current length).
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let mut v: Vec<u64> = Vec::with_capacity(1000);
    /// Recycle::shrink_to(&mut v, 10);
    /// assert!(v.capacity() < 1000);
    /// ```
    fn shrink_to(&mut self, capacity: usize);

    /// Empties a value whose capacity exceeds `ceiling` and brings its capacity
    /// down to what `with_capacity(ceiling)` would have.
    ///
    /// The default runs [`reset`](Recycle::reset) and then
    /// [`shrink_to`](Recycle::shrink_to), which is right for types whose shrink
    /// of an empty value is cheap. Override it when starting over is cheaper:
    /// the `HashMap` and `HashSet` implementations replace the table by a new
    /// one, which skips clearing (a write over every control byte) the large
    /// table that is about to be freed anyway.
    ///
    /// ```
    /// use tiermap::pool::Recycle;
    ///
    /// let mut v: Vec<u64> = (0..1000).collect();
    /// v.reset_and_shrink(16);
    /// assert!(v.is_empty() && v.capacity() == 16);
    /// ```
    fn reset_and_shrink(&mut self, ceiling: usize) {
        self.reset();
        self.shrink_to(ceiling);
    }

    /// The capacity that `with_capacity(requested)` really gives (collections
    /// round up: a std `HashMap` asked for 1000 slots holds 1792). The pool
    /// calls it once, when it is built, to turn the configured ceiling into the
    /// capacity it compares with; a value already at that capacity is not
    /// shrunk again on every return.
    ///
    /// The default builds such a value and asks it, which costs one transient
    /// ceiling-sized allocation (the size that each idle object is allowed
    /// anyway). Override it when the answer is known without allocating, or
    /// when `with_capacity` has side effects.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tiermap::pool::Recycle;
    ///
    /// assert_eq!(<Vec<u64> as Recycle>::rounded_capacity(1000), 1000);
    /// let slots = <HashMap<u64, u64> as Recycle>::rounded_capacity(1000);
    /// assert!(slots >= 1000);
    /// ```
    fn rounded_capacity(requested: usize) -> usize {
        Self::with_capacity(requested).capacity()
    }
}

/// Bytes of a std `HashMap`/`HashSet` table holding `capacity` entries of
/// `entry` bytes: std's table (`hashbrown`, a `SwissTable`) has a power-of-two
/// number of buckets, 7/8 of them usable, each one entry plus one control byte,
/// and 16 more control bytes for group-wide probing. Approximate by design:
/// alignment padding is ignored.
fn hash_table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    // The inverse of hashbrown's bucket-to-capacity rule: tables under 8
    // buckets keep one bucket free, larger ones one in eight.
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity.saturating_mul(8) / 7).next_power_of_two()
    };
    buckets.saturating_mul(entry + 1).saturating_add(16)
}

/// The pool creates maps with `S::default()` as hasher (a fresh
/// `RandomState` for the std default).
impl<K, V, S> Recycle for HashMap<K, V, S>
where
    K: Eq + Hash,
    S: BuildHasher + Default,
{
    fn with_capacity(capacity: usize) -> Self {
        HashMap::with_capacity_and_hasher(capacity, S::default())
    }

    fn reset(&mut self) {
        // O(1) on an empty map; otherwise drops the entries and rewrites the
        // control bytes, O(capacity): the reason for a ceiling.
        self.clear();
    }

    fn capacity(&self) -> usize {
        HashMap::capacity(self)
    }

    fn heap_bytes(&self) -> usize {
        hash_table_bytes(HashMap::capacity(self), size_of::<(K, V)>())
    }

    fn shrink_to(&mut self, capacity: usize) {
        HashMap::shrink_to(self, capacity);
    }

    fn reset_and_shrink(&mut self, ceiling: usize) {
        // Measured (examples/pool_scenario.rs): for a map of 1M `u64` pairs,
        // `clear` + `shrink_to` and replacing cost the same within noise
        // (about 2.5 ms, spent returning the 35 MiB table to the OS), but
        // replacing skips the write over the 2 MiB of old control bytes, so
        // it is never the slower one.
        *self = HashMap::with_capacity_and_hasher(ceiling, S::default());
    }
}

/// The pool creates sets with `S::default()` as hasher.
impl<T, S> Recycle for HashSet<T, S>
where
    T: Eq + Hash,
    S: BuildHasher + Default,
{
    fn with_capacity(capacity: usize) -> Self {
        HashSet::with_capacity_and_hasher(capacity, S::default())
    }

    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        HashSet::capacity(self)
    }

    fn heap_bytes(&self) -> usize {
        hash_table_bytes(HashSet::capacity(self), size_of::<T>())
    }

    fn shrink_to(&mut self, capacity: usize) {
        HashSet::shrink_to(self, capacity);
    }

    fn reset_and_shrink(&mut self, ceiling: usize) {
        // As for `HashMap`: a new table is cheaper than clearing the old one.
        *self = HashSet::with_capacity_and_hasher(ceiling, S::default());
    }
}

/// A `Vec` of a zero-sized type reports a capacity of `usize::MAX`; the pool
/// then treats any ceiling as `usize::MAX` (such vectors hold no heap memory).
impl<T> Recycle for Vec<T> {
    fn with_capacity(capacity: usize) -> Self {
        Vec::with_capacity(capacity)
    }

    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }

    fn heap_bytes(&self) -> usize {
        Vec::capacity(self).saturating_mul(size_of::<T>())
    }

    fn shrink_to(&mut self, capacity: usize) {
        Vec::shrink_to(self, capacity);
    }

    fn rounded_capacity(requested: usize) -> usize {
        // `Vec` allocates exactly what it is asked for, and never allocates
        // for zero-sized elements.
        if size_of::<T>() == 0 {
            usize::MAX
        } else {
            requested
        }
    }
}

impl<T> Recycle for VecDeque<T> {
    fn with_capacity(capacity: usize) -> Self {
        VecDeque::with_capacity(capacity)
    }

    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        VecDeque::capacity(self)
    }

    fn heap_bytes(&self) -> usize {
        VecDeque::capacity(self).saturating_mul(size_of::<T>())
    }

    fn shrink_to(&mut self, capacity: usize) {
        VecDeque::shrink_to(self, capacity);
    }
}

/// Capacity and ceiling are in bytes for `String`.
impl Recycle for String {
    fn with_capacity(capacity: usize) -> Self {
        String::with_capacity(capacity)
    }

    fn reset(&mut self) {
        self.clear();
    }

    fn capacity(&self) -> usize {
        String::capacity(self)
    }

    fn heap_bytes(&self) -> usize {
        String::capacity(self)
    }

    fn shrink_to(&mut self, capacity: usize) {
        String::shrink_to(self, capacity);
    }

    fn rounded_capacity(requested: usize) -> usize {
        // `String` allocates exactly what it is asked for.
        requested
    }
}

/// A pooled [`SyncMap`] is reset by freeing its tables, entries and values at once (the pool
/// owns it exclusively, so no epoch deferral is needed) and keeping a fresh table of the same
/// nominal capacity, whose chunks are allocated as keys arrive: an idle pooled `SyncMap` holds a
/// directory of a few bytes per 256 slots, not its old contents.
///
/// ```
/// use tiermap::{MapPool, SyncMap};
///
/// let pool: MapPool<SyncMap<u64, u64>> = MapPool::builder().capacity_ceiling(1024).build();
/// {
///     let map = pool.get();
///     for i in 0..10 {
///         map.insert(i, i);
///     }
/// } // reset and kept
/// let map = pool.get();
/// assert!(map.is_empty());
/// assert_eq!(pool.stats().hits, 1);
/// ```
impl<K, V, S> Recycle for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher + Default,
{
    fn with_capacity(capacity: usize) -> Self {
        SyncMap::with_capacity_and_hasher(capacity, S::default())
    }

    fn reset(&mut self) {
        let s = self.stats();
        self.reset_exclusive(s.read_capacity.max(s.dirty_capacity));
    }

    /// Half the slots of the larger table: what [`SyncMap::with_capacity`] promises (a table is
    /// created with two slots per requested key), so that `with_capacity(n).capacity() >= n`
    /// and a reset keeps the capacity unchanged.
    fn capacity(&self) -> usize {
        let s = self.stats();
        s.read_capacity.max(s.dirty_capacity) / 2
    }

    fn heap_bytes(&self) -> usize {
        self.stats().held_bytes
    }

    fn shrink_to(&mut self, capacity: usize) {
        if Recycle::capacity(self) > capacity {
            self.reset_exclusive(capacity.saturating_mul(2));
        }
    }

    fn reset_and_shrink(&mut self, ceiling: usize) {
        self.reset_exclusive(ceiling.saturating_mul(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_table_bytes_inverts_std_capacity() {
        for requested in [1usize, 3, 4, 7, 8, 14, 15, 100, 1024, 5000] {
            let m: HashMap<u64, u64> = HashMap::with_capacity(requested);
            let cap = m.capacity();
            // The bucket count is a power of two holding `cap` at 7/8 load.
            let bytes = hash_table_bytes(cap, 16);
            let buckets = (bytes - 16) / 17;
            assert!(buckets.is_power_of_two(), "{requested}: {buckets}");
            assert!(buckets > cap, "{requested}: {buckets} <= {cap}");
            assert!(buckets * 7 / 8 <= cap || buckets <= 8, "{requested}");
        }
        assert_eq!(hash_table_bytes(0, 16), 0);
    }

    #[test]
    fn oversized_map_is_replaced_by_a_ceiling_sized_one() {
        let mut m: HashMap<u64, u64> = (0..10_000).map(|k| (k, k)).collect();
        m.reset_and_shrink(100);
        assert!(m.is_empty());
        let fresh: HashMap<u64, u64> = HashMap::with_capacity(100);
        assert_eq!(m.capacity(), fresh.capacity());
        let mut s: HashSet<u32> = (0..10_000).collect();
        s.reset_and_shrink(100);
        assert!(s.is_empty() && s.capacity() < 10_000);
    }

    #[test]
    fn default_reset_and_shrink_for_deque_and_string() {
        let mut d: VecDeque<u8> = (0..200).collect();
        d.reset_and_shrink(10);
        assert!(d.is_empty() && d.capacity() < 200);
        let mut s = "x".repeat(1000);
        s.reset_and_shrink(10);
        assert!(s.is_empty() && s.capacity() < 1000);
        assert_eq!(Recycle::heap_bytes(&s), s.capacity());
    }
}
