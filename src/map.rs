//! The safe API: [`SyncMap`], its pinned handle [`Pinned`], and the types they return.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::iter::FusedIterator;

use crate::alarm::{Hooks, RetentionAlarm, RetentionAlert, RetentionPolicy};
use crate::facade::Guard;
use crate::outcome::{CompareExchangeError, Computed, GetOrInsert, Op};
pub use crate::raw::Ref;
use crate::raw::{MapIter, RawMap, Replace};
use crate::stats::{MapStats, Released};

/// A concurrent hash map with Go's `sync.Map` design (a lock-free read tier and a locked dirty
/// tier) whose memory stays proportional to its live entries.
///
/// See the [crate documentation](crate) for the design, the Go-to-Rust method table and the
/// memory promises.
///
/// ```
/// use tiermap::SyncMap;
///
/// let map = SyncMap::new();
/// map.insert("a", 1);
/// assert_eq!(map.get_cloned("a"), Some(1));
/// assert_eq!(*map.get("a").unwrap(), 1);
/// assert_eq!(map.remove("a").as_deref(), Some(&1));
/// assert!(map.is_empty());
/// ```
pub struct SyncMap<K, V, S = RandomState> {
    raw: RawMap<K, V>,
    hasher: S,
    /// The retention alarm and the metrics publisher, fanned out from the engine's one observer.
    hooks: Hooks,
}

impl<K, V> SyncMap<K, V, RandomState> {
    /// An empty map. Allocates only a small header.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::new();
    /// assert!(map.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::with_capacity_and_hasher(0, RandomState::new())
    }

    /// An empty map whose first table has room for `capacity` keys before it is promoted.
    ///
    /// The table is allocated at once (zeroed; a large one is fresh pages that the operating
    /// system backs as keys land in them), and the map still shrinks if it stays far emptier
    /// than `capacity` (see [`SyncMap::stats`]).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::with_capacity(1000);
    /// assert!(map.stats().dirty_capacity >= 1000);
    /// ```
    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_and_hasher(capacity, RandomState::new())
    }
}

impl<K, V, S> SyncMap<K, V, S> {
    /// An empty map using `hasher`.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let map: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::with_hasher(RandomState::new());
    /// map.insert(1, 1);
    /// ```
    pub fn with_hasher(hasher: S) -> Self {
        Self::with_capacity_and_hasher(0, hasher)
    }

    /// An empty map with room for `capacity` keys, using `hasher`.
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let map: tiermap::SyncMap<u32, u32> =
    ///     tiermap::SyncMap::with_capacity_and_hasher(16, RandomState::new());
    /// assert!(map.is_empty());
    /// ```
    ///
    /// A map built for 8192 keys or more is split into shards (see
    /// [`SyncMap::with_capacity_shards_and_hasher`]); a smaller one starts with one, and is
    /// split into as many as a large map gets once it holds 8192 keys.
    pub fn with_capacity_and_hasher(capacity: usize, hasher: S) -> Self {
        SyncMap {
            raw: RawMap::new(capacity),
            hasher,
            hooks: Hooks::default(),
        }
    }

    /// An empty map with room for `capacity` keys in `shards` shards, using `hasher`.
    ///
    /// Each shard is a whole two-tier map (Go's read and dirty maps, with its own lock, miss
    /// clock, promotion and compaction) for the keys whose hash falls in it: writers of keys
    /// in different shards never wait for each other, and a promotion or compaction copies one
    /// shard. `shards` is rounded down to a power of two between 1 and 64. Operations on one
    /// key, `clear`, iteration and the statistics behave the same for any number of shards.
    ///
    /// The other constructors choose: one shard for a map built for fewer than 8192 keys (a
    /// small or pooled map pays for one lock and one pair of tables, as a Go `sync.Map`
    /// does), else four per hardware thread, at most one per 4096 keys and at most 64. A map
    /// built with one shard that way is **split** when it grows: at the first promotion that
    /// finds 8192 keys or more in it (and at most four times that), its one shard becomes
    /// four per hardware thread (at least two, at most 64), in one step that copies the slots
    /// of its read table (no entry moves). So a map built empty and grown by several threads
    /// gets the shards a map built large has. A map built by this constructor keeps the
    /// shards it was given, one included: the split costs one thread's inserts about 10-15 %
    /// of their time (more tables in use at once) and buys two threads' about 20-25 %
    /// (`BENCHMARKS.md`).
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let grown: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::new();
    /// for k in 0..20_000 {
    ///     grown.insert(k, k);
    ///     let _ = grown.get(&(k / 2)); // reads advance the promotion clock
    /// }
    /// assert!(grown.shard_count() > 1);
    /// let one: tiermap::SyncMap<u32, u32> =
    ///     tiermap::SyncMap::with_capacity_shards_and_hasher(0, 1, RandomState::new());
    /// for k in 0..20_000 {
    ///     one.insert(k, k);
    /// }
    /// assert_eq!(one.shard_count(), 1);
    /// ```
    ///
    /// ```
    /// use std::collections::hash_map::RandomState;
    /// let map: tiermap::SyncMap<u32, u32> =
    ///     tiermap::SyncMap::with_capacity_shards_and_hasher(0, 8, RandomState::new());
    /// assert_eq!(map.shard_count(), 8);
    /// map.insert(1, 1);
    /// assert_eq!(map.len(), 1);
    /// ```
    pub fn with_capacity_shards_and_hasher(capacity: usize, shards: usize, hasher: S) -> Self {
        SyncMap {
            raw: RawMap::with_shards(capacity, shards),
            hasher,
            hooks: Hooks::default(),
        }
    }

