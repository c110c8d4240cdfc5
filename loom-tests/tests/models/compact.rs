//! Model 8: a compaction (`shrink_to_fit`, which rebuilds the tiers without deleted entries)
//! racing with a writer that revives the deleted key and a reader.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn compaction_vs_revive_and_read() {
    check("compaction_vs_revive_and_read", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10), (2, 20)]);
        // A lock-free delete leaves a deleted entry in the read tier.
        assert_eq!(map.remove(&2).map(|r| r.get()), Some(20));
        assert_eq!(map.stats().deleted, 1);

        let compactor = {
            let map = map.clone();
            thread::spawn(move || map.shrink_to_fit())
        };
        // Revives the deleted entry in place, or (once the compaction expunged it) inserts a
        // new entry into the dirty tier.
        assert!(map.insert(t.key(2), t.val(21)).is_none());
        assert_eq!(get(&map, 1), Some(10));
        compactor.join().unwrap();

        assert!(map.stats().compactions >= 1);
        assert_eq!(snapshot(&map), [(1, 10), (2, 21)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
