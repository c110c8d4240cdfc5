//! Parallel iteration and collection with rayon (feature `rayon`).
//!
//! [`Pinned::par_iter`] is [`Pinned::iter`] cut into slot ranges for rayon's workers; the
//! unsafe part (reading under the calling thread's pin from other threads) is
//! `raw::par::RawParIter`. Collecting and extending insert through the normal `insert` path.

use std::fmt;
use std::hash::{BuildHasher, Hash};

use rayon::iter::plumbing::{bridge_unindexed, UnindexedConsumer};
use rayon::iter::{FromParallelIterator, IntoParallelIterator, ParallelExtend, ParallelIterator};

use crate::raw::par::RawParIter;
use crate::{Pinned, SyncMap};

/// A parallel iterator over a pinned map's keys and values (from [`Pinned::par_iter`], or
/// `(&pinned).into_par_iter()`).
///
/// What it yields is what [`Pinned::iter`] would: each key at most once, with one of the values
/// it held during the iteration. The work is split by slot ranges of the read tier; the thread
/// that owns the [`Pinned`] stays pinned while rayon's worker threads read the entries (rayon's
/// parallel iterator methods block the calling thread until they are done), which is what keeps
/// the entries and values alive.
///
/// ```
/// use rayon::prelude::*;
///
/// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i * 2)).collect();
/// let m = map.pin();
/// let it: tiermap::ParIter<'_, u64, u64> = m.par_iter();
/// assert_eq!(it.map(|(_, v)| *v).sum::<u64>(), 999 * 1000);
/// ```
pub struct ParIter<'p, K, V> {
    inner: RawParIter<'p, K, V>,
}

impl<'p, K, V> ParallelIterator for ParIter<'p, K, V>
where
    K: Send + Sync,
    V: Send + Sync,
{
    type Item = (&'p K, &'p V);

    fn drive_unindexed<C>(self, consumer: C) -> C::Result
    where
        C: UnindexedConsumer<Self::Item>,
    {
        bridge_unindexed(self.inner, consumer)
    }
}

impl<K, V> fmt::Debug for ParIter<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ParIter { .. }")
    }
}

impl<'m, K, V, S> Pinned<'m, K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    /// Iterates the present keys and values in parallel, with rayon (feature `rayon`).
    ///
    /// The same contract as [`Pinned::iter`]: starting it completes a running migration and
    /// promotes if the dirty tier holds keys the read tier lacks (on this thread, before any
    /// parallel work); then each key is yielded at most once, keys inserted meanwhile may or may
    /// not be seen, a key removed before the walk reaches it is not, a changing key shows one of
    /// the values it held, and a `clear` ends the iteration. No lock is held, so the closures
    /// may call any method of the map.
    ///
    /// This thread stays pinned (this handle is borrowed) until the parallel operation ends,
    /// so values retired meanwhile are freed only after it. Needs `K, V: Send + Sync`: other
    /// threads read them.
    ///
    /// ```
    /// use rayon::prelude::*;
    ///
    /// let map: tiermap::SyncMap<u32, u32> = (0..100).map(|i| (i, i)).collect();
    /// let m = map.pin();
    /// let mut keys: Vec<u32> = m.par_iter().map(|(k, _)| *k).collect();
    /// keys.sort();
    /// assert_eq!(keys, (0..100).collect::<Vec<_>>());
    /// // Equivalently, through `IntoParallelIterator for &Pinned`:
    /// assert_eq!((&m).into_par_iter().filter(|(_, v)| **v % 2 == 0).count(), 50);
    /// ```
    pub fn par_iter(&self) -> ParIter<'_, K, V> {
        ParIter {
            inner: RawParIter::new(self.map().raw(), &self.guard),
        }
    }
}

impl<'a, K, V, S> IntoParallelIterator for &'a Pinned<'_, K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    type Iter = ParIter<'a, K, V>;
    type Item = (&'a K, &'a V);

    fn into_par_iter(self) -> ParIter<'a, K, V> {
        self.par_iter()
    }
}

impl<K, V, S> SyncMap<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher,
{
    /// Calls `f` on every present key and value, in parallel on rayon's current thread pool
    /// (feature `rayon`). The parallel [`SyncMap::for_each`]: see [`Pinned::par_iter`] for the
    /// contract. Returns when every call has returned; if one panics, the panic is resumed here
    /// once the others are done, and the map is left as usable as after any panicking closure.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// let map: tiermap::SyncMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
    /// let sum = AtomicU64::new(0);
    /// map.par_for_each(|_, v| {
    ///     sum.fetch_add(*v, Ordering::Relaxed);
    /// });
    /// assert_eq!(sum.into_inner(), 999 * 1000 / 2);
    /// ```
    pub fn par_for_each(&self, f: impl Fn(&K, &V) + Sync + Send) {
        let pinned = self.pin();
        pinned.par_iter().for_each(|(k, v)| f(k, v));
    }
}

/// Builds a map from a parallel iterator: the pairs are inserted in parallel through
/// [`SyncMap::insert`] (new keys of one shard take its dirty lock one at a time; a map built
/// for many keys has several shards). For a repeated key, which of its values is kept is
/// unspecified.
///
/// ```
/// use rayon::prelude::*;
///
/// let map: tiermap::SyncMap<u64, String> =
///     (0..1000u64).into_par_iter().map(|i| (i, i.to_string())).collect();
/// assert_eq!(map.len(), 1000);
/// assert_eq!(map.get_cloned(&7).as_deref(), Some("7"));
/// ```
impl<K, V, S> FromParallelIterator<(K, V)> for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher + Default + Send + Sync,
{
    fn from_par_iter<I>(par_iter: I) -> Self
    where
        I: IntoParallelIterator<Item = (K, V)>,
    {
        let par_iter = par_iter.into_par_iter();
        let capacity = par_iter.opt_len().unwrap_or(0);
        let mut map = SyncMap::with_capacity_and_hasher(capacity, S::default());
        map.par_extend(par_iter);
        map
    }
}

/// Inserts the pairs of a parallel iterator through [`SyncMap::insert`], in parallel. For a
/// key repeated in the iterator, which of its values is kept is unspecified.
///
/// ```
/// use rayon::prelude::*;
///
/// let mut map: tiermap::SyncMap<u64, u64> = (0..10).map(|i| (i, 0)).collect();
/// map.par_extend((5..20u64).into_par_iter().map(|i| (i, 1)));
/// assert_eq!(map.len(), 20);
/// assert_eq!(map.get_cloned(&4), Some(0));
/// assert_eq!(map.get_cloned(&5), Some(1));
/// ```
impl<K, V, S> ParallelExtend<(K, V)> for SyncMap<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
    S: BuildHasher + Send + Sync,
{
    fn par_extend<I>(&mut self, par_iter: I)
    where
        I: IntoParallelIterator<Item = (K, V)>,
    {
        let map = &*self;
        // One pin per rayon job, as `Extend` holds one for its whole loop: made and dropped on
        // the worker that runs the job (`for_each_init` never moves it).
        par_iter.into_par_iter().for_each_init(
            || map.pin(),
            |pinned, (k, v)| {
                pinned.insert(k, v);
            },
        );
    }
}
