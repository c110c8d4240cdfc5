//! Model 7: `clear_and_release` racing with a reader that holds a guard.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn clear_and_release_vs_pinned_reader() {
    check("clear_and_release_vs_pinned_reader", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        // Read tier {1}, dirty tier {1, 2}: the clear retires both tiers and every entry.
        fill_read(&t, &map, &[(1, 10)]);
        fill_dirty(&t, &map, &[(2, 20)]);
        // The reader pins and finds both values before the clear starts.
        let pinned = map.pin();
        let (v1, v2) = (pinned.get(&1).unwrap(), pinned.get(&2).unwrap());

        let clearer = {
            let map = map.clone();
            thread::spawn(move || {
                let released = map.clear_and_release();
                // Freed now, or waiting for the reader's guard.
                assert!(
                    released.released_bytes + released.pending_bytes > 0,
                    "{released:?}"
                );
                assert_eq!(get(&map, 1), None);
                released.pending_bytes
            })
        };
        // Both references stay valid until the guard drops, whatever the clear has done.
        assert_eq!((v1.get(), v2.get()), (10, 20));
        drop(pinned);
        let _pending = clearer.join().unwrap();

        assert_eq!(snapshot(&map), []);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
