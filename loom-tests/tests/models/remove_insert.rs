//! Model 3: `remove` and `insert` of the same key racing, while a migration started by a new key
//! may expunge the deleted entry (live -> deleted -> expunged, or deleted -> revived).
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn remove_vs_insert_same_key() {
    check("remove_vs_insert_same_key", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10)]);

        let remover = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                let removed = map.remove(&1).map(|r| r.get());
                // A new key starts a migration, which expunges key 1's entry if it is deleted.
                assert!(map.insert(t.key(2), t.val(20)).is_none());
                removed
            })
        };
        let replaced = map.insert(t.key(1), t.val(11)).map(|r| r.get());
        let removed = remover.join().unwrap();
        let now = get(&map, 1);

        let outcome = (removed, replaced, now);
        assert!(
            outcome == (Some(10), None, Some(11)) // remove, then insert
                || outcome == (Some(11), Some(10), None), // insert, then remove
            "not linearizable: (removed, replaced, now) = {outcome:?}"
        );
        let mut want = vec![(2, 20)];
        if now.is_some() {
            want.insert(0, (1, 11));
        }
        assert_eq!(snapshot(&map), want);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