    /// How many shards the map has now (see [`SyncMap::with_capacity_shards_and_hasher`]: a
    /// map built small has more once it has grown).
    ///
    /// ```
    /// let small: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::with_capacity(100);
    /// assert_eq!(small.shard_count(), 1);
    /// let large: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::with_capacity(1 << 20);
    /// assert!(large.shard_count().is_power_of_two());
    /// ```
    pub fn shard_count(&self) -> usize {
        self.raw.shards().len()
    }

    /// The map's hasher.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::new();
    /// let _ = map.hasher();
    /// ```
    pub fn hasher(&self) -> &S {
        &self.hasher
    }

    /// Pins the current thread and returns a handle whose reads borrow from the pin.
    ///
    /// This is the zero-copy API: `get` returns `&V` with no clone and no lock. Keep a handle
    /// short-lived in long-running loops: values retired while it is alive are not freed until
    /// it is dropped. The handle holds no lock, so any method of the map may be called while it
    /// is alive.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, "one".to_string());
    /// let m = map.pin();
    /// let v: &String = m.get(&1).unwrap();
    /// assert_eq!(v, "one");
    /// ```
    #[inline]
    pub fn pin(&self) -> Pinned<'_, K, V, S> {
        Pinned {
            map: self,
            guard: self.raw.pin(),
        }
    }

    /// Number of keys present.
    ///
    /// Exact when no write is in flight; under concurrent writes it is some value the count
    /// took recently (an insert and a remove racing may be counted in either order, briefly).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 1);
    /// map.insert(2, 2);
    /// assert_eq!(map.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        let guard = self.raw.pin();
        self.raw.len(&guard)
    }

    /// Whether no key is present (with the same caveat as [`SyncMap::len`]).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// assert!(map.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the map's memory is. Takes each shard's dirty lock briefly, one after the other
    /// (the figures of a map being written to add up shards seen at slightly different times).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..100).map(|i| (i, i)).collect();
    /// for i in 0..100 {
    ///     map.remove(&i);
    /// }
    /// let s = map.stats();
    /// assert_eq!(s.len, 0);
    /// assert!(s.deleted <= 64, "deleted entries are purged, not kept: {s}");
    /// ```
    pub fn stats(&self) -> MapStats {
        let guard = self.raw.pin();
        self.raw.stats(&guard)
    }

    /// Installs a retention alarm: `on_alarm` runs once each time one of `policy`'s conditions
    /// crosses its threshold, and the condition re-arms once its value falls back below the
    /// re-arm level (see [`RetentionPolicy`]). Replaces any alarm set before; returns a handle
    /// that counts firings and panics.
    ///
    /// **When it is checked.** Once before this method returns (on this thread), then with
    /// every snapshot the map's observer hook takes: every 64 slow-path (locked) operations of a shard,
    /// after each promotion and after each `clear`. Read hits and lock-free overwrites or
    /// deletes of keys in the read tier never check; a map whose deletes pile up starts a
    /// compaction, which takes the slow path, so the check follows.
    ///
    /// **Cost.** A read hit is unchanged (it never looks at the hook). On the slow path, one
    /// check per 64 operations: a [`SyncMap::stats`] snapshot (the dirty lock once more, briefly,
    /// and a dozen counter loads), an `Arc` clone and three comparisons, about 0.1–0.3 µs, i.e.
    /// a few nanoseconds per slow operation (`benches/alarm.rs` measures it).
    ///
    /// **Where the callback runs.** On the thread whose operation took the snapshot, after the
    /// map released its lock: the callback may call any method of this map (hold it through a
    /// `Weak`, or an `Arc` you break later, to reach it), including this one. It should be quick,
    /// since it delays that operation's return; hand heavy work to another thread.
    ///
    /// **Panics in the callback** are caught and counted ([`RetentionAlarm::panics`]), not
    /// propagated: the panic hook still prints them, the operation that ran the check returns
    /// its result normally, the map stays fully usable, and the crossing counts as reported
    /// (the condition stays tripped until it re-arms, so a broken callback does not panic on
    /// every later check). Under `panic = "abort"` a panicking callback aborts, as any panic.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tiermap::{RetentionCondition, RetentionPolicy, SyncMap};
    ///
    /// let map = Arc::new(SyncMap::<u64, u64>::new());
    /// let log: Arc<Mutex<Vec<String>>> = Arc::default();
    /// let (sink, weak) = (log.clone(), Arc::downgrade(&map));
    /// let policy = RetentionPolicy::new().max_bytes_per_entry(4096).max_retired_bytes(64 << 20);
    /// let alarm = map.set_retention_alarm(policy, move |alert| {
    ///     sink.lock().unwrap().push(alert.to_string());
    ///     if let Some(map) = weak.upgrade() {
    ///         map.shrink_to_fit(); // calling back into the map is fine
    ///     }
    /// });
    /// for i in 0..100_000 {
    ///     map.insert(i, i);
    /// }
    /// assert_eq!(alarm.fired(), 0, "{:?}", log.lock().unwrap()); // a healthy map stays quiet
    /// assert!(!alarm.is_tripped(RetentionCondition::BytesPerEntry));
    /// ```
    pub fn set_retention_alarm(
        &self,
        policy: RetentionPolicy,
        on_alarm: impl Fn(&RetentionAlert) + Send + Sync + 'static,
    ) -> RetentionAlarm {
        let alarm = self
            .hooks
            .set_alarm(policy, Box::new(on_alarm), |o| self.raw.set_observer(o));
        alarm.check(&|| self.stats());
        alarm
    }

    /// Removes the retention alarm, returning its handle if one was set. When no metrics
    /// publisher is set either, the observer hook is emptied and slow operations stop taking
    /// snapshots.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// map.set_retention_alarm(tiermap::RetentionPolicy::new().max_deleted_ratio(0.5), |_| {});
    /// assert!(map.clear_retention_alarm().is_some());
    /// assert!(map.clear_retention_alarm().is_none());
    /// ```
    pub fn clear_retention_alarm(&self) -> Option<RetentionAlarm> {
        self.hooks.clear_alarm(|o| self.raw.set_observer(o))
    }

    /// Publishes this map's statistics through the [`metrics`](https://docs.rs/metrics) facade,
    /// labelled `map="<name>"` (feature `metrics`). Replaces any publisher set before; composes
    /// with [`SyncMap::set_retention_alarm`] (both run on the same snapshots).
    ///
    /// | metric                          | kind    | from                      |
    /// |---------------------------------|---------|---------------------------|
    /// | `tiermap_map_entries`           | gauge   | [`MapStats::len`]         |
    /// | `tiermap_map_deleted_entries`   | gauge   | [`MapStats::deleted`]     |
    /// | `tiermap_map_held_bytes`        | gauge   | [`MapStats::held_bytes`]  |
    /// | `tiermap_map_retired_bytes`     | gauge   | [`MapStats::retired_bytes`] |
    /// | `tiermap_map_promotions_total`  | counter | [`MapStats::promotions`]  |
    /// | `tiermap_map_compactions_total` | counter | [`MapStats::compactions`] |
    ///
    /// The values are set once before this method returns (so calling it again with the same
    /// name publishes on demand) and then at every snapshot of the observer hook (every 64
    /// slow-path operations, after promotions and clears; see [`SyncMap::set_retention_alarm`]
    /// for the cost): a gauge may lag a burst of lock-free deletes until the next slow
    /// operation. The metric handles are registered with the
    /// recorder current when this is called, so install the recorder (e.g. a Prometheus
    /// exporter) first. Without the feature, neither this method nor the `metrics` dependency
    /// exists, and nothing is paid.
    ///
    /// ```
    /// let sessions: tiermap::SyncMap<u64, String> = tiermap::SyncMap::new();
    /// sessions.publish_metrics("sessions");
    /// sessions.insert(1, "alice".into());
    /// ```
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self, name: impl Into<String>) {
        self.hooks
            .set_metrics(name.into(), |o| self.raw.set_observer(o));
        self.hooks.publish_now(&self.stats());
    }

    /// Stops publishing metrics (feature `metrics`); whether a publisher was set. The recorder
    /// keeps the last values.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// map.publish_metrics("m");
    /// assert!(map.unpublish_metrics());
    /// assert!(!map.unpublish_metrics());
    /// ```
    #[cfg(feature = "metrics")]
    pub fn unpublish_metrics(&self) -> bool {
        self.hooks.clear_metrics(|o| self.raw.set_observer(o))
    }
}

