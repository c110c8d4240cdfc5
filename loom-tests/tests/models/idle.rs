//! Model 22 (two tests): the background reclaimer's idle watch promoting a shard's dirty tier
//! (`SyncMap::loom_idle_steps`: each shard looked at twice, its migration finished and its
//! dirty tier promoted under a `try_lock`) on a thread that made no write, racing the
//! lock-free and locked operations of another thread.
//!
//! The map holds key 1 in its read tier and key 2 only in its dirty tier (fresh), so the watch
//! has a promotion to make: the reader must find both keys whatever the watch did in between
//! (22a); a writer adding key 3 takes the lock the watch wants (the watch then leaves the shard
//! as it is, or promotes first and the insert starts a new migration), and afterwards every key
//! is there exactly once (22b). The new race is the promotion's thread, not its code (the same
//! `promote` as a miss-driven one, models 7, 12 and 14); the watch's own mistake, promoting
//! before the migration ends (mutation `idle_skips_migration`), needs a table larger than loom's
//! maps (their migrations finish in one step) and is caught by the unit test
//! `idle_watch_finishes_the_migration_and_promotes`.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// Key 1 in the read tier, key 2 in the dirty tier only, and a thread running the idle watch.
fn watched(t: &std::sync::Arc<Tracker>) -> (Arc<Map>, thread::JoinHandle<()>) {
    let map = new_map();
    fill_read(t, &map, &[(1, 10)]);
    fill_dirty(t, &map, &[(2, 20)]);
    let map = Arc::new(map);
    let watch = {
        let map = map.clone();
        thread::spawn(move || map.loom_idle_steps())
    };
    (map, watch)
}

#[test]
fn idle_promotion_vs_reads() {
    check("idle_promotion_vs_reads", 1, || {
        let t = Tracker::new();
        let (map, watch) = watched(&t);
        assert_eq!(
            get(&map, 2),
            Some(20),
            "dirty-only key lost to the idle promotion"
        );
        assert_eq!(
            get(&map, 1),
            Some(10),
            "read-tier key lost to the idle promotion"
        );
        watch.join().unwrap();
        let s = map.stats();
        // The watch promoted (no other thread took the lock), and nothing was lost.
        assert_eq!(s.dirty_capacity, 0, "the watch did not promote: {s}");
        assert_eq!(snapshot(&map), [(1, 10), (2, 20)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

#[test]
fn idle_promotion_vs_insert() {
    check("idle_promotion_vs_insert", 1, || {
        let t = Tracker::new();
        let (map, watch) = watched(&t);
        assert!(map.insert(t.key(3), t.val(30)).is_none());
        assert_eq!(get(&map, 2), Some(20));
        watch.join().unwrap();
        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        assert_eq!(map.len(), 3);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
