//! [`Ref`], a value reference that owns the epoch pin protecting it, and the operations of
//! [`RawMap`] that hand one out (each pins, runs the operation under that pin and moves the pin
//! into what it returns).
//!
//! A `Ref` points into memory that only the epoch keeps alive, so building one is the unsafe
//! step; it happens only here, inside `raw`, from a value the same call loaded from the same
//! map under the same pin. The safe API (`map.rs`) calls these operations and never sees a raw
//! pointer.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use crate::facade::Guard;
use crate::outcome::{CompareExchangeError, Computed, GetOrInsert, Op};

use super::{RawMap, Replace};

/// A value reference that keeps an epoch guard, not a lock.
///
/// Holding a `Ref` never blocks another operation on the map and never deadlocks, even if you
/// call [`SyncMap::insert`](crate::SyncMap::insert) on the same key while holding it; it only
/// delays the freeing of values retired while it is alive. It is not `Send`: drop it on the
/// thread that made it.
///
/// ```
/// let map = tiermap::SyncMap::new();
/// map.insert(1, String::from("one"));
/// let r = map.get(&1).unwrap();
/// map.insert(1, String::from("uno")); // no deadlock; `r` still sees the old value
/// assert_eq!(*r, "one");
/// assert_eq!(map.get_cloned(&1).unwrap(), "uno");
/// ```
pub struct Ref<'m, V> {
    // Declared before `_guard`: the pointer is only valid while the guard is pinned.
    value: *const V,
    _guard: Guard,
    _map: PhantomData<&'m V>,
}

impl<'m, V> Ref<'m, V> {
    /// Wraps a value reference together with the guard that protects it.
    ///
    /// # Safety
    /// `value` was loaded from a map that outlives `'m` while `guard` was pinned (so it stays
    /// allocated while `guard` stays pinned and the map is borrowed).
    unsafe fn new(value: &V, guard: Guard) -> Self {
        Ref {
            value,
            _guard: guard,
            _map: PhantomData,
        }
    }
}

impl<V> Deref for Ref<'_, V> {
    type Target = V;
    fn deref(&self) -> &V {
        // SAFETY: `value` was loaded under `_guard`, which this `Ref` keeps pinned; values are
        // retired through the epoch, so it stays allocated while the `Ref` lives, and the map
        // (borrowed for `'m`) cannot be dropped meanwhile (`Ref::new`'s contract).
        unsafe { &*self.value }
    }
}

impl<V: fmt::Debug> fmt::Debug for Ref<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<V: fmt::Display> fmt::Display for Ref<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<V: PartialEq> PartialEq<V> for Ref<'_, V> {
    fn eq(&self, other: &V) -> bool {
        **self == *other
    }
}