impl<K, V, S> SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher,
{
    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        RawMap::<K, V>::mix(self.hasher.hash_one(key))
    }

    /// The value for `key` (Go's `Load`), as a lock-free [`Ref`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert("k", vec![1, 2]);
    /// assert_eq!(map.get("k").unwrap().len(), 2);
    /// assert!(map.get("missing").is_none());
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.raw.get_ref(hash, key)
    }

    /// A clone of the value for `key`.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, "x".to_string());
    /// assert_eq!(map.get_cloned(&1).as_deref(), Some("x"));
    /// ```
    #[inline]
    pub fn get_cloned<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.pin().get(key).cloned()
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, ());
    /// assert!(map.contains_key(&1));
    /// assert!(!map.contains_key(&2));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.pin().contains_key(key)
    }

    /// Sets the value for `key` (Go's `Store` and `Swap`), returning the previous one.
    ///
    /// Replacing the value of a key already in the read tier is lock-free; a new key takes the
    /// dirty lock.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert!(map.insert(1, 'a').is_none());
    /// assert_eq!(map.insert(1, 'b').as_deref(), Some(&'a'));
    /// ```
    pub fn insert(&self, key: K, value: V) -> Option<Ref<'_, V>> {
        let hash = self.hash(&key);
        self.raw.insert_ref(hash, key, value)
    }

    /// The value for `key`, inserting `value` if absent (Go's `LoadOrStore`). A deleted key
    /// counts as absent.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert_eq!(*map.get_or_insert(1, 10).into_inner(), 10);
    /// assert_eq!(*map.get_or_insert(1, 20).into_inner(), 10);
    /// ```
    pub fn get_or_insert(&self, key: K, value: V) -> GetOrInsert<Ref<'_, V>> {
        self.get_or_insert_with(key, || value)
    }

    /// The value for `key`, inserting `make()` if absent.
    ///
    /// `make` runs at most once, only after the key was seen absent, and outside every lock (it
    /// may use the map). If another thread inserts the key meanwhile, that value wins and
    /// `make`'s is dropped. If `make` panics, the map is unchanged.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let mut calls = 0;
    /// map.get_or_insert_with(1, || { calls += 1; "one" });
    /// map.get_or_insert_with(1, || { calls += 1; "uno" });
    /// assert_eq!(calls, 1);
    /// ```
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> GetOrInsert<Ref<'_, V>> {
        let hash = self.hash(&key);
        self.raw.get_or_insert_with_ref(hash, key, make)
    }

    /// Removes `key`, returning its value (Go's `LoadAndDelete`; `Delete` ignores the result).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 1);
    /// assert_eq!(map.remove(&1).as_deref(), Some(&1));
    /// assert!(map.remove(&1).is_none());
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.raw.remove_ref(hash, key)
    }

    /// Removes `key` if `pred` accepts its value, returning the removed value.
    ///
    /// `pred` runs outside every lock; if the value changes concurrently it is called again
    /// with the new value.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 5);
    /// assert!(map.remove_if(&1, |v| *v > 10).is_none());
    /// assert_eq!(map.remove_if(&1, |v| *v == 5).as_deref(), Some(&5));
    /// ```
    pub fn remove_if<Q>(&self, key: &Q, pred: impl FnMut(&V) -> bool) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.raw.remove_if_ref(hash, key, pred)
    }

    /// Removes `key` if its value equals `current` (Go's `CompareAndDelete`). A missing key
    /// gives `false`.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 5);
    /// assert!(!map.compare_remove(&1, &6));
    /// assert!(map.compare_remove(&1, &5));
    /// assert!(!map.compare_remove(&1, &5));
    /// ```
    pub fn compare_remove<Q>(&self, key: &Q, current: &V) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: PartialEq,
    {
        self.remove_if(key, |v| v == current).is_some()
    }

    /// Replaces the value of `key` with `new` if it equals `current` (Go's `CompareAndSwap`),
    /// returning the replaced value. A missing or deleted key fails and inserts nothing.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert!(map.compare_exchange(&1, &0, 1).is_err()); // absent: nothing inserted
    /// assert!(map.get(&1).is_none());
    /// map.insert(1, 0);
    /// assert_eq!(*map.compare_exchange(&1, &0, 1).unwrap(), 0);
    /// assert_eq!(map.get_cloned(&1), Some(1));
    /// ```
    pub fn compare_exchange<Q>(
        &self,
        key: &Q,
        current: &V,
        new: V,
    ) -> Result<Ref<'_, V>, CompareExchangeError<Ref<'_, V>, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: PartialEq,
    {
        let hash = self.hash(key);
        self.raw.compare_exchange_ref(hash, key, current, new)
    }

    /// Replaces the value of `key` by `f(current)`, atomically, and returns the new value; `None`
    /// if the key is absent (then `f` is not called and nothing is inserted).
    ///
    /// The new value is stored with a compare-and-swap that succeeds only if the key still holds
    /// the value `f` saw, so no concurrent write is lost: if another thread changed the value in
    /// between, `f` runs again on the new one. **`f` may therefore run more than once** (keep it
    /// free of side effects you count on), and its results that were not stored are dropped.
    /// `f` runs outside every lock (it may use the map), and updating a present key takes no
    /// lock. If `f` panics, the map is unchanged. Go's `sync.Map` has no equivalent (it needs a
    /// `CompareAndSwap` loop).
    ///
    /// ```
    /// let hits = tiermap::SyncMap::new();
    /// assert!(hits.update("/", |n| n + 1).is_none()); // absent: nothing inserted
    /// hits.insert("/", 0);
    /// assert_eq!(*hits.update("/", |n| n + 1).unwrap(), 1);
    /// assert_eq!(hits.get_cloned("/"), Some(1));
    /// ```
    pub fn update<Q>(&self, key: &Q, f: impl FnMut(&V) -> V) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        self.raw.update_ref(hash, key, f)
    }

    /// Replaces the value of `key` by `f(current)` if the key is present, else inserts
    /// `default`; returns the value stored. The counter idiom:
    /// `map.update_or_insert(key, |n| n + 1, 1)`.
    ///
    /// Atomic as [`SyncMap::update`] (and `f` may likewise run more than once): no concurrent
    /// update or insert is lost. If the key is inserted by another thread between the moment
    /// it was seen absent and the insert, `f` is applied to that thread's value instead, and
    /// `default` is dropped. A new key goes to the dirty tier as with
    /// [`SyncMap::get_or_insert`]. `f` runs outside every lock; if it panics, the map is
    /// unchanged.
    ///
    /// ```
    /// let words = tiermap::SyncMap::new();
    /// for w in "the cat and the hat".split(' ') {
    ///     words.update_or_insert(w, |n| n + 1, 1);
    /// }
    /// assert_eq!(words.get_cloned("the"), Some(2));
    /// assert_eq!(*words.update_or_insert("cat", |n| n + 1, 1), 2);
    /// ```
    pub fn update_or_insert(&self, key: K, f: impl FnMut(&V) -> V, default: V) -> Ref<'_, V> {
        self.update_or_insert_with(key, f, || default)
    }

    /// Replaces the value of `key` by `f(current)` if the key is present, else inserts
    /// `make()`; returns the value stored.
    ///
    /// As [`SyncMap::update_or_insert`]; `make` runs at most once, only after the key was seen
    /// absent, and outside every lock. If the key turns out present after all, `make`'s value
    /// is kept for as long as the operation runs (the key may turn absent again) and then
    /// dropped.
    ///
    /// ```
    /// let lists: tiermap::SyncMap<u32, Vec<u32>> = tiermap::SyncMap::new();
    /// let push = |v: &Vec<u32>| {
    ///     let mut v = v.clone();
    ///     v.push(2);
    ///     v
    /// };
    /// lists.update_or_insert_with(1, push, || vec![1]);
    /// lists.update_or_insert_with(1, push, || vec![1]);
    /// assert_eq!(lists.get_cloned(&1), Some(vec![1, 2]));
    /// ```
    pub fn update_or_insert_with(
        &self,
        key: K,
        f: impl FnMut(&V) -> V,
        make: impl FnOnce() -> V,
    ) -> Ref<'_, V> {
        let hash = self.hash(&key);
        self.raw.update_or_insert_with_ref(hash, key, f, make)
    }

    /// Reads, decides and writes in one atomic step: `f` sees the current value (`None` if the
    /// key is absent) and returns an [`Op`]: keep the key as it is, store a value (replacing
    /// the present one, or inserting the key), or remove the key. Returns what was done, with
    /// the values involved ([`Computed`]).
    ///
    /// The operation is applied only if the key still holds what `f` saw (the same value, or
    /// still absent); otherwise `f` runs again on what it holds now. **`f` may therefore run
    /// more than once**, and the result reflects its last call; values of earlier calls that
    /// were not stored are dropped. `f` runs outside every lock (it may use the map);
    /// replacing a present key or keeping anything takes no lock, removing works as
    /// [`SyncMap::remove`] does, and a new key goes to the dirty tier as with
    /// [`SyncMap::insert`]. If `f` panics, the map is unchanged.
    /// Go's `sync.Map` has no equivalent (it needs a `Load` + `CompareAndSwap` /
    /// `LoadOrStore` / `CompareAndDelete` loop).
    ///
    /// ```
    /// use tiermap::{Computed, Op, SyncMap};
    ///
    /// // A reference count: the key is removed when it drops to zero.
    /// let refs: SyncMap<&str, u32> = SyncMap::new();
    /// let acquire = |n: Option<&u32>| Op::Insert(n.map_or(1, |n| n + 1));
    /// let release = |n: Option<&u32>| match n {
    ///     Some(1) | None => Op::Remove,
    ///     Some(n) => Op::Insert(n - 1),
    /// };
    /// refs.compute("conn", acquire);
    /// refs.compute("conn", acquire);
    /// assert!(matches!(refs.compute("conn", release), Computed::Updated { new, .. } if *new == 1));
    /// assert!(matches!(refs.compute("conn", release), Computed::Removed(_)));
    /// assert!(refs.is_empty());
    /// ```
    pub fn compute(&self, key: K, mut f: impl FnMut(Option<&V>) -> Op<V>) -> Computed<Ref<'_, V>> {
        let hash = self.hash(&key);
        self.raw.compute_ref(hash, key, |cur, _| f(cur))
    }

    /// Calls `f` on every present key and value (Go's `Range` without early exit).
    ///
    /// `f` may call any method of the map, including `insert`, `remove`, `clear` and nested
    /// iteration: no lock is held while it runs. Each key is visited at most once; see
    /// [`Pinned::iter`] for what concurrent changes may be seen.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
    /// let mut sum = 0;
    /// map.for_each(|_, v| sum += v);
    /// assert_eq!(sum, 45);
    /// ```
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for (k, v) in self.pin().iter() {
            f(k, v);
        }
    }

    /// Go's `Range`: calls `f` on each key and value until it returns `false`.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
    /// let mut seen = 0;
    /// map.range(|_, _| { seen += 1; seen < 3 });
    /// assert_eq!(seen, 3);
    /// ```
    pub fn range(&self, mut f: impl FnMut(&K, &V) -> bool) {
        for (k, v) in self.pin().iter() {
            if !f(k, v) {
                break;
            }
        }
    }

    /// Frees what this map retired and no guard can see any more, now, on this thread, instead
    /// of within the background reclaimer's next ticks (or, with it turned off, a step per
    /// later write): removed values, superseded and cleared tables. Gives the memory back to
    /// the operating system if that is 1 MiB or more (see [`crate::memory`]). Returns this
    /// map's retired bytes still waiting (because a guard pinned before they were retired is
    /// alive, on some thread). It retries for about 1.5 ms while other threads' guards hold
    /// memory back, and waits (at most 50 ms) for a tick of the background reclaimer in
    /// progress, whose brief pin would otherwise do the same.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    /// map.clear();
    /// assert_eq!(map.reclaim(), 0);
    /// ```
    pub fn reclaim(&self) -> usize {
        self.raw.reclaim()
    }

    /// Keeps only the entries for which `f` returns `true`.
    ///
    /// `f` runs outside every lock. An entry whose value changes while `f` looks at it is kept
    /// (the new value was not judged).
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
    /// map.retain(|_, v| v % 2 == 0);
    /// assert_eq!(map.len(), 5);
    /// ```
    pub fn retain(&self, f: impl FnMut(&K, &V) -> bool) {
        let guard = self.raw.pin();
        self.raw.retain(&guard, f);
    }

    /// Removes every key (Go's `Clear`), as one operation even across shards (no lookup sees one
    /// shard cleared and then another not). O(shards) under the locks: the old tables, entries and
    /// values are retired as one unit and freed **without any further call on the map**: by
    /// the background reclaimer within a couple of 10 ms ticks once every guard pinned before
    /// the call is dropped (see [`crate::memory`]), on its thread, so that no operation of yours
    /// pays for the whole map. With the reclaimer turned off they are freed a bounded step per
    /// later write. Use [`SyncMap::clear_and_release`] to free them before returning. Clearing
    /// a map that holds nothing allocates nothing.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
    /// map.clear();
    /// assert!(map.is_empty());
    /// ```
    pub fn clear(&self) {
        let guard = self.raw.pin();
        self.raw.clear(&guard);
    }

    /// Removes every key and gives the memory back before returning, to the operating system
    /// too.
    ///
    /// The map is cleared as by [`SyncMap::clear`]; then, on this thread, the map's retired
    /// memory is freed as soon as its grace period is over (as [`SyncMap::reclaim`] does), and
    /// the allocator is asked to return free pages to the operating system (`malloc_trim` on
    /// glibc; see [`crate::memory`]). When the call returns, the map holds what a new map holds,
    /// and [`Released::pending_bytes`] is 0 unless a guard pinned before the call is still
    /// alive (a [`Ref`], [`Pinned`] or iteration on any thread, including the caller's own):
    /// that memory is freed by the background reclaimer once the last such guard is dropped.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    /// let released = map.clear_and_release();
    /// assert_eq!(released.pending_bytes, 0);
    /// assert!(map.stats().held_bytes < 1024);
    /// ```
    pub fn clear_and_release(&self) -> Released {
        let before = self.stats();
        self.clear();
        let pending_bytes = self.reclaim();
        let held_after = self.stats().held_bytes;
        Released {
            released_bytes: (before.held_bytes + before.retired_bytes)
                .saturating_sub(pending_bytes + held_after),
            pending_bytes,
        }
    }

    /// Rebuilds the tables now so that they hold only live entries, dropping every deleted
    /// entry, and frees what it can before returning.
    ///
    /// The map does this by itself, a few slots per operation, when deleted entries pass half
    /// the live ones or the tables grow far larger than the live set; call this after a bulk
    /// removal to get the memory back at once. It costs O(n), done in steps of about a thousand
    /// slots with the lock released between steps.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
    /// for i in 0..9_990 {
    ///     map.remove(&i);
    /// }
    /// map.shrink_to_fit();
    /// let s = map.stats();
    /// assert_eq!(s.deleted, 0);
    /// assert!(s.read_capacity < 100, "{s}");
    /// ```
    pub fn shrink_to_fit(&self) {
        {
            let guard = self.raw.pin();
            self.raw.compact(&guard);
        }
        self.reclaim();
    }
}

