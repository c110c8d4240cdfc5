//! Model 13: an iteration, or a `retain`, racing `clear()` (issue 13). The map holds key 1 in
//! the read tier and key 2 only in the dirty tier, so the iteration first promotes; `clear`
//! swaps in an empty read tier, bumps the generation and retires both old tiers with their
//! entries and values as one unit while the iteration may still walk the old tier. The
//! iteration must see each key at most once and only values the keys really had (reading
//! each one checks it is not freed), and everything is dropped exactly once.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

fn setup(t: &std::sync::Arc<Tracker>, map: &Map) {
    fill_read(t, map, &[(1, 10)]);
    fill_dirty(t, map, &[(2, 20)]);
}

/// Each pair seen is one the map held before the clear.
fn check_seen(seen: &[(u32, u64)]) {
    for &(k, v) in seen {
        assert!(
            (k, v) == (1, 10) || (k, v) == (2, 20),
            "iteration saw a value the key never had: {seen:?}"
        );
    }
}

#[test]
fn iter_vs_clear() {
    check("iter_vs_clear", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);

        let clearer = {
            let map = map.clone();
            thread::spawn(move || map.clear())
        };
        // `snapshot` iterates `map.pin().iter()`, reads every value and asserts no key twice.
        let seen = snapshot(&map);
        check_seen(&seen);
        clearer.join().unwrap();

        assert_eq!(snapshot(&map), [], "cleared map not empty");
        assert_eq!(get(&map, 1), None);
        assert_eq!(get(&map, 2), None);
        drop_map(map);
        t.assert_all_dropped_once();
    });
}

#[test]
fn retain_vs_clear() {
    check("retain_vs_clear", 2, || {
        let t = Tracker::new();
        let map = Arc::new(new_map());
        setup(&t, &map);

        let clearer = {
            let map = map.clone();
            thread::spawn(move || map.clear())
        };
        let mut seen = Vec::new();
        map.retain(|k, v| {
            seen.push((k.k(), v.get()));
            k.k() != 1
        });
        seen.sort();
        for w in seen.windows(2) {
            assert!(
                w[0].0 != w[1].0,
                "retain saw key {} twice: {seen:?}",
                w[0].0
            );
        }
        check_seen(&seen);
        clearer.join().unwrap();

        assert_eq!(snapshot(&map), [], "cleared map not empty");
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
