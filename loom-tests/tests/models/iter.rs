//! Model 6: an iteration (which promotes first, because the dirty tier holds a key the read tier
//! lacks) racing with a remove and an insert of a new key (which starts a new migration).
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn iter_vs_remove_insert_promotion() {
    check("iter_vs_remove_insert_promotion", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10)]);
        fill_dirty(&t, &map, &[(2, 20)]);

        let iterator = {
            let map = map.clone();
            thread::spawn(move || snapshot(&map))
        };
        assert_eq!(map.remove(&1).map(|r| r.get()), Some(10));
        assert!(map.insert(t.key(3), t.val(30)).is_none());
        let seen = iterator.join().unwrap();

        // Key 2 is present throughout: seen once. Keys 1 and 3 may or may not be seen, with
        // their only values. No key twice (checked by `snapshot`).
        assert!(seen.contains(&(2, 20)), "present key missed: {seen:?}");
        for &(k, v) in &seen {
            assert!(
                [(1, 10), (2, 20), (3, 30)].contains(&(k, v)),
                "unexpected {k}={v} in {seen:?}"
            );
        }
        assert_eq!(snapshot(&map), [(2, 20), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