impl<K, V, S> SyncMap<K, V, S> {
    /// The engine, for white-box tests of the crate and for `rayon_impls`.
    #[cfg(any(test, feature = "rayon"))]
    pub(crate) fn raw(&self) -> &RawMap<K, V> {
        &self.raw
    }

    /// The engine, with exclusive access (white-box tests).
    #[cfg(test)]
    pub(crate) fn raw_mut(&mut self) -> &mut RawMap<K, V> {
        &mut self.raw
    }

    /// Empties a map you own exclusively and frees its entries, values and tables at once (no
    /// epoch deferral is needed with `&mut self`), leaving a fresh, empty table of `slots`
    /// slots. Used by [`MapPool`](crate::MapPool).
    pub(crate) fn reset_exclusive(&mut self, slots: usize) {
        self.raw.reset_exclusive(slots);
    }

    /// Loom builds only (`--cfg tiermap_loom`): makes this map, which must not have been used
    /// yet, share `other`'s epoch collector, as all maps share crossbeam's global collector in
    /// normal builds. Lets a model run one map's deferred closures from another map's
    /// operations, after the first map is dropped.
    ///
    /// ```text
    /// // loom-tests/tests/models/drop_burial.rs
    /// let mut b = new_map();
    /// b.loom_share_collector(&a);
    /// ```
    #[cfg(tiermap_loom)]
    #[doc(hidden)]
    pub fn loom_share_collector<K2, V2, S2>(&mut self, other: &SyncMap<K2, V2, S2>) {
        self.raw.share_collector(&other.raw);
    }

