//! Model 10: the graveyard. A `clear` retires tables over the loom threshold (8 slots), so their
//! deferred closure buries them in the map's graveyard (`src/raw/grave.rs`) instead of freeing
//! them; then two threads' slow operations free them two slots at a time, concurrently, and
//! read. (Model 7 covers a reader pinned across the retirement.)
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn graveyard_drained_by_racing_writers() {
    check("graveyard_drained_by_racing_writers", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);
        map.clear();

        let writer = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || {
                assert!(map.insert(t.key(6), t.val(60)).is_none());
                get(&map, 8)
            })
        };
        assert!(map.insert(t.key(8), t.val(80)).is_none());
        assert_eq!(get(&map, 1), None);
        let seen = writer.join().unwrap();
        assert!(seen.is_none() || seen == Some(80), "{seen:?}");

        assert_eq!(snapshot(&map), [(6, 60), (8, 80)]);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
