#![cfg(tiermap_loom)]
use tiermap_loom_tests::*;

#[test]
fn smoke() {
    builder(2).check(|| {
        let t = Tracker::new();
        let map = new_map();
        map.insert(t.key(1), t.val(10));
        assert_eq!(map.get(&1).unwrap().get(), 10);
        drop(map);
        t.assert_all_dropped_once();
    });
}
