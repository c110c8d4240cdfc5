//! # tiermap
//!
//! A concurrent hash map with the design of Go's `sync.Map` (an immutable read tier that
//! readers use without locks, and a mutex-guarded dirty tier that takes new keys and is promoted
//! after enough misses) that fixes where Go keeps memory: deleted entries are purged by the map
//! itself, the first new key after a read-only phase costs microseconds instead of a copy of the
//! whole map, [`SyncMap::clear_and_release`] gives the memory back, and [`SyncMap::stats`] tells
//! where it is. A map built for many keys is split into shards, each a read and dirty tier pair
//! with its own lock, so that writers of different keys rarely meet (see
//! [`SyncMap::with_capacity_shards_and_hasher`]).
//!
//! ```
//! use tiermap::SyncMap;
//!
//! let sessions: SyncMap<u64, String> = SyncMap::new();
//! sessions.insert(7, "alice".to_string());
//!
//! // Lock-free reads, zero-copy through a pinned handle...
//! let m = sessions.pin();
//! assert_eq!(m.get(&7).map(String::as_str), Some("alice"));
//! // ...or one call at a time, with a `Ref` that holds an epoch pin, never a lock.
//! assert_eq!(sessions.get(&7).unwrap().as_str(), "alice");
//!
//! sessions.remove(&7);
//! let released = sessions.clear_and_release();
//! println!("{}", sessions.stats()); // len=0 deleted=0 held=... retired=0 B ...
//! # let _ = released;
//! ```
//!
//! ## Go's `sync.Map`, method by method
//!
//! | Go                                   | tiermap                                                      |
//! |--------------------------------------|--------------------------------------------------------------|
//! | `Load(k) (v, ok)`                    | [`SyncMap::get`], [`SyncMap::get_cloned`], [`Pinned::get`]    |
//! | `Store(k, v)`                        | [`SyncMap::insert`] (ignore the result)                      |
//! | `Swap(k, v) (prev, loaded)`          | [`SyncMap::insert`] (returns the previous value)             |
//! | `LoadOrStore(k, v) (actual, loaded)` | [`SyncMap::get_or_insert`], [`SyncMap::get_or_insert_with`]  |
//! | `LoadAndDelete(k) (v, loaded)`       | [`SyncMap::remove`]                                          |
//! | `Delete(k)`                          | [`SyncMap::remove`] (ignore the result)                      |
//! | `CompareAndSwap(k, old, new) bool`   | [`SyncMap::compare_exchange`] (`is_ok()`)                     |
//! | `CompareAndDelete(k, old) bool`      | [`SyncMap::compare_remove`], [`SyncMap::remove_if`]          |
//! | `Range(f)`                           | [`SyncMap::range`], [`SyncMap::for_each`], [`Pinned::iter`]  |
//! | `Clear()`                            | [`SyncMap::clear`]                                           |
//! | — (a `Load` + `CompareAndSwap` loop)  | [`SyncMap::update`], [`SyncMap::update_or_insert`], [`SyncMap::compute`] (atomic read-modify-write; the closure may run more than once) |
//! | —                                    | [`SyncMap::clear_and_release`], [`SyncMap::shrink_to_fit`], [`SyncMap::reclaim`] |
//! | —                                    | [`SyncMap::len`], [`SyncMap::is_empty`], [`SyncMap::contains_key`], [`SyncMap::retain`], [`SyncMap::stats`] |
//!
//! The whole contract, with the tests that check each promise, is in the repository's
//! `docs/SEMANTICS.md`.
//!
//! ## Consistency
//!
//! As Go documents for `sync.Map`: a write synchronizes-before any read that observes it. The
//! writes are `insert`, `remove` of a present key, `get_or_insert*` when it inserted,
//! `compare_exchange` when it swapped, `compare_remove`/`remove_if` when they removed, `clear`
//! and `retain`; every operation that returns a value is a read. Each single-key operation is
//! atomic. [`SyncMap::len`] is exact when no write is in flight. Iteration sees each key at most
//! once and never blocks writers (see [`Pinned::iter`]).
//!
//! ## Guards, not locks
//!
//! Nothing this crate hands out holds a lock. [`Ref`] and [`Pinned`] hold a crossbeam-epoch
//! pin: while one is alive, values and tables retired after it was pinned are not freed. Keep
//! them short-lived in long loops; holding one while calling any method of the same map is
//! always fine.
//!
//! ## Async code
//!
//! Epoch guards are not `Send`: a [`Ref`], a [`Pinned`] or an [`Iter`] cannot be held across an
//! `.await` in a future that must be `Send` (the compiler says so), and holding one across a
//! long `.await` would delay the freeing of retired memory anyway. Across an `.await`, hold an
//! owned copy instead ([`SyncMap::get_cloned`], or `get(..).map(|v| v.clone())` ending before the
//! `.await`), keep values in `Arc`s to make that copy cheap, and share the map itself as
//! `Arc<SyncMap<..>>` (it is `Send + Sync`). No method blocks for long: every lock is held for a
//! bounded step and never across user code, so calling the map from async tasks needs no
//! `spawn_blocking`, except for O(n) calls on big maps (`clear_and_release`, `shrink_to_fit`,
//! `retain`, iteration).
//!
//! ```
//! use std::sync::Arc;
//! let cache: Arc<tiermap::SyncMap<String, Arc<str>>> = Arc::default();
//! cache.insert("k".into(), Arc::from("v"));
//! // In an async fn: take an owned value before awaiting.
//! let v: Option<Arc<str>> = cache.get_cloned("k");
//! // some_io(v).await;
//! assert_eq!(v.as_deref(), Some("v"));
//! ```
//!
//! ## Memory
//!
//! * A read hit takes no lock, allocates nothing and writes only the epoch pin's thread-local
//!   state.
//! * Tables never grow in place: a full dirty tier is promoted and the next dirty tier is filled
//!   from the read tier a few dozen slots per slow-path operation, so no single operation copies
//!   the map. A table is one zeroed allocation: large ones are fresh pages that the kernel
//!   zeroes as keys land in them, so creating one costs microseconds.
//! * Deleted entries are counted; when they pass half the live entries plus 64, or the read
//!   table holds more than eight slots per live entry plus 1024, the map rebuilds itself, again
//!   a few slots per operation. At every point, once no guard pinned earlier is alive, the map
//!   holds O(live entries) bytes (the bound is in `docs/DESIGN.md`).
//! * **Memory comes back on its own.** What a map retires (removed and replaced values,
//!   superseded tables, the whole old map after [`SyncMap::clear`]) is freed by a background
//!   thread (`tiermap-reclaim`, one per process, parked when no map has work) within about
//!   20 ms once every guard pinned before is dropped, with no further call on the map; then
//!   free pages go back to the operating system (`malloc_trim` on glibc), so the process's RSS
//!   falls. The same thread promotes the dirty tier of a map that no operation has written to
//!   for a second (a map filled, then left alone, gives its older table back instead of
//!   keeping both until enough misses come). [`memory`] has the details and the opt-outs
//!   (`TIERMAP_BACKGROUND_RECLAIM=0`, `TIERMAP_RETURN_TO_OS=0`).
//! * When `drop(map)` returns, every key and value the map ever held has been dropped.
//! * [`SyncMap::clear_and_release`] frees everything before returning, to the operating system
//!   too (see its docs for when a guard delays that); [`SyncMap::stats`] reports live and
//!   deleted entries, table capacities, held and retired bytes.
//!
//! `K` and `V` must be `Send + 'static` for the mutating methods: replaced and removed values are
//! dropped later, possibly on another thread (the background reclaimer's).
//!
//! ## Retention alarm and metrics
//!
//! [`SyncMap::set_retention_alarm`] watches a [`RetentionPolicy`] (bytes per live entry, share
//! of deleted entries, retired bytes, above a floor) and calls you once per crossing, outside
//! every lock, with a [`RetentionAlert`]; `SyncMap::publish_metrics` (feature `metrics`)
//! exports the same statistics as gauges through the `metrics` facade. Both ride on one hook
//! that runs every 64 slow-path operations and after promotions and clears, never on a read hit.
//! A [`MapPool`] has the same two, for the bytes its idle objects retain
//! ([`MapPool::set_retention_alarm`] with a [`PoolRetentionPolicy`]), checked on returns.
//!
//! ```
//! use tiermap::{RetentionPolicy, SyncMap};
//!
//! let sessions: SyncMap<u64, String> = SyncMap::new();
//! let policy = RetentionPolicy::new().max_bytes_per_entry(4096).max_deleted_ratio(0.5);
//! let alarm = sessions.set_retention_alarm(policy, |alert| eprintln!("sessions: {alert}"));
//! # #[cfg(feature = "metrics")]
//! sessions.publish_metrics("sessions"); // with the `metrics` feature
//! sessions.insert(1, "alice".into());
//! assert_eq!(alarm.fired(), 0);
//! ```
//!
//! ## Panics in user code
//!
//! A panicking `Hash`, `Eq`, `PartialEq`, `Clone`, `get_or_insert_with` closure, `retain`
//! predicate or iteration body leaves the map consistent and usable: no entry is lost, nothing
//! leaks, and the internal lock is never left poisoned in a way later calls notice.
//!
//! ## Parallel iteration (feature `rayon`)
//!
//! With the `rayon` feature, `Pinned::par_iter` (also `IntoParallelIterator for &Pinned`) is a
//! rayon `ParallelIterator` over `(&K, &V)` with the contract of [`Pinned::iter`], and
//! `SyncMap::par_for_each` is the parallel [`SyncMap::for_each`]; `SyncMap` implements
//! `FromParallelIterator<(K, V)>` and `ParallelExtend<(K, V)>`, inserting in parallel. These
//! need `K, V: Send + Sync` (worker threads read them). The calling thread's pin protects what
//! the workers read, so it stays pinned until the parallel operation returns.
//!
//! ```
//! # #[cfg(feature = "rayon")] {
//! use rayon::prelude::*;
//!
//! let map: tiermap::SyncMap<u64, u64> = (0..1000u64).into_par_iter().map(|i| (i, i)).collect();
//! let m = map.pin();
//! assert_eq!(m.par_iter().filter(|(_, v)| **v % 2 == 0).count(), 500);
//! # }
//! ```
//!
//! ## Loom
//!
//! Built with `--cfg tiermap_loom --cfg crossbeam_loom` and the `loom` feature, every atomic,
//! the dirty lock and the epoch collector come from loom (see `loom-tests/`).
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]

mod alarm;
mod facade;
mod map;
pub mod memory;
mod outcome;
pub mod pool;
mod raw;
#[cfg(feature = "rayon")]
mod rayon_impls;
#[cfg(feature = "serde")]
mod serde_impls;
mod stats;

/// The README's example, run as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use alarm::{RetentionAlarm, RetentionAlert, RetentionCondition, RetentionPolicy};
pub use map::{IntoIter, Iter, Pinned, Ref, SyncMap};
pub use outcome::{CompareExchangeError, Computed, GetOrInsert, Op};
pub use pool::alarm::{PoolRetentionAlarm, PoolRetentionAlert, PoolRetentionPolicy};
pub use pool::{MapPool, OwnedPooled, PoolBuilder, PoolStats, Pooled, Recycle};
#[cfg(feature = "rayon")]
pub use rayon_impls::ParIter;
pub use stats::{MapStats, Released};
