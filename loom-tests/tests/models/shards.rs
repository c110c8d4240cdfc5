//! Model 19: `clear` of a map with two shards racing a reader of one key in each (I6).
//!
//! Key `IN_1` lives in shard 1 and key `IN_0` in shard 0, both in their shard's read tier.
//! `clear` replaces shard 1's tiers before shard 0's, so a reader that looks up `IN_1` and then
//! `IN_0` can meet shard 1 already cleared and shard 0 not yet. Linearizability forbids that
//! reader to see `IN_1` gone and then `IN_0` present: `clear` is one operation, and a lookup
//! that follows another in the same thread cannot see an older map. The generation check
//! (`Shard::behind_clear`) is what rules it out; without it, or with a `clear` that begins the
//! new generation in each shard only as it replaces that shard's tiers, the model fails.
#![cfg(tiermap_loom)]

use loom::sync::Arc;
use loom::thread;
use tiermap_loom_tests::*;

use crate::drop_map;

/// A key of shard 0 and a key of shard 1 of a two-shard model map.
const IN_0: u32 = 2;
const IN_1: u32 = 1;

#[test]
fn clear_across_shards_vs_reader() {
    assert_eq!((shard_of(IN_0, 2), shard_of(IN_1, 2)), (0, 1), "key choice");
    check("clear_across_shards_vs_reader", 1, || {
        let t = Tracker::new();
        let map = Arc::new(new_sharded_map(2));
        fill_read(&t, &map, &[(IN_0, 10), (IN_1, 20)]);

        let clearer = {
            let map = map.clone();
            thread::spawn(move || map.clear())
        };
        let later = get(&map, IN_1);
        let earlier = get(&map, IN_0);
        assert!(
            !(later.is_none() && earlier.is_some()),
            "not linearizable: shard 1 seen cleared, then shard 0 seen as before the clear \
             ({IN_1} -> {later:?}, then {IN_0} -> {earlier:?})"
        );
        clearer.join().unwrap();

        assert_eq!(snapshot(&map), [], "cleared map not empty");
        drop_map(map);
        t.assert_all_dropped_once();
    });
}
