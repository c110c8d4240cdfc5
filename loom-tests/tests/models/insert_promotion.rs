//! Model 2: a new key inserted, and a dirty-only key looked up, while misses promote the dirty
//! tier: neither key is ever lost.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn insert_and_miss_vs_miss_driven_promotion() {
    check("insert_and_miss_vs_miss_driven_promotion", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        // Read tier {1}; dirty tier {1, 2}, migration done, no misses yet: two slow-path
        // lookups of key 2 promote (misses >= dirty len), unless key 3 arrives first.
        fill_read(&t, &map, &[(1, 10)]);
        fill_dirty(&t, &map, &[(2, 20)]);
        assert_eq!(map.stats().misses, 0);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                // A lookup that misses the read tier, then finds key 2 under the lock: it must
                // find it even if a promotion ran between the two.
                assert_eq!(get(&map, 2), Some(20), "dirty key lost across a promotion");
                assert!(map.insert(t.key(3), t.val(30)).is_none());
                assert_eq!(get(&map, 3), Some(30), "inserted key lost");
            })
        };
        assert_eq!(get(&map, 2), Some(20), "dirty key lost");
        assert_eq!(get(&map, 2), Some(20), "dirty key lost");
        other.join().unwrap();

        assert!(map.stats().promotions >= 2);
        assert_eq!(snapshot(&map), [(1, 10), (2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
