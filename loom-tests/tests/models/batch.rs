//! Model 11: removed values in the map's batches (`src/raw/batch.rs`; 2 slots per batch under
//! loom). Two threads retire three values at once (a remove and a replace on one thread, a
//! remove on the other), so a batch is filled and sealed by one of them while the other
//! reserves past its end and installs the next one, all while the main thread holds a `Ref` to
//! one of the removed values. Checks that the reference stays readable until it is dropped (the
//! seal's grace period covers every writer that reserved a slot and every reader pinned before),
//! that `reclaim` then drops exactly the three removed values, and that the map's drop drops the
//! rest exactly once.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn removed_values_batched_while_a_reader_holds_one() {
    check("removed_values_batched_while_a_reader_holds_one", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        let (v10, v20, v30) = (t.val(10), t.val(20), t.val(30));
        let ids = [v10.id(), v20.id(), v30.id()];
        for (k, v) in [(1, v10), (2, v20), (3, v30)] {
            assert!(map.insert(t.key(k), v).is_none());
        }
        assert_eq!(map.pin().iter().count(), 3); // promote: every key in the read tier

        let held = map.get(&1).expect("present");
        let other = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                let removed = map.remove(&1).map(|v| v.get());
                let replaced = map.insert(t.key(2), t.val(21)).map(|v| v.get());
                (removed, replaced)
            })
        };
        let removed3 = map.remove(&3).map(|v| v.get());
        assert_eq!(
            held.get(),
            10,
            "a value removed under a live `Ref` is still readable"
        );
        let (removed1, replaced2) = other.join().unwrap();
        assert_eq!(held.get(), 10);
        drop(held);
        assert_eq!(
            (removed1, replaced2, removed3),
            (Some(10), Some(20), Some(30))
        );
        assert_eq!(snapshot(&map), [(2, 21)]);

        // Nothing is pinned any more: `reclaim` frees the three removed values, once each.
        assert_eq!(map.reclaim(), 0, "{}", map.stats());
        for id in ids {
            assert_eq!(
                t.drops_of(id),
                1,
                "value id {id} dropped {} times",
                t.drops_of(id)
            );
        }
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
