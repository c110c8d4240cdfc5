//! The outcome types of the map's operations ([`GetOrInsert`], [`CompareExchangeError`], and
//! [`Op`] / [`Computed`] for `compute`): a leaf module, so that the engine (`raw`) and the API
//! (`map`) both use them without the engine importing the API layer.

use std::fmt;

#[cfg(doc)]
use crate::{Pinned, Ref, SyncMap};

/// The result of [`SyncMap::get_or_insert`] and friends: the value, and whether it was already
/// there (Go's `loaded`).
///
/// ```
/// use tiermap::{GetOrInsert, SyncMap};
///
/// let map = SyncMap::new();
/// assert!(map.get_or_insert(1, 'a').is_inserted());
/// match map.get_or_insert(1, 'b') {
///     GetOrInsert::Loaded(v) => assert_eq!(*v, 'a'),
///     GetOrInsert::Inserted(_) => unreachable!(),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetOrInsert<R> {
    /// The key was present; this is its value (the offered one was dropped).
    Loaded(R),
    /// The key was absent; this is the value just inserted.
    Inserted(R),
}

impl<R> GetOrInsert<R> {
    /// Whether the value was already present (Go's `loaded`).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert!(!map.get_or_insert(1, 1).is_loaded());
    /// assert!(map.get_or_insert(1, 2).is_loaded());
    /// ```
    pub fn is_loaded(&self) -> bool {
        matches!(self, GetOrInsert::Loaded(_))
    }

    /// Whether the offered value was inserted.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert!(map.get_or_insert(1, 1).is_inserted());
    /// ```
    pub fn is_inserted(&self) -> bool {
        matches!(self, GetOrInsert::Inserted(_))
    }

    /// The value, either way.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert_eq!(*map.get_or_insert(1, 7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> R {
        match self {
            GetOrInsert::Loaded(r) | GetOrInsert::Inserted(r) => r,
        }
    }

    /// Maps the value, keeping the variant.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let r = map.get_or_insert(1, 7).map(|v| *v * 2);
    /// assert_eq!(r, tiermap::GetOrInsert::Inserted(14));
    /// ```
    pub fn map<U>(self, f: impl FnOnce(R) -> U) -> GetOrInsert<U> {
        match self {
            GetOrInsert::Loaded(r) => GetOrInsert::Loaded(f(r)),
            GetOrInsert::Inserted(r) => GetOrInsert::Inserted(f(r)),
        }
    }
}

/// What the closure of [`SyncMap::compute`] decides to do with the key.
///
/// ```
/// use tiermap::{Computed, Op, SyncMap};
///
/// let stock: SyncMap<&str, u32> = SyncMap::new();
/// stock.insert("apples", 1);
/// // Take one apple; remove the key when the last one goes.
/// let take = |n: Option<&u32>| match n {
///     Some(1) => Op::Remove,
///     Some(n) => Op::Insert(n - 1),
///     None => Op::Keep,
/// };
/// assert_eq!(stock.compute("apples", take).map(|v| *v), Computed::Removed(1));
/// assert_eq!(stock.compute("apples", take).map(|v| *v), Computed::Absent);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op<V> {
    /// Leave the key as it is: present with its value, or absent.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 'a');
    /// let r = map.compute(1, |_| tiermap::Op::Keep);
    /// assert_eq!(r.map(|v| *v), tiermap::Computed::Unchanged('a'));
    /// ```
    Keep,
    /// Store this value: replace the present one, or insert the key if it is absent.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let r = map.compute(1, |_| tiermap::Op::Insert('a'));
    /// assert_eq!(r.map(|v| *v), tiermap::Computed::Inserted('a'));
    /// ```
    Insert(V),
    /// Remove the key (nothing happens if it is absent).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 'a');
    /// let r = map.compute(1, |_| tiermap::Op::Remove);
    /// assert_eq!(r.map(|v| *v), tiermap::Computed::Removed('a'));
    /// ```
    Remove,
}