    /// Loom builds only (`--cfg tiermap_loom`): makes this map, which must not have been used
    /// yet and must have one shard, split into two shards at the first promotion that finds
    /// `at` live keys in it (loom builds never split otherwise, so that the other models keep
    /// their state space).
    ///
    /// ```text
    /// // loom-tests/tests/models/split.rs
    /// let mut map = new_map();
    /// map.loom_split_at(2);
    /// ```
    #[cfg(tiermap_loom)]
    #[doc(hidden)]
    pub fn loom_split_at(&mut self, at: usize) {
        self.raw.set_split_at(at);
    }

    /// Loom builds only (`--cfg tiermap_loom`): what the background reclaimer's idle watch does
    /// to a map left quiet (loom builds never start the reclaimer): each shard's migration
    /// finished and its dirty tier promoted, under a `try_lock` (a shard whose lock is busy is
    /// left as it is).
    ///
    /// ```text
    /// // loom-tests/tests/models/idle.rs
    /// thread::spawn(move || map.loom_idle_steps());
    /// ```
    #[cfg(tiermap_loom)]
    #[doc(hidden)]
    pub fn loom_idle_steps(&self)
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let guard = self.raw.pin();
        self.raw.idle_steps(&guard);
    }
}

impl<K, V> Default for SyncMap<K, V, RandomState> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, S> fmt::Debug for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static + fmt::Debug,
    V: Send + 'static + fmt::Debug,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pin().iter()).finish()
    }
}

