//! The RAII guards that give pooled objects back: [`Pooled`] and [`OwnedPooled`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::{MapPool, Recycle};

/// An object taken from a [`MapPool`] with [`MapPool::get`]; it goes back to
/// the pool when the guard is dropped (reset, and shrunk or dropped if it grew
/// over the pool's capacity ceiling).
///
/// The guard holds no lock: holding it while using the pool (or anything else)
/// cannot deadlock. It is `Send` and `Sync` when `T` is; to keep an object
/// across an `.await` in a spawned task, use [`OwnedPooled`], which has no
/// lifetime.
///
/// Methods are associated functions (`Pooled::detach(guard)`), so that they
/// never hide a method of `T` reached through `Deref`.
///
/// ```
/// use std::collections::HashMap;
/// use tiermap::pool::MapPool;
///
/// let pool: MapPool<HashMap<&str, u32>> = MapPool::new();
/// {
///     let mut counts = pool.get();
///     *counts.entry("a").or_insert(0) += 1;
///     assert_eq!(counts["a"], 1);
/// } // back in the pool, empty
/// assert!(pool.get().is_empty());
/// ```
pub struct Pooled<'a, T: Recycle> {
    pool: &'a MapPool<T>,
    // Invariant: `Some` until `detach` or `drop` takes it. Boxed: the pool
    // moves only the pointer (see the pool's module docs).
    value: Option<Box<T>>,
}

impl<'a, T: Recycle> Pooled<'a, T> {
    pub(crate) fn new(pool: &'a MapPool<T>, value: Box<T>) -> Self {
        Pooled {
            pool,
            value: Some(value),
        }
    }

    /// Keeps the object: it will not go back to the pool (counted in
    /// [`PoolStats::detached`](super::PoolStats::detached)). Give it back later
    /// with [`MapPool::put`] if you like.
    ///
    /// ```
    /// use tiermap::pool::{MapPool, Pooled};
    ///
    /// let pool: MapPool<Vec<u32>> = MapPool::new();
    /// let mut guard = pool.get();
    /// guard.push(7);
    /// let kept: Vec<u32> = Pooled::detach(guard);
    /// assert_eq!(kept, [7]);
    /// assert_eq!(pool.stats().idle, 0);
    /// ```
    #[must_use = "a detached object is dropped if unused; let the guard drop to give it back"]
    pub fn detach(mut this: Self) -> T {
        this.pool.note_detach();
        take(&mut this.value)
    }

    /// The pool this object came from.
    ///
    /// ```
    /// use tiermap::pool::{MapPool, Pooled};
    ///
    /// let pool: MapPool<Vec<u32>> = MapPool::new();
    /// let guard = pool.get();
    /// assert!(std::ptr::eq(Pooled::pool(&guard), &pool));
    /// ```
    #[must_use]
    pub fn pool(this: &Self) -> &'a MapPool<T> {
        this.pool
    }
}

impl<T: Recycle> Deref for Pooled<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        get(&self.value)
    }
}

impl<T: Recycle> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        get_mut(&mut self.value)
    }
}

impl<T: Recycle> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            self.pool.give_back(value);
        }
    }
}

impl<T: Recycle + fmt::Debug> fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&**self).finish()
    }
}

/// An object taken from an `Arc<MapPool>` with [`MapPool::get_owned`]: like
/// [`Pooled`], but it keeps the pool alive instead of borrowing it, so it is
/// `'static`, and `Send` when `T: Send`. Hold it across `.await` points or
/// move it to another thread; it goes back to the pool, from whichever thread
/// drops it.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use tiermap::pool::MapPool;
///
/// let pool: Arc<MapPool<HashMap<u64, u64>>> = Arc::new(MapPool::new());
/// let mut map = pool.get_owned();
/// let handle = std::thread::spawn(move || {
///     map.insert(1, 2);
///     map.len()
/// }); // `map` returns to the pool when the thread ends
/// assert_eq!(handle.join().unwrap(), 1);
/// assert_eq!(pool.stats().idle, 1);
/// ```
///
/// It is not `Send` when `T` is not:
///
/// ```compile_fail,E0277
/// use std::rc::Rc;
/// use std::sync::Arc;
/// use tiermap::pool::MapPool;
///
/// fn assert_send<S: Send>(_: &S) {}
///
/// let pool = Arc::new(MapPool::<Vec<Rc<u8>>>::new());
/// assert_send(&pool.get_owned());
/// ```
pub struct OwnedPooled<T: Recycle> {
    pool: Arc<MapPool<T>>,
    // Invariant: `Some` until `detach` or `drop` takes it (boxed, as in
    // `Pooled`).
    value: Option<Box<T>>,
}

impl<T: Recycle> OwnedPooled<T> {
    pub(crate) fn new(pool: Arc<MapPool<T>>, value: Box<T>) -> Self {
        OwnedPooled {
            pool,
            value: Some(value),
        }
    }

    /// Keeps the object: it will not go back to the pool (counted in
    /// [`PoolStats::detached`](super::PoolStats::detached)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tiermap::pool::{MapPool, OwnedPooled};
    ///
    /// let pool = Arc::new(MapPool::<String>::new());
    /// let mut s = pool.get_owned();
    /// s.push_str("mine");
    /// let s: String = OwnedPooled::detach(s);
    /// assert_eq!(s, "mine");
    /// assert_eq!(pool.stats().detached, 1);
    /// ```
    #[must_use = "a detached object is dropped if unused; let the guard drop to give it back"]
    pub fn detach(mut this: Self) -> T {
        this.pool.note_detach();
        take(&mut this.value)
    }

    /// The pool this object came from (and goes back to).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tiermap::pool::{MapPool, OwnedPooled};
    ///
    /// let pool = Arc::new(MapPool::<String>::new());
    /// let s = pool.get_owned();
    /// assert!(Arc::ptr_eq(OwnedPooled::pool(&s), &pool));
    /// ```
    #[must_use]
    pub fn pool(this: &Self) -> &Arc<MapPool<T>> {
        &this.pool
    }
}

impl<T: Recycle> Deref for OwnedPooled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        get(&self.value)
    }
}

impl<T: Recycle> DerefMut for OwnedPooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        get_mut(&mut self.value)
    }
}

impl<T: Recycle> Drop for OwnedPooled<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            self.pool.give_back(value);
        }
    }
}

impl<T: Recycle + fmt::Debug> fmt::Debug for OwnedPooled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedPooled").field(&**self).finish()
    }
}

const TAKEN: &str = "pooled object used after detach (a tiermap bug)";

fn get<T>(value: &Option<Box<T>>) -> &T {
    match value.as_ref() {
        Some(value) => value,
        None => unreachable!("{TAKEN}"),
    }
}

fn get_mut<T>(value: &mut Option<Box<T>>) -> &mut T {
    match value.as_mut() {
        Some(value) => value,
        None => unreachable!("{TAKEN}"),
    }
}

fn take<T>(value: &mut Option<Box<T>>) -> T {
    match value.take() {
        Some(value) => *value,
        None => unreachable!("{TAKEN}"),
    }
}