/// What [`SyncMap::compute`] did: the outcome of the [`Op`] its closure returned on its last
/// call, with the values involved.
///
/// `R` is a [`Ref`] from [`SyncMap::compute`] and a `&V` from [`Pinned::compute`].
///
/// ```
/// use tiermap::{Computed, Op, SyncMap};
///
/// let map: SyncMap<u32, String> = SyncMap::new();
/// let append = |s: Option<&String>| match s {
///     Some(s) => Op::Insert(format!("{s}!")),
///     None => Op::Insert(String::from("hi")),
/// };
/// assert!(matches!(map.compute(1, append), Computed::Inserted(v) if *v == "hi"));
/// match map.compute(1, append) {
///     Computed::Updated { old, new } => assert_eq!((old.as_str(), new.as_str()), ("hi", "hi!")),
///     other => unreachable!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Computed<R> {
    /// The key was absent and the closure returned [`Op::Insert`]: this value was inserted.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let r = map.compute(1, |_| tiermap::Op::Insert(10));
    /// assert!(matches!(r, tiermap::Computed::Inserted(v) if *v == 10));
    /// ```
    Inserted(R),
    /// The key was present and the closure returned [`Op::Insert`]: `old` was replaced by
    /// `new`.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 10);
    /// let r = map.compute(1, |v| tiermap::Op::Insert(v.unwrap() + 1));
    /// assert!(matches!(r, tiermap::Computed::Updated { old, new } if *old == 10 && *new == 11));
    /// ```
    Updated {
        /// The value replaced.
        old: R,
        /// The value stored.
        new: R,
    },
    /// The key was present and the closure returned [`Op::Remove`]: this value was removed.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 10);
    /// let r = map.compute(1, |_| tiermap::Op::Remove);
    /// assert!(matches!(r, tiermap::Computed::Removed(v) if *v == 10));
    /// assert!(map.is_empty());
    /// ```
    Removed(R),
    /// The key was present and the closure returned [`Op::Keep`]: this is its value.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 10);
    /// let r = map.compute(1, |_| tiermap::Op::Keep);
    /// assert!(matches!(r, tiermap::Computed::Unchanged(v) if *v == 10));
    /// ```
    Unchanged(R),
    /// The key was absent and the closure returned [`Op::Keep`] or [`Op::Remove`]: the map was
    /// not changed.
    ///
    /// ```
    /// let map: tiermap::SyncMap<u32, u32> = tiermap::SyncMap::new();
    /// let r = map.compute(1, |_| tiermap::Op::Remove);
    /// assert!(matches!(r, tiermap::Computed::Absent));
    /// ```
    Absent,
}

impl<R> Computed<R> {
    /// The value the key holds once the operation is done (`Inserted`, `Updated`'s `new`,
    /// `Unchanged`), or `None` if it is absent (`Removed`, `Absent`).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// let r = map.compute(1, |_| tiermap::Op::Insert(5));
    /// assert_eq!(r.into_value().as_deref(), Some(&5));
    /// assert!(map.compute(1, |_| tiermap::Op::Remove).into_value().is_none());
    /// ```
    pub fn into_value(self) -> Option<R> {
        match self {
            Computed::Inserted(r) | Computed::Updated { new: r, .. } | Computed::Unchanged(r) => {
                Some(r)
            }
            Computed::Removed(_) | Computed::Absent => None,
        }
    }

    /// Whether the map was changed (`Inserted`, `Updated` or `Removed`).
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// assert!(map.compute(1, |_| tiermap::Op::Insert(5)).is_changed());
    /// assert!(!map.compute(1, |_| tiermap::Op::Keep).is_changed());
    /// ```
    pub fn is_changed(&self) -> bool {
        matches!(
            self,
            Computed::Inserted(_) | Computed::Updated { .. } | Computed::Removed(_)
        )
    }

    /// Maps the values, keeping the variant.
    ///
    /// ```
    /// let map = tiermap::SyncMap::new();
    /// map.insert(1, 5);
    /// let r = map.compute(1, |v| tiermap::Op::Insert(v.unwrap() * 2)).map(|v| *v);
    /// assert_eq!(r, tiermap::Computed::Updated { old: 5, new: 10 });
    /// ```
    pub fn map<U>(self, mut f: impl FnMut(R) -> U) -> Computed<U> {
        match self {
            Computed::Inserted(r) => Computed::Inserted(f(r)),
            Computed::Updated { old, new } => Computed::Updated {
                old: f(old),
                new: f(new),
            },
            Computed::Removed(r) => Computed::Removed(f(r)),
            Computed::Unchanged(r) => Computed::Unchanged(f(r)),
            Computed::Absent => Computed::Absent,
        }
    }
}

/// Why [`SyncMap::compare_exchange`] did not swap: the current value (`None` if the key is
/// absent) and the value that was offered, handed back.
///
/// ```
/// let map = tiermap::SyncMap::new();
/// map.insert(1, 10);
/// let err = map.compare_exchange(&1, &11, 12).unwrap_err();
/// assert_eq!(err.current.as_deref(), Some(&10));
/// assert_eq!(err.new, 12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareExchangeError<R, V> {
    /// The value found, or `None` if the key was absent (Go's `CompareAndSwap` returns false
    /// and inserts nothing).
    pub current: Option<R>,
    /// The value that was not stored.
    pub new: V,
}

impl<R: fmt::Debug, V: fmt::Debug> fmt::Display for CompareExchangeError<R, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.current {
            Some(c) => write!(f, "current value {c:?} does not match"),
            None => f.write_str("key is absent"),
        }
    }
}

impl<R: fmt::Debug, V: fmt::Debug> std::error::Error for CompareExchangeError<R, V> {}