impl<K, V, S> Clone for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static + Clone,
    V: Send + 'static + Clone,
    S: BuildHasher + Clone,
{
    /// A deep copy: the two maps share no table, entry or value.
    fn clone(&self) -> Self {
        let map = SyncMap::with_capacity_and_hasher(self.len(), self.hasher.clone());
        {
            let pinned = map.pin();
            for (k, v) in self.pin().iter() {
                pinned.insert(k.clone(), v.clone());
            }
        }
        map
    }
}

impl<K, V, S> FromIterator<(K, V)> for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher + Default,
{
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut map = SyncMap::with_capacity_and_hasher(iter.size_hint().0, S::default());
        map.extend(iter);
        map
    }
}

impl<K, V, S> Extend<(K, V)> for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher,
{
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let pinned = self.pin();
        for (k, v) in iter {
            pinned.insert(k, v);
        }
    }
}

impl<K, V, S> IntoIterator for SyncMap<K, V, S> {
    type Item = (K, V);
    type IntoIter = IntoIter<K, V>;

    /// Moves every key and value out of the map.
    fn into_iter(mut self) -> IntoIter<K, V> {
        let mut out = Vec::new();
        self.raw.drain_into(&mut out);
        IntoIter {
            inner: out.into_iter(),
        }
    }
}