impl<K: Send + 'static, V: Send + 'static> RawMap<K, V> {
    /// Runs `f` on this map under a fresh pin and keeps the pin in the returned [`Ref`].
    ///
    /// Private to this module: every caller passes a closure that calls one operation of
    /// `self` with the guard it is given, so the reference is one this map handed out under it.
    #[inline]
    fn hold<'m>(
        &'m self,
        f: impl for<'g> FnOnce(&'g Guard) -> Option<&'g V>,
    ) -> Option<Ref<'m, V>> {
        let guard = self.pin();
        let value: *const V = f(&guard)?;
        // SAFETY: `value` was loaded from `self` (borrowed for `'m`) under `guard`, which moves
        // into the `Ref` unchanged (moving a `Guard` does not unpin it).
        Some(unsafe { Ref::new(&*value, guard) })
    }

    /// The value of `key`, as a [`Ref`] (see `RawMap::get`).
    #[inline]
    pub(crate) fn get_ref<Q>(&self, hash: u64, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.hold(|g| self.get(hash, key, g))
    }

    /// Inserts or replaces; the previous value as a [`Ref`].
    pub(crate) fn insert_ref(&self, hash: u64, key: K, value: V) -> Option<Ref<'_, V>>
    where
        K: Eq,
    {
        self.hold(|g| self.insert(hash, key, value, g))
    }

    /// Removes `key`; its value as a [`Ref`].
    pub(crate) fn remove_ref<Q>(&self, hash: u64, key: &Q) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.hold(|g| self.remove(hash, key, g))
    }

    /// Removes `key` if `pred` holds for its value; the removed value as a [`Ref`].
    pub(crate) fn remove_if_ref<Q>(
        &self,
        hash: u64,
        key: &Q,
        pred: impl FnMut(&V) -> bool,
    ) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.hold(|g| self.remove_if(hash, key, pred, g))
    }

    /// Replaces the value by `f(current)` if the key is present; the new value as a [`Ref`].
    pub(crate) fn update_ref<Q>(
        &self,
        hash: u64,
        key: &Q,
        f: impl FnMut(&V) -> V,
    ) -> Option<Ref<'_, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.hold(|g| self.update(hash, key, f, g))
    }

    /// Replaces the value by `f(current)`, or inserts `make()`; the value stored as a [`Ref`].
    pub(crate) fn update_or_insert_with_ref(
        &self,
        hash: u64,
        key: K,
        f: impl FnMut(&V) -> V,
        make: impl FnOnce() -> V,
    ) -> Ref<'_, V>
    where
        K: Eq,
    {
        self.hold(|g| Some(self.update_or_insert_with(hash, key, f, make, g)))
            .expect("update_or_insert_with stores a value")
    }

    /// Go's `LoadOrStore` with a lazily made value; the value as a [`Ref`].
    pub(crate) fn get_or_insert_with_ref(
        &self,
        hash: u64,
        key: K,
        make: impl FnOnce() -> V,
    ) -> GetOrInsert<Ref<'_, V>>
    where
        K: Eq,
    {
        let guard = self.pin();
        let r = self
            .get_or_insert_with(hash, key, make, &guard)
            .map(|v| v as *const V);
        // SAFETY: the value was loaded from `self` under `guard`, which moves into the `Ref`.
        r.map(|v| unsafe { Ref::new(&*v, guard) })
    }

    /// Replaces the value of `key` by `new` if it equals `current` (Go's `CompareAndSwap`,
    /// returning the values): the previous value as a [`Ref`], or why not.
    pub(crate) fn compare_exchange_ref<Q>(
        &self,
        hash: u64,
        key: &Q,
        current: &V,
        new: V,
    ) -> Result<Ref<'_, V>, CompareExchangeError<Ref<'_, V>, V>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
        V: PartialEq,
    {
        let guard = self.pin();
        let r = match self.replace_if(hash, key, |v| v == current, new, &guard) {
            Replace::Done(v) => Ok(v as *const V),
            Replace::Absent(new) => return Err(CompareExchangeError { current: None, new }),
            Replace::Mismatch(v, new) => Err((v as *const V, new)),
        };
        match r {
            // SAFETY: the pointer was loaded from `self` under `guard`, which moves into the
            // `Ref`.
            Ok(v) => Ok(unsafe { Ref::new(&*v, guard) }),
            Err((v, new)) => Err(CompareExchangeError {
                // SAFETY: as above.
                current: Some(unsafe { Ref::new(&*v, guard) }),
                new,
            }),
        }
    }

    /// Reads, decides and writes in one atomic step (see `RawMap::compute`); the values
    /// involved as [`Ref`]s.
    ///
    /// Two guards, both pinned before anything is loaded, so that each alone protects every
    /// value returned: `Updated` hands out two `Ref`s, dropped in any order. (With crossbeam's
    /// global collector the second pin only bumps the thread's guard count.)
    pub(crate) fn compute_ref(
        &self,
        hash: u64,
        key: K,
        f: impl FnMut(Option<&V>, Option<V>) -> Op<V>,
    ) -> Computed<Ref<'_, V>>
    where
        K: Eq,
    {
        let guard = self.pin();
        let spare = self.pin();
        let done = self.compute(hash, key, f, &guard).map(|v| v as *const V);
        // SAFETY: every pointer in `done` was loaded from `self` while `guard` and `spare` were
        // both pinned; each `Ref` keeps one of them.
        unsafe {
            match done {
                Computed::Inserted(v) => Computed::Inserted(Ref::new(&*v, guard)),
                Computed::Updated { old, new } => Computed::Updated {
                    old: Ref::new(&*old, spare),
                    new: Ref::new(&*new, guard),
                },
                Computed::Removed(v) => Computed::Removed(Ref::new(&*v, guard)),
                Computed::Unchanged(v) => Computed::Unchanged(Ref::new(&*v, guard)),
                Computed::Absent => Computed::Absent,
            }
        }
    }
}
