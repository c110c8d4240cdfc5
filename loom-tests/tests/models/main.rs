//! Loom models of `tiermap::SyncMap`: the real map code, with every atomic, the dirty lock and
//! the epoch collector swapped for loom's (see `README.md` in this crate and `ci/loom.sh`).
//!
//! One race per test, 2 threads (the test's main thread and one spawned one), a handful of
//! operations. Each model asserts the linearizable outcomes of its race, reads every value it
//! gets back (which checks, through loom, that the value's creation happens-before the read and
//! that it was not freed), and, after dropping the map, that every key and value was dropped
//! exactly once.
#![cfg(tiermap_loom)]

mod batch;
mod cas;
mod clear;
mod clone;
mod compact;
mod dirty_promotion;
mod drop_burial;
mod get_or_insert;
mod grave;
mod idle;
mod insert_promotion;
mod iter;
mod iter_clear;
mod pool;
mod pool_cache;
mod publication;
mod read_promotion;
mod remove_insert;
mod rmw;
mod shards;
mod split;

use loom::sync::Arc;
use tiermap_loom_tests::Map;

/// Drops the last handle to the map (every thread must be joined) so that its collector runs
/// every deferred free.
fn drop_map(map: Arc<Map>) {
    drop(Arc::try_unwrap(map).ok().expect("every thread is joined"));
}