/// An owning iterator over a [`SyncMap`]'s entries (from `into_iter`).
///
/// ```
/// let map: tiermap::SyncMap<u32, String> = (0..3).map(|i| (i, i.to_string())).collect();
/// let mut all: Vec<(u32, String)> = map.into_iter().collect();
/// all.sort();
/// assert_eq!(all[2], (2, "2".to_string()));
/// ```
pub struct IntoIter<K, V> {
    inner: std::vec::IntoIter<(K, V)>,
}

impl<K, V> Iterator for IntoIter<K, V> {
    type Item = (K, V);
    fn next(&mut self) -> Option<(K, V)> {
        self.inner.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl<K, V> ExactSizeIterator for IntoIter<K, V> {}
impl<K, V> FusedIterator for IntoIter<K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for IntoIter<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.inner.as_slice()).finish()
    }
}

/// A map handle with the current thread pinned: the zero-copy API (from [`SyncMap::pin`]).
///
/// Every method mirrors the [`SyncMap`] method of the same name, returning `&V` that borrows
/// from the handle instead of a [`Ref`].
///
/// ```
/// let map = tiermap::SyncMap::new();
/// let m = map.pin();
/// m.insert(1, 10);
/// m.insert(2, 20);
/// let total: i32 = m.values().sum();
/// assert_eq!(total, 30);
/// ```
pub struct Pinned<'m, K, V, S = RandomState> {
    map: &'m SyncMap<K, V, S>,
    pub(crate) guard: Guard,
}

