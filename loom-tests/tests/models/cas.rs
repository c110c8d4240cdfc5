//! Model 5: `compare_exchange` and `compare_remove` racing on one key.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

#[test]
fn compare_exchange_vs_compare_remove() {
    check("compare_exchange_vs_compare_remove", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        fill_read(&t, &map, &[(1, 10)]);

        let remover = {
            let map = map.clone();
            let t = t.clone();
            thread::spawn(move || map.compare_remove(&1, &t.val(10)))
        };
        let swapped = match map.compare_exchange(&1, &t.val(10), t.val(11)) {
            Ok(old) => {
                assert_eq!(old.get(), 10);
                true
            }
            Err(e) => {
                // Only a removal can make it fail: the key is then absent.
                assert!(
                    e.current.is_none(),
                    "mismatch on {:?}",
                    e.current.map(|r| r.get())
                );
                assert_eq!(e.new.get(), 11, "the offered value comes back");
                false
            }
        };
        let removed = remover.join().unwrap();
        let now = get(&map, 1);
        assert!(
            (swapped, removed, now) == (true, false, Some(11))
                || (swapped, removed, now) == (false, true, None),
            "not linearizable: swapped {swapped}, removed {removed}, now {now:?}"
        );
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
