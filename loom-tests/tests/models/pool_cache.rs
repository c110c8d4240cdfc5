//! Models 9c and 9d: `MapPool`'s per-thread caches (one cached object per thread and pool,
//! `src/pool/local.rs`). Their handoffs are: a thread claims a free cache (under the pool's
//! link mutex, borrowing a unit of `max_idle` from a stripe), uses it with no synchronization
//! at all, and when it exits its thread-local destructor moves the cached object to a stripe
//! and frees the cache (under the link mutex), unless the pool is gone: the pool's drop clears
//! the link under the same mutex before it drops the objects of its caches and stripes.
//!
//! The tiermap loom build takes its thread-locals from `loom::thread_local!`, whose destructors
//! loom runs when a model thread ends (after the thread's closure returns, and *after* `join`
//! may already have returned: loom's join, like std's scoped threads, does not wait for them),
//! and the cache's object slot is a `loom::cell::UnsafeCell`: two threads using one cache
//! without happens-before between them is a "Causality violation".
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap::MapPool;
use tiermap_loom_tests::check;

use crate::pool::{drop_pool, live, tracker, Owned};

/// A pool with two per-thread caches and one stripe (its `max_idle` of 4 less the two units
/// the caches borrow when claimed).
fn two_cache_pool() -> Arc<MapPool<Owned>> {
    Arc::new(
        MapPool::builder()
            .max_idle(4)
            .shards(1)
            .capacity_ceiling(8)
            .build(),
    )
}

/// Model 9c: a thread's exit hands its cached object to the stripe, while a reader takes from
/// it. The other thread claims a cache, caches its object and exits; its thread-local
/// destructor moves the object to the stripe (the writer's publication). The main thread's
/// `get` runs before, during or after that: it claims a cache of its own (possibly the one
/// just freed), finds it empty and takes from the stripe, whose lock it may take before the
/// object is published (a miss) or after (a hit on the other thread's object).
///
/// Asserts: no object has two owners; every read of an object happens-after its creation;
/// after the join every idle object is reachable from the main thread (taking `idle` objects
/// creates none: the exited thread's object is not stranded in its cache); the counts add up;
/// every object dropped exactly once after the pool is dropped.
#[test]
fn pool_thread_exit_hands_cached_object_to_reader() {
    check("pool_thread_exit_hands_cached_object_to_reader", 3, || {
        let t = tracker();
        let pool = two_cache_pool();
        let other = {
            let pool = pool.clone();
            thread::spawn(move || {
                let g = pool.get();
                g.take();
                g.release();
                drop(g); // cached by this thread
                drop(pool);
                // Exits: the thread-local destructor gives the cached object to the stripe.
            })
        };
        let m = pool.get();
        m.take();
        m.release();
        drop(m); // cached by the main thread
        other.join().unwrap();
        // Loom's `join` returns before the other thread's thread-local destructors run: wait
        // for its cache to be given back (the main thread still owns the other one). Each
        // yield lets the exiting thread run; its destructor takes a handful of steps.
        let mut waited = 0;
        while pool.loom_free_caches() < 1 {
            waited += 1;
            assert!(
                waited < 100,
                "the exited thread's cache was never given back (its object is stranded)"
            );
            thread::yield_now();
        }

        let s = pool.stats();
        assert_eq!((s.gets, s.returns), (2, 2), "{s}");
        assert_eq!(s.gets, s.hits + s.misses, "{s}");
        assert_eq!(t.created(), s.misses as usize, "{s}");
        assert!(s.idle <= pool.max_idle(), "{s}");
        assert_eq!(live(&t), s.idle, "{s}");
        // Every idle object is within the main thread's reach: its cache, the stripe.
        let created = t.created();
        let held: Vec<_> = (0..s.idle).map(|_| pool.get()).collect();
        for g in &held {
            g.take();
        }
        assert_eq!(
            t.created(),
            created,
            "an idle object was out of reach (stranded in an exited thread's cache): {s}"
        );
        for g in &held {
            g.release();
        }
        drop(held);
        drop_pool(pool);
        t.assert_all_dropped_once();
    });
}

/// Model 9d: the pool is dropped while a thread that caches one of its objects exits. Both
/// threads cache an object; each then drops its handle to the pool, without waiting for the
/// other, so the pool's drop (by whichever handle is last: on the main thread, or on the
/// other one *before* its thread-local destructor runs) races with the other thread's
/// thread-local destructor giving its cache back.
///
/// Asserts: no object has two owners; every object is dropped exactly once, and by the time
/// both threads are joined (the pool's drop moved or dropped every cached object; the exiting
/// thread either moved its object to the stripe before the pool was marked gone, or found it
/// gone and left the object to the pool's drop). A use of the freed pool by the exiting
/// thread reads quarantined memory (poisoned magic, or loom's own state) and fails.
#[test]
fn pool_dropped_while_thread_exits_with_cached_object() {
    check(
        "pool_dropped_while_thread_exits_with_cached_object",
        3,
        || {
            let t = tracker();
            let pool = two_cache_pool();
            let other = {
                let pool = pool.clone();
                thread::spawn(move || {
                    let g = pool.get();
                    g.take();
                    g.release();
                    drop(g); // cached by this thread
                             // Possibly the last handle: then the pool is dropped here, before this
                             // thread's table gives its cache back.
                    drop(pool);
                })
            };
            let m = pool.get();
            m.take();
            m.release();
            drop(m); // cached by the main thread
                     // Possibly the last handle: then the drop races with the other thread's exit.
            drop(pool);
            other.join().unwrap();
            assert_eq!(live(&t), 0, "an object outlived its pool");
            t.assert_all_dropped_once();
        },
    );
}
