//! Model 1: a lock-free read hit racing with the replacement of its value and with a promotion
//! that retires the read tier the reader is probing.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn read_hit_vs_replace_and_promotion() {
    check("read_hit_vs_replace_and_promotion", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        // Key 1 in the read tier, key 2 only in the dirty tier (so `amended` is set).
        fill_read(&t, &map, &[(1, 10)]);
        fill_dirty(&t, &map, &[(2, 20)]);

        let reader = {
            let map = map.clone();
            thread::spawn(move || {
                let r = map.get(&1).expect("key 1 is never removed");
                let first = r.get();
                assert!(first == 10 || first == 11, "read {first}");
                // Still the same, readable value after the writer may have replaced it and
                // retired the tier it was found in: the `Ref`'s guard keeps both alive.
                assert_eq!(r.get(), first);
            })
        };
        // Replace key 1's value (retires value 10), then iterate: the dirty tier holds key 2,
        // which the read tier lacks, so the iteration promotes and retires the read tier.
        assert_eq!(map.insert(t.key(1), t.val(11)).map(|r| r.get()), Some(10));
        assert_eq!(snapshot(&map), [(1, 11), (2, 20)]);
        assert_eq!(map.stats().promotions, 2);
        reader.join().unwrap();

        assert_eq!(get(&map, 1), Some(11));
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
