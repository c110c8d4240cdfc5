//! Model 8: a compaction (`shrink_to_fit`, which rebuilds the tiers without deleted entries)
//! racing with a writer that revives the deleted key (8a), and with a reader (8b).
//!
//! One model with both (the insert, then the get, on the main thread) took 405,603 executions
//! at bound 1 (424 s); split, 83,284 (91 s) and 5,316 (5 s). A `get` of the deleted key as well
//! in 8b took it to 174,831 executions (miss-driven promotion racing with a migration is model
//! 7's and 11's subject).
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// A map whose read tier holds `{1: 10}` and a deleted entry of key 2, and a thread compacting
/// it.
fn compacting(t: &std::sync::Arc<Tracker>) -> (Arc<Map>, thread::JoinHandle<()>) {
    let map = Arc::new(new_map());
    fill_read(t, &map, &[(1, 10), (2, 20)]);
    // A lock-free delete leaves a deleted entry in the read tier.
    assert_eq!(map.remove(&2).map(|r| r.get()), Some(20));
    assert_eq!(map.stats().deleted, 1);
    let compactor = {
        let map = map.clone();
        thread::spawn(move || map.shrink_to_fit())
    };
    (map, compactor)
}

#[test]
fn compaction_vs_revive() {
    check("compaction_vs_revive", 1, || {
        let t = Tracker::new();
        let (map, compactor) = compacting(&t);
        // Revives the deleted entry in place, or (once the compaction expunged it) inserts a
        // new entry into the dirty tier.
        assert!(map.insert(t.key(2), t.val(21)).is_none());
        compactor.join().unwrap();

        assert!(map.stats().compactions >= 1);
        assert_eq!(snapshot(&map), [(1, 10), (2, 21)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

#[test]
fn compaction_vs_read() {
    check("compaction_vs_read", 1, || {
        let t = Tracker::new();
        let (map, compactor) = compacting(&t);
        // Reads key 1 from the old read tier, the new dirty tier or the promoted one, while
        // the compaction retires and frees the tables it replaces.
        assert_eq!(get(&map, 1), Some(10));
        compactor.join().unwrap();

        assert!(map.stats().compactions >= 1);
        assert_eq!(snapshot(&map), [(1, 10)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
