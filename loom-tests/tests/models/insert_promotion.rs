//! Model 2: inserts (of a dirty-only key, then of a new key) while lookups that miss the read
//! tier promote the dirty tier: no key is lost or duplicated, no replaced value is missed.
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
        // Read tier {1}; dirty tier {1, 2}, migration done, no misses yet: two lookups of key 2
        // that miss the read tier promote (misses >= dirty len), unless key 3 arrives first.
        fill_read(&t, &map, &[(1, 10)]);
        fill_dirty(&t, &map, &[(2, 20)]);
        assert_eq!(map.stats().misses, 0);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                // Key 2 is present (dirty tier, then read tier once promoted): the insert must
                // replace its value, even if a promotion ran between its lock-free probe of the
                // read tier and its critical section.
                let old = map.insert(t.key(2), t.val(21)).map(|r| r.get());
                assert_eq!(old, Some(20), "insert did not see present key 2");
                // A new key inserted while promotions may run: never lost.
                assert!(map.insert(t.key(3), t.val(30)).is_none());
                assert_eq!(get(&map, 3), Some(30), "inserted key lost");
            })
        };
        for _ in 0..2 {
            let v = get(&map, 2);
            assert!(v == Some(20) || v == Some(21), "dirty key 2 lost: {v:?}");
        }
        other.join().unwrap();

        assert_eq!(snapshot(&map), [(1, 10), (2, 21), (3, 30)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

/// Two inserts of the same new key while one of them is followed by a promotion: the later
/// insert must see (and replace) the earlier one's value, even when the promotion ran between
/// its lock-free lookup and its critical section (the critical section must re-read the read
/// tier, or it inserts a second entry for the key).
#[test]
fn same_new_key_inserted_across_a_promotion() {
    check("same_new_key_inserted_across_a_promotion", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10)]);

        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || map.insert(t.key(3), t.val(31)).map(|r| r.get()))
        };
        let mine = map.insert(t.key(3), t.val(30)).map(|r| r.get());
        // The dirty tier holds key 3, which the read tier lacks: iterating promotes.
        let seen = snapshot(&map);
        assert!(
            seen.iter().filter(|(k, _)| *k == 3).count() == 1,
            "{seen:?}"
        );
        let theirs = other.join().unwrap();

        let now = get(&map, 3);
        let outcome = (mine, theirs, now);
        assert!(
            outcome == (None, Some(30), Some(31)) || outcome == (Some(31), None, Some(30)),
            "not linearizable: (mine, theirs, now) = {outcome:?}"
        );
        assert_eq!(snapshot(&map), [(1, 10), (3, now.unwrap())]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