impl<'m, K, V, S> Pinned<'m, K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher,
{
    /// The value for `key`.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 1);
    /// assert_eq!(map.pin().get(&1), Some(&1));
    /// ```
    #[inline]
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.raw.get(self.map.hash(key), key, &self.guard)
    }

    /// Whether `key` is present.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 1);
    /// assert!(map.pin().contains_key(&1));
    /// ```
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Sets the value, returning the previous one. See [`SyncMap::insert`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert_eq!(m.insert(1, 1), None);
    /// assert_eq!(m.insert(1, 2), Some(&1));
    /// ```
    pub fn insert(&self, key: K, value: V) -> Option<&V> {
        self.map
            .raw
            .insert(self.map.hash(&key), key, value, &self.guard)
    }

    /// See [`SyncMap::get_or_insert`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert_eq!(m.get_or_insert(1, 1).into_inner(), &1);
    /// ```
    pub fn get_or_insert(&self, key: K, value: V) -> GetOrInsert<&V> {
        self.get_or_insert_with(key, || value)
    }

    /// See [`SyncMap::get_or_insert_with`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert!(m.get_or_insert_with(1, || 1).is_inserted());
    /// ```
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> GetOrInsert<&V> {
        let hash = self.map.hash(&key);
        self.map
            .raw
            .get_or_insert_with(hash, key, make, &self.guard)
    }

    /// See [`SyncMap::remove`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// m.insert(1, 1);
    /// assert_eq!(m.remove(&1), Some(&1));
    /// ```
    pub fn remove<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.raw.remove(self.map.hash(key), key, &self.guard)
    }

    /// See [`SyncMap::remove_if`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// m.insert(1, 1);
    /// assert_eq!(m.remove_if(&1, |v| *v == 1), Some(&1));
    /// ```
    pub fn remove_if<Q>(&self, key: &Q, pred: impl FnMut(&V) -> bool) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .raw
            .remove_if(self.map.hash(key), key, pred, &self.guard)
    }

    /// See [`SyncMap::compare_exchange`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// m.insert(1, 1);
    /// assert_eq!(m.compare_exchange(&1, &1, 2), Ok(&1));
    /// ```
    pub fn compare_exchange<Q>(
        &self,
        key: &Q,
        current: &V,
        new: V,
    ) -> Result<&V, CompareExchangeError<&V, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: PartialEq,
    {
        match self
            .map
            .raw
            .replace_if(self.map.hash(key), key, |v| v == current, new, &self.guard)
        {
            Replace::Done(v) => Ok(v),
            Replace::Absent(new) => Err(CompareExchangeError { current: None, new }),
            Replace::Mismatch(v, new) => Err(CompareExchangeError {
                current: Some(v),
                new,
            }),
        }
    }

    /// See [`SyncMap::update`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// m.insert(1, 1);
    /// assert_eq!(m.update(&1, |n| n * 10), Some(&10));
    /// assert_eq!(m.update(&2, |n| n * 10), None);
    /// ```
    pub fn update<Q>(&self, key: &Q, f: impl FnMut(&V) -> V) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.raw.update(self.map.hash(key), key, f, &self.guard)
    }

    /// See [`SyncMap::update_or_insert`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert_eq!(m.update_or_insert("k", |n| n + 1, 1), &1);
    /// assert_eq!(m.update_or_insert("k", |n| n + 1, 1), &2);
    /// ```
    pub fn update_or_insert(&self, key: K, f: impl FnMut(&V) -> V, default: V) -> &V {
        self.update_or_insert_with(key, f, || default)
    }

    /// See [`SyncMap::update_or_insert_with`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert_eq!(m.update_or_insert_with("k", |s: &String| s.to_uppercase(), || "a".into()), "a");
    /// assert_eq!(m.update_or_insert_with("k", |s: &String| s.to_uppercase(), || "a".into()), "A");
    /// ```
    pub fn update_or_insert_with(
        &self,
        key: K,
        f: impl FnMut(&V) -> V,
        make: impl FnOnce() -> V,
    ) -> &V {
        let hash = self.map.hash(&key);
        self.map
            .raw
            .update_or_insert_with(hash, key, f, make, &self.guard)
    }

    /// See [`SyncMap::compute`].
    ///
    /// ```
    /// use tiermap::{Computed, Op};
    ///
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert_eq!(m.compute(1, |_| Op::Insert(1)), Computed::Inserted(&1));
    /// assert_eq!(
    ///     m.compute(1, |v| Op::Insert(v.unwrap() + 1)),
    ///     Computed::Updated { old: &1, new: &2 }
    /// );
    /// assert_eq!(m.compute(1, |_| Op::Remove), Computed::Removed(&2));
    /// ```
    pub fn compute(&self, key: K, mut f: impl FnMut(Option<&V>) -> Op<V>) -> Computed<&V> {
        let hash = self.map.hash(&key);
        self.map
            .raw
            .compute(hash, key, |cur, _| f(cur), &self.guard)
    }

    /// See [`SyncMap::compare_remove`].
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// m.insert(1, 1);
    /// assert!(m.compare_remove(&1, &1));
    /// ```
    pub fn compare_remove<Q>(&self, key: &Q, current: &V) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: PartialEq,
    {
        self.remove_if(key, |v| v == current).is_some()
    }

    /// Iterates the present keys and values.
    ///
    /// Each key is yielded at most once. Keys inserted after the iteration started may or may
    /// not be seen; a key removed before the iteration reaches it is not; a key whose value
    /// changes concurrently shows one of the values it held during the iteration. A `clear`
    /// ends the iteration. If the dirty tier holds keys the read tier lacks, starting the
    /// iteration first finishes the running migration and promotes (as Go's `Range` does), in
    /// steps with the lock released between them; the iteration itself holds no lock, so the
    /// loop body may call any method of the map.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..4).map(|i| (i, i * 10)).collect();
    /// let m = map.pin();
    /// let mut keys: Vec<u32> = m.iter().map(|(k, _)| *k).collect();
    /// keys.sort();
    /// assert_eq!(keys, [0, 1, 2, 3]);
    /// for (k, _) in m.iter() {
    ///     map.remove(k); // calling back into the map is fine
    /// }
    /// assert!(map.is_empty());
    /// ```
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter {
            inner: MapIter::new(&self.map.raw, &self.guard),
        }
    }

    /// Iterates the present keys.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..3).map(|i| (i, i)).collect();
    /// assert_eq!(map.pin().keys().count(), 3);
    /// ```
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Iterates the present values.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = (0..3).map(|i| (i, i)).collect();
    /// assert_eq!(map.pin().values().sum::<u32>(), 3);
    /// ```
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Number of keys present (see [`SyncMap::len`]).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 1);
    /// assert_eq!(map.pin().len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.map.raw.len(&self.guard)
    }

    /// Whether no key is present.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// assert!(map.pin().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The map this handle pins.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u8, u8> = tiermap::SyncMap::new();
    /// let m = map.pin();
    /// assert!(std::ptr::eq(m.map(), &map));
    /// ```
    pub fn map(&self) -> &'m SyncMap<K, V, S> {
        self.map
    }
}

impl<'a, K, V, S> IntoIterator for &'a Pinned<'_, K, V, S>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    S: BuildHasher,
{
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Iter<'a, K, V> {
        self.iter()
    }
}

impl<K, V, S> fmt::Debug for Pinned<'_, K, V, S>
where
    K: Hash + Eq + Send + 'static + fmt::Debug,
    V: Send + 'static + fmt::Debug,
    S: BuildHasher,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// An iterator over a pinned map's keys and values (from [`Pinned::iter`]).
///
/// ```
/// let map: tiermap::SyncMap<u32, u32> = (0..3).map(|i| (i, i)).collect();
/// let m = map.pin();
/// let it: tiermap::Iter<'_, u32, u32> = m.iter();
/// assert_eq!(it.count(), 3);
/// ```
pub struct Iter<'p, K, V> {
    inner: MapIter<'p, K, V>,
}

impl<'p, K: Send + 'static, V: Send + 'static> Iterator for Iter<'p, K, V> {
    type Item = (&'p K, &'p V);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl<K: Send + 'static, V: Send + 'static> FusedIterator for Iter<'_, K, V> {}

impl<K, V> fmt::Debug for Iter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Iter { .. }")
    }
}
